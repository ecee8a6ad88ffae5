"""Weight-only int8 quantization (per output channel, symmetric) for CPU decoding.

Decode on CPU is bound by bytes of weights read per token; int8 halves them against bf16. A few rows at a
time go through the native product (codegemma.kernels), a prefill block through `torch._weight_int8pack_mm`.
Activations stay in the model dtype. The tied embedding is quantized once and serves both as the input
lookup (dequantized row by row) and as the output layer. The quantized tensors can be cached: given those of
an earlier load (`cached`), nothing is quantized again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codegemma import kernels
from codegemma.linear import NativeLinear
from codegemma.model import Transformer


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [N, K] -> (int8 [N, K], scales [N]) with w ~= q * scales[:, None]."""
    wf = w.float()
    scales = wf.abs().amax(dim=1).clamp_min(1e-8) / 127.0
    q = torch.round(wf / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(NativeLinear):
    """y = x W^T with W int8 [N, K] and a scale per row, as quantize_rows gives them."""

    def __init__(self, q: Tensor, scales: Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.to(dtype))
        self.dtype = dtype
        self.native = kernels.Weights([q], [self.scales]) if kernels.available() else None

    def torch_product(self, x: Tensor) -> Tensor:
        shape = x.shape
        out = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.weight, self.scales)
        return out.reshape(*shape[:-1], self.weight.shape[0])


class Int8Embedding(nn.Module):
    """Tied embedding in int8: lookup dequantizes the rows it needs. The output layer is the Int8Linear
    whose tensors these are."""

    def __init__(self, q: Tensor, scales: Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)
        self.dtype = dtype

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.weight).to(self.dtype) * self.scales[tokens][..., None]


@torch.no_grad()
def quantize_int8(model: Transformer, cached: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Replace every projection and the tied embedding with int8 weight-only versions, in place. Returns the
    quantized tensors by name ("model.layers.0.qkv.weight", "....scales"), which `cached` takes next time."""
    dtype = model.dtype
    tensors: dict[str, Tensor] = {}

    def linear(name: str, weights: list[Tensor]) -> Int8Linear:
        if cached is not None and f"{name}.weight" in cached:
            q, scales = cached[f"{name}.weight"], cached[f"{name}.scales"]
        else:  # quantizing copies the weights anyway, so q/k/v and gate/up become one product each
            q, scales = quantize_rows(torch.cat(weights) if len(weights) > 1 else weights[0])
        tensors[f"{name}.weight"], tensors[f"{name}.scales"] = q, scales
        return Int8Linear(q, scales, dtype)

    for i, layer in enumerate(model.model.layers):
        attn, mlp, p = layer.self_attn, layer.mlp, f"model.layers.{i}."
        attn.qkv = linear(p + "qkv", [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        mlp.gate_up = linear(p + "gate_up", [mlp.gate_proj.weight, mlp.up_proj.weight])
        attn.o_proj = linear(p + "o_proj", [attn.o_proj.weight])
        mlp.down_proj = linear(p + "down_proj", [mlp.down_proj.weight])
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    head = model.lm_head = linear("lm_head", [model.model.embed_tokens.weight.data])
    model.model.embed_tokens = Int8Embedding(head.weight, head.scales, dtype)
    # The norms are all that is left of the checkpoint; copy them so that its memory map (every page of
    # which quantizing touched) can be released instead of staying resident for a few small vectors.
    for p in model.parameters():
        p.data = p.data.clone()
    return tensors
