"""`codegemma info`: the module tree and parameter counts of a preset or checkpoint, without weights; for a
GGUF file also the storage formats of its weights and which of them the native products compute with."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from codegemma.checkpoint import empty_model, read_config
from codegemma.config import GemmaConfig, PRESETS, preset
from codegemma.errors import CodegemmaError, ModelNotFoundError
from codegemma.model import Transformer


def config_for(spec: str) -> GemmaConfig:
    path = Path(spec).expanduser()
    if path.is_dir():
        return read_config(path)
    if path.is_file() and path.suffix == ".gguf":
        from codegemma.gguf.convert import gguf_config
        from codegemma.gguf.format import read_gguf

        return gguf_config(read_gguf(path))
    if spec in PRESETS:
        return preset(spec)
    if not path.exists():
        if "/" in spec or spec.endswith(".gguf"):
            raise ModelNotFoundError(f"{spec}: no such file or directory")
        return preset(spec)  # an unknown name: its error lists the presets
    raise ModelNotFoundError(f"{spec}: expected a preset, a checkpoint directory or a .gguf file")


def parameter_counts(model: Transformer) -> dict[str, int]:
    """Counts per component: embedding (tied output layer), attention, MLP, norms; and the total."""
    counts: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            part = "embedding (tied lm_head)"
        elif ".self_attn." in name and "norm" not in name:
            part = "attention"
        elif ".mlp." in name:
            part = "mlp"
        else:
            part = "norms"
        counts[part] += p.numel()
    counts["total"] = sum(counts.values())
    return dict(counts)


def gguf_formats(path: Path) -> list[str]:
    """One line per storage format of a GGUF file's tensors: count, megabytes, and how it runs."""
    from codegemma import kernels
    from codegemma.gguf.format import read_gguf

    tensors: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for info in read_gguf(path).tensors:
        tensors[info.qtype.name][0] += 1
        tensors[info.qtype.name][1] += info.n_bytes
    native = kernels.available()
    lines = []
    for name, (count, size) in sorted(tensors.items(), key=lambda kv: -kv[1][1]):
        how = "native blocks" if native and name in kernels.GGUF_TYPES else "dequantized float copy"
        lines.append(f"  {name:<8} {count:>4} tensors {size / 1e6:>10.1f} MB   {how}")
    return lines


def describe(spec: str) -> str:
    cfg = config_for(spec)
    with empty_model():
        model = Transformer(cfg)
    counts = parameter_counts(model)
    lines = [f"{cfg.name}: {cfg}", "", repr(model), "", "parameters:"]
    lines += [f"  {k:<26} {v:>15,}" for k, v in counts.items()]
    per_layer = (counts["attention"] + counts["mlp"]) // cfg.n_layers
    lines.append(f"  {'per layer (attn + mlp)':<26} {per_layer:>15,}")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        lines += ["", "weight formats (GGUF):", *gguf_formats(path)]
    lines += adapter_lines(spec)
    return "\n".join(lines)


def adapter_lines(spec: str) -> list[str]:
    """The FIM adapter `codegemma.load` puts on this model by default, if any."""
    from codegemma.adapter.lora import read_adapter
    from codegemma.loader import adapter_for

    try:
        path = adapter_for(spec, None)
        if path is None:
            return []
        config, _ = read_adapter(path)
    except CodegemmaError as error:
        return ["", f"FIM adapter: unusable ({error})"]
    return ["", f"FIM adapter (on by default; --adapter off or CODEGEMMA_ADAPTER=off turns it off): {path}",
            f"  LoRA rank {config.rank}, alpha {config.alpha:g}; FIM tokens on ids {', '.join(map(str, config.fim_ids))}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="codegemma info", description="Module tree and parameter counts of a "
                                 "preset or checkpoint, built on the meta device (no weights are loaded).")
    ap.add_argument("model", help="a preset name (codegemma-2b, gemma-2-9b, ...) or a checkpoint path")
    args = ap.parse_args(argv)
    print(describe(args.model))
    return 0
