"""Native operations for CPU decoding (ops.c; gguf.c for GGUF block formats), compiled on first use and
called through ctypes.

The library is built once per source, compiler flags and CPU into ~/.cache/codegemma/kernels with the
system C compiler (`cc`, or $CC), `-march=native` and OpenMP. It links against the libgomp PyTorch already
loaded (same soname), so it shares PyTorch's thread pool and `torch.set_num_threads`. Where no compiler is
found, the build fails or CODEGEMMA_KERNELS=0 is set, `available()` is False and the model uses PyTorch's
operations instead: the results agree to float32 rounding either way.

They are used for at most MAX_ROWS token rows (decoding, speculative verification). Prefill blocks of 64
go through PyTorch's matrix-matrix products, except where the CPU has AMX: there a prefill pass runs
`row_wise`, its products as one tile product (gemm.c) and its attention on tiles too (attention.c), each row
computed so that its result does not depend on the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

SOURCES = [Path(__file__).with_name(name) for name in ("ops.c", "gguf.c", "chain.c", "gemm.c", "attention.c")]
HEADERS = [Path(__file__).with_name(name) for name in ("numerics.h", "amx.h", "tiles.h")]
MAX_ROWS = 16
# CODEGEMMA_KERNELS_MARCH: the -march target (default native); e.g. x86-64-v2 for a build without AVX-512
# that may move between machines (the plain-C loops then run)
FLAGS = ["-O3", f"-march={os.environ.get('CODEGEMMA_KERNELS_MARCH', 'native')}", "-fopenmp", "-shared", "-fPIC",
         "-std=c11"]
_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
_lib: ctypes.CDLL | None | bool = None  # None: not tried yet; False: unavailable
_error = ""
_disabled = 0


class _Depth(threading.local):
    depth = 0


_row_wise = _Depth()  # per thread: a server's decoding thread is not affected by another's prefill
_amx = False
_build_lock = threading.Lock()  # server threads may ask at once; one builds, the others wait for it


def cache_dir() -> Path:
    return Path(os.environ.get("CODEGEMMA_CACHE", Path.home() / ".cache" / "codegemma")) / "kernels"


def _cpu_id() -> str:
    try:  # the same binary must not move to a CPU without the instructions -march=native chose
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return flags


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc, gcc or $CC) found")
    text = [s.read_text() for s in SOURCES + HEADERS]
    key = hashlib.sha256("\0".join([*text, cc, *FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"ops-{key}.so"
    if out.is_file():
        # Checked before dlopen: a truncated library is not an error there but a SIGBUS on first use.
        damage = _damage(out)
        if damage is None:
            try:
                return _bind(ctypes.CDLL(str(out)))
            except OSError as error:
                damage = str(error).splitlines()[0]
        if damage:
            print(f"codegemma: the cached kernels {out} are damaged ({damage}); rebuilding them", file=sys.stderr)
        out.unlink(missing_ok=True)
    return _compile(cc, out)


def _damage(library: Path) -> str | None:
    """None when `library` matches the checksum written beside it; "" when there is no checksum (a build
    from before checksums: rebuilt quietly); else what is wrong."""
    try:
        expected = library.with_suffix(".sha256").read_text().strip()
    except OSError:
        return ""
    return None if hashlib.sha256(library.read_bytes()).hexdigest() == expected else "checksum mismatch"


def _compile(cc: str, out: Path) -> ctypes.CDLL:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    try:
        proc = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", str(tmp), "-lm"], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise OSError(f"{cc} took more than 300 s") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OSError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    _commit(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
    checksum = out.with_suffix(f".{os.getpid()}.sha256.tmp")
    checksum.write_text(digest + "\n")
    _commit(checksum, out.with_suffix(".sha256"))
    return _bind(ctypes.CDLL(str(out)))


def _commit(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file into place, its bytes on disk first."""
    descriptor = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(tmp, path)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i, i64, f, p = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.cg_linear.restype = i
    lib.cg_linear.argtypes = [i, p, p, p, i, p, i, i64, p, i, i, i, i]
    lib.cg_add_norm.restype = i
    lib.cg_add_norm.argtypes = [i, i, i, f, p, p, p, p, p, p]
    lib.cg_attention.restype = i
    lib.cg_attention.argtypes = [i, i, i, i, i, i64, i64, i, f, f, f, p, p, p, p, p, p, p, i]
    lib.cg_lora.restype = i
    lib.cg_lora.argtypes = [i, i, i64, i, p, i, p, p, f, p, i, i64, p, i, p, i]
    lib.cg_row_bytes.restype = i64
    lib.cg_row_bytes.argtypes = [i, i64]
    lib.cg_gguf_linear.restype = i
    lib.cg_gguf_linear.argtypes = [i, p, p, p, p, i, i64, p, i, i, i64, i]
    lib.cg_gguf_dequantize.restype = i
    lib.cg_gguf_dequantize.argtypes = [p, i, i64, i64, i64, p, i]
    lib.cg_gguf_layers.restype = i
    lib.cg_gguf_layers.argtypes = [p, i, p, i, i64, p, p, p, p]
    lib.cg_amx.restype = i
    lib.cg_amx.argtypes = [i]
    lib.cg_bf16_gemm_ready.restype = i
    lib.cg_bf16_gemm_ready.argtypes = []
    lib.cg_bf16_packed_size.restype = i64
    lib.cg_bf16_packed_size.argtypes = [i64, i]
    lib.cg_bf16_pack.restype = None
    lib.cg_bf16_pack.argtypes = [p, i, i64, i64, i, p]
    lib.cg_bf16_gemm.restype = i
    lib.cg_bf16_gemm.argtypes = [p, i64, i, p, i64, p, i, i64]
    lib.cg_gguf_tile_gemm.restype = i
    lib.cg_gguf_tile_gemm.argtypes = [p, i64, i, p, i, i64, p, i, i64]
    lib.cg_geglu.restype = None
    lib.cg_geglu.argtypes = [p, i, i64, p, i]
    # Products of several rows on AMX tiles where the CPU and kernel allow (CODEGEMMA_AMX=0: never).
    # Decided here, once per process, before any product: the two paths round differently.
    global _amx
    _amx = bool(lib.cg_amx(int(os.environ.get("CODEGEMMA_AMX", "1") != "0")))
    return lib


