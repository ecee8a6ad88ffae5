"""The FIM adapter: its training forward, a short real training run (resumed), loading it onto a model of each
weight path, the FIM prompts it enables, and the product without it."""

from __future__ import annotations

import random
from dataclasses import replace
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

import codegemma
from codegemma import kernels
from codegemma.adapter import lora
from codegemma.adapter.data import Document, ExampleStream, Mix, load_corpus, make_example
from codegemma.adapter.lora import AdapterConfig, save_adapter, unused_ids
from codegemma.adapter.train import TrainableAdapter, TrainConfig, target_logits, train
from codegemma.errors import CheckpointError, CodegemmaError
from codegemma.contract import GenerateOptions
from codegemma.tokenizer import Tokenizer
from tests.tiny import random_model, tiny_config, tiny_tokenizer_model, write_checkpoint


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_bytes(tiny_tokenizer_model(fim=False, unused=True))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    import argparse
    import json.decoder

    for module in (textwrap, argparse, json.decoder, random):
        shutil.copy(module.__file__, root / Path(module.__file__).name)
    (root / "tests").mkdir()
    shutil.copy(textwrap.__file__, root / "tests" / "left_out.py")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sources) -> tuple[Path, Path]:
    """A tiny checkpoint (a vocabulary without FIM tokens) and an adapter trained on it for a few steps."""
    root = tmp_path_factory.mktemp("adapter")
    model_dir = write_checkpoint(root / "tiny-plain", tiny_config(fim=False), fim=False, unused=True)
    cfg = TrainConfig(rank=4, alpha=8.0, lr=3e-3, step_tokens=256, planned_tokens=4096, max_tokens=128,
                      warmup_steps=2, val_examples=4, held_out=0.25)
    path = train(str(model_dir), root / "run", cfg, minutes=10, resume=False, roots=[sources], max_steps=3,
                 snapshot_tokens=300)
    return model_dir, path


def test_corpus_skips_tests_and_duplicates(sources):
    shutil.copy(sources / "textwrap.py", sources / "copy_of_textwrap.py")
    try:
        paths = sorted(d.path for d in load_corpus([sources]))
    finally:
        (sources / "copy_of_textwrap.py").unlink()
    assert "tests/left_out.py" not in paths
    assert len([p for p in paths if "textwrap" in p]) == 1
    assert "argparse.py" in paths


def test_examples_put_the_middle_last_with_loss_on_it_and_the_end_token(tokenizer):
    ids = unused_ids(tokenizer)
    doc = Document("pkg/mod.py", textwrap.dedent("""\
        def area(width, height):
            if width < 0 or height < 0:
                raise ValueError("negative")
            return width * height


        class Box:
            def __init__(self, w, h):
                self.w = w
                self.h = h
        """))
    rng = random.Random(1)
    kinds = set()
    for _ in range(60):
        e = make_example(doc, tokenizer, ids, rng, Mix())
        if e is None:
            continue
        kinds.add(e.kind)
        assert e.tokens[:2] == [tokenizer.bos_id, ids[3]]
        target = [t for t, m in zip(e.tokens, e.targets) if m]
        if e.kind == "l2r":
            continue
        assert target[-1] == ids[3]  # the end token
        middle = tokenizer.decode(target[:-1])
        first = e.targets.index(True)
        assert e.tokens[first:] == target and all(e.targets[first:]) and not any(e.targets[:first])
        pre, suf, mid = (e.tokens.index(i) for i in ids[:3])
        if e.kind == "psm":  # <pre> prefix <suf> suffix <mid> middle <sep>
            assert pre < suf < mid == first - 1
            prefix, suffix = tokenizer.decode(e.tokens[pre + 1:suf]), tokenizer.decode(e.tokens[suf + 1:mid])
        else:  # <pre> <suf> suffix <mid> prefix middle <sep>: the middle continues the prefix
            assert pre + 1 == suf < mid < first
            prefix, suffix = tokenizer.decode(e.tokens[mid + 1:first]), tokenizer.decode(e.tokens[suf + 1:mid])
        assert prefix + middle + suffix in doc.text and middle
    assert {"psm", "spm", "l2r"} <= kinds


