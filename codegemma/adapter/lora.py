"""A FIM adapter on a loaded model: LoRA updates of the decoder's projections and trained rows for the
four FIM tokens, which the base vocabulary lacks and which are mapped onto its unused ids.

The file (safetensors) holds, per layer and projection, `layers.{i}.{proj}.a` [r, in] and `.b` [out, r]
(the update is b @ a @ x * alpha / r, as in LoRA) and `fim_rows` [4, d_model]: the embedding rows of the
FIM prefix, suffix, middle and file-separator tokens, which the tied embedding also uses as their output
rows. Its metadata names the base model, the rank, alpha and the four ids. `attach` puts it on a model of
any weight format. On GGUF blocks (the embedded model) the update is merged into the weights, which are
re-quantized to Q8_0 (8 bits: its rounding is far below the 4-6-bit formats' own), so decoding keeps the
chained native layers (codegemma.gguf.chain) and its speed. On other formats (int8, bf16) the base products
run as before and the update is added to their result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from codegemma import kernels
from codegemma.errors import CheckpointError
from codegemma.gguf.blocks import q8_0_blocks
from codegemma.gguf.native import GGUFLinear
from codegemma.linear import FusedLinear
from codegemma.model import Transformer
from codegemma.tokenizer import FIM_TOKENS, Tokenizer

# the projections an adapter updates, and how the inference path fuses them (codegemma.linear)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down_proj": ("down_proj",)}
# the adapter that ships for the embedded model, with its model card and training curve
DEFAULT_ADAPTER = Path(__file__).parent / "gemma-3-270m-fim" / "adapter.safetensors"
UNUSED_PIECES = ("<unused0>", "<unused1>", "<unused2>", "<unused3>")  # where the FIM tokens go, in FIM_TOKENS order


@dataclass(frozen=True)
class AdapterConfig:
    base: str  # the shape of the model it was trained on (`base_signature`): an adapter fits no other
    rank: int
    alpha: float
    fim_ids: tuple[int, int, int, int]  # ids of FIM prefix, suffix, middle, file separator
    order: str = "spm"  # the prompt layout it was trained for (codegemma.tokenizer.Tokenizer.fim_order)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def base_signature(model: Transformer) -> str:
    """Layers, width, MLP width, heads and vocabulary, e.g. "gemma3 18x640 ff2048 h4/1x256 v262144": the
    same model in another file (GGUF or checkpoint, any weight format) has the same signature."""
    c = model.cfg
    family = "gemma3" if c.qk_norm else "gemma2" if c.sandwich_norms else "gemma"
    return f"{family} {c.n_layers}x{c.d_model} ff{c.d_ff} h{c.n_heads}/{c.n_kv_heads}x{c.head_dim} v{c.vocab_size}"


def unused_ids(tokenizer: Tokenizer) -> tuple[int, int, int, int]:
    """The ids of <unused0>..<unused3>, which the adapter's FIM tokens take."""
    ids = tuple(tokenizer.sp.piece_to_id(p) for p in UNUSED_PIECES)
    if any(tokenizer.sp.id_to_piece(i) != p for i, p in zip(ids, UNUSED_PIECES)):
        raise CheckpointError("this vocabulary has no <unused0>..<unused3> tokens to map the FIM tokens onto")
    return ids  # type: ignore[return-value]


