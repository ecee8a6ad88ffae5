"""Native products over GGUF block formats (kernels/gguf.c) against `gguf.quants` dequantization followed by a
float product, on random blocks including edge values, for 1 to 16 input rows."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import dequantize

from codegemma import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels unavailable: "
                                + kernels.unavailable_reason())

FORMATS = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.F16, Q.BF16, Q.F32]
# byte offsets of each format's fp16 scale fields inside a block: random bytes there could be inf or NaN
_HALF_FIELDS = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q4_K: [0, 2],
                Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def random_blocks(qtype: Q, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Raw bytes [rows, row bytes] of random blocks: every quantized value possible, scales finite and of
    both signs, with the edge values (0, largest magnitude, subnormal) among them."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, k // block, size), dtype=np.uint8)
    if qtype in _HALF_FIELDS:
        halves = rng.uniform(-0.05, 0.05, size=(rows, k // block)).astype(np.float16)
        halves.flat[:4] = [0.0, 6.0e-8, -0.05, 65504.0 / 1e6]  # zero, subnormal, both signs
        for offset in _HALF_FIELDS[qtype]:
            raw[:, :, offset:offset + 2] = halves.view(np.uint8).reshape(rows, -1, 2)
    elif qtype == Q.F16:
        values = rng.standard_normal((rows, k)).astype(np.float16)
        values.flat[:3] = [0.0, 65504.0, -6.0e-8]
        raw = values.view(np.uint8).reshape(rows, -1, size)
    elif qtype in (Q.BF16, Q.F32):
        values = rng.standard_normal((rows, k)).astype(np.float32)
        values.flat[:2] = [0.0, -3.0e38 if qtype == Q.F32 else 1e30]
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8) if qtype == Q.BF16 else values.view(np.uint8)
        raw = raw.reshape(rows, -1, size)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_products_match_dequantized_reference(qtype):
    rng = np.random.default_rng(int(qtype))
    n, k = 37, 512  # an odd row count: thread splits and the last rows differ from the rest
    raw = random_blocks(qtype, n, k, rng)
    w = torch.from_numpy(dequantize(raw, qtype).astype(np.float64))  # [n, k]
    if qtype in (Q.F32, Q.BF16):
        w[0, :2] = 0.0  # keep the huge edge values out of the float64 reference sum below
        raw = raw.copy()
        raw[0, :2 * GGML_QUANT_SIZES[qtype][1]] = 0
    weights = kernels.GGUFWeights([torch.from_numpy(raw)], [int(qtype)], k)
    x = torch.randn(16, k)
    x[0, :32] = 0.0  # an all-zero unit
    want = x.double() @ w.t()  # [16, n]
    got = weights(x)
    scale = (x.double().abs() @ w.abs().t()).clamp_min(1e-6)
    assert ((got.double() - want).abs() / scale).max() < 2e-4, qtype.name
    # a row's result does not depend on how many rows go with it
    for m in (1, 2, 5, 16):
        assert torch.equal(weights(x[:m]), got[:m])
    assert torch.equal(weights(x[7:8]), got[7:8])


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_dequantize_matches_gguf(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    n, k = 9, 256
    raw = torch.from_numpy(random_blocks(qtype, n, k, rng))
    out = torch.empty(4, k)
    kernels.gguf_dequantize(raw, int(qtype), k, 3, 4, out)
    want = torch.from_numpy(dequantize(raw.numpy(), qtype)[3:7].astype(np.float32))
    assert torch.allclose(out, want, rtol=1e-6, atol=1e-30, equal_nan=True)
    # into bfloat16 (prefill tiles where the CPU multiplies bfloat16): the float32 values rounded as torch does
    half = torch.empty(4, k, dtype=torch.bfloat16)
    kernels.gguf_dequantize(raw, int(qtype), k, 3, 4, half)
    assert torch.equal(half, out.to(torch.bfloat16))


def test_mixed_formats_fused_with_glu():
    rng = np.random.default_rng(7)
    k = 256
    gate, up = random_blocks(Q.Q4_K, 16, k, rng), random_blocks(Q.Q6_K, 16, k, rng)
    weights = kernels.GGUFWeights([torch.from_numpy(gate), torch.from_numpy(up)], [int(Q.Q4_K), int(Q.Q6_K)], k)
    x = torch.randn(3, k)
    both = weights(x)  # [3, 32]: the Q4_K gate rows, then the Q6_K up rows
    want = torch.cat([x @ torch.from_numpy(dequantize(gate, Q.Q4_K)).t(), x @ torch.from_numpy(dequantize(up, Q.Q6_K)).t()], -1)
    scale = x.abs() @ torch.cat([torch.from_numpy(dequantize(m, t)) for m, t in ((gate, Q.Q4_K), (up, Q.Q6_K))]).abs().t()
    assert ((both - want).abs() / scale.clamp_min(1e-6)).max() < 2e-4  # a zero scale: an all-zero block
    g, u = both.chunk(2, -1)
    # gelu's tanh comes from exp in the kernel: ~1e-7 apart, times the up values
    want = torch.nn.functional.gelu(g, approximate="tanh") * u
    assert torch.allclose(weights(x, glu=True), want, rtol=1e-4, atol=1e-6 * float(u.abs().max()))
    assert weights(x.bfloat16(), torch.bfloat16).dtype == torch.bfloat16


def test_bad_shapes_are_refused():
    raw = torch.zeros(4, 34, dtype=torch.uint8)
    with pytest.raises(ValueError, match="bytes"):
        kernels.GGUFWeights([raw], [int(Q.Q4_0)], 32)  # Q4_0 rows of 32 weights are 18 bytes, not 34
    weights = kernels.GGUFWeights([raw], [int(Q.Q8_0)], 32)
    with pytest.raises(ValueError, match="refused"):
        weights(torch.zeros(17, 32))  # more rows than the native products take



def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next(l for l in f if l.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


_PRODUCT = """
import sys, numpy as np, torch
from codegemma import kernels
raw, x = np.load(sys.argv[1]), torch.from_numpy(np.load(sys.argv[2]))
print(kernels.amx())
np.save(sys.argv[3], kernels.GGUFWeights([torch.from_numpy(raw)], [8], x.shape[1])(x).numpy())
"""


def _kernel_supports_tiles() -> bool:
    """Whether Linux offers AMX tile state (ARCH_GET_XCOMP_SUPP, bit 18: XTILEDATA; Linux 5.16 and later)."""
    if platform.machine() != "x86_64":
        return False
    mask = ctypes.c_uint64()
    return ctypes.CDLL(None).syscall(158, 0x1021, ctypes.byref(mask)) == 0 and bool(mask.value >> 18 & 1)


@pytest.mark.skipif("amx_int8" not in _cpu_flags() or not _kernel_supports_tiles(),
                    reason="this CPU or kernel offers no AMX")
@pytest.mark.skipif(os.environ.get("CODEGEMMA_AMX", "1") == "0", reason="AMX turned off (CODEGEMMA_AMX=0)")
def test_q8_0_products_use_amx_where_the_cpu_has_it(tmp_path):
    # A silent fallback would keep every result right and lose the speed. The AVX-512 path (CODEGEMMA_AMX=0)
    # gives the same products to float rounding; the choice holds for a process, so it runs in its own.
    assert kernels.amx()
    rng = np.random.default_rng(3)
    n, k = 53, 640
    raw = random_blocks(Q.Q8_0, n, k, rng)
    x = torch.randn(9, k)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "x.npy", x.numpy())
    env = {**os.environ, "CODEGEMMA_AMX": "0"}
    run = subprocess.run([sys.executable, "-c", _PRODUCT, *(str(tmp_path / f) for f in ("raw.npy", "x.npy", "y.npy"))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["False"], run.stderr
    other = torch.from_numpy(np.load(tmp_path / "y.npy"))
    got = kernels.GGUFWeights([torch.from_numpy(raw)], [int(Q.Q8_0)], k)(x)
    w = torch.from_numpy(dequantize(raw, Q.Q8_0).astype(np.float64))
    scale = (x.double().abs() @ w.abs().t()).clamp_min(1e-6)
    assert ((got.double() - other.double()).abs() / scale).max() < 1e-5
