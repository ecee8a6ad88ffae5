"""The native decode operations (codegemma.kernels) against the PyTorch path they replace."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codegemma import kernels
from codegemma.linear import FusedLinear, use_native
from codegemma.quant import quantize_int8, quantize_rows
from tests.tiny import random_model, tiny_config

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"native kernels: {kernels.unavailable_reason()}")


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    err = (got.float() - want.float()).abs().max().item()
    assert err <= rel * want.float().abs().max().item(), err


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_products_match_torch(wdtype, rows):
    gen = torch.Generator().manual_seed(rows)
    # K with a tail past the 32/64-element blocks, N not a multiple of the four-row blocks, two matrices
    mats = [torch.randn(37, 200, generator=gen), torch.randn(6, 200, generator=gen)]
    x = torch.randn(rows, 200, generator=gen)
    if wdtype == torch.int8:
        q = [quantize_rows(m) for m in mats]
        native = kernels.Weights([a for a, _ in q], [s for _, s in q])
        want = x @ torch.cat([a.float() * s[:, None] for a, s in q]).T
        rel = 1e-3  # activations enter as 16-bit fixed point per block of 64
    else:
        native = kernels.Weights([m.to(wdtype) for m in mats])
        want = x @ torch.cat([m.to(wdtype).float() for m in mats]).T
        rel = 1e-5
    _close(native(x), want, rel)
    _close(native(x.bfloat16()), x.bfloat16().float() @ native_weights_f32(native).T, 1e-2)  # bf16 in and out
    # a row's result does not depend on the rows computed with it
    assert torch.equal(native(x)[rows - 1:], native(x[rows - 1:]))



def test_bf16_rows_by_bf16_weights_are_row_independent():
    # K a multiple of 32 and bf16 both sides: the path AMX machines take (tiles, float32 sums in the tile);
    # 37 + 21 rows leave blocks of 16 and 32 short in each thread's share
    gen = torch.Generator().manual_seed(7)
    mats = [torch.randn(37, 96, generator=gen).bfloat16(), torch.randn(21, 96, generator=gen).bfloat16()]
    native = kernels.Weights(mats)
    x = torch.randn(16, 96, generator=gen).bfloat16()
    full = native(x, torch.float32)
    _close(full, x.float() @ torch.cat(mats).float().T, 1e-5)
    for m in (1, 2, 9):
        assert torch.equal(native(x[:m], torch.float32), full[:m])
    assert torch.equal(native(x[11:12], torch.float32), full[11:12])

def native_weights_f32(native: kernels.Weights) -> torch.Tensor:
    if native.scales is None:
        return torch.cat([m.float() for m in native.mats])
    return torch.cat([m.float() * s[:, None] for m, s in zip(native.mats, native.scales)])


def test_glu_matches_torch_geglu():
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(64, 96, generator=gen), torch.randn(64, 96, generator=gen)
    lin = FusedLinear([gate.bfloat16(), up.bfloat16()])
    x = torch.randn(2, 96, generator=gen).bfloat16()
    got = lin(x, glu=True)
    with kernels.disabled():
        want = lin(x, glu=True)
    assert got.shape == want.shape == (2, 64) and got.dtype == torch.bfloat16
    _close(got, want, 2e-2)  # bf16 rounding of different accumulation orders


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_norm_matches_torch_and_rows_stand_alone(dtype):
    """The native residual norm against PyTorch's, over a prefill-sized pass (both threads take rows), and
    each row bit for bit what it is alone (prefill passes of any size go through it)."""
    from codegemma.model import RMSNorm, add_norm

    gen = torch.Generator().manual_seed(0)
    post, out = RMSNorm(56, 1e-6), RMSNorm(56, 1e-6)  # 3 vectors of 16 and a scalar tail
    for n in (post, out):
        n.weight.data = torch.randn(56, generator=gen) * 0.1
        n.freeze()
    x, h = (torch.randn(1, 37, 56, generator=gen).to(dtype) for _ in range(2))
    for p, o in [(post, out), (None, out), (post, None), (None, None)]:
        got = add_norm(x, h, p, o)
        with kernels.disabled():
            want = add_norm(x, h, p, o)
        _close(got[0], want[0], 1e-6 if dtype == torch.float32 else 1e-2)
        assert (got[1] is None) == (want[1] is None)
        if got[1] is not None:
            _close(got[1], want[1], 1e-5 if dtype == torch.float32 else 1e-2)
        for i in (0, 17, 36):
            alone = add_norm(x[:, i:i + 1], h[:, i:i + 1], p, o)
            assert torch.equal(alone[0], got[0][:, i:i + 1])
            assert got[1] is None or torch.equal(alone[1], got[1][:, i:i + 1])


@pytest.mark.parametrize("head_dim", [16, 128, 256])
@pytest.mark.parametrize("window,softcap", [(None, None), (21, None), (None, 50.0)])
def test_attention_matches_softmax_and_rows_stand_alone(head_dim, window, softcap):
    """Native attention over a float32 cache (no q/k norm, RoPE at angle 0) against softmax(q k^T) v on the
    positions each row sees, for rows starting off a 16-key group; and a row's output is bit for bit the same
    whether it is computed alone or with 8 others (speculative verification relies on it)."""
    gen = torch.Generator().manual_seed(head_dim)
    H, KV, D, L, start, S = 4, 2, head_dim, 96, 37, 9
    keys, values = torch.randn(1, KV, L, D, generator=gen), torch.randn(1, KV, L, D, generator=gen)
    qkv = torch.randn(1, S, (H + 2 * KV) * D, generator=gen)
    cos, sin = torch.ones(L, D), torch.zeros(L, D)

    def run(alone: bool) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = keys.clone(), values.clone()
        calls = [(i, qkv[:, i:i + 1]) for i in range(S)] if alone else [(0, qkv)]
        outs = [kernels.attention(rows, H, KV, D, start + i, k, v, cos[start + i:], sin[start + i:], None,
                                  D ** -0.5, softcap, window, 1e-6) for i, rows in calls]
        return torch.cat(outs, dim=1), k

    (together, k), (alone, _) = run(False), run(True)
    q = qkv.view(S, H + 2 * KV, D)
    for s in range(S):
        pos = start + s
        lo = max(0, pos - window + 1) if window else 0
        for h in range(H):
            scores = k[0, h // (H // KV), lo:pos + 1] @ q[s, h] * D ** -0.5
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            want = torch.softmax(scores, -1) @ values.clone().index_copy_(
                2, torch.arange(start, start + S), q[:, H + KV:].permute(1, 0, 2)[None])[0, h // (H // KV), lo:pos + 1]
            got = together[0, s, h * D:(h + 1) * D]
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (s, h, (got - want).abs().max())
    assert torch.equal(alone, together)


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
@pytest.mark.parametrize("mode", ["fp32", "bf16", "int8"])
def test_decoding_matches_torch_path(arch, mode):
    """Prefill past the sliding window, then decode and verify a few tokens at a time: the native path
    (attention with soft-caps, windows and q/k norms; fused products; residual norms) gives the logits and
    the KV cache of the PyTorch path."""
    dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    tokens = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))

    def run(native: bool):
        model = random_model(tiny_config(arch, 256), seed=1, dtype=dtype)
        model.setup_cache(64)
        if mode == "int8":
            quantize_int8(model)
        else:
            use_native(model)
        with torch.inference_mode():
            model(tokens[:, :20], torch.arange(20))  # 20 rows: the PyTorch path either way
            with contextlib.nullcontext() if native else kernels.disabled():
                steps = [model(tokens[:, i:i + 1], torch.tensor([i])) for i in range(20, 30)]
                steps.append(model(tokens[:, 30:40], torch.arange(30, 40)))  # a verify-sized block
        caches = torch.cat([layer.self_attn.kv_cache.k[:, :, :40] for layer in model.model.layers])
        return torch.cat(steps, dim=1), caches

    (got, got_k), (want, want_k) = run(True), run(False)
    rel = {"fp32": 1e-5, "bf16": 3e-2, "int8": 3e-2}[mode]
    _close(got, want, rel)
    _close(got_k, want_k, rel)
    if mode != "fp32":  # bf16 rounding may flip a near tie now and then, but not most greedy choices
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    else:
        assert torch.equal(got.argmax(-1), want.argmax(-1))


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from the repository root (so it can import `tests.tiny`)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_disabled_or_unbuildable_falls_back_to_torch(tmp_path):
    code = ("from codegemma import GenerateOptions, kernels\nfrom tests import tiny\n"
            "print(kernels.available(), kernels.unavailable_reason()[:40])\n"
            "e = tiny.tiny_engine(); print(len(e.generate(e.tokenizer.encode('def f('), GenerateOptions(max_new_tokens=3)).tokens))")
    off = _python(code, CODEGEMMA_KERNELS="0")
    assert off.returncode == 0 and off.stdout.splitlines() == ["False disabled", "3"], off.stderr
    broken = _python(code, CC="/bin/false", CODEGEMMA_CACHE=str(tmp_path))
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.startswith("False /bin/false failed") and broken.stdout.endswith("3\n")


def test_library_is_built_once_per_source(tmp_path):
    code = "from codegemma import kernels; print(kernels.available())"
    for _ in range(2):
        assert _python(code, CODEGEMMA_CACHE=str(tmp_path)).stdout == "True\n"
    built = list((tmp_path / "kernels").glob("ops-*.so"))
    assert len(built) == 1
    assert not list((tmp_path / "kernels").glob("*.tmp"))
    built[0].write_bytes(b"damaged")  # a damaged cached library is built again, not given up on
    assert _python(code, CODEGEMMA_CACHE=str(tmp_path)).stdout == "True\n"


def test_prefill_products_inside_and_outside_inference_mode():
    """bf16 prefill products widen weights into a buffer reused per thread; it must serve both modes in any
    order (a fresh thread, so that its first product runs in inference mode)."""
    lin = FusedLinear([torch.randn(8, 32).bfloat16()])
    x = torch.randn(kernels.MAX_ROWS + 4, 32).bfloat16()  # more rows than the native products take
    results = []

    def run():
        with torch.inference_mode():
            first = lin(x)
        results.extend([first, lin(x)])
        with torch.inference_mode():
            results.append(lin(x))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(results) == 3 and all(torch.equal(r, results[0]) for r in results)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 targets")
def test_portable_build_without_avx512_matches_torch(tmp_path):
    """The plain-C loops (CPUs without AVX-512) against the PyTorch path: this file's comparisons, run
    with the library built for x86-64-v2."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "products_match or glu or residual or decoding_matches"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CODEGEMMA_KERNELS_MARCH": "x86-64-v2", "CODEGEMMA_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "skipped" not in proc.stdout and "passed" in proc.stdout, proc.stdout[-2000:]  # the build loaded
    assert list((tmp_path / "kernels").glob("ops-*.so"))

