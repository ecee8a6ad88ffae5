"""Our model against transformers' reference implementations on the same tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

from codegemma.checkpoint import load_checkpoint
from tests.tiny import TINY_VOCAB, tiny_config

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_logits_match_transformers(arch, checkpoint_writer):
    cfg = tiny_config(arch, TINY_VOCAB)
    path = checkpoint_writer(cfg, shards=2)
    ours, _ = load_checkpoint(path, torch.float32)
    ours.setup_cache(64)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    # longer than the sliding window (8) so local and global layers differ
    tokens = torch.randint(0, TINY_VOCAB, (1, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = ours(tokens, torch.arange(29))
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_incremental_decode_matches_full_forward(arch, checkpoint_writer):
    """Prefill a prefix then feed tokens one at a time through the KV cache: same logits as one pass."""
    cfg = tiny_config(arch, TINY_VOCAB)
    model, _ = load_checkpoint(checkpoint_writer(cfg), torch.float32)
    model.setup_cache(64)
    tokens = torch.randint(0, TINY_VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    full = model(tokens, torch.arange(24))
    model.setup_cache(64)
    steps = [model(tokens[:, :10], torch.arange(10))]
    steps += [model(tokens[:, i:i + 1], torch.tensor([i])) for i in range(10, 24)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
