"""Model configuration: one frozen dataclass for every Gemma generation, and the named presets.

Gemma 2 and 3 features are optional fields that default to off, so a Gemma 1 config reads as plain
decoder-only attention. Presets carry the published shapes; `from_hf_config` maps a checkpoint's
`config.json` onto the same dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from codegemma.errors import CheckpointError, UnknownPresetError


@dataclass(frozen=True)
class GemmaConfig:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int            # 1 = MQA (Gemma 2B), n_heads = MHA (Gemma 7B), in between = GQA (Gemma 2/3)
    head_dim: int              # explicit: CodeGemma 7B has 16 x 256 = 4096 != d_model 3072
    d_ff: int                  # width of each MLP projection (gate, up)
    vocab_size: int = 256000
    max_seq_len: int = 8192
    rope_base: float = 10000.0          # global (full-attention) layers
    rope_local_base: float | None = None  # Gemma 3: sliding layers use their own base (10k)
    norm_eps: float = 1e-6
    # Gemma 2/3: extra norms after attention and around the MLP ("sandwich" norms)
    sandwich_norms: bool = False
    attn_softcap: float | None = None    # Gemma 2: tanh(x/50)*50 on attention logits
    final_softcap: float | None = None   # Gemma 2: tanh(x/30)*30 on output logits
    query_pre_attn_scalar: float | None = None  # query scale is this ** -0.5; None = head_dim
    sliding_window: int | None = None
    # Which layers are sliding-window: every layer i with (i + 1) % sliding_period != 0. Gemma 2 alternates
    # (period 2: even layers slide), Gemma 3 has 5 local per global (period 6). None = no sliding layers.
    sliding_period: int | None = None
    qk_norm: bool = False                # Gemma 3: RMSNorm on q and k per head
    fim_tokens: bool = False             # the vocabulary has the four CodeGemma FIM tokens
    # ids the tokenizer defines, when the embedding has padding rows beyond them (never predicted)
    n_tokens: int | None = None

    @property
    def q_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def is_sliding(self, layer: int) -> bool:
        if self.sliding_window is None or self.sliding_period is None:
            return False
        return (layer + 1) % self.sliding_period != 0

    def rope_base_for(self, layer: int) -> float:
        if self.rope_local_base is not None and self.is_sliding(layer):
            return self.rope_local_base
        return self.rope_base

    def replace(self, **changes) -> "GemmaConfig":
        return dataclasses.replace(self, **changes)


_GEMMA1_2B = dict(n_layers=18, d_model=2048, n_heads=8, n_kv_heads=1, head_dim=256, d_ff=16384)
_GEMMA1_7B = dict(n_layers=28, d_model=3072, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576)
_GEMMA2 = dict(sandwich_norms=True, attn_softcap=50.0, final_softcap=30.0, sliding_window=4096, sliding_period=2)
_GEMMA3 = dict(sandwich_norms=True, qk_norm=True, sliding_window=512, sliding_period=6, vocab_size=262144,
               max_seq_len=32768, rope_base=1_000_000.0, rope_local_base=10_000.0, query_pre_attn_scalar=256)

PRESETS: dict[str, GemmaConfig] = {
    "gemma-2b": GemmaConfig("gemma-2b", **_GEMMA1_2B),
    "gemma-7b": GemmaConfig("gemma-7b", **_GEMMA1_7B),
    "gemma-1.1-2b": GemmaConfig("gemma-1.1-2b", **_GEMMA1_2B),
    "gemma-1.1-7b": GemmaConfig("gemma-1.1-7b", **_GEMMA1_7B),
    "codegemma-2b": GemmaConfig("codegemma-2b", **_GEMMA1_2B, fim_tokens=True),
    "codegemma-7b": GemmaConfig("codegemma-7b", **_GEMMA1_7B, fim_tokens=True),
    "codegemma-1.1-2b": GemmaConfig("codegemma-1.1-2b", **_GEMMA1_2B, fim_tokens=True),
    "codegemma-1.1-7b": GemmaConfig("codegemma-1.1-7b", **_GEMMA1_7B, fim_tokens=True),
    "gemma-2-2b": GemmaConfig("gemma-2-2b", n_layers=26, d_model=2304, n_heads=8, n_kv_heads=4, head_dim=256,
                              d_ff=9216, query_pre_attn_scalar=256, **_GEMMA2),
    "gemma-2-9b": GemmaConfig("gemma-2-9b", n_layers=42, d_model=3584, n_heads=16, n_kv_heads=8, head_dim=256,
                              d_ff=14336, query_pre_attn_scalar=256, **_GEMMA2),
    # 27B scales queries by 1/sqrt(d_model / n_heads) = 1/sqrt(144), not 1/sqrt(head_dim)
    "gemma-2-27b": GemmaConfig("gemma-2-27b", n_layers=46, d_model=4608, n_heads=32, n_kv_heads=16, head_dim=128,
                               d_ff=36864, query_pre_attn_scalar=144, **_GEMMA2),
    "gemma-3-270m": GemmaConfig("gemma-3-270m", n_layers=18, d_model=640, n_heads=4, n_kv_heads=1, head_dim=256,
                                d_ff=2048, **_GEMMA3),
    "gemma-3-1b": GemmaConfig("gemma-3-1b", n_layers=26, d_model=1152, n_heads=4, n_kv_heads=1, head_dim=256,
                              d_ff=6912, **_GEMMA3),
}


def preset(name: str) -> GemmaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {known}") from None


def _sliding_period(layer_types: list[str]) -> int | None:
    """The period of full-attention layers in HF's `layer_types` list (None when no layer slides)."""
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    if len(full) == len(layer_types):
        return None
    period = full[0] + 1 if full else len(layer_types) + 1
    rebuilt = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(len(layer_types))]
    if rebuilt != list(layer_types):
        raise CheckpointError(f"layer_types pattern {layer_types} is not periodic; not supported")
    return period


