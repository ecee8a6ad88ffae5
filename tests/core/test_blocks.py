"""`quant="q8_0"` / `"q4"`: a float checkpoint quantized into GGUF block formats, run on the native GGUF
products, and cached so that later loads do not quantize again."""

from __future__ import annotations

import pytest
import torch
from gguf.quants import dequantize
from safetensors.torch import load_file

import codegemma
from codegemma import kernels
from codegemma.errors import CodegemmaError
from codegemma.gguf import blocks
from tests.tiny import tiny_config, write_checkpoint

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels unavailable: "
                                + kernels.unavailable_reason())


@pytest.fixture()
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    return str(write_checkpoint(tmp_path / "tiny-gemma3-fim", tiny_config(), seed=4))


def logits(engine: codegemma.Engine) -> torch.Tensor:
    """Logits of 9 positions: few enough rows for the native block products (a prefill block of more rows
    multiplies dequantized tiles instead)."""
    tokens = torch.tensor([[2, *range(6, 14)]])
    with torch.inference_mode():
        return engine.model(tokens, torch.arange(tokens.shape[1]))[0].float()


@pytest.mark.parametrize("option,formats", [("q8_0", {"Q8_0"}), ("q4", {"Q4_1", "Q8_0"})])
def test_block_formats_run_natively_as_their_dequantized_weights(checkpoint, tmp_path, option, formats):
    engine = codegemma.load(checkpoint, quant=option)
    assert set(engine.formats()) - {"F32"} == formats
    # the reference: the float model with each weight replaced by its blocks dequantized by gguf-py
    (cache,) = (tmp_path / "cache").rglob(f"*{option}.safetensors")
    reference = codegemma.load(checkpoint, dtype="fp32")
    layer_format, head_format = blocks.BLOCK_FORMATS[option]
    for name, raw in load_file(str(cache)).items():
        qtype = head_format if name == "model.embed_tokens.weight" else layer_format
        param = reference.model.get_parameter(name)
        param.data.copy_(torch.from_numpy(dequantize(raw.numpy(), qtype)).view(param.shape))
    want, got = logits(reference), logits(engine)
    assert (got - want).abs().max() <= 2e-3 * want.abs().max(), option
    options = codegemma.GenerateOptions(max_new_tokens=6, stop_ids=frozenset())
    assert len(engine.generate([2, 40, 41, 42], options).tokens) == 6


def test_quantized_once_then_read_from_the_cache(checkpoint, tmp_path, monkeypatch):
    first = logits(codegemma.load(checkpoint, quant="q4"))
    cached = list((tmp_path / "cache").rglob("*q4.safetensors"))
    assert len(cached) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("quantized again although the cache holds the blocks")

    monkeypatch.setattr(blocks, "quantize", refuse)
    assert torch.equal(logits(codegemma.load(checkpoint, quant="q4")), first)
    cached[0].write_bytes(b"damaged")  # a damaged cache file is quantized again, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    assert torch.equal(logits(codegemma.load(checkpoint, quant="q4")), first)


def test_unknown_quantization_is_a_clear_error(checkpoint):
    with pytest.raises(CodegemmaError, match="unknown quantization 'q3'"):
        codegemma.load(checkpoint, quant="q3")


def test_q8_0_blocks_are_the_reference_quantizers_bytes():
    """The PyTorch Q8_0 quantizer (used for `q8_0` and the FIM adapter merge) writes the bytes gguf-py's
    reference does: scales, rounding of halves away from zero, all-zero blocks."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    generator = torch.Generator().manual_seed(0)
    for scale in (1e-4, 0.02, 3.0):
        w = torch.randn(8, 256, generator=generator) * scale
        w[0, :32] = 0
        w[1, :32] = torch.tensor([127.0] + [0.49999997, 0.5, 1.5, -0.5, -2.5] * 6 + [0.0])  # ties at d = 1
        assert torch.equal(blocks.q8_0_blocks(w), torch.from_numpy(quantize(w.numpy(), Q.Q8_0)))
