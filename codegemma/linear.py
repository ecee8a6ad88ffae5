"""Projections for CPU decoding: the checkpoint's float weights (still memory-mapped, never copied) behind the
native matrix-vector products of codegemma.kernels, one call per fused group (q/k/v, gate/up + GeGLU).

`use_native(model)` swaps them into a loaded Transformer. Decoding and speculative verification pass a
handful of rows, where the native product streams the weights near memory bandwidth; a prefill block passes
many, where PyTorch's matrix-matrix product is faster, so above kernels.MAX_ROWS the same weights go
through it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codegemma import kernels
from codegemma.model import KVCache, Transformer

_scratch = threading.local()


def scratch(n: int, dtype: torch.dtype) -> Tensor:
    """A buffer of n elements of `dtype` reused by this thread, for weights widened or dequantized for one
    product: a fresh allocation per product would cost as much as the widening itself (page faults on
    ~10 MB every time)."""
    buf = getattr(_scratch, str(dtype), None)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: inference tensors refuse updates outside that mode
            buf = torch.empty(n, dtype=dtype)
            setattr(_scratch, str(dtype), buf)
    return buf[:n]


def _as_float32(w: Tensor) -> Tensor:
    """w widened to float32 in this thread's scratch buffer."""
    return scratch(w.numel(), torch.float32).view(w.shape).copy_(w)


_DTYPE_FORMATS = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int8: "int8"}


def weight_formats(model: nn.Module) -> dict[str, int]:
    """Bytes of weights per storage format ("Q8_0", "BF16", "int8", ...), each tensor counted once."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, KVCache):
            continue
        tensors = [(t, _DTYPE_FORMATS.get(t.dtype, str(t.dtype))) for t in
                   [*module.parameters(recurse=False), *module.buffers(recurse=False)] if t.device.type != "meta"]
        tensors += getattr(module, "stored", lambda: [])()
        for t, fmt in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                out[fmt] = out.get(fmt, 0) + t.numel() * t.element_size()
    return out


class NativeLinear(nn.Module):
    """A projection that goes through `self.native` (codegemma.kernels.Weights) when the kernels take the
    input, else through `torch_product`. With glu its outputs are a gate and its values side by side and
    the result is Gemma's GeGLU, gelu_tanh(gate) * up."""

    native: kernels.Weights | kernels.GGUFWeights | None = None

    def torch_product(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def torch_products(self, xs: list[Tensor]) -> list[Tensor]:
        """torch_product of each x; formats that prepare their weights per product do it once for all."""
        return [self.torch_product(x) for x in xs]

    def forward(self, x: Tensor, out_dtype: torch.dtype | None = None, glu: bool = False) -> Tensor:
        if self.native is not None and kernels.active(x):
            return self.native(x, out_dtype, glu)
        return self._finish(self.torch_product(x), glu, out_dtype)

    def rows_apart(self) -> bool:
        """Whether a product of many rows (torch_products) computes each row as it would alone."""
        return False

    def many(self, xs: list[Tensor], glu: bool = False) -> list[Tensor]:
        """forward(x) of each x (prefill blocks), each the same as alone."""
        if self.native is not None and any(kernels.active(x) for x in xs):
            return [self(x, glu=glu) for x in xs]
        return [self._finish(y, glu, None) for y in self.torch_products(xs)]

    def _finish(self, y: Tensor, glu: bool, out_dtype: torch.dtype | None) -> Tensor:
        """_finish, with the native vectorized GeGLU for the float32 sums of tile products (rows_apart)."""
        if glu and y.dtype == torch.float32 and self.rows_apart():
            return _finish(kernels.geglu(y.contiguous()), False, out_dtype)
        return _finish(y, glu, out_dtype)


def _finish(y: Tensor, glu: bool, out_dtype: torch.dtype | None) -> Tensor:
    """A product's outputs as forward gives them: with glu, a gate and values side by side -> GeGLU."""
    if glu:
        gate, up = y.chunk(2, dim=-1)
        y = F.gelu(gate, approximate="tanh") * up
    return y if out_dtype is None else y.to(out_dtype)


class FusedLinear(NativeLinear):
    """y = x . concat(W_0, ..., W_n)^T for float weights [N_i, K] kept as they are."""

    def __init__(self, weights: list[Tensor]):
        super().__init__()
        self.weights = list(weights)
        if len(weights) == 1:  # a single matrix keeps its place in the state dict (o_proj.weight, ...)
            self.weight = weights[0]
        self.native = kernels.Weights(self.weights) if kernels.available() else None
        # what the tile products take (kernels.tile_product), fixed with the weights
        self._tile_weights = weights[0].shape[1] % 32 == 0 and all(
            w.dtype == torch.bfloat16 and w.is_contiguous() for w in self.weights)

    def torch_product(self, x: Tensor) -> Tensor:
        widen = x.dtype == torch.bfloat16 and kernels.slow_bf16_gemm()  # see kernels.slow_bf16_gemm
        xin = x.float() if widen else x
        # each product runs before the next widening reuses the buffer
        ys = [F.linear(xin, _as_float32(w) if widen else w) for w in self.weights]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, -1)
        return y.to(x.dtype)

    def rows_apart(self) -> bool:
        return self._tile_weights and kernels.tile_gemm()

    def torch_products(self, xs: list[Tensor]) -> list[Tensor]:
        """Prefill blocks of bfloat16 rows times bfloat16 weights go through one AMX tile product for all of
        them where the CPU has it (each row as it would be alone: kernels.tile_product); else one by one."""
        if not (self.rows_apart() and all(x.dtype == torch.bfloat16 for x in xs)):
            return super().torch_products(xs)
        return tile_products(xs, [(w.shape[0], lambda rows, out, w=w: kernels.tile_product(rows, w, out))
                                  for w in self.weights])


