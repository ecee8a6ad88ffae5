"""Prompt building: exact token budget, special ids by id, stable layout while typing, both prompt formats."""

from __future__ import annotations

import inspect
import os
import textwrap
import time

import pytest

from fim.context import Snippet
from fim.errors import BadRequestError
from fim.prompt import build_prompt, line_step

SOURCE = inspect.getsource(textwrap)  # a real, longish Python file
CURSOR = SOURCE.index("    def _split(self, text):")


def _snippet(path: str, text: str, score: float = 0.5) -> Snippet:
    return Snippet(path, text, 1, text.count("\n") + 1, "similar", score)


def _build(engine, text=SOURCE, cursor=CURSOR, budget=256, snippets=(), path="pkg/textwrap.py"):
    return build_prompt(engine.tokenizer, engine.supports_fim, path, text, cursor, "python", list(snippets), budget)


@pytest.mark.parametrize("budget", [40, 64, 150, 256, 700])
@pytest.mark.parametrize("engine_name", ["fim_engine", "plain_engine"])
def test_budget_is_exact_in_tokens(request, engine_name, budget):
    engine = request.getfixturevalue(engine_name)
    snippets = [_snippet("pkg/other.py", "def helper(width):\n    return width * 2\n" * 3)]
    prompt = _build(engine, budget=budget, snippets=snippets)
    counts = prompt.token_counts()
    assert counts["total"] == len(prompt.ids) <= budget
    # The file is far longer than any of these budgets: the prefix fills what is left, up to one step of
    # lines: one more step would not fit.
    prefix = next(s for s in prompt.segments if s.source == "prefix")
    prefix_budget = budget - (len(prompt.ids) - len(prefix.ids))
    lines_before = SOURCE[:prompt.prefix_start].split("\n")[:-1]
    longer = "\n".join(lines_before[-line_step(prefix_budget):]) + "\n" + prefix.text
    assert len(engine.tokenizer.encode(longer)) > prefix_budget
    if budget >= 150:
        assert len(prompt.ids) >= budget * 0.6
    for segment in prompt.segments:
        if segment.source in ("prefix", "suffix"):
            assert segment.ids == engine.tokenizer.encode(segment.text)


def test_fim_layout_and_special_ids(fim_engine):
    tok = fim_engine.tokenizer
    snippets = [_snippet("pkg/a.py", "def alpha():\n    pass\n", 0.9), _snippet("pkg/b.py", "def beta():\n    pass\n", 0.4)]
    prompt = _build(fim_engine, budget=400, snippets=snippets)
    ids = prompt.ids
    assert ids[0] == tok.bos_id
    assert ids.count(tok.fim_prefix_id) == ids.count(tok.fim_suffix_id) == ids.count(tok.fim_middle_id) == 1
    assert ids[-1] == tok.fim_middle_id
    assert ids.index(tok.fim_prefix_id) < ids.index(tok.fim_suffix_id)
    assert ids.count(tok.file_separator_id) == 3  # two snippets and the current file
    assert [s.status for s in prompt.snippets] == ["used", "used"]
    assert [s.status for s in snippets] == ["candidate", "candidate"]  # the caller's snippets are not edited
    rendered = prompt.render()
    # other files first, the best one nearest to the current file, then the current file's path
    assert rendered.index("pkg/b.py\n") < rendered.index("pkg/a.py\n") < rendered.index("<|file_separator|>pkg/textwrap.py\n<|fim_prefix|>")
    assert rendered.endswith("<|fim_middle|>")
    prefix = next(s for s in prompt.segments if s.source == "prefix")
    suffix = next(s for s in prompt.segments if s.source == "suffix")
    assert SOURCE[:CURSOR].endswith(prefix.text) and SOURCE[CURSOR:].startswith(suffix.text)
    assert prefix.text.endswith("\n") and suffix.text.startswith("    def _split")


def test_left_to_right_prompt(plain_engine):
    tok = plain_engine.tokenizer
    assert tok.fim_prefix_id is None
    snippets = [_snippet("pkg/a.py", "def alpha():\n    pass\n")]
    prompt = _build(plain_engine, budget=300, snippets=snippets)
    assert not prompt.fim and prompt.ids[0] == tok.bos_id
    assert [s.source for s in prompt.segments] == ["special", "context", "path", "prefix"]
    assert prompt.render().startswith(tok.id_to_piece(tok.bos_id) + "# pkg/a.py\ndef alpha():\n    pass\n\n# pkg/textwrap.py\n")
    assert prompt.token_counts()["suffix"] == 0 and prompt.suffix_end == CURSOR
    assert tok.decode(prompt.segments[-1].ids) == SOURCE[prompt.prefix_start:CURSOR]


