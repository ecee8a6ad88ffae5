"""The contract between the model core and the layers above it: how an engine is asked to generate, and
what `fim/` and `eval/` may rely on an engine to offer (`Engine` is the local implementation).

Keeping it a Protocol lets a caller be checked against the contract rather than against the local class,
so another engine (a remote one, a test double with the real tokenizer) can stand in without inheriting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from codegemma.generate import Generation
from codegemma.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerateOptions:
    """How one generation runs. Callbacks and the drafter's extra sources are arguments of `generate`, not
    options, because they belong to one call and are not settings."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: frozenset[int] | None = None  # None = the tokenizer's stop tokens; empty = never stop on a token
    stop_strings: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() value after which generation stops ("deadline")
    speculative: bool | None = None  # None = the engine's choice (on where speculation pays)
    cache_key: str | None = None  # which prompt-cache slot to reuse and refresh
    reuse_prompt: bool = True  # reuse the KV of an earlier prompt's common prefix


class EngineProtocol(Protocol):
    """What the completion service needs of an engine: its tokenizer, context size, FIM ability, name, and
    generation. One generation at a time: callers serialise."""

    name: str
    tokenizer: Tokenizer

    @property
    def supports_fim(self) -> bool: ...

    @property
    def max_seq_len(self) -> int: ...

    def generate(self, prompt: Sequence[int], options: GenerateOptions = GenerateOptions(), *,
                 on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 draft_sources: Sequence[Sequence[int]] = ()) -> Generation: ...


@runtime_checkable
class ScoringEngine(EngineProtocol, Protocol):
    """An engine that can also score a continuation of a prompt, reusing the prompt's cached KV: what
    suffix-aware reranking (`fim.rerank`) needs. Engines without it complete with one candidate."""

    def score_continuation(self, prompt: Sequence[int], continuation: Sequence[int],
                           cache_key: str | None = None) -> list[float]: ...