def save_adapter(path: Path, config: AdapterConfig, tensors: dict[str, Tensor], extra: dict[str, str] | None = None) -> None:
    meta = {"base": config.base, "rank": str(config.rank), "alpha": str(config.alpha),
            "fim_ids": json.dumps(list(config.fim_ids)), "order": config.order, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def read_adapter(path: Path) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """The adapter file's config and tensors; a damaged or foreign file is a one-line CheckpointError."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        ids = tuple(json.loads(meta["fim_ids"]))
        config = AdapterConfig(meta["base"], int(meta["rank"]), float(meta["alpha"]), ids,  # type: ignore[arg-type]
                               meta.get("order", "psm"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such adapter file") from None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a FIM adapter file ({type(e).__name__}: {e})") from None
    if len(config.fim_ids) != 4 or "fim_rows" not in tensors:
        raise CheckpointError(f"{path}: not a FIM adapter file (no FIM token rows)")
    if config.order not in ("psm", "spm"):
        raise CheckpointError(f"{path}: not a FIM adapter file (unknown prompt order {config.order!r})")
    return config, tensors


class LoRALinear(nn.Module):
    """A fused group of projections (codegemma.linear's calling convention) plus their low-rank updates:
    a [n * r, in] (the group's a matrices stacked) and b [out, r] (their b matrices' rows), bfloat16 as the
    file stores them. Decoding rows go through the native update (a row's result then does not depend on
    how many rows are computed with it, which keeps speculative and batched greedy output equal to plain
    decoding); prefill blocks through PyTorch."""

    def __init__(self, base: nn.Module, a: Tensor, b: Tensor, ns: list[int], scale: float):
        super().__init__()
        self.base = base
        self.a, self.b, self.ns, self.scale = a.to(torch.bfloat16), b.to(torch.bfloat16), ns, scale
        self.native = kernels.LoRA(self.a, self.b, ns, scale) if kernels.available() else None

    def stored(self) -> list[tuple[Tensor, str]]:
        return [(self.a, "adapter"), (self.b, "adapter")]

    def forward(self, x: Tensor, out_dtype: torch.dtype | None = None, glu: bool = False) -> Tensor:
        y = self.base(x, torch.float32)  # [..., out]
        if self.native is not None and kernels.active(x):
            return self.native(x, y.contiguous(), out_dtype or x.dtype, glu)
        r = self.a.shape[0] // len(self.ns)
        t = F.linear(x.float(), self.a.float()) * self.scale  # [..., n * r]
        bs = self.b.float().split(self.ns)
        y = y + torch.cat([F.linear(t[..., i * r:(i + 1) * r], b) for i, b in enumerate(bs)], dim=-1)
        if glu:
            gate, up = y.chunk(2, dim=-1)
            y = F.gelu(gate, approximate="tanh") * up
        return y.to(out_dtype or x.dtype)


def merged_blocks(base: GGUFLinear, a: Tensor, b: Tensor, ns: list[int], scale: float) -> GGUFLinear:
    """GGUF matrices (one per projection of the group, rows ns) with the update b_i @ a_i * scale added,
    re-quantized to Q8_0: W_i + dW_i in 8 bits, on the same native products as the base."""
    r = a.shape[0] // len(ns)
    mats = []
    for i, (m, t, b_i) in enumerate(zip(base.mats, base.qtypes, b.float().split(ns))):
        w = kernels.gguf_dequantize(m, int(t), base.k, 0, b_i.shape[0], torch.empty(b_i.shape[0], base.k))
        w += (b_i @ a[i * r:(i + 1) * r].float()) * scale  # [N_i, K]
        mats.append(q8_0_blocks(w))
    return GGUFLinear(mats, [GGMLQuantizationType.Q8_0] * len(mats), base.k)


def embed_with_rows(embedded: Tensor, tokens: Tensor, ids: Tensor, rows: Tensor) -> Tensor:
    """Embeddings [.., D] of `tokens` with the rows of `ids` replaced by `rows` [len(ids), D]."""
    match = tokens[..., None] == ids  # [.., len(ids)]
    hit = match.any(-1, keepdim=True)
    if not bool(hit.any()):
        return embedded
    replaced = match.to(rows.dtype) @ rows  # [.., D]: the matching row, zeros elsewhere
    return torch.where(hit, replaced.to(embedded.dtype), embedded)


class FimEmbedding(nn.Module):
    def __init__(self, base: nn.Module, ids: Tensor, rows: Tensor):
        super().__init__()
        self.base, self.ids, self.rows = base, ids, rows

    def stored(self) -> list[tuple[Tensor, str]]:
        return [(self.rows, "adapter")]

    def forward(self, tokens: Tensor) -> Tensor:
        return embed_with_rows(self.base(tokens), tokens, self.ids, self.rows)


class FimHead(nn.Module):
    """The tied output layer with the FIM tokens' logits from their trained rows (float64, row by row
    independent like LoRALinear)."""

    def __init__(self, base: nn.Module | None, weight: Tensor, ids: Tensor, rows: Tensor):
        super().__init__()
        self.base, self.weight, self.ids, self.rows = base, weight, ids, rows.double()

    def forward(self, h: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
        if self.base is not None:
            logits = self.base(h, torch.float32)
        else:
            logits = F.linear(h.reshape(-1, h.shape[-1]), self.weight).view(*h.shape[:-1], -1).float()
        logits[..., self.ids] = F.linear(h.double(), self.rows).float()
        return logits if out_dtype is None else logits.to(out_dtype)


def projection_shapes(model: Transformer) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection the adapter updates."""
    c = model.cfg
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"q_proj": (q, c.d_model), "k_proj": (kv, c.d_model), "v_proj": (kv, c.d_model), "o_proj": (c.d_model, q),
            "gate_proj": (c.d_ff, c.d_model), "up_proj": (c.d_ff, c.d_model), "down_proj": (c.d_model, c.d_ff)}