def available() -> bool:
    """True when the native products are built and loaded (building them on the first call)."""
    global _lib, _error
    if _lib is None:
        with _build_lock:
            if _lib is None:
                _lib, _error = _load()
    return bool(_lib)


def _load() -> tuple[ctypes.CDLL | bool, str]:
    if not sys.platform.startswith("linux"):
        return False, "Linux only"
    if os.environ.get("CODEGEMMA_KERNELS", "1") == "0":
        return False, "disabled"
    try:
        return _build(), ""
    except OSError as e:
        return False, str(e)


def amx() -> bool:
    """True when the GGUF (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K) and bfloat16 products of several rows run on AMX
    tiles (Sapphire Rapids and later; amx.h, ops.c)."""
    return available() and _amx


def tile_gemm() -> bool:
    """True when prefill products run on AMX tiles (gemm.c): one product for all the rows of a pass, each row
    computed as it would be alone (not inside `disabled()`)."""
    return not _disabled and amx() and _tiles_ready()


@functools.cache  # asked for every prefill product; decided once per process, as AMX is
def _tiles_ready() -> bool:
    return bool(_lib.cg_bf16_gemm_ready())


def unavailable_reason() -> str:
    available()
    return _error


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the PyTorch operations instead, e.g. to compare the two."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


@contextlib.contextmanager
def row_wise() -> Iterator[None]:
    """In this thread, run every operation on the path whose result for a row does not depend on the other
    rows of the call, however few they are: the many-row products (the tile products, where
    `Transformer.rows_apart`), the native residual norms (`norms`: every row alone in any pass) and the
    native attention, a row at a time (`row_wise_attention`). A prefill pass so computed gives every
    position the same KV whatever pass it was in, so prefill may start after any reused prefix."""
    _row_wise.depth += 1
    try:
        yield
    finally:
        _row_wise.depth -= 1


def row_wise_attention() -> bool:
    """Whether attention takes the native kernel, each row alone, whatever the number of rows (`row_wise`)."""
    return bool(_row_wise.depth) and available()


def active(x: Tensor) -> bool:
    """Whether the native operations take this activation [..., D]: few rows, float32 or bfloat16, CPU
    (not inside `row_wise`)."""
    return (not _disabled and x.numel() <= MAX_ROWS * x.shape[-1] and x.dtype in (torch.float32, torch.bfloat16)
            and x.device.type == "cpu" and not _row_wise.depth and available())


