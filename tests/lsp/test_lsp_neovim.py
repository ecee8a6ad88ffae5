"""Neovim headless as the client (its own LSP implementation), set up with editors/nvim/codegemma.lua.

Needs `nvim` (Debian: apt-get install neovim, 0.7): the omnifunc / textDocument/completion path.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.lsp.harness import REPO, expected_text, server_command, server_env
from tests.tiny import tiny_checkpoint


def test_neovim_omnifunc_client(tmp_path):
    if shutil.which("nvim") is None:
        pytest.skip("nvim is not installed (apt-get install neovim)")
    source = tmp_path / "shapes.py"
    source.write_text("def area(side):\n    return \n")
    out = tmp_path / "seen.json"
    env = {**server_env(), "CODEGEMMA_REPO": str(REPO), "CODEGEMMA_FILE": str(source), "CODEGEMMA_OUT": str(out),
           "CODEGEMMA_CMD": json.dumps(server_command("--model", tiny_checkpoint()))}
    run = subprocess.run(["nvim", "--headless", "-u", "NONE", "-c", f"luafile {REPO}/tests/lsp/nvim/omnifunc.lua"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(out.read_text())
    assert "error" not in seen, seen.get("error")
    assert seen["omnifunc"] == "v:lua.vim.lsp.omnifunc" and seen["offset_encoding"] == "utf-16"
    text = "def area(side):\n    return squa\n"
    first_line = expected_text(text, text.index("squa") + 4, path="shapes.py").split("\n")[0]
    assert first_line.strip(), "the tiny model should complete something here (pick another test text)"
    (item,) = seen["result"]["items"]
    assert item["textEdit"]["newText"] == "squa" + first_line
    assert [entry["word"] for entry in seen["menu"]] == ["squa" + first_line]
    assert seen["stopped"]
