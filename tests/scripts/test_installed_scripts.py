"""The installed console scripts, run as editors and users run them: `codegemma lsp` and `codegemma serve`
as servers, `fim` on a file, from the environment's bin directory, outside the repository and without
PYTHONPATH, with the tiny checkpoint as the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fim.cli import main as fim_main
from lsp.client import LspClient
from tests.http.http_harness import serving
from tests.lsp.harness import ROOT_URI, TEST_OPTIONS, assert_inline_matches, inline, opened, pos
from tests.tiny import tiny_checkpoint

# Without PYTHONPATH the scripts import the installed packages, as they do for users.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
SOURCE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return \n"


def script(name: str) -> str:
    """The console script `name` next to this interpreter (the environment's bin directory)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"the {name!r} script is not installed next to {sys.executable} (pip install -e .)")
    return str(path)


def run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)


def test_codegemma_lsp_answers_a_language_client(tmp_path):
    client = LspClient([script("codegemma"), "lsp", "--model", tiny_checkpoint()], env=ENV, cwd=str(tmp_path))
    try:
        client.initialize(ROOT_URI, TEST_OPTIONS)
        client.wait_model_ready(timeout=120)
        text = "import os\n\ndef list_files(path):\n    return os.l\n"
        with opened(client, text):
            assert_inline_matches(inline(client, pos(3, 15)).result(), text, text.index("os.l") + 4)
    finally:
        assert client.close() == 0
    assert not any("Traceback" in line for line in client.stderr_lines), "\n".join(client.stderr_lines)


def test_codegemma_serve_completes_over_http():
    proc = subprocess.Popen([script("codegemma"), "serve", "--port", "0", "--model", tiny_checkpoint(),
                             "--log-level", "warning"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    with serving(proc) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert url.startswith("http://127.0.0.1:")  # loopback unless asked otherwise
        r = http.post("/infill", json={"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n",
                                       "n_predict": 3})
        assert r.status_code == 200 and isinstance(r.json()["content"], str)


def test_fim_completes_a_file_as_in_process(tmp_path, capsys):
    path = tmp_path / "calc.py"
    path.write_text(SOURCE)
    argv = [str(path), "--line", "6", "--col", "12", "--model", tiny_checkpoint(), "--max-tokens", "3"]
    done = run(tmp_path, script("fim"), *argv)
    assert fim_main(argv) == 0
    assert done.returncode == 0 and done.stdout and done.stdout == capsys.readouterr().out and done.stderr == ""


def test_codegemma_unknown_command_is_one_line_and_usage(tmp_path):
    done = run(tmp_path, script("codegemma"), "nope")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["codegemma: unknown command 'nope'",
                                        "usage: codegemma {bench,eval,info,lsp,serve,train-fim} ..."]


def test_codegemma_bench_lists_the_benches(tmp_path):
    done = run(tmp_path, script("codegemma"), "bench")
    assert done.returncode == 2
    assert done.stderr == "usage: codegemma bench {completion,decode,http,lsp,remote,speculative} ...\n"