def norms(x: Tensor) -> bool:
    """Whether the native residual norms (`add_norm`) take this activation [..., D]: float32 or bfloat16 on
    the CPU, any number of rows, in a `row_wise` pass too (each row is computed on its own); not where a
    gradient must flow through them (adapter training)."""
    return (not _disabled and x.dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu"
            and not x.requires_grad and available())


@functools.cache  # asked on every prefill product; the CPU does not change
def slow_bf16_gemm() -> bool:
    """True on CPUs without AVX-512 BF16 / AMX, where PyTorch's bf16 matrix-matrix product runs ~3x slower
    than widening both sides to float32 and multiplying those (same products, float32 accumulation)."""
    return not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def add_norm(x: Tensor, h: Tensor | None, post_scale: Tensor | None, out_scale: Tensor | None,
             eps: float) -> tuple[Tensor, Tensor | None]:
    """(x + post(h), RMSNorm(x + post(h))) for activations [..., D]; post is an RMSNorm with post_scale or
    the identity; the scales are float32 (1 + w); either part can be left out (h None, out_scale None)."""
    x = x.contiguous()
    h = None if h is None else h.contiguous()
    x_out = torch.empty_like(x) if h is not None else None
    y = torch.empty_like(x) if out_scale is not None else None
    rc = _lib.cg_add_norm(_TYPES[x.dtype], x.numel() // x.shape[-1], x.shape[-1], eps, x.data_ptr(), _ptr(h),
                          _ptr(post_scale), _ptr(out_scale), _ptr(x_out), _ptr(y))
    if rc != 0:
        raise MemoryError("out of memory in the native residual norm")
    return (x if x_out is None else x_out), y


def attention(qkv: Tensor, n_heads: int, n_kv: int, head_dim: int, start: int, k_cache: Tensor,
              v_cache: Tensor, cos: Tensor, sin: Tensor, qk_scale: Tensor | None, q_scale: float,
              softcap: float | None, window: int | None, eps: float) -> Tensor:
    """qkv [1, S, (H + 2 KV) * D] at positions start.. -> attention output [1, S, H * D]; writes k and v into
    the caches [1, KV, max_len, D]. See cg_attention in ops.c. Inside `row_wise` (a prefill pass) it takes
    the AMX tiles where there are any (attention.c: bfloat16 operands, each row alone)."""
    S = qkv.shape[1]
    qkv = qkv.contiguous()
    out = torch.empty(1, S, n_heads * head_dim, dtype=qkv.dtype)
    tiles = bool(_row_wise.depth) and tile_gemm()
    rc = _lib.cg_attention(_TYPES[qkv.dtype], S, n_heads, n_kv, head_dim, start, k_cache.shape[2], window or 0,
                           q_scale, softcap or 0.0, eps, qkv.data_ptr(), _ptr(qk_scale), cos.contiguous().data_ptr(),
                           sin.contiguous().data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
                           int(tiles))
    if rc != 0:
        raise MemoryError("out of memory in native attention")
    return out


