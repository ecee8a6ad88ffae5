"""Native matrix-vector products for CPU decoding (linear.c), compiled on first use and called through ctypes.

The library is built once per source, compiler flags and CPU into ~/.cache/codegemma/kernels with the
system C compiler (`cc`, or $CC), `-march=native` and OpenMP. It links against the libgomp PyTorch already
loaded (same soname), so it shares PyTorch's thread pool and `torch.set_num_threads`. Where no compiler is
found, the build fails or CODEGEMMA_KERNELS=0 is set, `available()` is False and the model uses PyTorch's
products instead: the results agree to float32 rounding either way.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("linear.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
_lib: ctypes.CDLL | None | bool = None  # None: not tried yet; False: unavailable
_error = ""


def _cache_dir() -> Path:
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
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"linear-{key}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise OSError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
    lib = ctypes.CDLL(str(out))
    lib.cg_linear.restype = ctypes.c_int
    lib.cg_linear.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_int, ctypes.c_int]
    return lib


def available() -> bool:
    """True when the native products are built and loaded (building them on the first call)."""
    global _lib, _error
    if _lib is None:
        if os.environ.get("CODEGEMMA_KERNELS", "1") == "0" or not sys.platform.startswith("linux"):
            _lib, _error = False, "disabled" if sys.platform.startswith("linux") else "Linux only"
        else:
            try:
                _lib = _build()
            except OSError as e:
                _lib, _error = False, str(e)
    return bool(_lib)


def unavailable_reason() -> str:
    available()
    return _error


class Weights:
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

    def __call__(self, x: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
        """x [..., K] (float32 or bfloat16) -> [..., N] in out_dtype (default x's dtype)."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out_dtype = out_dtype or x.dtype
        y = torch.empty(x2.shape[0], self.n, dtype=out_dtype)
        rc = _lib.cg_linear(len(self.mats), self._ptrs, self._scales, self._ns, _TYPES[self.dtype],
                            x2.data_ptr(), _TYPES[x2.dtype], x2.stride(0), y.data_ptr(), _TYPES[out_dtype],
                            x2.shape[0], self.k)
        if rc != 0:
            raise MemoryError("out of memory in the native linear product")
        return y.view(*shape[:-1], self.n)
