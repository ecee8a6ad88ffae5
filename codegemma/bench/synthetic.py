"""A CodeGemma-size benchmark model: the real CodeGemma 2B architecture (18 layers, d_model 2048, MQA, MLP
16384, a 256,000-token vocabulary) with random weights, quantized by llama.cpp's own quantizer.

No CodeGemma weights can be had on these machines, but speed depends only on the shapes and the formats, so
a synthetic file of the same size measures what users see. The float16 source is written tensor by tensor
(never held whole in memory) and quantized to Q4_K_M or Q8_0 with llama-cpp-python's `llama_model_quantize`
(the `bench` extra). The vocabulary is the embedded Gemma 3 model's first 256,000 pieces, so that llama.cpp
and codegemma load a real SentencePiece vocabulary. Files are cached under $CODEGEMMA_CACHE/synthetic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from codegemma.config import GemmaConfig, preset
from codegemma.errors import CodegemmaError
from codegemma.gguf.format import read_gguf
from codegemma.gguf.loader import cache_root

KINDS = ("Q4_K_M", "Q8_0")
_SEED = 0


def synthetic_model(kind: str, name: str = "codegemma-2b") -> Path:
    """The synthetic GGUF of preset `name` in `kind` (Q4_K_M or Q8_0), written and quantized on first use
    (a few minutes for CodeGemma 2B)."""
    if kind not in KINDS:
        raise CodegemmaError(f"synthetic models come as {' or '.join(KINDS)}, not {kind!r}")
    folder = cache_root().parent / "synthetic"
    target = folder / f"synthetic-{name}-{kind}.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"synthetic-{name}-F16.gguf"
    if not source.is_file():
        _write_f16(source, preset(name))
    _quantize(source, target, kind)
    return target


def _vocabulary(size: int) -> tuple[list[str], list[float], list[int]]:
    from codegemma.loader import default_gguf

    meta = read_gguf(default_gguf()).metadata
    return (meta["tokenizer.ggml.tokens"][:size], meta["tokenizer.ggml.scores"][:size],
            meta["tokenizer.ggml.token_type"][:size])


def _write_f16(path: Path, c: GemmaConfig) -> None:
    """A Gemma (1) GGUF as llama.cpp's converter lays one out, float16 matrices of N(0, 0.02), norms near 1
    (stored as 1 + w, as the converter stores Gemma's norms)."""
    rng = np.random.default_rng(_SEED)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    w = GGUFWriter(str(tmp), "gemma")
    w.add_name(f"synthetic {c.name}")
    for key, value in {"context_length": c.max_seq_len, "embedding_length": c.d_model, "block_count": c.n_layers,
                       "feed_forward_length": c.d_ff, "attention.head_count": c.n_heads,
                       "attention.head_count_kv": c.n_kv_heads, "attention.key_length": c.head_dim,
                       "attention.value_length": c.head_dim}.items():
        w.add_uint32(f"gemma.{key}", value)
    w.add_float32("gemma.attention.layer_norm_rms_epsilon", c.norm_eps)
    w.add_float32("gemma.rope.freq_base", c.rope_base)
    tokens, scores, types = _vocabulary(c.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    shapes = {"token_embd.weight": (c.vocab_size, c.d_model), "output_norm.weight": (c.d_model,)}
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    for i in range(c.n_layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (c.d_model,), f"blk.{i}.attn_q.weight": (q, c.d_model),
                       f"blk.{i}.attn_k.weight": (kv, c.d_model), f"blk.{i}.attn_v.weight": (kv, c.d_model),
                       f"blk.{i}.attn_output.weight": (c.d_model, q), f"blk.{i}.ffn_norm.weight": (c.d_model,),
                       f"blk.{i}.ffn_gate.weight": (c.d_ff, c.d_model), f"blk.{i}.ffn_up.weight": (c.d_ff, c.d_model),
                       f"blk.{i}.ffn_down.weight": (c.d_model, c.d_ff)})
    dtypes = {name: np.float32 if len(shape) == 1 else np.float16 for name, shape in shapes.items()}
    for name, shape in shapes.items():
        w.add_tensor_info(name, shape, np.dtype(dtypes[name]), int(np.prod(shape)) * np.dtype(dtypes[name]).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in shapes.items():
        if len(shape) == 1:
            w.write_tensor_data(1.0 + rng.uniform(-0.1, 0.1, shape).astype(np.float32))
        else:
            w.write_tensor_data((rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))
    w.close()
    os.replace(tmp, path)


def _quantize(source: Path, target: Path, kind: str) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise CodegemmaError("quantizing the synthetic model needs llama-cpp-python (pip install -e '.[bench]'; "
                             "see the README for the build flags on CPUs with AMX)") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
    params.nthread = os.cpu_count() or 2
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params) != 0:
        tmp.unlink(missing_ok=True)
        raise CodegemmaError(f"llama.cpp could not quantize {source} to {kind}")
    os.replace(tmp, target)
