"""`codegemma lsp --server URL`: editors share one running engine instead of loading a model each, and a
remote engine that fails is shown once per failure episode, not once per keystroke."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsp.client import LspClient
from tests.http.engine_servers import EngineServer
from tests.http.http_harness import serving
from tests.lsp.harness import REPO, ROOT_URI, TEST_OPTIONS, inline, opened, pos, server_command, server_env
from tests.tiny import tiny_checkpoint

TEXT = "def add(a, b):\n    \n\nprint(add(1, 2))\n"
CURSOR = pos(1, 4)


def _client(*args: str) -> LspClient:
    client = LspClient(server_command(*args), env=server_env(), cwd=str(REPO))
    client.initialize(ROOT_URI, TEST_OPTIONS)
    client.wait_model_ready(timeout=120)
    return client


def _messages(client: LspClient) -> list[tuple[int, str]]:
    return [(m["params"]["type"], m["params"]["message"]) for m in client.notifications
            if m["method"] == "window/showMessage"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_two_editors_share_one_served_model():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "fim.http.cli", "--port", "0", "--log-level", "warning"],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with serving(proc) as url:
        loaded = _rss_mb(proc.pid)
        answers, growth, editors = [], [], []
        try:
            for _ in range(2):
                before = _rss_mb(proc.pid)
                editors.append(_client("--server", url))
                with opened(editors[-1], TEXT):
                    answers.append(inline(editors[-1], CURSOR).result(120))
                growth.append(_rss_mb(proc.pid) - before)
            editor_rss = [_rss_mb(e.process.pid) for e in editors]
        finally:
            for editor in editors:
                editor.close()
    print(f"served model RSS {loaded:.0f} MB after loading; growth per editor {growth[0]:.1f} / {growth[1]:.1f} MB; "
          f"editor processes {editor_rss[0]:.0f} / {editor_rss[1]:.0f} MB (no weights)")
    assert answers[0] == answers[1] and answers[0]["items"] and answers[0]["items"][0]["insertText"]
    # the model (253 MB of weights in memory-mapped blocks) loaded once: a second editor adds no copy of it
    assert growth[1] < 100


def test_a_failing_remote_engine_is_shown_once_per_episode():
    engine = EngineServer("down")
    client = _client("--server", engine.url, "--model", tiny_checkpoint())
    try:
        with opened(client, TEXT):
            for _ in range(3):
                assert inline(client, CURSOR).result(60) == {"items": []}
            errors = [m for m in _messages(client) if m[0] == 1]
            assert len(errors) == 1 and "remote engine" in errors[0][1] and "503" in errors[0][1]
            engine.behaviour = "ok"
            answer = inline(client, CURSOR).result(60)
            assert answer["items"][0]["insertText"] == "return a + b"
            assert (3, "CodeGemma: the remote engine answers again") in _messages(client)
            engine.behaviour = "down"
            for _ in range(2):
                assert inline(client, CURSOR).result(60) == {"items": []}
            assert len([m for m in _messages(client) if m[0] == 1]) == 2  # a new episode, told once more
        assert client.process.poll() is None
    finally:
        client.close()
        engine.close()
