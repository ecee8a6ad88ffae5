"""Fixtures of the HTTP API tests: real servers over tiny engines (`codegemma.load(tiny_checkpoint())`)."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fim.http import ServerSettings
from fim.service import CompletionService
from tests.http.http_harness import API_KEY, LiveServer, start_server
from tests.tiny import tiny_checkpoint


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: uses the real default model (seconds to load)")


@pytest.fixture(scope="session")
def live() -> Iterator[LiveServer]:
    """The shared server: no API key, default limits, a tiny FIM engine."""
    server = start_server(CompletionService(tiny_checkpoint()),
                          ServerSettings(max_new_tokens=256, default_new_tokens=8))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


@pytest.fixture(scope="module")
def secured() -> Iterator[LiveServer]:
    """A server with an API key."""
    server = start_server(CompletionService(tiny_checkpoint()), ServerSettings(api_key=API_KEY, default_new_tokens=4))
    yield server
    server.stop()


@pytest.fixture
def metric():
    """Reads one sample from a /metrics text: metric(text, 'name{labels}') -> float (0 when absent)."""
    def read(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    return read
