"""Request field types and value conventions shared by the three API formats.

Each API has its own conventions (llama.cpp's -1 for "unlimited", negative temperature for greedy, ...);
the helpers here turn them into fim's CompletionOptions values in one place.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fim.languages import TEXT, normalize_language
from fim.request import MAX_CANDIDATES

# Below this the warped distribution is the argmax to float32 precision, and dividing logits by it
# overflows: such requests are served greedily.
MIN_TEMPERATURE = 1e-3
MAX_SEED = 2**64 - 1          # what torch.Generator.manual_seed accepts
MAX_TIME_BUDGET_MS = 600_000  # ten minutes: longer "budgets" are mistakes


def _valid_unicode(value: str) -> str:
    # JSON can carry lone UTF-16 surrogates ("\ud800") that no tokenizer can encode.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at character {error.start})") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, allow_inf_nan=False, description="nucleus sampling mass; 1 or more = off")]
Seed = Annotated[int, Field(ge=-1, le=MAX_SEED, description="-1 = a random seed")]
TimeBudgetMs = Annotated[int, Field(le=MAX_TIME_BUDGET_MS, description="0 or less = no time limit")]


def temperature(value: float) -> float:
    """0 (greedy) for anything at or below MIN_TEMPERATURE, llama.cpp's negative values included."""
    return value if value > MIN_TEMPERATURE else 0.0


def top_p(value: float) -> float:
    return min(value, 1.0)


def top_k(value: int) -> int:
    return max(value, 0)


def seed(value: int | None) -> int | None:
    return None if value is None or value < 0 else value


def time_budget(ms: int | None) -> int | None:
    return ms if ms is not None and ms > 0 else None


def stop_strings(values: list[str] | str | None) -> tuple[str, ...]:
    """Stop strings without the empty ones (an empty string would stop before the first token)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    return tuple(dict.fromkeys(s for s in values if s))


def language(name: str | None) -> str | None:
    """An editor's language id when fim knows it, else None so that the file extension decides."""
    if name is None or normalize_language(name, "") == TEXT:
        return None
    return name


class Extension(BaseModel):
    """codegemma's own request fields, under a `codegemma` key in every API format (llama.cpp, Tabby and
    OpenAI have no field for them): `{"codegemma": {"candidates": 4, "rerank_budget_ms": 800}}`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not silently ignored

    candidates: int = Field(1, ge=1, le=MAX_CANDIDATES, description="suffix-aware reranking: up to this many "
                            "candidates, the best by how likely they make the code after the cursor; 1 = off")
    rerank_budget_ms: int | None = Field(None, gt=0, le=MAX_TIME_BUDGET_MS, description="make another candidate "
                                         "only while the request is expected to finish within this many ms")
    rerank_lines: bool = Field(False, description="also rerank each candidate cut at its line ends (no extra "
                               "generation; works with one candidate too)")


def rerank(extension: Extension | None) -> dict[str, int | None]:
    """CompletionOptions fields from a request's `codegemma` object (absent: one candidate)."""
    if extension is None:
        return {}
    return {"candidates": extension.candidates, "rerank_budget_ms": extension.rerank_budget_ms,
            "rerank_lines": extension.rerank_lines}
