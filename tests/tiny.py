"""Tiny random-weight models for tests: the real architecture and a real SentencePiece tokenizer, small.

In-process tests build a tiny engine directly (`tiny_engine`); tests that start a command or a server pass
`--model tiny_checkpoint()`, a checkpoint directory the normal loader loads like any user's. The tokenizer
is trained once on a few standard-library modules (byte fallback, so any text encodes) and cached in a temp
directory; a tiny engine then builds in milliseconds.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import hashlib
import io
import json
import json.encoder
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from codegemma.config import GemmaConfig, to_hf_config
from codegemma.engine import Engine
from codegemma.model import Transformer
from codegemma.tokenizer import FIM_TOKENS, Tokenizer

TINY_VOCAB = 512


def tiny_config(arch: str = "gemma3", vocab_size: int = TINY_VOCAB, fim: bool = True) -> GemmaConfig:
    """A 2-4 layer config of each architecture; sliding windows small enough for tests to cross them."""
    base = dict(d_model=64, n_heads=4, head_dim=16, d_ff=128, vocab_size=vocab_size, max_seq_len=2048,
                fim_tokens=fim)
    if arch == "gemma":
        return GemmaConfig("tiny-gemma", n_layers=2, n_kv_heads=1, **base)
    if arch == "gemma2":
        return GemmaConfig("tiny-gemma2", n_layers=4, n_kv_heads=2, sandwich_norms=True, attn_softcap=50.0,
                           final_softcap=30.0, sliding_window=8, sliding_period=2, query_pre_attn_scalar=24, **base)
    if arch == "gemma3":
        return GemmaConfig("tiny-gemma3", n_layers=4, n_kv_heads=2, sandwich_norms=True, qk_norm=True,
                           sliding_window=8, sliding_period=3, rope_base=1_000_000.0, rope_local_base=10_000.0,
                           query_pre_attn_scalar=16, **base)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_tokenizer_model(fim: bool = True, vocab_size: int = TINY_VOCAB, unused: bool = False) -> bytes:
    """A serialized SentencePiece BPE model laid out like Gemma's: pad 0, eos 1, bos 2, unk 3; with `unused`,
    <unused0>..<unused3> follow (where an adapter maps the FIM tokens)."""
    key = hashlib.sha256(f"{fim}-{vocab_size}-{unused}-v1".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"codegemma-tiny-{key}.model"
    if path.is_file():
        return path.read_bytes()
    corpus = "\n".join(Path(m.__file__).read_text() for m in (textwrap, argparse, json.encoder, dataclasses))
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()), model_writer=out, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        allow_whitespace_only_pieces=True, user_defined_symbols=(list(FIM_TOKENS) if fim else []) + ([f"<unused{i}>" for i in range(4)] if unused else []),
        minloglevel=2, num_threads=1)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(out.getvalue())
    tmp.replace(path)
    return out.getvalue()


def random_model(cfg: GemmaConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> Transformer:
    """Weights drawn N(0, 0.02) (norm weights N(0, 0.1)) so logits are neither flat nor saturated."""
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1 if name.endswith("norm.weight") else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.to(dtype).eval()


def tiny_engine(fim: bool = True, arch: str = "gemma3", seed: int = 0, dtype: torch.dtype = torch.float32,
                max_seq_len: int = 1024) -> Engine:
    tokenizer = Tokenizer.from_bytes(tiny_tokenizer_model(fim))
    model = random_model(tiny_config(arch, tokenizer.vocab_size, fim), seed, dtype)
    model.setup_cache(max_seq_len)
    return Engine(model, tokenizer, f"tiny-{arch}{'-fim' if fim else ''}")


def write_checkpoint(directory: Path, cfg: GemmaConfig, seed: int = 0, shards: int = 1, fim: bool = True,
                     unused: bool = False) -> Path:
    """Write a Hugging Face checkpoint directory: config.json, (sharded) model safetensors with an index,
    and tokenizer.model."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in random_model(cfg, seed).state_dict().items()}
    (directory / "config.json").write_text(json.dumps(to_hf_config(cfg)))
    (directory / "tokenizer.model").write_bytes(tiny_tokenizer_model(fim, unused=unused))
    names = sorted(state)
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"))
        return directory
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(directory / fname))
        weight_map.update({k: fname for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@functools.cache
def tiny_checkpoint() -> str:
    """The path (as `--model` takes it) of the tiny FIM model as a checkpoint directory, written once per
    test session and removed at exit, for the servers and commands tests start. Named like
    `tiny_engine()`'s engine, since the loader names an engine after its directory."""
    root = Path(tempfile.mkdtemp(prefix="codegemma-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return str(write_checkpoint(root / "tiny-gemma3-fim", tiny_config()))


@functools.cache
def tiny_adapter() -> tuple[str, str]:
    """A tiny checkpoint whose vocabulary has no FIM tokens (but <unused0..3>) and a FIM adapter for it with
    random, non-zero updates (codegemma.adapter), written once per test session."""
    from codegemma.adapter.lora import save_adapter, unused_ids
    from codegemma.adapter.train import TrainableAdapter

    root = Path(tempfile.mkdtemp(prefix="codegemma-adapter-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    cfg = tiny_config(fim=False)
    model_dir = write_checkpoint(root / "tiny-gemma3-plain", cfg, fim=False, unused=True)
    tokenizer = Tokenizer.from_bytes(tiny_tokenizer_model(fim=False, unused=True))
    adapter = TrainableAdapter(random_model(cfg), rank=4, alpha=8.0, ids=unused_ids(tokenizer))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    path = root / "adapter.safetensors"
    save_adapter(path, adapter.config, adapter.tensors())
    return str(model_dir), str(path)
