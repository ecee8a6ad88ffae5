"""What a person looks at after a run: the summary numbers, a terminal table, a Markdown report, PNG plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)

from eval.sandbox import GUARD_WARNING  # noqa: E402
from eval.scoring import count_correct, pass_at_k_table, wilson_interval  # noqa: E402


def summarize(records: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """Per benchmark: tasks, samples, pass@k, exact match (infilling), latency and speculation numbers."""
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_benchmark[record["benchmark"]].append(record)
    return {name: _summarize_one(rows) for name, rows in by_benchmark.items()}


def _summarize_one(rows: list[dict]) -> dict[str, Any]:
    counts = count_correct(rows)
    summary: dict[str, Any] = {"tasks": len(counts), "samples": len(rows), **pass_at_k_table(counts)}
    if "pass@1" in summary:  # 95% interval over tasks (the unit that varies between benchmark draws)
        summary["pass@1_ci95"] = wilson_interval(summary["pass@1"] * len(counts), len(counts))
    matches = [r["exact_match"] for r in rows if "exact_match" in r]
    if matches:
        summary["exact_match"] = sum(matches) / len(matches)
        summary["exact_match_ci95"] = wilson_interval(sum(matches), len(matches))
    chosen = [r["rerank_chosen"] for r in rows if "rerank_chosen" in r]
    if chosen:  # how often reranking answered with another candidate than the first (greedy) one
        summary["rerank_changed"] = sum(c != 0 for c in chosen) / len(rows)
    for key in ("ttft_s", "total_s"):
        values = sorted(r[key] for r in rows if r.get(key) is not None)
        if values:
            summary[f"{key[:-2]}_p50_s"] = statistics.median(values)
            summary[f"{key[:-2]}_p95_s"] = values[min(len(values) - 1, int(0.95 * len(values)))]
    tokens = sum(r.get("new_tokens") or 0 for r in rows)
    seconds = sum(r.get("total_s") or 0.0 for r in rows)
    if tokens and seconds:
        summary["tokens_per_s"] = tokens / seconds
    drafted = sum(r.get("drafted") or 0 for r in rows)
    if drafted:
        summary["acceptance_rate"] = sum(r.get("accepted") or 0 for r in rows) / drafted
    return summary


COLUMNS = (("tasks", "tasks", "{:d}"), ("samples", "samples", "{:d}"), ("pass@1", "pass@1", "{:.1%}"),
           ("pass@1_ci95", "pass@1 95% CI", "interval"),
           ("pass@10", "pass@10", "{:.1%}"), ("pass@100", "pass@100", "{:.1%}"), ("exact_match", "exact", "{:.1%}"),
           ("exact_match_ci95", "exact 95% CI", "interval"), ("rerank_changed", "reranked", "{:.1%}"),
           ("ttft_p50_s", "ttft p50", "{:.3f}s"), ("total_p50_s", "total p50", "{:.3f}s"),
           ("total_p95_s", "total p95", "{:.3f}s"), ("tokens_per_s", "tok/s", "{:.1f}"),
           ("acceptance_rate", "accepted", "{:.1%}"))


def table(rows: dict[str, dict[str, Any]], first: str = "benchmark") -> list[list[str]]:
    """Rows of cells (header first) with only the columns some row has."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in rows.values())]
    cells = [[first] + [title for _, title, _ in columns]]
    for name, row in rows.items():
        cells.append([name] + [_cell(row[key], fmt) if key in row else "-" for key, _, fmt in columns])
    return cells


def _cell(value: Any, fmt: str) -> str:
    if fmt == "interval":
        low, high = value
        return f"{low:.1%}-{high:.1%}"
    return fmt.format(value)


def terminal_table(cells: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + " --- |" * len(cells[0]))
    return "\n".join(lines)


def write_report(out_dir: Path, summary: dict[str, dict[str, Any]], records: list[dict],
                 settings: dict[str, Any], command: str) -> list[Path]:
    """report.md and the PNG plots in `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [_plot_pass_at_k(out_dir, summary), _plot_latency(out_dir, records), _plot_acceptance(out_dir, records)]
    written = [p for p in plots if p is not None]
    lines = ["# Evaluation report", "", f"Command: `{command}`", ""]
    if settings.get("isolation") == "guard":
        lines += [f"**{GUARD_WARNING.strip()}**", ""]
    lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
              markdown_table(table(summary)), ""]
    failures = _failure_reasons(records)
    if failures:
        lines += ["## Most common failure reasons", "", "| count | reason |", "| --- | --- |"]
        lines += [f"| {count} | `{reason}` |" for reason, count in failures]
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in written]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [report, *written]


def _failure_reasons(records: list[dict], top: int = 10) -> list[tuple[str, int]]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        if not record["passed"]:
            counts[record["result"][:100].replace("|", "/").replace("`", "'")] += 1
    return sorted(counts.items(), key=lambda item: -item[1])[:top]


def _plot_pass_at_k(out_dir: Path, summary: dict[str, dict[str, Any]]) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    names = list(summary)
    ks = [k for k in ("pass@1", "pass@10", "pass@100") if any(k in s for s in summary.values())]
    width = 0.8 / max(1, len(ks))
    for i, k in enumerate(ks):
        axes.bar([x + i * width for x in range(len(names))], [100 * summary[n].get(k, 0.0) for n in names],
                 width, label=k)
    axes.set_xticks([x + width * (len(ks) - 1) / 2 for x in range(len(names))], names)
    axes.set_ylabel("% of tasks")
    axes.set_ylim(0, 100)
    axes.set_title("pass@k per benchmark")
    axes.legend()
    return _save(figure, out_dir / "pass_at_k.png")


def _plot_latency(out_dir: Path, records: list[dict]) -> Path | None:
    totals = [r["total_s"] for r in records if r.get("total_s") is not None]
    if not totals:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(totals, bins=40, alpha=0.7, label="total")
    axes.hist([r["ttft_s"] for r in records if r.get("ttft_s") is not None], bins=40, alpha=0.7,
              label="time to first token")
    axes.set_xlabel("seconds per completion")
    axes.set_ylabel("completions")
    axes.set_title("Completion latency")
    axes.legend()
    return _save(figure, out_dir / "latency.png")


def _plot_acceptance(out_dir: Path, records: list[dict]) -> Path | None:
    per_task: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        if record.get("drafted"):
            totals = per_task[(record["benchmark"], record["task_id"])]
            totals[0] += record.get("accepted") or 0
            totals[1] += record["drafted"]
    if not per_task:
        return None
    figure, axes = plt.subplots(figsize=(8, 4))
    for benchmark in sorted({b for b, _ in per_task}):
        rates = [a / d for (b, _), (a, d) in per_task.items() if b == benchmark]
        axes.plot(range(len(rates)), [100 * r for r in rates], ".", label=benchmark)
    axes.set_xlabel("task (in benchmark order)")
    axes.set_ylabel("accepted draft tokens, %")
    axes.set_ylim(0, 100)
    axes.set_title("Speculative acceptance rate by task")
    axes.legend()
    return _save(figure, out_dir / "acceptance.png")


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
