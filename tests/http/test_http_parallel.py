"""`codegemma serve --parallel N`: concurrent HTTP clients decode together and get what one slot gives them;
a bad value is a one-line error."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from codegemma import kernels
from fim.http.cli import main
from fim.http.settings import ServerSettings
from fim.service import CompletionService
from tests.http.http_harness import start_server
from tests.tiny import tiny_checkpoint

BODIES = [{"input_prefix": prefix, "input_suffix": "\n", "n_predict": 8, "temperature": 0}
          for prefix in ("def add(a, b):\n    return ", "import os\nfor name in os.listdir(", "x = [i * i for i in ",
                         "class Point:\n    def __init__(self, x, y):\n        self.")]


def _answers(parallel: int) -> list[str]:
    server = start_server(CompletionService(tiny_checkpoint(), parallel=parallel), ServerSettings())
    try:
        with server.client(timeout=120) as client, ThreadPoolExecutor(len(BODIES)) as pool:
            responses = list(pool.map(lambda body: client.post("/infill", json=body), BODIES * 2))
    finally:
        server.stop()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json()["content"] for r in responses]


@pytest.mark.skipif(not kernels.available(), reason="rows are bit-identical with the native products only")
def test_concurrent_clients_get_what_one_slot_gives():
    assert _answers(parallel=4) == _answers(parallel=1)


def test_cli_rejects_a_bad_parallel(capsys):
    assert main(["--parallel", "0"]) == 2
    err = capsys.readouterr().err
    assert "--parallel must be 1..16, got 0" in err and "Traceback" not in err
