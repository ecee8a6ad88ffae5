"""Training the FIM adapter: LoRA on every projection plus the four FIM token rows, the base frozen.

The base runs as a float copy in memory (bf16 where the CPU has bf16 arithmetic, else float32), whole
sequences at once without a KV cache. Loss is cross-entropy on the examples' target tokens only, so the
262k-row output layer runs on those positions alone. Steps accumulate examples up to a token budget; the
learning rate warms up and follows a cosine to a tenth over the planned tokens. A checkpoint (adapter,
optimizer, example index, curve) is written every few minutes and at the end, and `--resume` continues it
exactly; the run stops by itself at its time limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from codegemma.adapter.data import ExampleStream, Mix, default_roots, load_corpus, split
from codegemma.adapter.lora import (PROJECTIONS, AdapterConfig, base_signature, embed_with_rows, projection_shapes,
                                    save_adapter, unused_ids)
from codegemma.checkpoint import empty_model, load_checkpoint
from codegemma.errors import CheckpointError, CodegemmaError
from codegemma.model import Transformer, rope_tables
from codegemma.tokenizer import Tokenizer


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: float = 32.0
    lr: float = 2e-4  # 1e-3 over 2 M tokens left the base worse than untrained SPM prompting (see the card)
    row_lr: float = 1e-3  # the FIM token rows
    weight_decay: float = 0.0
    warmup_steps: int = 30
    step_tokens: int = 4096  # tokens per optimizer step (examples accumulated)
    planned_tokens: int = 3_000_000  # the cosine schedule's length
    max_tokens: int = 512
    seed: int = 0
    held_out: float = 0.02
    val_examples: int = 48


def float_model(spec: str | None, dtype: torch.dtype) -> tuple[Transformer, Tokenizer]:
    """The model of `spec` (a loader spec) with float weights in memory: GGUF blocks dequantized here, not
    cached on disk."""
    from codegemma.loader import resolve

    path = resolve(spec)
    if path.is_dir():
        return load_checkpoint(path, dtype)
    from codegemma.gguf.convert import check_tensors, dequantize_tensor, gguf_config
    from codegemma.gguf.format import read_gguf
    from codegemma.gguf.loader import cached_tokenizer

    f = read_gguf(path)
    config = gguf_config(f)
    names = check_tensors(f, config)
    tokenizer = cached_tokenizer(path, f)
    with empty_model():
        model = Transformer(config)
    for name, info in zip(names, f.tensors):
        t = dequantize_tensor(f, info)
        module = model.get_submodule(name.rsplit(".", 1)[0])
        module.weight = nn.Parameter(t.to(dtype), requires_grad=False)
    return model.requires_grad_(False), tokenizer


class TrainableAdapter(nn.Module):
    """The trained parameters: a [r, in] and b [out, r] per layer and projection (b starts at zero, so the
    adapted model starts as the base), and the FIM rows, started from the unused tokens' own rows."""

    def __init__(self, model: Transformer, rank: int, alpha: float, ids: tuple[int, int, int, int]):
        super().__init__()
        self.config = AdapterConfig(base_signature(model), rank, alpha, ids)
        self.register_buffer("ids", torch.tensor(ids), persistent=False)
        self.n_layers = model.cfg.n_layers
        self.lora = nn.ParameterDict()
        for i in range(model.cfg.n_layers):
            for name, (n_out, n_in) in projection_shapes(model).items():
                a = torch.empty(rank, n_in)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                self.lora[f"layers_{i}_{name}_a"] = nn.Parameter(a)
                self.lora[f"layers_{i}_{name}_b"] = nn.Parameter(torch.zeros(n_out, rank))
        self.fim_rows = nn.Parameter(model.model.embed_tokens.weight[self.ids].float().clone())

    def pair(self, layer: int, name: str) -> tuple[Tensor, Tensor]:
        return self.lora[f"layers_{layer}_{name}_a"], self.lora[f"layers_{layer}_{name}_b"]

    def tensors(self) -> dict[str, Tensor]:
        """The adapter file's tensors (codegemma.adapter.lora's names), in bfloat16 (fim rows float32)."""
        out = {f"layers.{i}.{name}.{part}": self.lora[f"layers_{i}_{name}_{part}"].detach().to("cpu", torch.bfloat16)
               for i in range(self.n_layers) for name in PROJECTIONS for part in "ab"}
        out["fim_rows"] = self.fim_rows.detach().to("cpu", torch.float32)
        return out


