"""Shared fixtures: the benchmark data directory (../shared/datasets from the repo root) and a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.sandbox import Limits, Sandbox

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox(Limits(timeout_s=3.0), workers=2) as box:
        yield box