def from_hf_config(cfg: dict, name: str = "checkpoint") -> GemmaConfig:
    """Map a Hugging Face `config.json` (Gemma, Gemma 2, Gemma 3 text) onto GemmaConfig."""
    model_type = cfg.get("model_type", "")
    if "text_config" in cfg and model_type == "gemma3":   # multimodal wrapper: take the text tower
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    if model_type not in ("gemma", "gemma2", "gemma3_text"):
        raise CheckpointError(f"model_type {model_type!r} is not a Gemma text model (gemma, gemma2, gemma3_text)")
    try:
        d_model, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        common = dict(
            name=name,
            n_layers=cfg["num_hidden_layers"],
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads", n_heads),
            head_dim=cfg.get("head_dim") or d_model // n_heads,
            d_ff=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg.get("max_position_embeddings", 8192),
            rope_base=float(_rope_theta(cfg)),
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks the field {e.args[0]!r}") from None
    if model_type == "gemma":
        return GemmaConfig(**common)
    window = cfg.get("sliding_window")
    if "layer_types" in cfg and cfg["layer_types"]:
        period = _sliding_period(cfg["layer_types"])
    elif model_type == "gemma2":
        period = 2
    else:
        period = cfg.get("sliding_window_pattern", 6)
    extra = dict(
        sandwich_norms=True,
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
        attn_softcap=cfg.get("attn_logit_softcapping"),
        final_softcap=cfg.get("final_logit_softcapping"),
        sliding_window=window if period else None,
        sliding_period=period if window else None,
    )
    if model_type == "gemma3_text":
        extra.update(qk_norm=True, rope_local_base=float(cfg.get("rope_local_base_freq", 10000.0)))
    return GemmaConfig(**common, **extra)


def _rope_theta(cfg: dict) -> float:
    if "rope_theta" in cfg:
        return cfg["rope_theta"]
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params:  # transformers 5 nests per layer type
        return params["full_attention"].get("rope_theta", 10000.0)
    return params.get("rope_theta", 10000.0)


def to_hf_config(c: GemmaConfig) -> dict:
    """The `config.json` a Hugging Face checkpoint of this shape would carry (tests write fake checkpoints)."""
    out = dict(
        num_hidden_layers=c.n_layers, hidden_size=c.d_model, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim, intermediate_size=c.d_ff, vocab_size=c.vocab_size,
        max_position_embeddings=c.max_seq_len, rope_theta=c.rope_base, rms_norm_eps=c.norm_eps,
        hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1, pad_token_id=0,
        tie_word_embeddings=True, attention_bias=False, torch_dtype="float32",
    )
    if c.qk_norm:
        layer_types = ["sliding_attention" if c.is_sliding(i) else "full_attention" for i in range(c.n_layers)]
        out.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], layer_types=layer_types,
                   sliding_window=c.sliding_window, query_pre_attn_scalar=c.query_pre_attn_scalar,
                   rope_local_base_freq=c.rope_local_base, attn_logit_softcapping=c.attn_softcap,
                   final_logit_softcapping=c.final_softcap)
    elif c.sandwich_norms:
        layer_types = ["sliding_attention" if c.is_sliding(i) else "full_attention" for i in range(c.n_layers)]
        out.update(model_type="gemma2", architectures=["Gemma2ForCausalLM"], layer_types=layer_types,
                   sliding_window=c.sliding_window, query_pre_attn_scalar=c.query_pre_attn_scalar,
                   attn_logit_softcapping=c.attn_softcap, final_logit_softcapping=c.final_softcap)
    else:
        out.update(model_type="gemma", architectures=["GemmaForCausalLM"])
    return out