def _projection(layer: nn.Module, name: str) -> nn.Linear:
    owner = layer.mlp if name in ("gate_proj", "up_proj", "down_proj") else layer.self_attn
    return getattr(owner, name)


def _lora(linear: nn.Linear, a: Tensor, b: Tensor, scale: float, x: Tensor) -> Tensor:
    return linear(x) + F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype)) * scale


def target_logits(model: Transformer, adapter: TrainableAdapter, tokens: Tensor, targets: Tensor) -> Tensor:
    """Logits [n, V] (float32) predicting tokens[targets] of one sequence tokens [1, S] with the adapter on:
    the model's own layers, attention over the sequence itself (no cache)."""
    cfg, S = model.cfg, tokens.shape[1]
    scale = adapter.config.scale
    dtype = model.model.embed_tokens.weight.dtype
    x = embed_with_rows(model.model.embed_tokens(tokens), tokens, adapter.ids, adapter.fim_rows)
    device = tokens.device
    x = x * torch.tensor(math.sqrt(cfg.d_model), dtype=dtype, device=device)
    masks = model.masks(0, S, device)
    ropes = {b: tuple(t.to(device, dtype) for t in rope_tables(cfg.head_dim, b, S)) for b in
             {cfg.rope_base_for(i) for i in range(cfg.n_layers)}}
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn

        def project(name: str, h: Tensor, i: int = i) -> Tensor:
            return _lora(_projection(layer, name), *adapter.pair(i, name), scale, h)

        def attend(h: Tensor, attn: nn.Module = attn) -> Tensor:
            qkv = torch.cat([project("q_proj", h), project("k_proj", h), project("v_proj", h)], dim=-1)
            q, k, v = attn.heads(qkv, *ropes[attn.rope_base])
            out = attn.attend(q, k, v, masks[attn.sliding])  # [1, H, S, D]
            return project("o_proj", out.transpose(1, 2).reshape(1, S, -1))

        def mlp_forward(h: Tensor) -> Tensor:
            return project("down_proj", F.gelu(project("gate_proj", h), approximate="tanh") * project("up_proj", h))

        x = layer.block(x, attend, mlp_forward)
    # position p predicts token p + 1: only the positions before a target run through the output layer
    h = model.model.norm(x[0, targets.nonzero()[:, 0] - 1])  # [n, D]
    weight = model.model.embed_tokens.weight
    logits = F.linear(h, weight).float()
    logits[:, adapter.ids] = F.linear(h.float(), adapter.fim_rows)
    if cfg.final_softcap is not None:
        logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


def example_loss(model: Transformer, adapter: TrainableAdapter, tokens: list[int], targets: list[bool]) -> Tensor:
    device = adapter.fim_rows.device
    t = torch.tensor([tokens], device=device)
    mask = torch.tensor(targets, device=device)
    return F.cross_entropy(target_logits(model, adapter, t, mask), t[0, mask], reduction="sum")


def lr_at(step: int, cfg: TrainConfig, tokens: int) -> float:
    """Linear warm-up, then a cosine from 1 to 0.1 over the planned tokens (0.1 after them)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    done = min(1.0, tokens / cfg.planned_tokens)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * done))


@dataclass
class Progress:
    step: int = 0
    example: int = 0  # the next example's index in the stream
    tokens: int = 0  # tokens through the model
    target_tokens: int = 0  # tokens in the loss
    seconds: float = 0.0  # training time, summed over resumed runs


def _save_checkpoint(out: Path, adapter: TrainableAdapter, opt: torch.optim.Optimizer, progress: Progress,
                     cfg: TrainConfig) -> None:
    tmp = out / "checkpoint.tmp"
    torch.save({"adapter": adapter.state_dict(), "optimizer": opt.state_dict(), "progress": asdict(progress),
                "config": asdict(cfg)}, tmp)
    tmp.replace(out / "checkpoint.pt")


def write_curve(out: Path, log: list[dict]) -> Path:
    """The training curve (loss against tokens seen) as out/curve.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt
    train = [r for r in log if "loss" in r]
    val = [r for r in log if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] / 1e6 for r in train], [r["loss"] for r in train], label="train (per target token)", alpha=0.6)
    ax.plot([r["tokens"] / 1e6 for r in val], [r["val_loss"] for r in val], "o-", label="held-out files")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy on middle + end token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=110)
    plt.close(fig)
    return out / "curve.png"


