"""The synthetic benchmark model's writer: a Gemma GGUF of any config with random weights, which both engines
load (llama.cpp quantizes the real CodeGemma 2B-size one in `codegemma bench decode --synthetic`)."""

from __future__ import annotations

import pytest

import codegemma
from codegemma.bench import synthetic
from codegemma.config import GemmaConfig
from codegemma.gguf.format import read_gguf

TINY = GemmaConfig("synthetic-tiny", n_layers=2, d_model=256, n_heads=2, n_kv_heads=1, head_dim=128, d_ff=512,
                   vocab_size=1024, max_seq_len=512)


def test_written_file_has_the_config_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "synthetic-F16.gguf"
    synthetic._write_f16(path, TINY)
    f = read_gguf(path)
    assert f.metadata["gemma.block_count"] == 2 and f.metadata["gemma.feed_forward_length"] == 512
    assert len(f.metadata["tokenizer.ggml.tokens"]) == 1024  # the embedded vocabulary's first pieces
    assert {t.qtype.name for t in f.tensors} == {"F16", "F32"}
    engine = codegemma.load(str(path))
    assert engine.config.n_layers == 2 and engine.tokenizer.vocab_size == 1024
    assert len(engine.generate([2, 100, 200], codegemma.GenerateOptions(max_new_tokens=4)).tokens) >= 1


def test_quantized_by_llamacpp(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the bench extra) is not installed")
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    source, target = tmp_path / "s-F16.gguf", tmp_path / "s-Q8_0.gguf"
    synthetic._write_f16(source, TINY)
    synthetic._quantize(source, target, "Q8_0")
    assert {t.qtype.name for t in read_gguf(target).tensors if len(t.shape) == 2} == {"Q8_0"}
    assert codegemma.load(str(target)).formats().keys() >= {"Q8_0"}


def test_unknown_kind_is_one_line():
    with pytest.raises(codegemma.CodegemmaError, match="Q4_K_M or Q8_0"):
        synthetic.synthetic_model("Q2_K")
