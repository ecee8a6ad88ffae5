"""Golden-file tests of the post-processing rules and the line-mode decision, per language.

Each file in golden/ is one case, in sections that start with a line `### name`:
    path           the file name (its extension gives the language)
    mode           optional: auto (default), single or multi, as a request would ask
    file           the file, with █ where the cursor is
    raw            optional: what the model generated
    expected_mode  optional: "single: <reason>" or "multi: <reason>" as decided
    expected       the completion after post-processing (needs raw)
    expected_rules optional: the rules that changed the completion, comma-separated, in order
A section's text ends with the newline before the next section header (one trailing newline dropped).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fim.languages import language_from_path
from fim.postprocess import decide_mode, postprocess

GOLDEN = Path(__file__).parent / "golden"
CURSOR = "█"


def _sections(path: Path) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("### "):
            current = line[4:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines[:-1] if lines and lines[-1] == "" else lines) for name, lines in sections.items()}


CASES = sorted(GOLDEN.glob("*.txt"))


def test_every_language_and_rule_has_golden_cases():
    languages = {language_from_path(_sections(p)["path"]) for p in CASES}
    assert {"python", "javascript", "typescript", "go", "rust", "java", "c", "cpp", "text"} <= languages
    rules = {r.strip() for p in CASES for r in _sections(p).get("expected_rules", "").split(",") if r.strip()}
    assert {"single_line", "block_end", "suffix_overlap", "syntax"} <= rules
    assert sum("expected_mode" in _sections(p) for p in CASES) >= 9


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_golden(case):
    sections = _sections(case)
    marked = sections["file"]
    assert marked.count(CURSOR) == 1, "a golden file marks exactly one cursor"
    cursor = marked.index(CURSOR)
    text = marked.replace(CURSOR, "")
    language = language_from_path(sections["path"])
    multiline, reason = decide_mode(text, cursor, language, sections.get("mode", "auto").strip())
    if "expected_mode" in sections:
        assert f"{'multi' if multiline else 'single'}: {reason}" == sections["expected_mode"].strip()
    if "raw" in sections:
        completion, steps = postprocess(sections["raw"], text, cursor, language, multiline)
        assert completion == sections["expected"]
        acted = [s["rule"] for s in steps if s["rule"] != "syntax" or s.get("action", "").startswith("shortened")]
        assert acted == [r.strip() for r in sections.get("expected_rules", "").split(",") if r.strip()]
