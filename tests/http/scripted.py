"""A test engine that writes a given text at a given pace, for timing rules (t_max_predict_ms) that a random
tiny model cannot show: its prompt goes through the real tokenizer, its text comes from the script."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from codegemma import GenerateOptions, GenStats
from codegemma.generate import Generation
from tests.tiny import tiny_engine


class ScriptedEngine:
    """Sleeps `prefill_s`, then emits `pieces` one per `step_s`, honouring stop strings, the deadline,
    max_new_tokens and should_stop like the real engine."""

    name = "scripted"
    supports_fim = True
    max_seq_len = 1024

    def __init__(self, pieces: Sequence[str], prefill_s: float, step_s: float) -> None:
        self.tokenizer = tiny_engine().tokenizer
        self.pieces = list(pieces)
        self.prefill_s = prefill_s
        self.step_s = step_s

    def generate(self, prompt: Sequence[int], options: GenerateOptions = GenerateOptions(), *,
                 on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 draft_sources: Sequence[Sequence[int]] = ()) -> Generation:
        started = time.monotonic()
        time.sleep(self.prefill_s)
        prefill_s = time.monotonic() - started
        text, reason, count = "", "eos", 0
        for piece in self.pieces:
            if count >= options.max_new_tokens:
                reason = "max_tokens"
                break
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            if options.deadline is not None and time.monotonic() > options.deadline:
                reason = "deadline"
                break
            time.sleep(self.step_s)
            text += piece
            count += 1
            if on_text is not None:
                on_text(piece)
            hit = next((s for s in options.stop_strings if s in text), None)
            if hit is not None:
                text, reason = text[:text.index(hit)], "stop_string"
                break
        total = time.monotonic() - started
        stats = GenStats(prompt_tokens=len(prompt), new_tokens=count, forward_passes=count + 1,
                         prefill_s=prefill_s, decode_s=total - prefill_s, total_s=total)
        return Generation(list(range(count)), text, reason, stats)
