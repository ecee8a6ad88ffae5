"""GGUF models run in their own block formats: a tiny Gemma 3 GGUF written with `gguf`'s writer in each format
loads natively and its logits match the dequantized float32 reference (the explicit conversion path); the
cache holds only the tokenizer; a truncated file is a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize

import codegemma
from codegemma import kernels
from codegemma.errors import CheckpointError
from codegemma.gguf.native import GGUFLinear
from tests.core.test_gguf_kernels import random_blocks
from tests.core.test_gguf_loader import PIECES, SPECIALS, TOKENS

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels unavailable: "
                                + kernels.unavailable_reason())

D, HEADS, KV, HEAD_DIM, FF, LAYERS = 256, 2, 1, 128, 512, 2  # K-quant rows need 256 weights
FORMATS = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.F16, Q.BF16, Q.F32]


def _data(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, Q | None]:
    """What GGUFWriter.add_tensor takes for a random matrix stored as `qtype` (and its raw_dtype)."""
    values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if qtype == Q.F32:
        return values, None
    if qtype == Q.F16:
        return values.astype(np.float16), None
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):  # gguf-py has no K-quant quantizer: random valid blocks
        return random_blocks(qtype, shape[0], shape[1], rng), qtype
    return quantize(values, qtype), qtype


def write_tiny(path: Path, qtype: Q, seed: int = 0) -> None:
    """A 2-layer Gemma 3 with every matrix (embedding included) stored as `qtype`, norms F32."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "gemma3")
    for key, value in {"block_count": LAYERS, "context_length": 512, "embedding_length": D,
                       "feed_forward_length": FF, "attention.head_count": HEADS, "attention.head_count_kv": KV,
                       "attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM,
                       "attention.sliding_window": 8}.items():
        w.add_uint32(f"gemma3.{key}", value)
    w.add_float32("gemma3.rope.freq_base", 1_000_000.0)
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([-1000.0] * len(SPECIALS) + [0.0] * 256 + [s for _, s in PIECES])
    w.add_token_types([t for _, t in SPECIALS] + [6] * 256 + [1] * len(PIECES))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    matrices = {"attn_q": (HEADS * HEAD_DIM, D), "attn_k": (KV * HEAD_DIM, D), "attn_v": (KV * HEAD_DIM, D),
                "attn_output": (D, HEADS * HEAD_DIM), "ffn_gate": (FF, D), "ffn_up": (FF, D), "ffn_down": (D, FF)}
    norms = {"attn_norm": D, "post_attention_norm": D, "ffn_norm": D, "post_ffw_norm": D,
             "attn_q_norm": HEAD_DIM, "attn_k_norm": HEAD_DIM}
    tensors = {"token_embd.weight": (len(TOKENS), D)}
    for i in range(LAYERS):
        tensors.update({f"blk.{i}.{k}.weight": s for k, s in matrices.items()})
    for name, shape in tensors.items():
        data, raw_dtype = _data(qtype, shape, rng)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    for name, size in [("output_norm", D)] + [(f"blk.{i}.{k}", s) for i in range(LAYERS) for k, s in norms.items()]:
        w.add_tensor(f"{name}.weight", 1.0 + rng.uniform(-0.5, 0.5, size).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_each_format_loads_natively_and_matches_the_dequantized_reference(tmp_path, qtype):
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_tiny(path, qtype)
    native = codegemma.load(str(path))
    assert isinstance(native.model.lm_head, GGUFLinear)
    formats = native.formats()
    norms = sum(p.numel() * 4 for p in native.model.parameters())  # the only weights read into memory
    assert set(formats) == {qtype.name, "F32"} and sum(formats.values()) > 10 * norms
    reference = codegemma.load(str(path), dtype="fp32")  # the explicit conversion: a dequantized float copy
    tokens = torch.tensor([[2, *range(6, 6 + 40)]])
    # the native products (<= 16 rows) keep float32 activations; a prefill block (41 rows here) multiplies
    # dequantized tiles, in bfloat16 where the CPU has bfloat16 arithmetic (rows and weights rounded to it)
    prefill_tolerance = 2e-3 if kernels.slow_bf16_gemm() else 2e-2
    with torch.inference_mode():
        for rows, tolerance in ((9, 2e-3), (41, prefill_tolerance)):
            got = native.model(tokens[:, :rows], torch.arange(rows))
            want = reference.model(tokens[:, :rows], torch.arange(rows))
            scale = want.abs().max()
            assert (got - want).abs().max() <= tolerance * scale, (qtype.name, rows)


def test_cache_holds_only_the_tokenizer(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny(path, Q.Q8_0)
    codegemma.load(str(path))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "kernels" not in p.parts]
    assert [p.suffix for p in files] == [".model"]
    assert sum(p.stat().st_size for p in files) < 1 << 20
    again = codegemma.load(str(path))  # from the cached tokenizer
    assert again.tokenizer.vocab_size == len(TOKENS)
    files[0].write_bytes(b"damaged")  # a damaged cached tokenizer is rebuilt
    assert codegemma.load(str(path)).tokenizer.vocab_size == len(TOKENS)
    assert files[0].stat().st_size > 1000


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny(path, Q.Q4_K)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError) as caught:
        codegemma.load(str(path))
    assert "truncated" in str(caught.value) and "\n" not in str(caught.value)


def test_a_format_without_native_product_loads_through_the_float_copy(tmp_path, monkeypatch, capsys):
    path = tmp_path / "tiny.gguf"
    write_tiny(path, Q.Q5_1)
    monkeypatch.setattr(kernels, "GGUF_TYPES", {k: v for k, v in kernels.GGUF_TYPES.items() if k != "Q5_1"})
    engine = codegemma.load(str(path))
    assert not isinstance(engine.model.lm_head, GGUFLinear) and "Q5_1" not in engine.formats()
    assert "Q5_1 weights have no native product; loading a dequantized" in capsys.readouterr().err
    assert len(engine.generate([2, 7, 8], codegemma.GenerateOptions(max_new_tokens=3)).tokens) >= 1