def test_file_text_cannot_inject_special_tokens(fim_engine):
    tok = fim_engine.tokenizer
    text = "s = '<|fim_middle|><|file_separator|>'\nprint(s)\n"
    prompt = _build(fim_engine, text=text, cursor=len(text), budget=200)
    assert prompt.ids.count(tok.fim_middle_id) == 1 and prompt.ids.count(tok.file_separator_id) == 1


def test_prefix_keeps_nearest_lines_and_starts_on_a_step(fim_engine):
    prompt = _build(fim_engine, budget=200)
    kept = SOURCE[prompt.prefix_start:CURSOR]
    assert prompt.prefix_start > 0 and SOURCE[prompt.prefix_start - 1] == "\n"
    first_line = SOURCE[:prompt.prefix_start].count("\n")
    prefix_budget = 200 - (len(prompt.ids) - len(next(s for s in prompt.segments if s.source == "prefix").ids))
    assert line_step(prefix_budget) == 2
    assert first_line % 2 == 0  # coarse steps: the start moves rarely while typing
    assert kept.endswith("\n\n")  # nearest lines kept


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("engine_name", ["fim_engine", "plain_engine"])
def test_layout_stable_while_typing(request, engine_name):
    engine = request.getfixturevalue(engine_name)
    typed = "    def _split_words(self, text, width=70):\n        chunks = self.wordsep_re.split(text)\n"
    snippets = [_snippet("pkg/other.py", "def split_words(text):\n    return text.split()\n")]
    previous_prefix_end, previous, restarts, reused = 0, None, 0, []
    for n in range(len(typed) + 1):
        text = SOURCE[:CURSOR] + typed[:n] + SOURCE[CURSOR:]
        prompt = _build(engine, text=text, cursor=CURSOR + n, budget=256, snippets=snippets)
        ids = prompt.ids
        if previous is not None:
            common = _common_prefix(previous, ids)
            reused.append(common / len(previous))
            # Everything up to the last few prefix tokens (re-tokenised as characters are appended) is reused,
            # unless the far end of the prefix had to move forward.
            restarts += common < previous_prefix_end - 4
        segments = prompt.segments
        previous_prefix_end = sum(len(s.ids) for s in segments[: [s.source for s in segments].index("prefix") + 1])
        previous = ids
    assert restarts <= 2, f"the prompt start moved {restarts} times in {len(typed)} keystrokes"
    assert sum(reused) / len(reused) > 0.8


def test_never_cuts_inside_a_character(fim_engine):
    line = "x = '" + "é🙂漢字" * 400 + "'"  # one very long line of multi-byte characters
    text = "import os\n" + line + "\nprint(x)\n"
    cursor = text.index("\nprint")
    prompt = _build(fim_engine, text=text, cursor=cursor, budget=64)
    assert len(prompt.ids) <= 64
    prefix = next(s for s in prompt.segments if s.source == "prefix")
    assert fim_engine.tokenizer.decode(prefix.ids) == prefix.text == text[prompt.prefix_start:cursor]
    assert "\ufffd" not in fim_engine.tokenizer.decode(prompt.ids[1:])


def test_huge_file_prompt_stays_bounded_and_fast(fim_engine):
    text = SOURCE * 40  # about 800 kB
    cursor = len(text) // 2
    started = time.perf_counter()
    prompt = _build(fim_engine, text=text, cursor=cursor, budget=1024)
    assert len(prompt.ids) <= 1024
    assert time.perf_counter() - started < 5


def test_snippets_over_the_context_budget_are_dropped_with_a_reason(fim_engine):
    big = _snippet("pkg/big.py", "def big():\n" + "    x = 1\n" * 200, 0.9)
    small = _snippet("pkg/small.py", "def small():\n    pass\n", 0.5)
    decided = _build(fim_engine, budget=256, snippets=[big, small]).snippets
    assert decided[0].status == "dropped" and decided[0].reason.startswith("over the context budget")
    assert decided[1].status == "used" and decided[1].tokens
    assert big.status == small.status == "candidate" and big.tokens is None


def test_absolute_paths_are_shown_relative(fim_engine):
    root = os.path.abspath("/tmp/proj")
    snippets = [_snippet(f"{root}/lib/util.py", "def util():\n    pass\n")]
    rendered = _build(fim_engine, budget=300, snippets=snippets, path=f"{root}/app/main.py").render()
    assert "<|file_separator|>lib/util.py\n" in rendered and "<|file_separator|>app/main.py\n" in rendered


def test_budget_too_small(fim_engine):
    with pytest.raises(BadRequestError, match="too small"):
        _build(fim_engine, budget=10, path="a/very/long/path/to/a/file/somewhere/deep/inside/the/tree.py")
