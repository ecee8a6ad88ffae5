"""Every decoder layer of a GGUF-block model in one native call (codegemma.gguf.chain): for a few rows the
chain gives bit-identical results to the layer-by-layer path, for each architecture, and it is dropped with
the caches it names (tests/core/test_adapter.py: a FIM adapter merged into GGUF blocks keeps the chain; a
separate LoRA update takes the layer-by-layer path)."""

from __future__ import annotations

import pytest
import torch

import codegemma
from codegemma import kernels
from codegemma.engine import GenerateOptions
from codegemma.gguf.chain import chain_for
from tests.tiny import tiny_config, write_checkpoint

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels unavailable: "
                                + kernels.unavailable_reason())


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))


def _blocks_engine(tmp_path, arch: str) -> codegemma.Engine:
    """A tiny float checkpoint of `arch` run on GGUF blocks (Q8_0), as a GGUF file is."""
    return codegemma.load(str(write_checkpoint(tmp_path / f"tiny-{arch}", tiny_config(arch), seed=4)), quant="q8_0")


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_chained_layers_equal_the_layer_by_layer_path(tmp_path, arch):
    model = _blocks_engine(tmp_path, arch).model
    chain = model.chain
    assert chain is not None
    prompt = torch.tensor([[2, *range(6, 6 + 69)]])  # past the tiny sliding windows (8)
    with torch.inference_mode():
        model(prompt, torch.arange(70))
        pos = 70
        for rows in (1, 5, 16):
            tokens = torch.arange(10, 10 + rows)[None] * 3
            positions = torch.arange(pos, pos + rows)
            chained = model(tokens, positions)
            model.chain = None
            plain = model(tokens, positions)  # the same positions again: the same keys and values
            model.chain = chain
            assert torch.equal(chained, plain), (arch, rows)
            pos += rows


def test_greedy_generation_is_the_same_with_and_without_the_chain(tmp_path):
    engine = _blocks_engine(tmp_path, "gemma3")
    prompt = [2, *range(6, 40)]
    options = GenerateOptions(max_new_tokens=24, reuse_prompt=False, stop_ids=frozenset())
    chained = engine.generate(prompt, options)
    engine.model.chain = None
    plain = engine.generate(prompt, options)
    assert chained.tokens == plain.tokens and len(plain.tokens) == 24


def test_new_caches_drop_the_chain(tmp_path):
    model = _blocks_engine(tmp_path, "gemma3").model
    assert model.chain is not None
    model.setup_cache(256)  # new caches and norm scales: the chain named the old ones
    assert model.chain is None and chain_for(model) is not None


def test_rows_past_the_cache_are_refused_not_written(tmp_path):
    model = _blocks_engine(tmp_path, "gemma3").model
    with torch.inference_mode(), pytest.raises(ValueError, match="exceed the cache"):
        model.hidden(torch.tensor([[5, 6, 7]]), model.max_len - 2)
