"""Shared fixtures of the fim tests: tiny random-weight engines (real architecture and tokenizer)."""

from __future__ import annotations

import pytest
from tests.tiny import tiny_engine


@pytest.fixture(scope="session")
def fim_engine():
    """A tiny engine whose tokenizer has the four CodeGemma FIM tokens."""
    return tiny_engine(fim=True)


@pytest.fixture(scope="session")
def plain_engine():
    """A tiny left-to-right engine (no FIM tokens), like the embedded Gemma 3 270M."""
    return tiny_engine(fim=False)
