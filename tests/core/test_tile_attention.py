"""Prefill attention on AMX tiles (kernels/attention.c): each row's result the same whatever rows it is computed
with (prompt reuse resumes anywhere), close to the float32 attention (bfloat16 operands), and never reading
cache positions that were not written."""

from __future__ import annotations

import pytest
import torch

from codegemma import kernels
from codegemma.model import rope_tables

pytestmark = pytest.mark.skipif(not kernels.tile_gemm(), reason="no AMX tiles on this CPU or build")

MAX_LEN = 320


def _attention(qkv: torch.Tensor, start: int, caches: tuple[torch.Tensor, torch.Tensor], heads: tuple[int, int, int],
               window: int | None, softcap: float | None, qk_scale: torch.Tensor | None, tiles: bool) -> torch.Tensor:
    H, KV, D = heads
    cos, sin = (t.to(qkv.dtype) for t in rope_tables(D, 10000.0, MAX_LEN))
    S = qkv.shape[1]
    args = (qkv, H, KV, D, start, *caches, cos[start:start + S], sin[start:start + S], qk_scale, D ** -0.5, softcap,
            window, 1e-6)
    if not tiles:
        return kernels.attention(*args)
    with kernels.row_wise():
        return kernels.attention(*args)


@pytest.mark.parametrize("heads, window, softcap, qk_norm, dtype", [
    ((4, 1, 64), None, None, True, torch.float32),   # Gemma 3 270M's shape, smaller: 4 query heads on 1 KV head
    ((4, 1, 64), 40, None, True, torch.float32),     # a sliding layer
    ((4, 2, 32), None, 50.0, False, torch.float32),  # Gemma 2: grouped heads, logits soft-capped, no q/k norms
    ((4, 1, 64), 40, None, True, torch.bfloat16),    # a bf16 checkpoint's caches
])
def test_tile_attention_rows_are_apart_and_close_to_the_row_kernel(heads, window, softcap, qk_norm, dtype):
    H, KV, D = heads
    gen = torch.Generator().manual_seed(H * D + (window or 0))
    S = 230
    qkv = (torch.randn(1, S, (H + 2 * KV) * D, generator=gen) * 2).to(dtype)
    qk_scale = (1 + 0.1 * torch.randn(H + KV, D, generator=gen)) if qk_norm else None

    def caches() -> tuple[torch.Tensor, torch.Tensor]:
        # NaN wherever nothing was written: a position past the pass read by mistake would poison its rows
        return tuple(torch.full((1, KV, MAX_LEN, D), float("nan"), dtype=dtype) for _ in range(2))

    whole_caches = caches()
    whole = _attention(qkv, 0, whole_caches, heads, window, softcap, qk_scale, tiles=True)
    assert whole.isfinite().all()

    split_caches, parts, lo = caches(), [], 0
    for n in (1, 7, 16, 17, 33, 64, 92):  # passes of every kind of size, starting anywhere
        parts.append(_attention(qkv[:, lo:lo + n], lo, split_caches, heads, window, softcap, qk_scale, tiles=True))
        lo += n
    assert lo == S and torch.equal(torch.cat(parts, 1), whole)
    assert torch.equal(split_caches[0][:, :, :S], whole_caches[0][:, :, :S])

    ref = _attention(qkv, 0, caches(), heads, window, softcap, qk_scale, tiles=False).float()  # a row at a time
    whole = whole.float()
    error = (whole - ref).norm() / ref.norm()
    assert error < 0.02, f"relative error {error:.4f}: more than bfloat16 operands explain"
    assert (whole - ref).abs().max() < 0.05 * ref.abs().max()