@torch.no_grad()
def validate(model: Transformer, adapter: TrainableAdapter, val: ExampleStream, n: int) -> float:
    total, count = 0.0, 0
    for i in range(n):
        e = val[i]
        total += float(example_loss(model, adapter, e.tokens, e.targets))
        count += sum(e.targets)
    return total / count


def train(spec: str | None, out: Path, cfg: TrainConfig, minutes: float, resume: bool,
          roots: list[Path] | None = None, checkpoint_minutes: float = 5.0, max_steps: int | None = None,
          device: str = "cpu", snapshot_tokens: int | None = None) -> Path:
    """Train (or continue) an adapter in `out` for at most `minutes` of training (and at most `max_steps`
    optimizer steps in all); returns the path of adapter.safetensors. With `snapshot_tokens`, the adapter is
    also kept as out/adapter-{tokens}.safetensors each time that many more tokens have been seen, so that an
    earlier point of the run can be chosen afterwards."""
    torch.manual_seed(cfg.seed)
    if device == "cpu":  # bf16 where the CPU computes it (AVX-512 BF16, AMX), else float32
        dtype = torch.bfloat16 if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() else torch.float32
    else:
        dtype = torch.bfloat16
    model, tokenizer = float_model(spec, dtype)
    model.to(device)
    ids = unused_ids(tokenizer)
    docs = load_corpus(roots or default_roots())
    if len(docs) < 2:
        raise CodegemmaError("train: fewer than two source files found to train on")
    train_docs, val_docs = split(docs, cfg.held_out, cfg.seed)
    mix = Mix(max_tokens=cfg.max_tokens)
    stream = ExampleStream(train_docs, tokenizer, ids, cfg.seed, mix)
    val = ExampleStream(val_docs, tokenizer, ids, cfg.seed + 1, mix)
    adapter = TrainableAdapter(model, cfg.rank, cfg.alpha, ids).to(device)
    params = [{"params": list(adapter.lora.values()), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
              {"params": [adapter.fim_rows], "lr": cfg.row_lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.99))
    progress = Progress()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    if resume and (out / "checkpoint.pt").is_file():
        try:
            state = torch.load(out / "checkpoint.pt", weights_only=True, map_location=device)
            adapter.load_state_dict(state["adapter"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, OSError) as e:
            raise CheckpointError(f"{out / 'checkpoint.pt'}: cannot resume from it ({type(e).__name__}: {e})") from None
        progress = Progress(**state["progress"])
        print(f"train: resuming at step {progress.step}, {progress.tokens:,} tokens", file=sys.stderr)
    elif log_path.exists():
        log_path.unlink()
    meta = {"base": adapter.config.base, "documents": len(docs), "train_documents": len(train_docs),
            "dtype": str(dtype).removeprefix("torch."), "device": device, "threads": torch.get_num_threads(),
            **asdict(cfg)}
    (out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"train: {len(train_docs)} files to train on, {len(val_docs)} held out; {meta['dtype']}, "
          f"{meta['threads']} threads; {minutes:g} min", file=sys.stderr)

    def log(record: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    if progress.step == 0:
        log({"tokens": 0, "val_loss": validate(model, adapter, val, cfg.val_examples)})
    start = time.monotonic()
    budget = minutes * 60
    last_checkpoint = start
    ema = None
    bar = tqdm(total=cfg.planned_tokens, initial=progress.tokens, unit="tok", unit_scale=True, desc="train",
               file=sys.stderr, dynamic_ncols=True)
    while time.monotonic() - start < budget and (max_steps is None or progress.step < max_steps):
        t0 = time.monotonic()
        for group, base_lr in zip(opt.param_groups, (cfg.lr, cfg.row_lr)):
            group["lr"] = base_lr * lr_at(progress.step, cfg, progress.tokens)
        loss_sum, n_target, n_tokens = 0.0, 0, 0
        examples = []
        while n_tokens < cfg.step_tokens:
            e = stream[progress.example]
            progress.example += 1
            examples.append(e)
            n_tokens += len(e.tokens)
        n_target = sum(sum(e.targets) for e in examples)
        for e in examples:
            loss = example_loss(model, adapter, e.tokens, e.targets) / n_target
            loss.backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress.step += 1
        progress.tokens += n_tokens
        progress.target_tokens += n_target
        elapsed = time.monotonic() - t0
        progress.seconds += elapsed
        ema = loss_sum if ema is None else 0.9 * ema + 0.1 * loss_sum
        log({"step": progress.step, "tokens": progress.tokens, "loss": loss_sum, "seconds": round(progress.seconds, 1)})
        bar.update(n_tokens)
        bar.set_postfix_str(f"step {progress.step} loss {ema:.3f}", refresh=False)
        if snapshot_tokens and progress.tokens // snapshot_tokens > (progress.tokens - n_tokens) // snapshot_tokens:
            save_adapter(out / f"adapter-{progress.tokens}.safetensors", adapter.config, adapter.tensors(),
                         {"tokens": str(progress.tokens), "steps": str(progress.step)})
        if time.monotonic() - last_checkpoint > checkpoint_minutes * 60:
            log({"tokens": progress.tokens, "val_loss": validate(model, adapter, val, cfg.val_examples)})
            _save_checkpoint(out, adapter, opt, progress, cfg)
            last_checkpoint = time.monotonic()
    bar.close()
    val_loss = validate(model, adapter, val, cfg.val_examples)
    log({"tokens": progress.tokens, "val_loss": val_loss})
    _save_checkpoint(out, adapter, opt, progress, cfg)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    write_curve(out, records)
    path = out / "adapter.safetensors"
    summary = {"tokens": progress.tokens, "target_tokens": progress.target_tokens, "steps": progress.step,
               "seconds": round(progress.seconds), "tok_s": round(progress.tokens / max(progress.seconds, 1e-9)),
               "val_loss_start": next(r["val_loss"] for r in records if "val_loss" in r), "val_loss": val_loss}
    save_adapter(path, adapter.config, adapter.tensors(), {k: str(v) for k, v in summary.items()})
    print(json.dumps(summary))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="codegemma train-fim", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="base model spec (default: the embedded Gemma 3 270M)")
    p.add_argument("--out", type=Path, default=Path("fim-adapter"), help="run folder: checkpoints, log, curve, adapter")
    p.add_argument("--minutes", type=float, default=120.0, help="training time limit (default 120)")
    p.add_argument("--tokens", type=int, default=TrainConfig.planned_tokens, help="tokens the schedule plans for")
    p.add_argument("--rank", type=int, default=TrainConfig.rank)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--step-tokens", type=int, default=TrainConfig.step_tokens)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to train (default: cuda when a GPU is there, else cpu)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in all")
    p.add_argument("--snapshot-tokens", type=int, default=None,
                   help="also keep the adapter as OUT/adapter-TOKENS.safetensors every this many tokens")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--source", type=Path, action="append", help="a folder of Python code to train on "
                   "(repeatable; default: the standard library and installed packages)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    cfg = TrainConfig(rank=args.rank, alpha=2.0 * args.rank, lr=args.lr, step_tokens=args.step_tokens,
                      planned_tokens=args.tokens, seed=args.seed)
    try:
        train(args.model, args.out, cfg, args.minutes, args.resume, args.source, max_steps=args.steps,
              device=args.device, snapshot_tokens=args.snapshot_tokens)
    except OSError as error:
        raise CodegemmaError(f"train-fim: {error}") from None
    except KeyboardInterrupt:
        print(f"\ntrain-fim: interrupted; `--resume --out {args.out}` continues from its last checkpoint "
              "(written every 5 minutes)", file=sys.stderr)
        return 130
    return 0

