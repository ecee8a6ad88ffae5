"""A GGUF model's decoder layers for a few rows in one native call (cg_gguf_layers in kernels/chain.c).

Decoding and verification pass 1 to kernels.MAX_ROWS rows through every layer; layer by layer that is eight
native calls per layer, each with its Python module, argument conversion and result tensor, about 4 ms of a
25 ms step of the embedded model on 2 cores. The chain describes every layer once (pointers to its GGUF
matrices, norm scales, RoPE tables and KV cache) and runs the same native operations in the same order, so
its rows are bit-identical to the layer-by-layer path, which stays for everything else (prefill blocks of
more rows, LoRA adapters, float and int8 weights). Batched steps run through it too, each row against its
own slot's cache at its own position.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from codegemma import kernels
from codegemma.gguf.native import GGUFLinear
from codegemma.model import KVCache, Transformer

_p, _i, _i64, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float


class _Projection(ctypes.Structure):
    _fields_ = [("n_w", _i), ("Ws", _p), ("types", _p), ("Ns", _p), ("N", _i64), ("K", _i64)]


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", _Projection), ("o", _Projection), ("gate_up", _Projection), ("down", _Projection),
                ("input_scale", _p), ("post_attention_scale", _p), ("pre_mlp_scale", _p), ("post_mlp_scale", _p),
                ("qk_scale", _p), ("cos", _p), ("sin", _p), ("kcache", _p), ("vcache", _p), ("window", _i)]


class _Shape(ctypes.Structure):
    _fields_ = [("D", _i), ("H", _i), ("KV", _i), ("Dh", _i), ("max_len", _i64), ("eps", _f), ("q_scale", _f),
                ("softcap", _f)]


def _projection(linear: GGUFLinear) -> _Projection:
    w = linear.native  # its ctypes arrays of pointers, types and row counts live as long as the model
    return _Projection(len(linear.mats), ctypes.cast(w._ptrs, _p), ctypes.cast(w._types, _p),
                       ctypes.cast(w._ns, _p), w.n, linear.k)


class DecoderChain:
    """Every decoder layer of `model` as one native call, for the model's own KV cache: built for the modules,
    norms and caches the model has now (Transformer.setup_cache drops it)."""

    def __init__(self, model: Transformer):
        cfg = model.cfg
        layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            cos, sin = model._rope[attn.rope_base]
            sandwich = layer.sandwich
            layers.append(_Layer(
                _projection(attn.qkv), _projection(attn.o_proj), _projection(mlp.gate_up), _projection(mlp.down_proj),
                layer.input_layernorm.scale.data_ptr(), layer.post_attention_layernorm.scale.data_ptr(),
                layer.pre_feedforward_layernorm.scale.data_ptr() if sandwich else None,
                layer.post_feedforward_layernorm.scale.data_ptr() if sandwich else None,
                attn.qk_scale.data_ptr() if attn.qk_scale is not None else None, cos.data_ptr(), sin.data_ptr(),
                attn.kv_cache.k.data_ptr(), attn.kv_cache.v.data_ptr(), attn.window or 0))
        self.layers = (_Layer * len(layers))(*layers)
        self.shape = _Shape(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, model.max_len, cfg.norm_eps,
                            cfg.q_scale, cfg.attn_softcap or 0.0)
        self._keep = [model._rope[b] for b in model._rope]  # the tables the pointers name

    def __call__(self, x: Tensor, start: int) -> Tensor:
        """x [1, M, D] float32 (M <= kernels.MAX_ROWS) at positions start.. -> the last layer's output."""
        if start < 0 or start + x.shape[1] > self.shape.max_len:
            raise ValueError(f"positions {start}..{start + x.shape[1]} exceed the cache ({self.shape.max_len})")
        return self._run(x, start)

    def step(self, x: Tensor, rows: Sequence[tuple[int, int]], caches: Sequence[Sequence[KVCache]]) -> Tensor:
        """Batched decoding: x [1, M, D], row m of the sequence whose KV caches are caches[l][slot] (layer l)
        at position pos, (slot, pos) = rows[m] -> the last layer's output."""
        M = len(rows)
        ks = [caches[l][slot].k.data_ptr() for l in range(len(self.layers)) for slot, _ in rows]
        vs = [caches[l][slot].v.data_ptr() for l in range(len(self.layers)) for slot, _ in rows]
        positions = (ctypes.c_int64 * M)(*[pos for _, pos in rows])
        return self._run(x, 0, positions, (_p * len(ks))(*ks), (_p * len(vs))(*vs))

    def _run(self, x: Tensor, start: int, *per_row: object) -> Tensor:
        out = x.contiguous().clone()
        rc = kernels.gguf_layers(ctypes.byref(self.shape), len(self.layers), self.layers, out.shape[1], start,
                                 out.data_ptr(), *per_row)
        if rc == -1:
            raise MemoryError("out of memory in the native decoder layers")
        if rc != 0:
            raise ValueError(f"the native decoder layers refused their input (code {rc})")
        return out


def chain_for(model: Transformer) -> DecoderChain | None:
    """The chain for `model` when every layer is GGUF blocks with frozen norms, float32 rows and the model's
    own KV cache set up; else None (the layer-by-layer path runs). CODEGEMMA_CHAIN=0: never (to compare)."""
    if os.environ.get("CODEGEMMA_CHAIN", "1") == "0" or not kernels.available():
        return None
    if model.dtype != torch.float32 or model.max_len == 0:
        return None
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.qkv, attn.o_proj, mlp.gate_up, mlp.down_proj)
        if not all(type(m) is GGUFLinear for m in linears) or attn.kv_cache is None:
            return None
        if attn.kv_cache.k.dtype != torch.float32 or layer.input_layernorm.scale is None:
            return None
        if attn.n_heads % attn.n_kv:
            return None
    return DecoderChain(model)
