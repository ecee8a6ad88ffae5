"""End to end: the `fim` command with the real default model (embedded Gemma 3 270M) on a real file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codegemma.adapter.lora import DEFAULT_ADAPTER
from fim.languages import syntax_errors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fib.py"


@pytest.mark.slow
def test_fim_command_completes_the_readme_example():
    # One process, one model load: the README's first command, with --json to check the details.
    result = subprocess.run([sys.executable, "-m", "fim.cli", str(EXAMPLE), "--line", "16", "--col", "5", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    text, debug = answer["text"], answer["debug"]
    # the embedded model has no FIM tokens; the FIM adapter that ships for it gives it the FIM format
    assert debug["prompt"]["format"] == ("fim" if DEFAULT_ADAPTER.is_file() else "left-to-right")
    assert debug["mode"]["multiline"]
    # The memoised body mirrors the recursive one above it, and the completion stops where the function ends.
    assert "return fib_memo(n - 1) + fib_memo(n - 2)" in text and "def " not in text
    source = EXAMPLE.read_text()
    start, end = debug["char_range"]
    assert start == end == source.index("    \n\ndef fib_iterative") + 4
    assert syntax_errors("python", source[:start] + text + source[end:]) == []