Product = Callable[[kernels.PackedRows, Tensor], None]  # packed rows, out [M, N_i] <- rows . W_i^T


def tile_products(xs: list[Tensor], mats: list[tuple[int, Product]]) -> list[Tensor]:
    """Each x [..., K] (bfloat16 or float32, the same for all) times concat(W_0, ...)^T, the rows of all of
    them in one AMX tile product per matrix (a row's result does not depend on the others), in x's dtype
    (float32 sums are not rounded to bfloat16 on the way). mats: (N_i, the product writing W_i's columns)."""
    k = xs[0].shape[-1]
    x2 = xs[0].reshape(-1, k) if len(xs) == 1 else torch.cat([x.reshape(-1, k) for x in xs])
    if x2.dtype != torch.float32:
        x2 = x2.to(torch.bfloat16)
    packed = kernels.PackedRows(x2 if x2.stride(-1) == 1 else x2.contiguous())
    y = torch.empty(x2.shape[0], sum(n for n, _ in mats), dtype=x2.dtype)
    col = 0
    for n, product in mats:
        product(packed, y[:, col:col + n])
        col += n
    return [part.view(*x.shape[:-1], -1) for part, x in zip(y.split([x.numel() // k for x in xs]), xs)]


@torch.no_grad()
def use_native(model: Transformer) -> Transformer:
    """Route a float model's projections and tied output layer through the native products, in place. The
    parameters stay where they are, under the same names; int8 and GGUF models bring their own
    (codegemma.quant, codegemma.gguf.native), which an output layer already set shows."""
    if not kernels.available() or model.dtype not in (torch.bfloat16, torch.float32) or model.lm_head is not None:
        return model
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv = FusedLinear([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        mlp.gate_up = FusedLinear([mlp.gate_proj.weight, mlp.up_proj.weight])
        attn.o_proj = FusedLinear([attn.o_proj.weight])
        mlp.down_proj = FusedLinear([mlp.down_proj.weight])
    model.lm_head = FusedLinear([model.model.embed_tokens.weight])
    return model
