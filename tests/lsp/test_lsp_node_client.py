"""The server driven by a client on Microsoft's LSP libraries (vscode-languageserver-protocol, node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lsp.harness import REPO, expected_text, server_command, server_env
from tests.tiny import tiny_checkpoint

NODE_DIR = Path(__file__).parent / "node"


def test_vscode_languageserver_protocol_client():
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    assert (NODE_DIR / "node_modules" / "vscode-languageserver-protocol").is_dir(), \
        "run `npm ci --prefix tests/lsp/node` first"
    run = subprocess.run(["node", str(NODE_DIR / "client.mjs"), *server_command("--model", tiny_checkpoint())],
                         capture_output=True, text=True, timeout=180, env=server_env(), cwd=str(REPO))
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["capabilities"]["inlineCompletionProvider"] == {}
    assert seen["progress"][0] == "begin" and seen["progress"][-1] == "end"
    text = "def area(r):\n    return 3.14 * \n"
    expected = expected_text(text, text.index("* ") + 2, path="node.py")
    point = {"line": 1, "character": 18}
    assert seen["inline"] == {"items": [{"insertText": expected, "range": {"start": point, "end": point}}]}
    assert seen["completion"]["isIncomplete"] is True
    assert seen["exitCode"] == 0
