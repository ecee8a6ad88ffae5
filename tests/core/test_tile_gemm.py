"""Prefill products on AMX tiles (kernels/gemm.c): right to bfloat16 rounding, and each row's result the
same whatever rows it is computed with, so a pass's blocks can share one product and prompt reuse stays
bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from codegemma import kernels
from codegemma.linear import FusedLinear
from tests.core.test_gguf_kernels import random_blocks

pytestmark = pytest.mark.skipif(not kernels.tile_gemm(), reason="no AMX tile products on this CPU or build")


def _product(x: torch.Tensor, w: torch.Tensor, width: int, col: int) -> torch.Tensor:
    """x . w^T written into columns col.. of a wider result (rows apart by `width`), as prefill does."""
    out = torch.full((x.shape[0], width), float("nan"), dtype=torch.bfloat16)
    kernels.tile_product(kernels.PackedRows(x), w, out[:, col:col + w.shape[0]])
    assert out[:, :col].isnan().all() and out[:, col + w.shape[0]:].isnan().all()  # nothing written outside
    return out[:, col:col + w.shape[0]]


@pytest.mark.parametrize("m, n, k", [(1, 32, 32), (77, 45, 96), (130, 70, 640), (16, 17, 64)])
def test_tile_products_match_a_float_reference(m, n, k):
    gen = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = (torch.randn(n, k, generator=gen) * 0.1).bfloat16()
    got = _product(x, w, n + 9, 5).double()
    ref = x.double() @ w.double().t()
    # float32 sums rounded once to bfloat16: within a bfloat16 step of the magnitude summed
    bound = (x.double().abs() @ w.double().abs().t()) * 2 ** -7 + 1e-6
    assert ((got - ref).abs() <= bound).all()


def test_a_rows_result_does_not_depend_on_its_companions():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(101, 192, generator=gen).bfloat16()
    w = (torch.randn(83, 192, generator=gen) * 0.1).bfloat16()
    whole = _product(x, w, 83, 0)
    for bounds in ([0, 1, 101], [0, 16, 33, 64, 101], [0, 50, 51, 100, 101]):
        parts = [_product(x[lo:hi].contiguous(), w, 83, 0) for lo, hi in zip(bounds, bounds[1:])]
        assert torch.equal(torch.cat(parts), whole)


def test_float32_rows_and_sums():
    """float32 rows are rounded to bfloat16 as they are packed, and float32 sums come out unrounded."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 96, generator=gen)
    w = (torch.randn(50, 96, generator=gen) * 0.1).bfloat16()
    sums = torch.empty(40, 50)
    kernels.tile_product(kernels.PackedRows(x), w, sums)
    rounded = _product(x.bfloat16(), w, 50, 0)
    assert torch.equal(sums.bfloat16(), rounded)
    assert not torch.equal(sums, rounded.float())
    gate_up = torch.randn(3, 7, 64, generator=gen)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.allclose(kernels.geglu(gate_up), torch.nn.functional.gelu(gate, approximate="tanh") * up, atol=1e-6)


def test_fused_bf16_weights_take_prefill_blocks_in_one_product():
    gen = torch.Generator().manual_seed(2)
    weights = [(torch.randn(n, 128, generator=gen) * 0.1).bfloat16() for n in (64, 32, 32)]
    linear = FusedLinear(weights)
    blocks = [torch.randn(1, s, 128, generator=gen).bfloat16() for s in (64, 64, 23)]
    together = linear.torch_products(blocks)
    for block, got in zip(blocks, together):
        assert got.shape == (1, block.shape[1], 128) and got.dtype == torch.bfloat16
        assert torch.equal(got, linear.torch_products([block])[0])
        ref = block.double() @ torch.cat(weights).double().t()
        assert (got.double() - ref).abs().max() < 0.05


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_gguf_rows_dequantized_inside_the_product_give_the_same_bits(qtype):
    """A GGUF matrix multiplied with its rows dequantized 32 at a time inside the product equals the product
    with the matrix dequantized first (53 rows: a last block of 21)."""
    raw = torch.from_numpy(random_blocks(qtype, 53, 256, np.random.default_rng(int(qtype))))
    x = torch.randn(37, 256, generator=torch.Generator().manual_seed(4))
    rows = kernels.PackedRows(x)
    w = kernels.gguf_dequantize(raw, int(qtype), 256, 0, 53, torch.empty(53, 256, dtype=torch.bfloat16))
    first, fused = torch.empty(37, 53), torch.empty(37, 53)
    kernels.tile_product(rows, w, first)
    kernels.gguf_tile_product(rows, raw, int(qtype), fused)
    assert torch.equal(first, fused) and first.isfinite().all()


def test_bad_shapes_are_refused():
    x = torch.randn(4, 64).bfloat16()
    with pytest.raises(ValueError):
        kernels.PackedRows(torch.randn(4, 40).bfloat16())  # K not a multiple of 32
    with pytest.raises(ValueError):
        kernels.PackedRows(x.double())
    rows = kernels.PackedRows(x)
    with pytest.raises(ValueError):
        kernels.tile_product(rows, torch.randn(8, 32).bfloat16(), torch.empty(4, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError):
        kernels.tile_product(rows, torch.randn(8, 64).bfloat16(), torch.empty(3, 8, dtype=torch.bfloat16))
    raw = torch.from_numpy(random_blocks(Q.Q8_0, 8, 64, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="do not match"):
        kernels.gguf_tile_product(rows, raw, int(Q.Q4_K), torch.empty(4, 8))  # rows of another format's size
    with pytest.raises(ValueError, match="do not match"):
        kernels.gguf_tile_product(rows, raw, int(Q.Q8_0), torch.empty(4, 9))
    out = torch.empty(4, 8)
    kernels.gguf_tile_product(rows, raw, int(Q.Q8_0), out)  # the same objects, right: still works
    assert out.isfinite().all()
