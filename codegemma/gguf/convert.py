"""Translate a parsed Gemma GGUF file into codegemma's terms: a GemmaConfig from its metadata, float32
tensors under Hugging Face parameter names, and a SentencePiece tokenizer from its vocabulary.

llama.cpp's converter changes a few things on the way in (names, norm weights stored as 1 + w, sizes it
hard-codes per architecture instead of writing them); each is undone here, with the reason beside it.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np
import torch
from gguf.quants import dequantize

from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.gguf.format import GGUFFile, TensorInfo
from codegemma.gguf.vocab import GGUFVocab, sentencepiece_model

_ARCHITECTURES = ("gemma", "gemma2", "gemma3")
_FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>")
# llama.cpp hard-codes these per architecture instead of storing them in the file.
_SLIDING_PERIOD = {"gemma2": 2, "gemma3": 6}
_GEMMA3_LOCAL_ROPE_BASE = 10_000.0
# The 27B models scale queries by d_model / n_heads instead of head_dim; llama.cpp recognises them by depth.
_LAYERS_OF_27B = {"gemma2": 46, "gemma3": 62}

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
}
# Gemma 1 has one norm before the MLP, which Hugging Face calls post_attention_layernorm.
_GEMMA1_BLOCK_NAMES = {**_BLOCK_NAMES, "ffn_norm": "post_attention_layernorm"}
_CHUNK_ELEMENTS = 1 << 22  # elements per dequantised block of rows: 16 MB of float32
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def gguf_config(f: GGUFFile) -> GemmaConfig:
    """The model's shape from the GGUF metadata (`check_tensors` then holds the tensors to it)."""
    arch = f.metadata.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise CheckpointError(f"{f.path}: architecture {arch!r} is not a Gemma model ({', '.join(_ARCHITECTURES)})")

    def meta(key: str, default: Any = None) -> Any:
        value = f.metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise CheckpointError(f"{f.path}: GGUF metadata lacks {arch}.{key}")
        return value

    def size(key: str, default: int | None = None) -> int:
        value = _uniform(f, key, meta(key, default))
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{f.path}: GGUF metadata {arch}.{key} is {value!r}, not a positive integer")
        return value

    d_model, n_heads, n_layers = size("embedding_length"), size("attention.head_count"), size("block_count")
    head_dim = size("attention.key_length", d_model // n_heads)
    if size("attention.value_length", head_dim) != head_dim:
        raise CheckpointError(f"{f.path}: key and value head sizes differ; Gemma has one head_dim")
    rope_scale = f.metadata.get(f"{arch}.rope.scaling.factor", 1.0)
    if rope_scale != 1.0:
        raise CheckpointError(f"{f.path}: RoPE scaling (factor {rope_scale}) is not supported")
    tokens = _tokens(f)
    common = dict(
        name=_model_name(f), n_layers=n_layers, d_model=d_model, n_heads=n_heads,
        n_kv_heads=size("attention.head_count_kv", n_heads), head_dim=head_dim, d_ff=size("feed_forward_length"),
        vocab_size=len(tokens), max_seq_len=size("context_length", 8192),
        rope_base=_f32(meta("rope.freq_base", 10000.0)), norm_eps=_f32(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        fim_tokens=all(t in tokens for t in _FIM_TOKENS),
    )
    if arch == "gemma":
        return GemmaConfig(**common)
    window = size("attention.sliding_window") if f"{arch}.attention.sliding_window" in f.metadata else None
    big = n_layers == _LAYERS_OF_27B[arch]
    extra: dict[str, Any] = dict(
        sandwich_norms=True,
        query_pre_attn_scalar=d_model // n_heads if big else head_dim,
        attn_softcap=_f32_or_none(f.metadata.get(f"{arch}.attn_logit_softcapping")),
        final_softcap=_f32_or_none(f.metadata.get(f"{arch}.final_logit_softcapping")),
        sliding_window=window,
        sliding_period=_SLIDING_PERIOD[arch] if window else None,
    )
    if arch == "gemma3":
        extra.update(qk_norm=True, rope_local_base=_f32(meta("rope.freq_base_swa", _GEMMA3_LOCAL_ROPE_BASE)))
    return GemmaConfig(**common, **extra)


def check_tensors(f: GGUFFile, config: GemmaConfig) -> list[str]:
    """The Hugging Face name of each tensor, after checking the file holds exactly the tensors the config needs."""
    expected = expected_shapes(config)
    names: list[str] = []
    seen: set[str] = set()
    for info in f.tensors:
        name = hf_name(f, info.name)
        if name not in expected:
            raise CheckpointError(f"{f.path}: unexpected tensor {info.name} for a {config.n_layers}-layer model")
        if name in seen:
            raise CheckpointError(f"{f.path}: tensor {info.name} maps to {name} like an earlier one")
        if info.shape != expected[name]:
            raise CheckpointError(f"{f.path}: tensor {info.name} has shape {list(info.shape)}, the metadata "
                                  f"implies {list(expected[name])}")
        names.append(name)
        seen.add(name)
    missing = [name for name in expected if name not in seen]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{f.path}: missing tensor {missing[0]}{more}")
    return names


def hf_name(f: GGUFFile, gguf_name: str) -> str:
    """The Hugging Face parameter name of a GGUF tensor ("blk.3.attn_q.weight" -> "model.layers.3....")."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    m = _BLOCK_RE.fullmatch(gguf_name)
    names = _GEMMA1_BLOCK_NAMES if f.metadata["general.architecture"] == "gemma" else _BLOCK_NAMES
    if m is None or m.group(2) not in names:
        raise CheckpointError(f"{f.path}: unexpected tensor {gguf_name} for a Gemma model")
    return f"model.layers.{m.group(1)}.{names[m.group(2)]}.weight"


def expected_shapes(c: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter a Gemma model of this config has, with its Hugging Face shape."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.d_model),
                                          "model.norm.weight": (c.d_model,)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (c.n_heads * c.head_dim, c.d_model),
            p + "self_attn.k_proj.weight": (c.n_kv_heads * c.head_dim, c.d_model),
            p + "self_attn.v_proj.weight": (c.n_kv_heads * c.head_dim, c.d_model),
            p + "self_attn.o_proj.weight": (c.d_model, c.n_heads * c.head_dim),
            p + "mlp.gate_proj.weight": (c.d_ff, c.d_model),
            p + "mlp.up_proj.weight": (c.d_ff, c.d_model),
            p + "mlp.down_proj.weight": (c.d_model, c.d_ff),
            p + "input_layernorm.weight": (c.d_model,),
            p + "post_attention_layernorm.weight": (c.d_model,),
        })
        if c.sandwich_norms:
            shapes[p + "pre_feedforward_layernorm.weight"] = (c.d_model,)
            shapes[p + "post_feedforward_layernorm.weight"] = (c.d_model,)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (c.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (c.head_dim,)
    return shapes


def tokenizer_model(f: GGUFFile) -> bytes:
    """The GGUF vocabulary as a serialized SentencePiece model."""
    kind = f.metadata.get("tokenizer.ggml.model")
    if kind != "llama":
        raise CheckpointError(f"{f.path}: tokenizer {kind!r} is not SentencePiece (GGUF tokenizer 'llama')")
    m = f.metadata

    def ids(key: str, default: int) -> int:
        return m.get(f"tokenizer.ggml.{key}_token_id", default)

    vocab = GGUFVocab(tokens=_tokens(f), scores=m.get("tokenizer.ggml.scores", []),
                      types=m.get("tokenizer.ggml.token_type", []), unk_id=ids("unknown", 3), bos_id=ids("bos", 2),
                      eos_id=ids("eos", 1), pad_id=ids("padding", 0))
    return sentencepiece_model(vocab, str(f.path))


def dequantized_rows(f: GGUFFile, info: TensorInfo) -> Iterator[np.ndarray]:
    """The tensor as float32 blocks of rows ([rows, columns]), in order. A block at a time keeps the
    dequantiser's temporaries (several float arrays the size of its output) to a few tens of MB."""
    raw = f.raw(info)
    rows = raw.reshape(-1, raw.shape[-1])  # [rows, bytes per row]
    step = max(1, _CHUNK_ELEMENTS // info.shape[-1])
    for start in range(0, rows.shape[0], step):
        try:
            block = dequantize(rows[start:start + step], info.qtype)
        except NotImplementedError:
            raise CheckpointError(f"{f.path}: tensor {info.name} has type {info.qtype.name}, which cannot be "
                                  "dequantised") from None
        if info.name.endswith("norm.weight"):
            # llama.cpp multiplies by w, Hugging Face's Gemma by (1 + w): the converter stored w + 1
            block = block - np.float32(1.0)
        yield block


def dequantize_tensor(f: GGUFFile, info: TensorInfo) -> torch.Tensor:
    """The whole tensor, float32, in its Hugging Face shape."""
    out = np.empty(info.shape, dtype=np.float32)
    rows = out.reshape(-1, info.shape[-1])  # a view: filling it fills `out`
    start = 0
    for block in dequantized_rows(f, info):
        rows[start:start + len(block)] = block
        start += len(block)
    return torch.from_numpy(out)


def _tokens(f: GGUFFile) -> list[str]:
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise CheckpointError(f"{f.path}: GGUF metadata lacks tokenizer.ggml.tokens")
    return tokens


def _uniform(f: GGUFFile, key: str, value: Any) -> Any:
    """llama.cpp allows per-layer lists for some sizes; Gemma's are one number."""
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise CheckpointError(f"{f.path}: per-layer {key} values {sorted(set(value))} are not supported")
        return value[0]
    return value


def _model_name(f: GGUFFile) -> str:
    base, size = f.metadata.get("general.basename"), f.metadata.get("general.size_label")
    if base and size:
        return f"{base}-{size}".lower()
    return str(f.metadata.get("general.name") or f.path.stem).lower().replace(" ", "-")


def _f32(x: float) -> float:
    """A float32 metadata value as the short decimal it was written from (9.99999997e-07 -> 1e-06)."""
    return float(str(np.float32(x)))


def _f32_or_none(x: float | None) -> float | None:
    return None if x is None else _f32(x)
