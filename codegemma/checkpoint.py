"""Load a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.model) into a Transformer.

Tensors are read one at a time from memory-mapped safetensors and cast straight to the chosen dtype, so the
process never holds a second full copy of the weights. Every problem names the file it is about.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from safetensors import safe_open

from codegemma.config import GemmaConfig, from_hf_config
from codegemma.errors import CheckpointError, ModelNotFoundError
from codegemma.model import Transformer
from codegemma.tokenizer import Tokenizer


def read_config(directory: Path) -> GemmaConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{directory}: not a checkpoint directory (no config.json)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        name = Path(str(raw.get("_name_or_path") or directory.name)).name
        return from_hf_config(raw, name=name)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        files = [directory / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard {missing[0]} which is missing")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors weights (only safetensors checkpoints are supported)")
    return files


def load_weights(model: Transformer, files: list[Path], dtype: torch.dtype) -> None:
    """Fill `model` (built on the meta device) from safetensors `files`, checking names and shapes."""
    expected = {k: v for k, v in model.state_dict().items()}
    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    if name == "lm_head.weight":  # tied to the embedding in every Gemma
                        continue
                    key = name if name.startswith("model.") else f"model.{name}"
                    if key not in expected:
                        raise CheckpointError(f"{f}: unexpected tensor {name!r} for this architecture")
                    t = st.get_tensor(name)
                    if tuple(t.shape) != tuple(expected[key].shape):
                        raise CheckpointError(f"{f}: tensor {name!r} has shape {tuple(t.shape)}, "
                                              f"config.json implies {tuple(expected[key].shape)}")
                    loaded[key] = t.to(dtype)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors reports truncation and bad headers as assorted errors
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from None
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(f"{files[0].parent}: checkpoint lacks {len(missing)} tensors, e.g. {missing[0]!r}")
    model.load_state_dict(loaded, assign=True, strict=True)


def load_tokenizer(directory: Path) -> Tokenizer:
    path = directory / "tokenizer.model"
    if path.is_file():
        return Tokenizer.from_file(path)
    if (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: has tokenizer.json but no tokenizer.model; the engine needs the "
                              "SentencePiece tokenizer.model that every Gemma release ships")
    raise CheckpointError(f"{directory}: no tokenizer.model")


@contextlib.contextmanager
def empty_model() -> Iterator[None]:
    """Build modules on the meta device without their random initialisation: the weights come next, and on
    the meta device `normal_` goes through PyTorch's reference ops, whose first use imports torch._dynamo
    and sympy (3 s of a 4 s load)."""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def load_checkpoint(directory: str | Path, dtype: torch.dtype) -> tuple[Transformer, Tokenizer]:
    directory = Path(directory)
    if not directory.exists():
        raise ModelNotFoundError(f"{directory}: no such file or directory")
    cfg = read_config(directory)
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > cfg.vocab_size:  # fewer is fine: embeddings are often padded
        raise CheckpointError(f"{directory}: tokenizer.model has {tokenizer.vocab_size} tokens, more than the "
                              f"{cfg.vocab_size} rows config.json gives the embedding")
    cfg = cfg.replace(fim_tokens=tokenizer.has_fim,
                      n_tokens=tokenizer.vocab_size if tokenizer.vocab_size < cfg.vocab_size else None)
    with empty_model():
        model = Transformer(cfg)
    load_weights(model, weight_files(directory), dtype)
    return model.eval().requires_grad_(False), tokenizer
