"""`codegemma serve --engine` in front of llama-cpp-python's OpenAI-compatible server on the embedded GGUF:
the llama.cpp, Tabby and OpenAI routes answer from an engine that is not ours.

Needs the `bench` and `remote-test` extras (`pip install -e '.[bench,remote-test]'`); skipped, with the reason
printed, where they are missing or where the llama.cpp build cannot run on this CPU.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.http.http_harness import serving

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEEDED = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")


def _skip(reason: str) -> None:
    print(f"skipped: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def llama_server():
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        _skip(f"llama-cpp-python's server needs {', '.join(missing)}: pip install -e '.[bench,remote-test]'")
    from codegemma.loader import default_gguf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf()), "--n_ctx", "2048",
                             "--n_threads", "2", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # its log would fill a pipe
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                _skip(f"llama-cpp-python's server exited with status {proc.returncode} (a build for another CPU? "
                      "see the bench extra in the README)")
            try:
                if httpx.get(url + "/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama-cpp-python's server did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_serve_engine_fronts_llama_cpp_server(llama_server):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "fim.http.cli", "--port", "0", "--log-level", "warning",
                             "--engine", llama_server], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    prefix = "def fib(n):\n    "
    suffix = "\n\nprint(fib(10))\n"
    with serving(proc) as url, httpx.Client(base_url=url, timeout=120) as client:
        infill = client.post("/infill", json={"input_prefix": prefix, "input_suffix": suffix, "n_predict": 16})
        assert infill.status_code == 200, infill.text
        content = infill.json()["content"]
        assert content.strip(), "llama.cpp greedy-completes this function body"
        # greedy: every route asks the engine the same prompt, so the same text comes back
        openai = client.post("/openai/v1/completions", json={"prompt": prefix, "suffix": suffix, "max_tokens": 16,
                                                              "stream": True})
        assert openai.status_code == 200 and openai.text.rstrip().endswith("data: [DONE]")
        tabby = client.post("/v1/completions", json={"language": "python",
                                                     "segments": {"prefix": prefix, "suffix": suffix}})
        assert tabby.status_code == 200 and isinstance(tabby.json()["choices"][0]["text"], str)
        print(f"llama.cpp behind codegemma serve --engine: {content!r}")
