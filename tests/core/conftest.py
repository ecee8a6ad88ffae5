"""Fixtures for the model-core tests: tiny checkpoints written to disk in the Hugging Face layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from codegemma.config import GemmaConfig, to_hf_config
from codegemma.testing import random_model, tiny_tokenizer_model


def write_checkpoint(directory: Path, cfg: GemmaConfig, seed: int = 0, shards: int = 1, fim: bool = True) -> Path:
    """Write config.json, (sharded) model safetensors with an index, and tokenizer.model."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in random_model(cfg, seed).state_dict().items()}
    (directory / "config.json").write_text(json.dumps(to_hf_config(cfg)))
    (directory / "tokenizer.model").write_bytes(tiny_tokenizer_model(fim))
    names = sorted(state)
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"))
        return directory
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(directory / fname))
        weight_map.update({k: fname for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@pytest.fixture
def checkpoint_writer(tmp_path):
    return lambda cfg, **kw: write_checkpoint(tmp_path / cfg.name, cfg, **kw)