def test_example_stream_is_a_function_of_seed_and_index(tokenizer):
    doc = [Document("a.py", textwrap.dedent(Path(textwrap.__file__).read_text()))]
    a, b = ExampleStream(doc, tokenizer, unused_ids(tokenizer), 3), ExampleStream(doc, tokenizer, unused_ids(tokenizer), 3)
    assert [a[i].tokens for i in (5, 0, 9)] == [b[i].tokens for i in (5, 0, 9)]
    assert a[1].tokens != a[2].tokens


def test_training_forward_matches_the_model_forward(tokenizer):
    model = random_model(tiny_config(fim=False, vocab_size=tokenizer.vocab_size), seed=3)
    adapter = TrainableAdapter(model, 4, 8.0, unused_ids(tokenizer))  # b = 0: the base model
    tokens = torch.tensor([tokenizer.encode(Path(textwrap.__file__).read_text()[:400], bos=True)])
    S = tokens.shape[1]
    assert S > tiny_config().sliding_window  # the sliding layers' mask matters
    targets = torch.zeros(S, dtype=torch.bool)
    targets[S // 2:] = True
    with torch.no_grad():
        got = target_logits(model, adapter, tokens, targets)
        model.setup_cache(S)
        want = model(tokens, torch.arange(S))[0, S // 2 - 1:-1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_training_lowers_held_out_loss_and_resumes_exactly(trained, tmp_path, sources):
    import json

    model_dir, path = trained
    run = path.parent
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in log if "val_loss" in r]
    assert len([r for r in log if "loss" in r]) == 3 and val[-1] < val[0]
    assert (run / "curve.png").read_bytes()[:4] == b"\x89PNG"
    # a snapshot each time another 300 tokens were passed, named by the tokens seen, loadable as an adapter
    seen = [r["tokens"] for r in log if "loss" in r]
    want = [t for before, t in zip([0, *seen], seen) if t // 300 > before // 300]
    snapshots = sorted(run.glob("adapter-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    assert want and [int(p.stem.split("-")[1]) for p in snapshots] == want
    assert lora.read_adapter(snapshots[-1])[1].keys() == lora.read_adapter(path)[1].keys()
    # resuming continues from the checkpoint: 3 steps + 2 more equals 5 straight
    cfg = TrainConfig(rank=4, alpha=8.0, lr=3e-3, step_tokens=256, planned_tokens=4096, max_tokens=128,
                      warmup_steps=2, val_examples=4, held_out=0.25)
    shutil.copytree(run, tmp_path / "resumed")
    resumed = train(str(model_dir), tmp_path / "resumed", cfg, 10, True, [sources], max_steps=5)
    straight = train(str(model_dir), tmp_path / "straight", cfg, 10, False, [sources], max_steps=5)
    a, b = lora.read_adapter(resumed)[1], lora.read_adapter(straight)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _logits(engine: codegemma.Engine, text: str) -> torch.Tensor:
    ids = engine.tokenizer.encode(text, bos=True)
    engine.model.setup_cache(engine.model.max_len)
    with torch.inference_mode():
        return engine.model(torch.tensor([ids]), torch.arange(len(ids)))[0, -1]


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_adapter_loads_changes_logits_and_enables_fim(trained, dtype):
    model_dir, path = trained
    plain = codegemma.load(str(model_dir), dtype=dtype, adapter="off")
    adapted = codegemma.load(str(model_dir), dtype=dtype, adapter=str(path))
    assert not plain.supports_fim and adapted.supports_fim
    ids = unused_ids(plain.tokenizer)
    t = adapted.tokenizer
    assert (t.fim_prefix_id, t.fim_suffix_id, t.fim_middle_id, t.file_separator_id) == ids
    assert set(ids) <= t.stop_ids
    a, b = _logits(plain, "def add(a, b):\n    return"), _logits(adapted, "def add(a, b):\n    return")
    assert (a - b).abs().max() > 1e-3
    # the FIM tokens embed through their trained rows: a prompt with them differs from one without
    tensors = lora.read_adapter(path)[1]
    assert not torch.equal(tensors["fim_rows"], plain.model.model.embed_tokens.weight[list(ids)].float()) \
        if isinstance(plain.model.model.embed_tokens, torch.nn.Embedding) else True


def test_fim_prompts_for_the_adapted_model_use_the_mapped_ids(trained):
    from fim.prompt import build_prompt

    model_dir, path = trained
    engine = codegemma.load(str(model_dir), adapter=str(path))
    ids = unused_ids(engine.tokenizer)
    text = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
    cursor = text.index("return ") + 7
    prompt = build_prompt(engine.tokenizer, engine.supports_fim, "m.py", text, cursor, "python", [], 256)
    # SPM, as the adapter was trained: <pre> <suf> suffix <mid> prefix, the completion continuing the prefix
    tok, got = engine.tokenizer, prompt.ids
    assert prompt.fim and got[1] == ids[3]
    pre = got.index(ids[0])
    assert got[pre + 1] == ids[1] and ids[2] in got
    mid = got.index(ids[2])
    assert tok.decode(got[pre + 2:mid]) == text[cursor:] and tok.decode(got[mid + 1:]) == text[:cursor]
    assert [s.source for s in prompt.segments][-5:] == ["special", "special", "suffix", "special", "prefix"]


@pytest.mark.skipif(not kernels.available(), reason=kernels.unavailable_reason())
def test_speculative_and_batched_greedy_equal_plain_with_the_adapter(trained):
    from codegemma.batch import Scheduler

    model_dir, path = trained
    engine = codegemma.load(str(model_dir), adapter=str(path))
    greedy = GenerateOptions(max_new_tokens=24, stop_ids=frozenset(), reuse_prompt=False, speculative=False)
    prompt = engine.tokenizer.encode("def add(a, b):\n    return a + b\n\ndef add(a, b):\n", bos=True)
    plain = engine.generate(prompt, greedy).tokens
    for k in (1, 4, 15):
        engine.max_draft = k
        assert engine.generate(prompt, replace(greedy, speculative=True)).tokens == plain
    others = [engine.tokenizer.encode(t, bos=True) for t in ("import os\n", "class A:\n", "x = [1, 2,")]
    scheduler = Scheduler(engine, slots=4)
    requests = [scheduler.submit(p, greedy) for p in (prompt, *others)]
    while scheduler.pending():
        scheduler.step()
    assert requests[0].result.tokens == plain


@pytest.mark.skipif(not kernels.available(), reason=kernels.unavailable_reason())
def test_gguf_blocks_take_the_adapter_merged_and_keep_the_chain(trained, tmp_path):
    from codegemma.gguf.chain import chain_for

    model_dir, path = trained
    # a stronger update than 3 training steps give, so that it stands well above 8-bit rounding
    config, tensors = lora.read_adapter(path)
    strong = tmp_path / "strong.safetensors"
    lora.save_adapter(strong, config, {k: v * 30 if k.endswith(".b") else v for k, v in tensors.items()})
    plain = codegemma.load(str(model_dir), quant="q8_0", adapter="off")
    merged = codegemma.load(str(model_dir), quant="q8_0", adapter=str(strong))
    assert plain.model.chain is not None and merged.model.chain is not None
    separate = codegemma.load(str(model_dir), quant="q8_0", adapter="off")
    separate.tokenizer = lora.attach(separate.model, separate.tokenizer, strong, merge=False)
    separate.model.chain = chain_for(separate.model)
    assert separate.model.chain is None  # the update added to each product's result: layer by layer
    text = "def add(a, b):\n    return"
    p, m, s = (_logits(e, text) for e in (plain, merged, separate))
    # merged (the update in the weights, re-quantized to Q8_0) is the separate update up to 8-bit rounding
    assert (m - s).abs().max() < 0.1 * (s - p).abs().max()
    greedy = GenerateOptions(max_new_tokens=12, stop_ids=frozenset(), reuse_prompt=False, speculative=False)
    prompt = merged.tokenizer.encode(text, bos=True)
    tokens = merged.generate(prompt, greedy).tokens
    assert merged.generate(prompt, replace(greedy, speculative=True)).tokens == tokens


def test_a_damaged_or_foreign_adapter_is_a_one_line_error(trained, tmp_path):
    model_dir, path = trained
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as error:
        codegemma.load(str(model_dir), adapter=str(bad))
    assert "\n" not in str(error.value) and "not a FIM adapter file" in str(error.value)
    config, tensors = lora.read_adapter(path)
    foreign = tmp_path / "foreign.safetensors"
    save_adapter(foreign, AdapterConfig("gemma3 18x640 ff2048 h4/1x256 v262144", config.rank, config.alpha, config.fim_ids), tensors)
    with pytest.raises(CheckpointError, match="an adapter for gemma3 18x640"):
        codegemma.load(str(model_dir), adapter=str(foreign))
    with pytest.raises(CodegemmaError, match="no such file"):
        codegemma.load(str(model_dir), adapter=str(tmp_path / "missing.safetensors"))
    with pytest.raises(CodegemmaError, match="no FIM adapter ships"):
        codegemma.load(str(model_dir), adapter="on")


def test_without_the_adapter_file_the_embedded_model_completes_left_to_right(monkeypatch, tmp_path):
    monkeypatch.setattr(lora, "DEFAULT_ADAPTER", tmp_path / "absent.safetensors")
    monkeypatch.setattr("codegemma.loader.DEFAULT_ADAPTER", tmp_path / "absent.safetensors")
    monkeypatch.delenv("CODEGEMMA_ADAPTER", raising=False)
    engine = codegemma.load()
    assert not engine.supports_fim and "+fim-adapter" not in engine.name
    out = engine.generate(engine.tokenizer.encode("def fibonacci(n):\n", bos=True), GenerateOptions(max_new_tokens=8))
    assert len(out.tokens) > 0


@pytest.mark.skipif(not kernels.available(), reason=kernels.unavailable_reason())
@pytest.mark.parametrize("glu", [False, True])
def test_native_update_matches_pytorch_and_keeps_rows_independent(glu):
    from codegemma.linear import FusedLinear

    gen = torch.Generator().manual_seed(0)
    ns, r, k = [48, 48] if glu else [40, 8, 8], 4, 72
    weights = [torch.randn(n, k, generator=gen) * 0.1 for n in ns]
    a = torch.randn(r * len(ns), k, generator=gen) * 0.1
    b = torch.randn(sum(ns), r, generator=gen) * 0.1
    layer = lora.LoRALinear(FusedLinear(weights), a, b, ns, 2.0)
    x = torch.randn(1, 8, k, generator=gen)
    native = layer(x, glu=glu)
    with kernels.disabled():
        reference = layer(x, glu=glu)
    torch.testing.assert_close(native, reference, atol=1e-5, rtol=1e-4)
    one_by_one = torch.cat([layer(x[:, i:i + 1], glu=glu) for i in range(8)], dim=1)
    assert torch.equal(one_by_one, native)


def test_a_damaged_default_adapter_leaves_the_embedded_model_left_to_right(monkeypatch, tmp_path, capsys):
    bad = tmp_path / "adapter.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    monkeypatch.setattr("codegemma.loader.DEFAULT_ADAPTER", bad)
    monkeypatch.delenv("CODEGEMMA_ADAPTER", raising=False)
    engine = codegemma.load()
    assert not engine.supports_fim
    assert "completing left to right without the FIM adapter" in capsys.readouterr().err
    with pytest.raises(CheckpointError):  # asked for by name, it is an error
        codegemma.load(adapter=str(bad))


def test_train_fim_refuses_an_unwritable_run_folder_in_one_line(trained, sources, tmp_path):
    from codegemma.adapter.train import main

    model_dir, _ = trained
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CodegemmaError, match=r"^train-fim: .*file") as error:
        main(["--model", str(model_dir), "--out", str(blocker / "run"), "--steps", "1", "--source", str(sources)])
    assert "\n" not in str(error.value)
    # the process goes on: the same command with a usable folder trains
    assert main(["--model", str(model_dir), "--out", str(tmp_path / "run"), "--steps", "1", "--rank", "4",
                 "--source", str(sources), "--tokens", "1000"]) == 0
