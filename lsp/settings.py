"""Server settings: from `initializationOptions` and `workspace/didChangeConfiguration`.

Keys are camelCase as editors write them; a payload may also nest them under "codegemma" (what
VS Code sends for its "codegemma.*" settings). Unknown keys and invalid values are returned as
one-line problems for the client and leave the previous value in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Settings:
    model: str | None = None            # path or name codegemma.load accepts; None = embedded default
    server: str | None = None           # a running engine's URL (`--server`): no model is loaded here
    max_tokens: int = 64                # new tokens per completion
    temperature: float = 0.0            # 0 = greedy (deterministic ghost text)
    debounce_ms: int = 25               # wait this long for a newer request before running the model
    context: bool = True                # other open documents as multi-file context
    # languageId -> on/off; "*" sets the default for the languages not listed
    languages: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    speculative: bool | None = None     # speculative decoding: on/off; None = the engine's choice
    reuse_prompt: bool = True           # keep the prompt's KV cache between keystrokes
    # suffix-aware reranking (fim.rerank): up to `candidates` completions, the best by how likely the model
    # finds the code after the cursor; the budget caps how many a keystroke's request may afford
    rerank: bool = False
    candidates: int = 1                 # generated candidates; 1 + rerank_lines was the cheap winner measured
    rerank_budget_ms: int = 1000
    rerank_lines: bool = True           # also rerank each candidate cut at its line ends (scoring only)

    def enabled_for(self, language_id: str) -> bool:
        return self.languages.get(language_id, self.languages.get("*", True))


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value
    return check


def _number(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"a number from {low} to {high}")
        return float(value)
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _auto_boolean(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError("true, false, or null for the engine's choice")
    return value


def _model(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("a model path or name, or null for the default")
    return value


def _languages(value: Any) -> Mapping[str, bool]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in value.items()
    ):
        raise ValueError('an object of language id -> true/false, e.g. {"markdown": false}')
    return MappingProxyType(dict(value))


# JSON key -> (Settings field, converter that raises ValueError naming what it expects)
_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model": ("model", _model),
    "maxTokens": ("max_tokens", _integer(1, 2048)),
    "temperature": ("temperature", _number(0.0, 2.0)),
    "debounceMs": ("debounce_ms", _integer(0, 5000)),
    "context": ("context", _boolean),
    "languages": ("languages", _languages),
    "speculative": ("speculative", _auto_boolean),
    "reusePrompt": ("reuse_prompt", _boolean),
    "rerank": ("rerank", _boolean),
    "candidates": ("candidates", _integer(1, 16)),
    "rerankBudgetMs": ("rerank_budget_ms", _integer(1, 60000)),
    "rerankLines": ("rerank_lines", _boolean),
}


def apply_settings(base: Settings, payload: Any) -> tuple[Settings, list[str]]:
    """`base` updated with the valid keys of `payload`, and a problem line for each one ignored."""
    # An empty Lua table (Neovim) is encoded as an empty JSON array: no settings, not a mistake.
    if payload is None or payload == []:
        return base, []
    if isinstance(payload, dict) and isinstance(payload.get("codegemma"), (dict, list)):
        payload = payload["codegemma"]
        if payload == []:
            return base, []
    if not isinstance(payload, dict):
        return base, [f"settings must be an object, got {type(payload).__name__}: ignored"]
    changes: dict[str, Any] = {}
    problems = []
    for key, value in payload.items():
        if key not in _KEYS:
            problems.append(f"unknown setting {key!r} ignored (known: {', '.join(_KEYS)})")
            continue
        name, convert = _KEYS[key]
        try:
            changes[name] = convert(value)
        except ValueError as expected:
            problems.append(f"setting {key!r} = {value!r} ignored: expected {expected}")
    return replace(base, **changes), problems
