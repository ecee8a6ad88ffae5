"""Quantize a float checkpoint into GGUF block formats and run it on the native GGUF products.

For Hugging Face checkpoints (or any float model) the `q8_0` and `q4` options give what a GGUF file gives:
weights in llama.cpp's block formats, multiplied where they lie. `q8_0` stores every projection and the
tied embedding as Q8_0 (34 bytes per 32 weights); `q4` stores the projections as Q4_1 (a scale and an
offset per 32 weights, 20 bytes) and keeps the embedding/output layer in Q8_0, as llama.cpp's 4-bit mixes
keep their output layer at higher precision. gguf-py's reference quantizers do the rounding (Q8_0 through
`q8_0_blocks`, the same bytes faster).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize
from torch import Tensor

from codegemma.errors import CodegemmaError
from codegemma.gguf.native import GGUFEmbedding, GGUFLinear
from codegemma.model import Transformer

# option -> (format of the projections, format of the tied embedding and output layer)
BLOCK_FORMATS: dict[str, tuple[Q, Q]] = {"q8_0": (Q.Q8_0, Q.Q8_0), "q4": (Q.Q4_1, Q.Q8_0)}


def q8_0_blocks(w: Tensor) -> Tensor:
    """Q8_0 blocks [N, K / 32 * 34] (uint8) of float weights [N, K], as ggml lays them out: per 32 weights a
    float16 scale d = max|w| / 127, then the 32 values w * (1 / d) rounded half away from zero as int8. The
    same bytes as gguf-py's reference quantizer (ggml's arithmetic), computed by PyTorch many times faster."""
    n, k = w.shape
    blocks = w.float().reshape(n, k // 32, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127  # [N, K / 32, 1]
    x = blocks * torch.where(d == 0, 0, 1 / d)
    a = x.abs()
    q = x.sign() * (a.floor() + (2 * (a - a.floor())).floor())  # roundf (halves away from zero), as gguf-py has it
    scale = d.half().view(torch.uint8)  # [N, K / 32, 2]: the float16's two bytes, little-endian
    return torch.cat([scale, q.to(torch.int8).view(torch.uint8)], -1).reshape(n, k // 32 * 34)


def quantize_blocks(model: Transformer, option: str, cached: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Replace every projection and the tied embedding with block-format weights on the native products, in
    place. Returns the raw blocks by weight name, which `cached` takes next time instead of quantizing."""
    if option not in BLOCK_FORMATS:
        raise CodegemmaError(f"unknown quantization {option!r}; use one of {', '.join(BLOCK_FORMATS)} or int8")
    layer_format, head_format = BLOCK_FORMATS[option]
    tensors: dict[str, Tensor] = {}

    def blocks(name: str, weight: Tensor, qtype: Q) -> Tensor:
        if cached is not None and name in cached:
            raw = cached[name]
        elif qtype == Q.Q8_0:
            raw = q8_0_blocks(weight)
        else:  # [N, K] float -> [N, K / 32 * block bytes] uint8
            raw = torch.from_numpy(np.ascontiguousarray(quantize(weight.float().numpy(), qtype)))
        tensors[name] = raw
        return raw

    def linear(prefix: str, *names: str) -> GGUFLinear:
        weights = [model.get_parameter(f"{prefix}{n}.weight") for n in names]
        mats = [blocks(f"{prefix}{n}.weight", w, layer_format) for n, w in zip(names, weights)]
        return GGUFLinear(mats, [layer_format] * len(mats), weights[0].shape[1])

    for i, layer in enumerate(model.model.layers):
        attn, mlp, p = layer.self_attn, layer.mlp, f"model.layers.{i}."
        attn.qkv = linear(p + "self_attn.", "q_proj", "k_proj", "v_proj")
        attn.o_proj = linear(p + "self_attn.", "o_proj")
        mlp.gate_up = linear(p + "mlp.", "gate_proj", "up_proj")
        mlp.down_proj = linear(p + "mlp.", "down_proj")
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    embed = model.model.embed_tokens.weight.data
    raw = blocks("model.embed_tokens.weight", embed, head_format)
    dim = embed.shape[1]
    model.model.embed_tokens = GGUFEmbedding(raw, head_format, dim)
    model.lm_head = GGUFLinear([raw], [head_format], dim)
    # the norms are all that is left of the checkpoint: copies, so its memory map can be released
    for param in model.parameters():
        param.data = param.data.float().clone()
    return tensors