class LoRA:
    """A low-rank update of a group of projections side by side (Ns[i] outputs each, rank R each), added to
    their float32 product: a [n * R, K] and b [N, R], kept in bfloat16 (b transposed). See cg_lora in ops.c."""

    def __init__(self, a: Tensor, b: Tensor, ns: list[int], scale: float):
        self.a, self.bt = a.to(torch.bfloat16).contiguous(), b.to(torch.bfloat16).t().contiguous()
        self.rank, self.scale, self.n = a.shape[0] // len(ns), scale, b.shape[0]
        self._ns = (ctypes.c_int64 * len(ns))(*ns)
        self._n_seg = len(ns)

    def __call__(self, x: Tensor, y: Tensor, out_dtype: torch.dtype, glu: bool) -> Tensor:
        """x [..., K] and its product y [..., N] (float32, contiguous; updated in place) -> the result in
        out_dtype ([..., N / 2] with glu)."""
        x2 = x.reshape(-1, x.shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out = torch.empty(*y.shape[:-1], self.n // 2, dtype=out_dtype) if glu else None
        rc = _lib.cg_lora(x2.shape[0], x2.shape[1], self.n, self._n_seg, self._ns, self.rank, self.a.data_ptr(),
                          self.bt.data_ptr(), self.scale, x2.data_ptr(), _TYPES[x2.dtype], x2.stride(0), y.data_ptr(),
                          int(glu), _ptr(out), _TYPES[out_dtype])
        if rc != 0:
            raise MemoryError("out of memory in the native LoRA update")
        return out if glu else y.to(out_dtype)


class _Product:
    """What the native products share: x [..., K] (float32 or bfloat16, at most MAX_ROWS rows) -> [..., N] in
    out_dtype (default x's dtype); with glu, gelu_tanh(first half) * second half [..., N / 2]."""

    n: int

    def __call__(self, x: Tensor, out_dtype: torch.dtype | None = None, glu: bool = False) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        n = self.n // 2 if glu else self.n
        y = torch.empty(x2.shape[0], n, dtype=out_dtype or x.dtype)
        self._product(x2, y, glu)
        return y.view(*shape[:-1], n)

    def _product(self, x2: Tensor, y: Tensor, glu: bool) -> None:
        raise NotImplementedError


class Weights(_Product):
    """One or more weight matrices [N_i, K] (same dtype, contiguous) used as one product whose outputs are
    concatenated, e.g. q, k and v. int8 matrices carry float32 scales [N_i]."""

    def __init__(self, mats: list[Tensor], scales: list[Tensor] | None = None):
        self.mats = [m.contiguous() for m in mats]
        self.scales = [s.float().contiguous() for s in scales] if scales is not None else None
        self.dtype = self.mats[0].dtype
        self.k = self.mats[0].shape[1]
        self.n = sum(m.shape[0] for m in self.mats)
        n_w = len(self.mats)
        self._ptrs = (ctypes.c_void_p * n_w)(*[m.data_ptr() for m in self.mats])
        self._scales = (ctypes.c_void_p * n_w)(*[s.data_ptr() for s in self.scales]) if self.scales else None
        self._ns = (ctypes.c_int64 * n_w)(*[m.shape[0] for m in self.mats])

    def _product(self, x2: Tensor, y: Tensor, glu: bool) -> None:
        rc = _lib.cg_linear(len(self.mats), self._ptrs, self._scales, self._ns, _TYPES[self.dtype],
                            x2.data_ptr(), _TYPES[x2.dtype], x2.stride(0), y.data_ptr(), _TYPES[y.dtype],
                            x2.shape[0], self.k, int(glu))
        if rc != 0:
            raise MemoryError("out of memory in the native linear product")


# ggml type ids of the GGUF formats the native products take (gguf.c)
GGUF_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13,
              "Q6_K": 14, "BF16": 30}


class GGUFWeights(_Product):
    """One or more weight matrices in GGUF block formats, [N_i, K] each as raw bytes [N_i, row bytes] (uint8,
    usually a view of the memory-mapped file), used as one product whose outputs are concatenated. The
    matrices may differ in format (a Q4_K_M file mixes Q4_K and Q6_K)."""

    def __init__(self, mats: list[Tensor], types: list[int], k: int):
        self.mats, self.types, self.k = mats, types, k
        self.n = sum(m.shape[0] for m in mats)
        n_w = len(mats)
        for m, t in zip(mats, types):
            if _lib.cg_row_bytes(t, k) != m.shape[1]:
                raise ValueError(f"GGUF type {t} rows of {k} weights are not {m.shape[1]} bytes")
        self._ptrs = (ctypes.c_void_p * n_w)(*[m.data_ptr() for m in mats])
        self._types = (ctypes.c_int * n_w)(*types)
        self._ns = (ctypes.c_int64 * n_w)(*[m.shape[0] for m in mats])

    def _product(self, x2: Tensor, y: Tensor, glu: bool) -> None:
        rc = _lib.cg_gguf_linear(len(self.mats), self._ptrs, self._types, self._ns, x2.data_ptr(),
                                 int(x2.dtype == torch.bfloat16), x2.stride(0), y.data_ptr(),
                                 int(y.dtype == torch.bfloat16), x2.shape[0], self.k, int(glu))
        if rc == -1:
            raise MemoryError("out of memory in the native GGUF product")
        if rc != 0:
            raise ValueError(f"the native GGUF product refused its input (code {rc})")


def gguf_dequantize(raw: Tensor, qtype: int, k: int, first: int, n: int, out: Tensor) -> Tensor:
    """Rows first..first+n of a GGUF matrix (raw bytes [N, row bytes]) into out [n, K], float32 or bfloat16."""
    if out.dtype not in (torch.float32, torch.bfloat16) or not out.is_contiguous():
        raise ValueError("GGUF rows dequantize into a contiguous float32 or bfloat16 tensor")
    if _lib.cg_gguf_dequantize(raw.data_ptr(), qtype, k, first, n, out.data_ptr(), int(out.dtype == torch.bfloat16)) != 0:
        raise ValueError(f"GGUF type {qtype} rows of {k} weights cannot be dequantized natively")
    return out


class PackedRows:
    """Input rows x [M, K] (bfloat16, or float32 rounded to bfloat16 here; K a multiple of 32) packed once
    for several `tile_product` calls."""

    def __init__(self, x: Tensor):
        if x.dtype not in (torch.bfloat16, torch.float32) or x.dim() != 2 or x.stride(-1) != 1 or x.shape[1] % 32:
            raise ValueError("tile products take bfloat16 or float32 rows [M, K] with K a multiple of 32")
        self.m, self.k = x.shape
        self.data = torch.empty(_lib.cg_bf16_packed_size(self.m, self.k), dtype=torch.bfloat16)
        _lib.cg_bf16_pack(x.data_ptr(), int(x.dtype == torch.float32), x.stride(0), self.m, self.k,
                          self.data.data_ptr())


def tile_product(rows: PackedRows, w: Tensor, out: Tensor) -> None:
    """out [M, N] = rows . w^T for bfloat16 weights w [N, K] (contiguous) into a float32 or bfloat16 view
    `out` whose rows may be apart (a column range of a wider result); see cg_bf16_gemm (gemm.c)."""
    if (w.dtype != torch.bfloat16 or not w.is_contiguous() or w.shape[1] != rows.k
            or out.dtype not in (torch.bfloat16, torch.float32) or tuple(out.shape) != (rows.m, w.shape[0])
            or out.stride(-1) != 1):
        raise ValueError("tile product shapes or types do not match")
    rc = _lib.cg_bf16_gemm(rows.data.data_ptr(), rows.m, rows.k, w.data_ptr(), w.shape[0], out.data_ptr(),
                           int(out.dtype == torch.float32), out.stride(0))
    if rc == -1:
        raise MemoryError("out of memory in the native tile product")
    if rc != 0:
        raise RuntimeError("the tile products are not available here")


def gguf_tile_product(rows: PackedRows, raw: Tensor, qtype: int, out: Tensor) -> None:
    """out [M, N] = rows . W^T for a GGUF matrix W (raw bytes [N, row bytes], ggml type `qtype`), its rows
    dequantized 32 at a time inside the product (cg_gguf_tile_gemm, gemm.c); out as for tile_product."""
    if (raw.dtype != torch.uint8 or not raw.is_contiguous() or _lib.cg_row_bytes(qtype, rows.k) != raw.shape[1]
            or out.dtype not in (torch.bfloat16, torch.float32) or tuple(out.shape) != (rows.m, raw.shape[0])
            or out.stride(-1) != 1):
        raise ValueError("GGUF tile product shapes or types do not match")
    rc = _lib.cg_gguf_tile_gemm(rows.data.data_ptr(), rows.m, rows.k, raw.data_ptr(), qtype, raw.shape[0],
                                out.data_ptr(), int(out.dtype == torch.float32), out.stride(0))
    if rc == -1:
        raise MemoryError("out of memory in the native GGUF tile product")
    if rc == -3:
        raise ValueError(f"GGUF type {qtype} rows cannot be dequantized natively")
    if rc != 0:
        raise RuntimeError("the tile products are not available here")


def geglu(y: Tensor) -> Tensor:
    """gelu_tanh(first half) * second half of float32 sums y [..., N] (contiguous) -> [..., N / 2] float32,
    each value on its own (the native decoding products' GeGLU, vectorized)."""
    if y.dtype != torch.float32 or not y.is_contiguous():
        raise ValueError("the native GeGLU takes contiguous float32 sums")
    out = torch.empty(*y.shape[:-1], y.shape[-1] // 2, dtype=torch.float32)
    _lib.cg_geglu(y.data_ptr(), y.numel() // y.shape[-1], y.shape[-1], out.data_ptr(), 0)
    return out


def gguf_layers(shape: object, n: int, layers: object, rows: int, start: int, x: int, positions: object = None,
                kcaches: object = None, vcaches: object = None) -> int:
    """cg_gguf_layers (chain.c): n decoder layers described by `layers` over rows float32 rows at x, in
    place, at positions start.. of the layers' caches, or each row at its own position and caches
    (batched decoding); codegemma.gguf.chain builds the descriptions. Returns the native return code."""
    return _lib.cg_gguf_layers(shape, n, layers, rows, start, x, positions, kcaches, vcaches)