@torch.no_grad()
def attach(model: Transformer, tokenizer: Tokenizer, path: Path, merge: bool = True) -> Tokenizer:
    """Put the adapter at `path` on `model` in place (after its weights are in their final format and its
    cache is set up) and return the tokenizer that knows the FIM tokens' ids. GGUF blocks take the update
    merged into their weights (`merged_blocks`) unless `merge` is off. The file is checked whole before
    anything changes: a bad one raises CheckpointError and leaves the model as it was. The caller decides
    the model's chain afterwards (codegemma.gguf.chain.chain_for)."""
    config, tensors = read_adapter(path)
    if config.base != base_signature(model):
        raise CheckpointError(f"{path}: an adapter for {config.base}, not for this model ({base_signature(model)})")
    shapes = projection_shapes(model)
    for i in range(model.cfg.n_layers):
        for name, (n_out, n_in) in shapes.items():
            a, b = tensors.get(f"layers.{i}.{name}.a"), tensors.get(f"layers.{i}.{name}.b")
            if a is None or b is None or a.shape != (config.rank, n_in) or b.shape != (n_out, config.rank):
                raise CheckpointError(f"{path}: layer {i} {name}: missing or misshapen (an adapter for another layout)")
    rows = tensors["fim_rows"].float()
    if rows.shape != (4, model.cfg.d_model):
        raise CheckpointError(f"{path}: FIM rows of shape {tuple(rows.shape)}, expected (4, {model.cfg.d_model})")
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        owners = {"qkv": attn, "o_proj": attn, "gate_up": mlp, "down_proj": mlp}
        if attn.qkv is None:  # float weights without the native kernels: fuse them as the kernels would
            attn.qkv = FusedLinear([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            mlp.gate_up = FusedLinear([mlp.gate_proj.weight, mlp.up_proj.weight])
        for fused, names in _FUSED.items():
            owner = owners[fused]
            base = getattr(owner, fused)
            if isinstance(base, nn.Linear):
                base = FusedLinear([base.weight])
            a = torch.cat([tensors[f"layers.{i}.{n}.a"] for n in names])
            bs = [tensors[f"layers.{i}.{n}.b"] for n in names]
            ns = [b.shape[0] for b in bs]
            if merge and type(base) is GGUFLinear and [m.shape[0] for m in base.mats] == ns:
                setattr(owner, fused, merged_blocks(base, a, torch.cat(bs), ns, config.scale))
            else:
                setattr(owner, fused, LoRALinear(base, a, torch.cat(bs), ns, config.scale))
    ids = torch.tensor(config.fim_ids)
    embed = model.model.embed_tokens
    weight = embed.weight if isinstance(embed, nn.Embedding) else None
    model.model.embed_tokens = FimEmbedding(embed, ids, rows)
    model.lm_head = FimHead(model.lm_head, weight, ids, rows)
    model.cfg = model.cfg.replace(fim_tokens=True)
    return Tokenizer(tokenizer.sp, fim_aliases=dict(zip(FIM_TOKENS, config.fim_ids)), fim_order=config.order)
