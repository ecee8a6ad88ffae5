"""Prompt building, exact in model tokens.

Layout (FIM model, CodeGemma PSM with multi-file context):
    <bos> (<|file_separator|>{path}\n{snippet}\n)* <|file_separator|>{current path}\n
    <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>
  or, for a model that takes SPM (the embedded model's FIM adapter), the same up to the path, then
    <|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}
Layout (left-to-right model): <bos> ({comment} {path}\n{snippet}\n\n)* {comment} {current path}\n {prefix}

Special tokens are placed by id (never by encoding their strings, which a user's file may contain), and
text is cut only at character boundaries, so no UTF-8 character or special token is ever split. The
layout is stable between keystrokes: context first, then the prefix, whose far end is trimmed at line
granularity in coarse steps, so typing at the cursor leaves everything before the cursor a token prefix
of the previous prompt and the engine can reuse its KV cache.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace

from codegemma.tokenizer import Tokenizer

from fim.context import Snippet
from fim.errors import BadRequestError
from fim.languages import line_comment

DEFAULT_PROMPT_BUDGET = 1024  # prompt tokens: a few hundred ms of prefill on CPU, less after cache reuse
CONTEXT_SHARE = 0.3  # at most this part of the budget goes to other files
SUFFIX_SHARE = 0.15  # at most this part goes to the suffix (FIM prompts only)
PREFIX_LINE_STEP = 16  # the prefix's first line is a multiple of the step, so it moves rarely while typing;
PREFIX_STEP_TOKENS = 64  # the step is one line per this many tokens of prefix budget (at most PREFIX_LINE_STEP),
# so a small budget does not waste most of itself on slack
PREFIX_CHAR_STEP = 64  # same, within one over-long line
MIN_PREFIX_TOKENS = 8  # a budget that cannot hold this much of the prefix is an error


@dataclass
class Segment:
    """A run of prompt tokens from one source: "special", "path", "context", "prefix" or "suffix"."""

    source: str
    text: str
    ids: list[int]


@dataclass
class Prompt:
    """The prompt token ids with the segments they came from."""

    fim: bool
    budget: int
    segments: list[Segment] = field(default_factory=list)
    prefix_start: int = 0  # character offset of the first prefix character kept
    suffix_end: int = 0  # character offset after the last suffix character kept
    snippets: list[Snippet] = field(default_factory=list)  # the candidates given, each marked used or dropped

    @property
    def ids(self) -> list[int]:
        return [i for segment in self.segments for i in segment.ids]

    def render(self) -> str:
        """The prompt as text, special tokens written as their pieces (for --show-prompt)."""
        return "".join(segment.text for segment in self.segments)

    def token_counts(self) -> dict[str, int]:
        """Prompt tokens per source, and the total."""
        counts = {source: 0 for source in ("special", "path", "context", "prefix", "suffix")}
        for segment in self.segments:
            counts[segment.source] += len(segment.ids)
        counts["total"] = sum(counts.values())
        return counts

    def add(self, source: str, text: str, ids: list[int]) -> None:
        self.segments.append(Segment(source, text, ids))


@functools.lru_cache(maxsize=65536)
def _line_tokens(tokenizer: Tokenizer, line: str) -> int:
    """Tokens of one line, cached: between keystrokes almost every line is unchanged."""
    return len(tokenizer.encode(line))


def display_paths(current: str, others: list[str]) -> dict[str, str]:
    """Paths as the prompt shows them: relative to the common directory when all are absolute."""
    paths = [current, *others]
    normalized = {p: p.replace(os.sep, "/") for p in paths}
    if all(os.path.isabs(p) for p in paths):
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
        return {p: os.path.relpath(p, root).replace(os.sep, "/") for p in paths}
    return normalized


def _aligned_cut(tokenizer: Tokenizer, text: str, budget: int, keep_end: bool) -> int:
    """Where to cut a single over-long line so that the kept part fits `budget` tokens.

    keep_end=True keeps text[cut:] (the prefix side): cut is the smallest multiple of PREFIX_CHAR_STEP
    that fits. keep_end=False keeps text[:cut] (the suffix side): cut is the largest that fits.
    """
    if keep_end:
        lo, hi = 0, len(text) // PREFIX_CHAR_STEP + 1  # search over step indices
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenizer.encode(text[mid * PREFIX_CHAR_STEP:])) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return min(len(text), lo * PREFIX_CHAR_STEP)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(text[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def line_step(budget: int) -> int:
    """Lines the prefix start moves by: coarse for big budgets (stable prompts), fine for small ones."""
    return max(1, min(PREFIX_LINE_STEP, budget // PREFIX_STEP_TOKENS))


def fit_prefix(tokenizer: Tokenizer, text: str, cursor: int, budget: int) -> tuple[int, list[int]]:
    """The start offset and token ids of the longest prefix that fits `budget`, nearest lines first.

    The first kept line is a multiple of `line_step(budget)` (line 0 when everything fits).
    """
    step = line_step(budget)
    line_start = text.rfind("\n", 0, cursor) + 1
    current = text[line_start:cursor]
    used = len(tokenizer.encode(current))
    if used > budget:
        cut = line_start + _aligned_cut(tokenizer, current, budget, keep_end=True)
        return cut, tokenizer.encode(text[cut:cursor])
    lines = text[:line_start].split("\n")[:-1]  # complete lines before the cursor's line
    first = len(lines)
    while first > 0 and used + _line_tokens(tokenizer, lines[first - 1] + "\n") <= budget:
        used += _line_tokens(tokenizer, lines[first - 1] + "\n")
        first -= 1
    if first > 0:
        first = min(len(lines), -(-first // step) * step)
    while True:
        start = sum(len(line) + 1 for line in lines[:first])
        ids = tokenizer.encode(text[start:cursor])
        if len(ids) <= budget or first >= len(lines):
            return start, ids
        first = min(len(lines), first + step)  # per-line counts underestimated the joined text


def fit_suffix(tokenizer: Tokenizer, text: str, cursor: int, budget: int) -> tuple[int, list[int]]:
    """The end offset and token ids of the longest suffix that fits `budget`, nearest lines first."""
    if budget <= 0 or cursor == len(text):
        return cursor, []
    line_end = text.find("\n", cursor)
    first_end = len(text) if line_end < 0 else line_end + 1
    used = len(tokenizer.encode(text[cursor:first_end]))
    if used > budget:
        end = cursor + _aligned_cut(tokenizer, text[cursor:first_end], budget, keep_end=False)
        return end, tokenizer.encode(text[cursor:end])
    ends = [first_end]
    while ends[-1] < len(text):
        nxt = text.find("\n", ends[-1])
        nxt = len(text) if nxt < 0 else nxt + 1
        cost = _line_tokens(tokenizer, text[ends[-1]:nxt])
        if used + cost > budget:
            break
        used += cost
        ends.append(nxt)
    while True:
        ids = tokenizer.encode(text[cursor:ends[-1]])
        if len(ids) <= budget or len(ends) == 1:
            return ends[-1], ids
        ends.pop()


def build_prompt(tokenizer: Tokenizer, supports_fim: bool, path: str, text: str, cursor: int, language: str,
                 snippets: list[Snippet], budget: int) -> Prompt:
    """Assemble the prompt within `budget` tokens. `snippets` are left as they are: the prompt's `snippets`
    are copies, each candidate marked used or dropped with its token count."""
    fim = supports_fim and None not in (tokenizer.fim_prefix_id, tokenizer.fim_suffix_id, tokenizer.fim_middle_id)
    separator = tokenizer.file_separator_id if fim else None
    comment = line_comment(language)
    candidates = [s for s in snippets if s.status == "candidate"]
    paths = display_paths(path, [s.path for s in candidates])

    def piece(token: int) -> str:
        return tokenizer.id_to_piece(token)

    def file_header(file_path: str) -> tuple[list[int], str]:
        """Ids and text that introduce a file: a separator token when the model has one, else a comment."""
        if separator is not None:
            return [separator, *tokenizer.encode(f"{file_path}\n")], f"{piece(separator)}{file_path}\n"
        label = f"{comment} {file_path}\n"
        return tokenizer.encode(label), label

    prompt = Prompt(fim=fim, budget=budget)
    header_ids, header_text = file_header(paths[path])
    fixed = 1 + len(header_ids) + (3 if fim else 0)  # bos + current file header + the three FIM tokens
    room = budget - fixed
    if room < MIN_PREFIX_TOKENS:
        raise BadRequestError(f"prompt budget {budget} is too small: {fixed} tokens go to special tokens and the file path")

    suffix_end, suffix_ids = fit_suffix(tokenizer, text, cursor, min(int(budget * SUFFIX_SHARE), room // 2)) if fim else (cursor, [])
    context_left = min(int(budget * CONTEXT_SHARE), room - len(suffix_ids) - MIN_PREFIX_TOKENS)
    context: list[tuple[list[int], str]] = []
    decided: dict[int, Snippet] = {}  # id of a candidate given -> its marked copy
    for snippet in candidates:
        body = snippet.text if snippet.text.endswith("\n") else snippet.text + "\n"
        ids, label = file_header(paths[snippet.path])
        if separator is None:
            body += "\n"  # a blank line between files when there is no separator token
        ids = ids + tokenizer.encode(body)
        if len(ids) <= context_left:
            context_left -= len(ids)
            decided[id(snippet)] = replace(snippet, status="used", tokens=len(ids),
                                           reason=snippet.reason or f"similarity {snippet.score:.3f}")
            context.append((ids, label + body))
        else:
            decided[id(snippet)] = replace(snippet, status="dropped", tokens=len(ids), reason=f"over the context "
                                           f"budget ({len(ids)} tokens, {max(context_left, 0)} left)")
    # Best snippet last: nearest to the code being completed.
    prompt.add("special", piece(tokenizer.bos_id), [tokenizer.bos_id])
    for ids, rendered in reversed(context):
        prompt.add("context", rendered, ids)
    prompt.add("path", header_text, header_ids)
    prefix_budget = budget - len(prompt.ids) - len(suffix_ids) - (3 if fim else 0)
    prefix_start, prefix_ids = fit_prefix(tokenizer, text, cursor, prefix_budget)
    parts = {"prefix": (text[prefix_start:cursor], prefix_ids), "suffix": (text[cursor:suffix_end], suffix_ids)}
    for part in tokenizer.fim_layout() if fim else ("prefix",):
        if part in parts:
            prompt.add(part, *parts[part])
        else:
            token = getattr(tokenizer, f"{part}_id")
            prompt.add("special", piece(token), [token])
    prompt.prefix_start, prompt.suffix_end = prefix_start, suffix_end
    prompt.snippets = [decided.get(id(s), s) for s in snippets]
    return prompt
