"""Run a GGUF model in its own block formats: every projection computes over the memory-mapped file itself.

Nothing is dequantized to disk or kept as a float copy: decoding and verification (up to kernels.MAX_ROWS
rows) go through the native GGUF products; a prefill pass multiplies its blocks on AMX tiles, all of them in
one product that dequantizes 32 weight rows at a time, or (without AMX) dequantizes one tile of weight rows
at a time into a reused buffer (bfloat16 where the CPU multiplies it natively, else float32) and multiplies
it with each block with PyTorch; the embedding lookup dequantizes the rows it needs. Norms (F32 in every
Gemma file) are the only tensors read into memory. The small thing worth caching (the SentencePiece model
rebuilt from the vocabulary, 0.4 s for 262k tokens) is cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import Tensor, nn

from codegemma import kernels
from codegemma.checkpoint import empty_model
from codegemma.errors import CheckpointError
from codegemma.gguf.convert import check_tensors, dequantize_tensor, gguf_config
from codegemma.gguf.format import TensorInfo, read_gguf
from codegemma.gguf.loader import cached_tokenizer
from codegemma.linear import NativeLinear, scratch, tile_products
from codegemma.model import Transformer
from codegemma.tokenizer import Tokenizer

TILE_ELEMENTS = 1 << 21  # weights dequantized at a time for a prefill product: a 4 MB (bf16) or 8 MB buffer (8x as
# large measured no faster, and stays resident)


class NoNativeProduct(CheckpointError):
    """A GGUF file with weights in a format the native products do not take (IQ4_XS, Q2_K, ...): it loads
    through the dequantized float copy instead."""


class GGUFLinear(NativeLinear):
    """y = x . concat(W_0, ..., W_n)^T for GGUF matrices [N_i, K] in their block formats (raw bytes)."""

    def __init__(self, mats: list[Tensor], qtypes: list[GGMLQuantizationType], k: int):
        super().__init__()
        self.mats, self.qtypes, self.k = mats, qtypes, k
        self.native = kernels.GGUFWeights(mats, [int(t) for t in qtypes], k)

    def stored(self) -> list[tuple[Tensor, str]]:
        """The raw matrices with their formats (weights that are neither parameters nor buffers)."""
        return [(m, t.name) for m, t in zip(self.mats, self.qtypes)]

    def torch_product(self, x: Tensor) -> Tensor:
        return self.torch_products([x])[0]

    def rows_apart(self) -> bool:
        return kernels.tile_gemm() and self.k % 32 == 0

    def torch_products(self, xs: list[Tensor]) -> list[Tensor]:
        """Many rows (prefill blocks): each tile of weight rows dequantized once into a reused buffer, then
        multiplied with every block (each block's product as it would be alone). Where the CPU multiplies
        bfloat16 natively (AVX-512 BF16, AMX) the tiles and the rows are bfloat16, with float32
        accumulation: 4x the float32 product's speed here (600 against 143 GFLOP/s on 2 cores)."""
        if self.rows_apart():
            return self._tile_products(xs)
        dtype = torch.float32 if kernels.slow_bf16_gemm() else torch.bfloat16
        x2s = [x.reshape(-1, self.k).to(dtype) for x in xs]
        outs: list[list[Tensor]] = [[] for _ in xs]
        for m, t in zip(self.mats, self.qtypes):
            n = m.shape[0]
            step = max(1, TILE_ELEMENTS // self.k)
            for first in range(0, n, step):
                rows = min(step, n - first)
                tile = scratch(rows * self.k, dtype).view(rows, self.k)
                w = kernels.gguf_dequantize(m, int(t), self.k, first, rows, tile)
                for x2, out in zip(x2s, outs):
                    out.append(F.linear(x2, w))  # computed before the next tile reuses the buffer
        return [(torch.cat(out, -1) if len(out) > 1 else out[0]).to(x.dtype).view(*x.shape[:-1], -1)
                for out, x in zip(outs, xs)]

    def _tile_products(self, xs: list[Tensor]) -> list[Tensor]:
        """torch_products on AMX tiles: every block's rows in one product per matrix, its rows dequantized 32
        at a time inside it, each row computed as it would be alone, so the blocks need not go one by one."""
        products = [(m.shape[0], lambda rows, out, m=m, t=t: kernels.gguf_tile_product(rows, m, int(t), out))
                    for m, t in zip(self.mats, self.qtypes)]
        return tile_products(xs, products)


class GGUFEmbedding(nn.Module):
    """The token embedding in its GGUF format: a lookup dequantizes the rows it needs."""

    def __init__(self, raw: Tensor, qtype: GGMLQuantizationType, dim: int):
        super().__init__()
        self.raw, self.qtype, self.dim = raw, qtype, dim

    def stored(self) -> list[tuple[Tensor, str]]:
        return [(self.raw, self.qtype.name)]

    def forward(self, tokens: Tensor) -> Tensor:
        flat = tokens.reshape(-1).tolist()
        out = torch.empty(len(flat), self.dim)
        for i, token in enumerate(flat):
            kernels.gguf_dequantize(self.raw, int(self.qtype), self.dim, token, 1, out[i:i + 1])
        return out.view(*tokens.shape, self.dim)


def load_native(path: Path) -> tuple[Transformer, Tokenizer]:
    """The model of a GGUF file over its own blocks (float32 activations), and its tokenizer."""
    f = read_gguf(path)
    config = gguf_config(f)
    names = check_tensors(f, config)
    unsupported = sorted({i.qtype.name for i in f.tensors if len(i.shape) == 2} - set(kernels.GGUF_TYPES))
    if unsupported:
        raise NoNativeProduct(f"{path}: {', '.join(unsupported)} weights have no native product")
    tokenizer = cached_tokenizer(path, f)
    config = config.replace(fim_tokens=tokenizer.has_fim,
                            n_tokens=tokenizer.vocab_size if tokenizer.vocab_size < config.vocab_size else None)
    by_name = dict(zip(names, f.tensors))
    # copy-on-write: a writable view for torch, whose pages stay the file's (nothing ever writes to them)
    data = np.memmap(path, dtype=np.uint8, mode="c")

    def raw(name: str) -> tuple[Tensor, TensorInfo]:
        info = by_name[name]
        return torch.from_numpy(data[info.offset:info.offset + info.n_bytes].reshape(info.shape[0], -1)), info

    def linear(*suffixes: str, prefix: str) -> GGUFLinear:
        pairs = [raw(prefix + s + ".weight") for s in suffixes]
        return GGUFLinear([t for t, _ in pairs], [i.qtype for _, i in pairs], pairs[0][1].shape[1])

    with empty_model():
        model = Transformer(config)
    for name, info in by_name.items():
        if len(info.shape) == 1:  # the norms
            module = model.get_submodule(name.removesuffix(".weight"))
            module.weight = nn.Parameter(dequantize_tensor(f, info), requires_grad=False)
    for i, layer in enumerate(model.model.layers):
        attn, mlp, p = layer.self_attn, layer.mlp, f"model.layers.{i}."
        attn.qkv = linear("q_proj", "k_proj", "v_proj", prefix=p + "self_attn.")
        attn.o_proj = linear("o_proj", prefix=p + "self_attn.")
        mlp.gate_up = linear("gate_proj", "up_proj", prefix=p + "mlp.")
        mlp.down_proj = linear("down_proj", prefix=p + "mlp.")
        del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
    embed, info = raw("model.embed_tokens.weight")
    model.model.embed_tokens = GGUFEmbedding(embed, info.qtype, config.d_model)
    model.lm_head = GGUFLinear([embed], [info.qtype], config.d_model)
    return model.eval().requires_grad_(False), tokenizer
