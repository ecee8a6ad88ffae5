"""The `fim` command: output contract, positions, and one clear line with exit status 2 for bad input."""

from __future__ import annotations

import io
import json
import sys

import pytest

from fim.cli import main
from tests.tiny import tiny_checkpoint

SOURCE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
FAST = ["--model", tiny_checkpoint(), "--max-tokens", "3"]


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "calc.py"
    path.write_text(SOURCE)
    return path


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_json_has_exactly_text_range_debug(capsys, source):
    offset = SOURCE.index("    return a - b")
    status, out, err = _run(capsys, source, "--offset", offset, "--json", *FAST)
    assert status == 0 and err == ""
    result = json.loads(out)
    assert list(result) == ["text", "range", "debug"]
    assert result["range"] == [offset, offset]
    debug = result["debug"]
    assert debug["language"] == "python" and debug["prompt"]["format"] == "fim"
    assert debug["mode"] == {"multiline": False, "reason": "text right of the cursor"}
    assert debug["engine"]["prompt_tokens"] == debug["prompt"]["tokens"]["total"]


def test_candidates_list_every_candidate_in_the_debug_record(capsys, source):
    offset = SOURCE.index("    return a - b")
    status, out, _ = _run(capsys, source, "--offset", offset, "--json", "--candidates", 3, *FAST)
    rerank = json.loads(out)["debug"]["rerank"]
    assert status == 0 and rerank["made"] == 3 and len(rerank["candidates"]) == 3
    assert json.loads(out)["text"] == rerank["candidates"][rerank["chosen"]]["text"]
    status, out, _ = _run(capsys, source, "--offset", offset, "--json", "--candidates", 1, *FAST)
    assert "rerank" not in json.loads(out)["debug"]
    status, out, _ = _run(capsys, source, "--offset", offset, "--json", "--rerank-lines", *FAST)
    assert json.loads(out)["debug"]["rerank"]["made"] == 1


def test_plain_output_is_only_the_completion(capsys, source):
    status, out, _ = _run(capsys, source, "--line", 6, "--col", 5, "--single-line", "--json", *FAST)
    expected = json.loads(out)["text"]
    status, out, err = _run(capsys, source, "--line", 6, "--col", 5, "--single-line", *FAST)
    assert status == 0 and out == expected and err == ""


def test_line_col_and_byte_offset_agree_on_multibyte_text(capsys, tmp_path):
    path = tmp_path / "greet.py"
    path.write_text("name = 'Zoë 🙂'\nprint(name)\n", encoding="utf-8")
    by_col = json.loads(_run(capsys, path, "--line", 2, "--col", 7, "--json", *FAST)[1])
    offset = len("name = 'Zoë 🙂'\nprint(".encode("utf-8"))
    by_offset = json.loads(_run(capsys, path, "--offset", offset, "--json", *FAST)[1])
    assert by_col["debug"]["char_range"] == by_offset["debug"]["char_range"] == [21, 21]
    assert by_offset["range"] == [offset, offset]  # --offset answers in bytes, --line/--col in characters
    assert by_col["range"] == [21, 21]


def test_show_prompt_goes_to_stderr(capsys, source):
    status, out, err = _run(capsys, source, "--offset", 0, "--show-prompt", "--context", source, *FAST)
    assert status == 0
    assert "<|fim_prefix|>" in err and err.rstrip().endswith("<|fim_middle|>")
    assert "<|fim_prefix|>" not in out


def test_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SOURCE.encode())))
    status, out, _ = _run(capsys, "-", "--offset", 10, "--json", "--language", "python", *FAST)
    assert status == 0 and json.loads(out)["debug"]["language"] == "python"


def test_unknown_language_falls_back_to_text(capsys, tmp_path):
    path = tmp_path / "notes.unknownext"
    path.write_text("tasks:\n")
    status, out, _ = _run(capsys, path, "--offset", 6, "--json", *FAST)
    debug = json.loads(out)["debug"]
    assert status == 0 and debug["language"] == "text"
    assert debug["mode"]["reason"] == "after the block opener ':'"


def test_empty_file_gives_a_completion(capsys, tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("")
    status, out, _ = _run(capsys, path, "--offset", 0, "--json", *FAST)
    assert status == 0 and json.loads(out)["range"] == [0, 0]


def test_huge_file_prompt_stays_within_budget(capsys, tmp_path):
    path = tmp_path / "huge.py"
    path.write_text(SOURCE * 20000)  # about 1.4 MB
    status, out, _ = _run(capsys, path, "--offset", len(SOURCE) * 10000, "--prompt-budget", 300, "--json", *FAST)
    assert status == 0 and json.loads(out)["debug"]["prompt"]["tokens"]["total"] <= 300


@pytest.mark.parametrize("args, message", [
    (["{dir}/missing.py", "--offset", "0"], "missing.py: no such file"),
    (["{dir}/bin.py", "--offset", "0"], "bin.py: binary file, not text"),
    (["{dir}/latin1.py", "--offset", "0"], "latin1.py: not UTF-8 text"),
    (["{dir}", "--offset", "0"], "is a directory"),
    (["{dir}/u.py", "--offset", "999"], "offset 999 is past the end of the file (9 bytes)"),
    (["{dir}/u.py", "--offset", "1"], "offset 1 is inside a multi-byte UTF-8 character"),
    (["{dir}/u.py", "--line", "5", "--col", "1"], "line 5 is past the end of the file"),
    (["{dir}/u.py", "--line", "1", "--col", "40"], "column 40 is past the end of line 1"),
    (["{dir}/u.py"], "give the cursor as --offset N or as --line L --col C"),
    (["{dir}/u.py", "--offset", "0", "--line", "1", "--col", "1"], "either --offset or --line/--col"),
    (["{dir}/u.py", "--offset", "x"], "invalid int value"),
    (["{dir}/u.py", "--offset", "0", "--max-tokens", "0"], "max_tokens must be at least 1"),
    (["{dir}/u.py", "--offset", "0", "--multiline", "--single-line"], "not allowed with argument"),
    (["{dir}/u.py", "--offset", "0", "--context", "{dir}/missing.py"], "missing.py: no such file"),
    (["{dir}/u.py", "--offset", "0", "--candidates", "0"], "candidates must be from 1 to 16"),
    (["{dir}/u.py", "--offset", "0", "--candidates", "2", "--rerank-budget-ms", "0"], "rerank_budget_ms must be positive"),
    (["{dir}/u.py", "--offset", "0", "--model", "{dir}/no-model"], "no-model: no such file or directory"),
])
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, args, message):
    (tmp_path / "bin.py").write_bytes(b"\x7fELF\x00\x01\x02")
    (tmp_path / "latin1.py").write_bytes("café = 1\n".encode("latin-1"))
    (tmp_path / "u.py").write_text("é = 1\nx\n", encoding="utf-8")
    status, out, err = _run(capsys, *[a.format(dir=tmp_path) for a in args])
    assert status == 2 and out == ""
    assert err.startswith("fim: ") and err.count("\n") == 1 and message in err
