"""The Gemma decoder (Gemma 1, 2 and 3 text) as one pure module: `forward(tokens, input_pos) -> logits`.

Parameter names follow the Hugging Face checkpoints (`model.layers.0.self_attn.q_proj.weight`, ...) so a
checkpoint's state dict loads without a renaming table. The KV cache is preallocated by `setup_cache` and
written at `input_pos`; `setup_slots` adds one cache per sequence that `step` decodes together in a batch
(codegemma.batch). Nothing else (tokenizer, sampling, I/O) lives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codegemma import kernels
from codegemma.config import GemmaConfig

if TYPE_CHECKING:
    from codegemma.gguf.chain import DecoderChain


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.scale: Tensor | None = None  # (1 + w) in float32, fixed by `freeze` for inference

    def freeze(self) -> None:
        self.scale = 1.0 + self.weight.detach().float()

    def forward(self, x: Tensor) -> Tensor:
        if self.scale is not None and kernels.norms(x):
            return kernels.add_norm(x, None, None, self.scale, self.eps)[1]
        # Gemma normalises in float32 and scales by (1 + w), w stored zero-centred; cast back at the end.
        scale = self.scale if self.scale is not None else 1.0 + self.weight.float()
        return F.rms_norm(x.float(), (x.shape[-1],), scale, self.eps).to(x.dtype)


class KVCache(nn.Module):
    """Preallocated keys and values for one layer, [1, n_kv_heads, max_len, head_dim]."""

    def __init__(self, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (1, n_kv_heads, max_len, head_dim)
        # empty, not zeros: a position is always written before it is read, and pages never written (the
        # unused end of a 2048-position cache) then cost no memory
        self.register_buffer("k", torch.empty(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.empty(shape, dtype=dtype), persistent=False)

    def write(self, start: int, k: Tensor, v: Tensor) -> None:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v


def many(linear: nn.Module, xs: list[Tensor], glu: bool = False) -> list[Tensor]:
    """linear(x) for each x; a projection that prepares its weights per product (codegemma.linear's
    NativeLinear: dequantized GGUF tiles) prepares them once for all."""
    each = getattr(linear, "many", None)
    if each is not None:
        return each(xs, glu=glu)
    return [linear(x, glu=True) if glu else linear(x) for x in xs]


def add_norm(x: Tensor, h: Tensor, post: RMSNorm | None, out: RMSNorm | None) -> tuple[Tensor, Tensor | None]:
    """Gemma's residual step: x + post(h), and out() of that for the next block (post/out None: skipped).
    One native call when the kernels take it, instead of up to ten small operations."""
    if (post is None or post.scale is not None) and (out is None or out.scale is not None) and kernels.norms(x):
        eps = (post or out).eps if (post or out) else 0.0
        return kernels.add_norm(x, h, post.scale if post else None, out.scale if out else None, eps)
    x = x + (post(h) if post is not None else h)
    return x, out(x) if out is not None else None


def rope_tables(head_dim: int, base: float, max_len: int) -> tuple[Tensor, Tensor]:
    """cos and signed sin, [max_len, head_dim], computed in float32 as the reference does.

    Split-halves layout (not interleaved). The sin table carries the sign of rotate_half, (-sin, +sin), so
    that applying RoPE is one roll and two products."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.int64).float(), inv_freq)  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    sin = emb.sin()
    return emb.cos(), torch.cat([-sin[:, :head_dim // 2], sin[:, head_dim // 2:]], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    # x [B, H, S, D]; tables [S, D] in x's dtype. rotate_half(x) * sin == roll(x, D/2) * signed_sin
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


class Attention(nn.Module):
    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.sliding = cfg.is_sliding(layer)
        self.window = cfg.sliding_window if self.sliding else None
        self.rope_base = cfg.rope_base_for(layer)
        q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, q_out, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_out, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_out, bias=False)
        self.o_proj = nn.Linear(q_out, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qkv: nn.Module | None = None
        self.qk_scale: Tensor | None = None
        self.kv_cache: KVCache | None = None
        self.slot_caches: list[KVCache] = []  # one per batch slot (Transformer.setup_slots)

    def freeze(self) -> None:
        """For inference, after the norms froze: both qk norms' (1 + w) per head, so that q and k
        normalise in one call."""
        if self.cfg.qk_norm:
            self.qk_scale = torch.cat([self.q_norm.scale.expand(self.n_heads, -1),
                                       self.k_norm.scale.expand(self.n_kv, -1)])  # [H + KV, D] float32

    def project(self, x: Tensor) -> Tensor:
        """q, k and v side by side [B, S, (H + 2 KV) * D]. int8 models fuse the three weights into one
        `qkv` product (codegemma.quant); bf16/fp32 weights stay memory-mapped as the checkpoint has them."""
        if self.qkv is not None:
            return self.qkv(x)
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def blocks(self, xs: list[Tensor], bounds: Sequence[tuple[int, int]], cos: Tensor, sin: Tensor,
               masks: Sequence[Tensor | None], slot: int | None = None) -> list[Tensor]:
        """Attention of consecutive blocks xs[i] [1, S_i, d] at positions bounds[i] = (lo, hi) with their masks
        (None: the native attention needs none), against the model's cache or a batch slot's (`setup_slots`),
        block by block in order (each sees the keys the ones before it wrote), each projection over all of xs
        at once (`many`); cos/sin are the whole tables."""
        cache = self.kv_cache if slot is None else self.slot_caches[slot]
        qkvs = many(self.qkv, xs) if self.qkv is not None else [self.project(x) for x in xs]
        ctxs = [self._context(qkv, lo, cos[lo:hi], sin[lo:hi], mask, cache)
                for qkv, (lo, hi), mask in zip(qkvs, bounds, masks)]
        return many(self.o_proj, ctxs)

    def step(self, x: Tensor, rows: Sequence[tuple[int, int]], cos: Tensor, sin: Tensor) -> Tensor:
        """One token each of several sequences: x [1, N, d], row i at (slot, position) rows[i]; cos/sin the
        whole tables. The projections take all rows in one product (the native ones compute each row alone,
        so a row's result does not depend on the others); attention runs per row against its slot's cache."""
        qkv = self.project(x)  # [1, N, (H + 2 KV) * D]
        out = torch.cat([self._context(qkv[:, i:i + 1], pos, cos[pos:pos + 1], sin[pos:pos + 1], None,
                                       self.slot_caches[slot]) for i, (slot, pos) in enumerate(rows)], dim=1)
        return self.o_proj(out)

    def _context(self, qkv: Tensor, start: int, cos: Tensor, sin: Tensor, mask: Tensor | None,
                 cache: KVCache) -> Tensor:
        """Attention of projected rows qkv [B, S, (H + 2 KV) * D] at positions start.. over `cache`, which
        receives their keys and values -> [B, S, H * D]."""
        B, S, _ = qkv.shape
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        # decoding, or a prefill pass row by row (kernels.row_wise): norms, RoPE, cache write and attention in one
        # native call, each row alone
        if B == 1 and (kernels.active(qkv) or kernels.row_wise_attention()):
            return kernels.attention(qkv, H, KV, D, start, cache.k, cache.v, cos, sin, self.qk_scale,
                                     self.cfg.q_scale, self.cfg.attn_softcap, self.window, self.cfg.norm_eps)
        q, k, v = self.heads(qkv, cos, sin)
        end = start + S
        cache.write(start, k, v)
        # a sliding layer only ever looks back `window` positions: read no more of the cache than that
        lo = max(0, start - self.window + 1) if self.window else 0
        keys, values = cache.k[:, :, lo:end], cache.v[:, :, lo:end]  # [B, KV, T, D]
        out = self.attend(q, keys, values, None if S == 1 else mask[:, lo:end])  # one query sees all it reads
        return out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)

    def heads(self, qkv: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected rows [B, S, (H + 2 KV) * D] -> q [B, H, S, D] and k, v [B, KV, S, D], q and k normalised
        (Gemma 3) and rotated; cos/sin are the tables' rows of the S positions."""
        B, S, _ = qkv.shape
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        qkv = qkv.view(B, S, H + 2 * KV, D)
        qk = qkv[:, :, :H + KV]
        if self.cfg.qk_norm:  # Gemma 3: RMSNorm per head on q and k, in float32 like every Gemma norm
            qk_scale = self.qk_scale if self.qk_scale is not None else torch.cat(  # unfrozen: training
                [(1.0 + self.q_norm.weight.float()).expand(H, -1), (1.0 + self.k_norm.weight.float()).expand(KV, -1)])
            qk = (F.rms_norm(qk.float(), (D,), None, self.q_norm.eps) * qk_scale).to(qkv.dtype)
        qk = apply_rope(qk.transpose(1, 2), cos, sin)  # [B, H + KV, S, D]
        return qk[:, :H], qk[:, H:], qkv[:, :, H + KV:].transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Grouped attention: the query heads that share a KV head are stacked into one matrix product, so
        MQA/GQA never copies keys. q [B, H, S, D], k/v [B, KV, T, D], mask [S, T] -> [B, H, S, D]."""
        B, H, S, D = q.shape
        rep = H // self.n_kv
        qg = q.reshape(B, self.n_kv, rep * S, D)
        scores = _matmul(qg, k, transpose=True).float() * self.cfg.q_scale  # [B, KV, rep*S, T]
        if self.cfg.attn_softcap is not None:  # Gemma 2 caps attention logits with tanh(x / c) * c
            cap = self.cfg.attn_softcap
            scores = torch.tanh(scores / cap) * cap
        if mask is not None:
            scores = scores.view(B, self.n_kv, rep, S, -1).masked_fill(~mask, float("-inf")).view(B, self.n_kv, rep * S, -1)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)  # softmax in float32, as the reference does
        return _matmul(probs, v).view(B, H, S, D)


def _matmul(a: Tensor, b: Tensor, transpose: bool = False) -> Tensor:
    """a @ b (or a @ b^T) over [B, KV, ., .] stacks. With one stack (batch 1 and MQA: CPU decoding of
    Gemma 2B / Gemma 3 270M) a 2-D product runs about twice as fast as the batched one on CPU, same result.
    bf16 operands multiply as float32 where the CPU has no bf16 arithmetic; the result is rounded back."""
    dtype = a.dtype
    if dtype == torch.bfloat16 and a.device.type == "cpu" and kernels.slow_bf16_gemm():
        a, b = a.float(), b.float()
    if a.shape[0] * a.shape[1] == 1:
        out = F.linear(a[0, 0], b[0, 0] if transpose else b[0, 0].t())[None, None]
    else:
        out = a @ (b.transpose(-1, -2) if transpose else b)
    return out.to(dtype)


class MLP(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.gate_up: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        # GeGLU with the tanh approximation of GELU, as Gemma was trained; fused projections (int8, native)
        # compute it as part of the gate/up product
        if self.gate_up is not None:
            return self.down_proj(self.gate_up(x, glu=True))
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))

    def blocks(self, xs: list[Tensor]) -> list[Tensor]:
        """forward() of several prefill blocks, each projection over all of them at once (`many`)."""
        if self.gate_up is not None:
            return many(self.down_proj, many(self.gate_up, xs, glu=True))
        return [self(x) for x in xs]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        self.sandwich = cfg.sandwich_norms
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # Gemma 1 names its pre-MLP norm `post_attention_layernorm`; Gemma 2/3 use that name for a norm on the
        # attention output and add `pre_feedforward_layernorm` / `post_feedforward_layernorm`.
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def step(self, x: Tensor, rows: Sequence[tuple[int, int]], cos: Tensor, sin: Tensor) -> Tensor:
        return self.block(x, lambda h: self.self_attn.step(h, rows, cos, sin))

    def block(self, x: Tensor, attend: Callable[[Tensor], Tensor], mlp: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The layer around `attend` (normalised rows -> attention output): norms, residuals and the MLP
        (`mlp` in its place, when given: an adapter's training forward)."""
        mlp = mlp or self.mlp
        return self.blocks([x], lambda hs: [attend(hs[0])], lambda hs: [mlp(hs[0])])[0]

    def blocks(self, xs: list[Tensor], attend: Callable[[list[Tensor]], list[Tensor]],
               mlp: Callable[[list[Tensor]], list[Tensor]] | None = None) -> list[Tensor]:
        """block() of several prefill blocks at once: every block goes through the operations it would go
        through alone, and `attend` / `mlp` (default: the MLP's `blocks`) take them all together."""
        mlp = mlp or self.mlp.blocks
        hs = attend([self.input_layernorm(x) for x in xs])
        if self.sandwich:
            pairs = [add_norm(x, h, self.post_attention_layernorm, self.pre_feedforward_layernorm)
                     for x, h in zip(xs, hs)]
            outs = mlp([h for _, h in pairs])
            return [add_norm(x, o, self.post_feedforward_layernorm, None)[0] for (x, _), o in zip(pairs, outs)]
        pairs = [add_norm(x, h, None, self.post_attention_layernorm) for x, h in zip(xs, hs)]
        outs = mlp([h for _, h in pairs])
        return [add_norm(x, o, None, None)[0] for (x, _), o in zip(pairs, outs)]


class GemmaModel(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class Transformer(nn.Module):
    """Gemma causal LM. Call `setup_cache(max_len)` once, then `forward(tokens, input_pos)`."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = GemmaModel(cfg)
        self.max_len = 0
        # the output layer when it is not a plain product with the tied embedding: codegemma.linear's native
        # one or codegemma.quant's int8 one, called as lm_head(hidden, out_dtype)
        self.lm_head: nn.Module | None = None
        self._rope: dict[float, tuple[Tensor, Tensor]] = {}
        # every layer in one native call for a few rows (codegemma.gguf.chain), when the loader set one up for
        # the modules and caches as they are; setup_cache drops it
        self.chain: DecoderChain | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype  # norms stay in the model dtype under int8 too

    def setup_cache(self, max_len: int) -> None:
        """Allocate every layer's KV cache for `max_len` positions and the RoPE tables for them, and fix the
        norms' scales for inference (call again after changing weights)."""
        cfg, dtype = self.cfg, self.dtype
        self.max_len = max_len
        self.chain = None  # it points at the caches and scales replaced here
        for norm in self.modules():
            if isinstance(norm, RMSNorm):
                norm.freeze()
        for layer in self.model.layers:
            layer.self_attn.freeze()
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(cfg.n_kv_heads, max_len, cfg.head_dim, dtype)
        bases = {cfg.rope_base_for(i) for i in range(cfg.n_layers)}
        self._rope = {b: tuple(t.to(dtype) for t in rope_tables(cfg.head_dim, b, max_len)) for b in bases}

    def embed(self, tokens: Tensor) -> Tensor:
        h = self.model.embed_tokens(tokens)
        # scale by sqrt(d_model) rounded to the weight dtype first, as the reference does
        return h * torch.tensor(math.sqrt(self.cfg.d_model), dtype=h.dtype)

    def output(self, h: Tensor) -> Tensor:
        """Final norm and the tied output layer (with Gemma 2's soft-cap): hidden [B, S, D] -> logits [B, S, V]."""
        h = self.model.norm(h)
        if self.lm_head is not None:
            logits = self.lm_head(h, torch.float32)
        else:  # 2-D: a strided 3-D input (the last row of a block) sends F.linear to a batched product that
            # copies the whole 262k-row weight on every call
            logits = F.linear(h.reshape(-1, h.shape[-1]), self.model.embed_tokens.weight).view(*h.shape[:-1], -1)
        if self.cfg.n_tokens is not None:  # padding rows of the embedding are no tokens
            logits = logits[..., :self.cfg.n_tokens]
        if self.cfg.final_softcap is not None:
            cap = self.cfg.final_softcap
            logits = torch.tanh(logits.float() / cap) * cap
        return logits

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """tokens [1, S] at consecutive positions input_pos [S] -> logits [1, S, V] (float32)."""
        start, S = int(input_pos[0]), tokens.shape[1]
        if start + S > self.max_len:
            raise ValueError(f"positions {start}..{start + S} exceed the cache ({self.max_len}); call setup_cache")
        h = self.hidden(tokens, start)
        return self.output(h).float()

    def setup_slots(self, n: int) -> None:
        """Allocate `n` more KV caches per layer (after `setup_cache`, same length), one per sequence that
        `step` decodes together; `hidden(..., slot=i)` prefills slot i. The model's own cache is untouched.
        Allocated empty: pages a slot never writes cost no memory."""
        cfg = self.cfg
        for layer in self.model.layers:
            layer.self_attn.slot_caches = [KVCache(cfg.n_kv_heads, self.max_len, cfg.head_dim, self.dtype)
                                           for _ in range(n)]

    def hidden(self, tokens: Tensor, start: int, slot: int | None = None) -> Tensor:
        """The last layer's hidden states [1, S, D] before the final norm, with the model's KV cache or the
        batch slot's `slot`."""
        x = self.embed(tokens)
        if slot is None and self.chain is not None and kernels.active(x):
            return self.chain(x, start)
        return self._layers([x], start, slot)[-1]

    def masks(self, start: int, end: int, device: torch.device | None = None) -> dict[bool, Tensor]:
        """The causal masks [S, end] of positions start..end, global (False) and sliding (True)."""
        q_pos, k_pos = torch.arange(start, end, device=device)[:, None], torch.arange(end, device=device)[None, :]
        causal = k_pos <= q_pos  # built per call: a [T, T] table would cost T^2 bytes
        return {False: causal, True: causal & (q_pos - k_pos < (self.cfg.sliding_window or end))}

    def hidden_blocks(self, tokens: Tensor, start: int, block: int, should_stop: Callable[[], bool] | None = None,
                      slot: int | None = None) -> Tensor | None:
        """hidden() of each block of `block` positions of tokens [1, S] at start.., with the model's KV cache or
        the batch slot's `slot`; the last block's hidden states. Layer by layer, so that each projection
        prepares its weights once for all blocks (a GGUF model otherwise dequantizes every weight once per
        block: 18% of a prefill's time). Each block goes through the operations hidden() runs on it alone,
        never the chain, so the caches are the same bit for bit. None when `should_stop` (polled between
        layers) asked to stop; the blocks' positions then hold no valid KV."""
        end = start + tokens.shape[1]
        xs = [self.embed(tokens[:, lo - start:min(lo + block, end) - start]) for lo in range(start, end, block)]
        out = self._layers(xs, start, slot, should_stop)
        return None if out is None else out[-1]

    def hidden_rows(self, tokens: Tensor, start: int, slot: int | None = None,
                    should_stop: Callable[[], bool] | None = None) -> Tensor | None:
        """hidden() of tokens [1, S] at start.. computing each row as it would be alone, for a model whose
        products compute rows apart (`rows_apart`): all the rows through each layer as one tensor, the
        products on tiles, the native residual norms and the native attention a row at a time, however few
        rows there are (kernels.row_wise). A position's KV is then the same whichever pass computed it, so a
        prefill may start after any cached prefix. None when `should_stop` (polled between layers) asked to
        stop."""
        with kernels.row_wise():
            out = self._layers([self.embed(tokens)], start, slot, should_stop)
        return None if out is None else out[-1]

    def _layers(self, xs: list[Tensor], start: int, slot: int | None = None,
                should_stop: Callable[[], bool] | None = None) -> list[Tensor] | None:
        """Every layer over consecutive blocks of embedded rows xs[i] [1, S_i, D] from position start on (None
        when `should_stop`, polled between layers, asked to stop); attention takes them block by block, the
        rest all together (`DecoderLayer.blocks`)."""
        bounds, lo = [], start
        for x in xs:
            bounds.append((lo, lo + x.shape[1]))
            lo += x.shape[1]
        # the native attention (a row at a time) needs no masks
        masks = [{False: None, True: None} if kernels.row_wise_attention() else self.masks(lo, hi) for lo, hi in bounds]
        for layer in self.model.layers:
            if should_stop is not None and should_stop():
                return None
            attn = layer.self_attn
            cos, sin = self._rope[attn.rope_base]
            layer_masks = [m[attn.sliding] for m in masks]
            xs = layer.blocks(xs, lambda hs, a=attn, c=cos, s=sin, m=layer_masks: a.blocks(hs, bounds, c, s, m, slot))
        return xs

    def rows_apart(self) -> bool:
        """Whether every layer's projections compute each row of a many-row product as it would be alone
        (the AMX tile products: codegemma.linear's `rows_apart`), so that prefill can run `hidden_rows`."""
        def apart(linear: nn.Module | None) -> bool:
            return bool(getattr(linear, "rows_apart", lambda: False)())

        return all(apart(layer.self_attn.qkv) and apart(layer.self_attn.o_proj) and apart(layer.mlp.gate_up)
                   and apart(layer.mlp.down_proj) for layer in self.model.layers)

    @torch.inference_mode()
    def step(self, tokens: Sequence[int], rows: Sequence[tuple[int, int]]) -> Tensor:
        """One decode step of several sequences at once: tokens[i] at (slot, position) rows[i], each slot's
        positions before it already cached -> logits [N, V] (float32). A row's logits are those a
        one-token `forward` of that sequence alone would give (the native products compute rows apart)."""
        if any(pos >= self.max_len for _, pos in rows):
            raise ValueError(f"a position exceeds the cache ({self.max_len})")
        x = self.embed(torch.tensor([list(tokens)]))  # [1, N, D]
        if self.chain is not None and kernels.active(x):
            x = self.chain.step(x, rows, [layer.self_attn.slot_caches for layer in self.model.layers])
        else:
            for layer in self.model.layers:
                cos, sin = self._rope[layer.self_attn.rope_base]
                x = layer.step(x, rows, cos, sin)
        return self.output(x)[0].float()
