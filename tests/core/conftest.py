"""Fixtures for the model-core tests: tiny checkpoints written to disk in the Hugging Face layout."""

from __future__ import annotations

import pytest

from tests.tiny import write_checkpoint


@pytest.fixture
def checkpoint_writer(tmp_path):
    return lambda cfg, **kw: write_checkpoint(tmp_path / cfg.name, cfg, **kw)
