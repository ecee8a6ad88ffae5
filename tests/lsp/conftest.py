"""Fixtures for the language server tests: real server subprocesses over stdio, tiny model."""

import pytest

from tests.lsp.harness import TEST_OPTIONS, start


@pytest.fixture(scope="module")
def lsp_server():
    """One tiny-model server shared by a test module (each server start costs a torch import)."""
    client = start(options=TEST_OPTIONS)
    yield client
    assert client.close() == 0
    assert not any("Traceback" in line for line in client.stderr_lines), "\n".join(client.stderr_lines)
