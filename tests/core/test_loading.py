"""Loading checkpoints as users have them: a CodeGemma-2B-shaped download, broken inputs of every kind (each
one clear one-line error, the loaded engine unharmed), and int8 weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import codegemma
from codegemma import quant
from codegemma import GenerateOptions
from codegemma.errors import CheckpointError, CodegemmaError, ModelNotFoundError, PromptTooLongError, TokenizerError
from tests.tiny import tiny_config, tiny_tokenizer_model
from codegemma.tokenizer import FIM_TOKENS

ROOT = Path(__file__).resolve().parents[2]

# --- a CodeGemma-2B-shaped download ------------------------------------------------------------------------

LAYERS = 2  # the real model has 18; two keep the directory at ~1.5 GB of bf16 with every real width
# config.json as the Hugging Face hub serves it for google/codegemma-2b, but with two layers
CODEGEMMA_2B_CONFIG = {
    "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 16384, "max_position_embeddings": 8192, "model_type": "gemma",
    "num_attention_heads": 8, "num_hidden_layers": LAYERS, "num_key_value_heads": 1, "pad_token_id": 0,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 256000,
}


def gemma_tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Gemma 1 checkpoint, from its config.json alone (the tied lm_head is not
    stored). Written out here rather than taken from our model, so the test checks the loader's naming."""
    d, q, kv, ff = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], \
        c["num_key_value_heads"] * c["head_dim"], c["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                       p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                       p + "mlp.down_proj.weight": (d, ff), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    shapes["model.norm.weight"] = (d,)
    return shapes


def random_bf16(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random bfloat16 values of magnitude 2^-7..2^-5 and random sign, built from raw bits: several times
    faster than drawing from a normal distribution, which matters for 780M values on a 2-core machine."""
    bits = torch.randint(-2**15, 2**15, shape, dtype=torch.int16, generator=gen)
    return bits.bitwise_and_(-0x7F01).bitwise_or_(0x3C00).view(torch.bfloat16)  # keep sign, exponent lsb, mantissa


def write_hf_download(directory: Path, config: dict) -> int:
    """Lay out a checkpoint the way `huggingface-cli download` leaves one: config.json, two safetensors shards
    split at a layer boundary with model.safetensors.index.json, tokenizer.model. Returns the weight bytes."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "tokenizer.model").write_bytes(tiny_tokenizer_model(fim=True))
    names = list(gemma_tensor_shapes(config).items())
    half = next(i for i, (n, _) in enumerate(names) if n.startswith(f"model.layers.{LAYERS // 2}."))
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for k, part in enumerate((names[:half], names[half:])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        tensors = {n: random_bf16(s, gen) for n, s in part}
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


@pytest.fixture(scope="module")
def download(tmp_path_factory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("hub") / "codegemma-2b"
    return path, write_hf_download(path, CODEGEMMA_2B_CONFIG)


@pytest.fixture(scope="module")
def codegemma_2b(download) -> codegemma.Engine:
    return codegemma.load(str(download[0]), dtype="bf16")


def fim_prompt(engine: codegemma.Engine) -> list[int]:
    tok = engine.tokenizer
    return [tok.bos_id, tok.fim_prefix_id, *tok.encode("def area(r):\n    return "), tok.fim_suffix_id,
            *tok.encode("\n"), tok.fim_middle_id]


def test_download_loads_with_the_real_shapes(codegemma_2b, download):
    engine, path = codegemma_2b, download[0]
    c = engine.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size) == \
        (LAYERS, 2048, 8, 1, 256, 16384, 256000)
    assert engine.dtype == torch.bfloat16 and engine.name == path.name
    # every value on disk arrived unchanged (bf16 to bf16: no rounding)
    state = engine.model.state_dict()
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                assert torch.equal(state[name], st.get_tensor(name)), name


def test_download_supports_fim_with_single_ids(codegemma_2b):
    tok = codegemma_2b.tokenizer
    assert codegemma_2b.supports_fim
    ids = [tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id, tok.file_separator_id]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 4
    assert [tok.id_to_piece(i) for i in ids] == list(FIM_TOKENS)  # one vocabulary entry each
    assert [tok.decode([i]) for i in ids] == list(FIM_TOKENS)
    assert set(ids) | {tok.eos_id} == set(tok.stop_ids)
    # the same strings in a user's text stay plain text
    assert not set(ids) & set(tok.encode("".join(FIM_TOKENS)))


def test_download_generates(codegemma_2b):
    gen = codegemma_2b.generate(fim_prompt(codegemma_2b), GenerateOptions(max_new_tokens=6, stop_ids=frozenset(), speculative=False))
    assert len(gen.tokens) == 6 and gen.stop_reason == "max_tokens"
    assert all(0 <= t < codegemma_2b.tokenizer.vocab_size for t in gen.tokens)
    assert gen.text == codegemma_2b.tokenizer.decode(gen.tokens)


# VmHWM, not getrusage's ru_maxrss: a child's ru_maxrss starts at its parent's RSS (the test process, which
# holds the engine above), VmHWM belongs to the child's own address space.
RSS_PROBE = """
import json, sys
import codegemma

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

before = status("VmRSS")
engine = codegemma.load(sys.argv[1], dtype="bf16")
tok = engine.tokenizer
options = codegemma.GenerateOptions(max_new_tokens=3, stop_ids=frozenset(), speculative=False)
gen = engine.generate([tok.bos_id, *tok.encode("def f(x):")], options)
print(json.dumps({"before": before, "peak": status("VmHWM"), "tokens": len(gen.tokens)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads peak RSS from Linux's /proc")
def test_download_is_memory_mapped_not_copied(download):
    """Peak RSS of a fresh process that loads the checkpoint and decodes (which reads every weight) grows by
    about the weight bytes once: a second copy in RAM would make it twice that."""
    path, weight_bytes = download
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = report["peak"] - report["before"]
    print(f"peak RSS growth {growth / 2**20:.0f} MiB for {weight_bytes / 2**20:.0f} MiB of bf16 weights "
          f"({growth / weight_bytes:.2f}x)")
    assert report["tokens"] == 3
    assert growth < 1.3 * weight_bytes


# --- bad input: one clear line of the right type, and the engine keeps working -----------------------------

PROMPT_TEXT = "def add(a, b):\n    return"


@pytest.fixture
def good(checkpoint_writer) -> Path:
    return checkpoint_writer(tiny_config("gemma"), shards=2)


@pytest.fixture
def engine(good) -> codegemma.Engine:
    return codegemma.load(str(good), dtype="fp32", max_seq_len=128)


def greedy(engine: codegemma.Engine) -> list[int]:
    prompt = engine.tokenizer.encode(PROMPT_TEXT, bos=True)
    return engine.generate(prompt, GenerateOptions(max_new_tokens=8, stop_ids=frozenset())).tokens


def one_line_error(call: Callable[[], object], kind: type[CodegemmaError], *fragments: str) -> str:
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def broken_copy(good: Path, tmp_path: Path, breaks: Callable[[Path], object]) -> Path:
    bad = tmp_path / "broken"
    shutil.copytree(good, bad)
    breaks(bad)
    return bad


def _rewrite_shard(directory: Path, change: Callable[[dict], None]) -> None:
    """Apply `change` to the tensors of the shard holding layer 0's q_proj (and keep the index consistent)."""
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    fname = index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
    tensors = load_file(directory / fname)
    change(tensors)
    save_file(tensors, str(directory / fname))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != fname or k in tensors}
    index_path.write_text(json.dumps(index))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _drop_from_index(directory: Path) -> None:
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v.startswith("model-00001")}
    index_path.write_text(json.dumps(index))


SHARD2 = "model-00002-of-00002.safetensors"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
BROKEN_CHECKPOINTS = {
    "no config.json": (lambda d: (d / "config.json").unlink(), ModelNotFoundError, ["no config.json"]),
    "config.json not JSON": (lambda d: (d / "config.json").write_text('{"model_type": "gemma",'),
                             CheckpointError, ["config.json", "not valid JSON"]),
    "config.json a list": (lambda d: (d / "config.json").write_text("[]"), CheckpointError, ["config.json"]),
    "config.json without a field": (
        lambda d: (d / "config.json").write_text(json.dumps(
            {k: v for k, v in json.loads((d / "config.json").read_text()).items() if k != "hidden_size"})),
        CheckpointError, ["config.json", "hidden_size"]),
    "not a Gemma model_type": (
        lambda d: (d / "config.json").write_text(json.dumps(
            {**json.loads((d / "config.json").read_text()), "model_type": "llama",
             "architectures": ["LlamaForCausalLM"]})),
        CheckpointError, ["config.json", "'llama'", "not a Gemma"]),
    "truncated safetensors": (lambda d: _truncate(d / SHARD2), CheckpointError, [SHARD2]),
    "safetensors of garbage": (lambda d: (d / SHARD2).write_bytes(b"\xff" * 4096), CheckpointError, [SHARD2]),
    "shard listed in the index is missing": (lambda d: (d / SHARD2).unlink(), CheckpointError,
                                             ["model.safetensors.index.json", SHARD2, "missing"]),
    "shard left out of the index": (_drop_from_index, CheckpointError, ["lacks", "tensors"]),
    "index not JSON": (lambda d: (d / "model.safetensors.index.json").write_text("nope"), CheckpointError,
                       ["model.safetensors.index.json"]),
    "no weights at all": (lambda d: [f.unlink() for f in d.glob("model*")], CheckpointError, ["safetensors"]),
    "tensor of the wrong shape": (
        lambda d: _rewrite_shard(d, lambda t: t.update({Q_PROJ: torch.zeros(8, 8)})), CheckpointError,
        [Q_PROJ, "(8, 8)"]),
    "missing tensor": (lambda d: _rewrite_shard(d, lambda t: t.pop(Q_PROJ)), CheckpointError, [Q_PROJ]),
    "unexpected tensor": (
        lambda d: _rewrite_shard(d, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.zeros(2)})),
        CheckpointError, ["model.layers.0.mlp.extra.weight"]),
    "tokenizer.model missing": (lambda d: (d / "tokenizer.model").unlink(), CheckpointError, ["tokenizer.model"]),
    "tokenizer.model corrupt": (lambda d: (d / "tokenizer.model").write_bytes(b"\x0a\xff\xff garbage"),
                                TokenizerError, ["tokenizer.model"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CHECKPOINTS))
def test_broken_checkpoint(case, good, engine, tmp_path):
    breaks, kind, fragments = BROKEN_CHECKPOINTS[case]
    before = greedy(engine)
    bad = broken_copy(good, tmp_path, breaks)
    one_line_error(lambda: codegemma.load(str(bad), dtype="fp32"), kind, *fragments)
    assert greedy(engine) == before


def test_unknown_preset_and_missing_paths(engine, tmp_path, monkeypatch):
    before = greedy(engine)
    message = one_line_error(lambda: codegemma.load("codegemma-3b"), ModelNotFoundError, "codegemma-3b")
    assert all(name in message for name in codegemma.PRESETS)
    one_line_error(lambda: codegemma.load(str(tmp_path / "nowhere")), ModelNotFoundError, "nowhere")
    one_line_error(lambda: codegemma.load(str(tmp_path / "model.gguf")), ModelNotFoundError, "model.gguf")
    not_a_model = tmp_path / "weights.bin"
    not_a_model.write_bytes(b"\0" * 16)
    one_line_error(lambda: codegemma.load(str(not_a_model)), ModelNotFoundError, "weights.bin")
    # a known preset resolves only to a local Hugging Face cache; nothing is downloaded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    one_line_error(lambda: codegemma.load("codegemma-2b"), ModelNotFoundError, "codegemma-2b", "empty-hub")
    assert greedy(engine) == before


def write_llama_gguf(path: Path) -> None:
    """A tiny but complete llama-architecture GGUF (metadata, vocabulary, tensors)."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [6] * 256)
    for name, shape in {"token_embd.weight": (len(tokens), 8), "output_norm.weight": (8,),
                        "blk.0.attn_q.weight": (8, 8), "blk.0.ffn_up.weight": (16, 8)}.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_non_gemma_gguf(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    before = greedy(engine)
    path = tmp_path / "llama.gguf"
    write_llama_gguf(path)
    one_line_error(lambda: codegemma.load(str(path)), CheckpointError, "llama.gguf", "'llama'", "not a Gemma")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 100)
    one_line_error(lambda: codegemma.load(str(garbage)), CheckpointError, "garbage.gguf")
    assert greedy(engine) == before


def test_token_ids_outside_the_vocabulary(engine):
    before = greedy(engine)
    tok = engine.tokenizer
    for bad in (10**7, tok.vocab_size, -1):
        one_line_error(lambda bad=bad: engine.generate([tok.bos_id, bad]), TokenizerError, str(bad))
        one_line_error(lambda bad=bad: tok.decode([5, bad]), TokenizerError, str(bad))
        one_line_error(lambda bad=bad: tok.id_to_piece(bad), TokenizerError, str(bad))
    assert greedy(engine) == before


def test_prompt_longer_than_the_context(engine):
    before = greedy(engine)
    ctx = engine.max_seq_len
    assert ctx == 128
    filler = engine.tokenizer.encode("x = 1\n")
    prompt = [engine.tokenizer.bos_id, *(filler * ctx)][:ctx + 10]
    one_line_error(lambda: engine.generate(prompt), PromptTooLongError, str(len(prompt)), str(ctx))
    one_line_error(lambda: engine.generate(prompt[:ctx]), PromptTooLongError, str(ctx))
    one_line_error(lambda: engine.score("x = 1\n" * ctx), PromptTooLongError, str(ctx))
    # a prompt that fits but leaves no room for all requested tokens stops at the end of the context
    gen = engine.generate(prompt[:ctx - 3], GenerateOptions(max_new_tokens=50, stop_ids=frozenset()))
    assert gen.stop_reason == "context" and len(gen.tokens) == 3
    assert greedy(engine) == before


def test_padded_embedding_never_yields_ids_the_tokenizer_lacks(checkpoint_writer):
    """config.json may give the embedding more rows than tokenizer.model has pieces (the loader accepts it:
    embeddings are often padded). Decoding must never pick a padding row: such an id has no text."""
    engine = codegemma.load(str(checkpoint_writer(tiny_config("gemma3", vocab_size=1024))), dtype="fp32")
    assert engine.tokenizer.vocab_size < engine.config.vocab_size
    prompt = engine.tokenizer.encode(PROMPT_TEXT, bos=True)
    for seed in range(3):
        gen = engine.generate(prompt, GenerateOptions(max_new_tokens=32, temperature=1.0, seed=seed, stop_ids=frozenset()))
        assert len(gen.tokens) == 32 and max(gen.tokens) < engine.tokenizer.vocab_size


def test_unknown_dtype():
    one_line_error(lambda: codegemma.load(dtype="fp16"), CodegemmaError, "'fp16'", "bf16", "fp32")


# --- int8 ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gemma", "gemma3"])
def test_int8_weights_decode_like_bf16(checkpoint_writer, arch, tmp_path, monkeypatch):
    """Tiny random models have near-ties between their top tokens (the top two logits of the Gemma 3 one are
    typically 0.05 apart, a third of a standard deviation), so a free-running int8 decode may part ways with
    bf16 early and never meet again. Its greedy choices are therefore compared along bf16's own 32-token
    greedy continuation: they must mostly agree, and the logits must stay close."""
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))  # the int8 cache stays in the test
    path = str(checkpoint_writer(tiny_config(arch)))
    bf16 = codegemma.load(path, dtype="bf16")
    int8 = codegemma.load(path, dtype="bf16", int8=True)
    assert int8.name.endswith("int8")
    # every weight matrix of every layer is stored as int8, the output layer tied to the embedding too
    c = int8.config
    matrices = [t for layer in int8.model.model.layers for t in (*layer.parameters(), *layer.buffers())
                if t.dim() == 2]
    assert all(t.dtype == torch.int8 for t in matrices)
    per_layer = 2 * c.d_model * c.head_dim * (c.n_heads + c.n_kv_heads) + 3 * c.d_model * c.d_ff
    assert sum(t.numel() for t in matrices) == per_layer * c.n_layers
    embedding = int8.model.model.embed_tokens.weight
    assert embedding.dtype == torch.int8 and tuple(embedding.shape) == (c.vocab_size, c.d_model)
    prompt = int8.tokenizer.encode(PROMPT_TEXT, bos=True)
    ref = bf16.generate(prompt, GenerateOptions(max_new_tokens=32, stop_ids=frozenset(), speculative=False)).tokens
    got = int8.generate(prompt, GenerateOptions(max_new_tokens=32, stop_ids=frozenset(), speculative=False)).tokens
    assert len(ref) == len(got) == 32
    with torch.inference_mode():
        seq = torch.tensor([prompt + ref[:-1]])
        pos = torch.arange(seq.shape[1])
        expected = bf16.model(seq, pos)[0, len(prompt) - 1:].float()  # the logits behind each of the 32 choices
        actual = int8.model(seq, pos)[0, len(prompt) - 1:].float()
    agree = float((actual.argmax(-1) == expected.argmax(-1)).float().mean())
    deviation = float((actual - expected).abs().max() / expected.std())
    prefix = next((i for i, (x, y) in enumerate(zip(ref, got)) if x != y), len(ref))
    print(f"{arch} int8 vs bf16: {agree:.0%} of the 32 greedy choices agree, largest logit deviation "
          f"{deviation:.2f} standard deviations, free-running decodes equal for {prefix} tokens")
    assert agree >= 0.85
    assert deviation < 0.3


def test_int8_weights_are_quantized_once_and_cached(checkpoint_writer, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path = str(checkpoint_writer(tiny_config("gemma3")))
    first = codegemma.load(path, dtype="bf16", int8=True)
    cached = list((tmp_path / "cache" / "int8").glob("*.safetensors"))
    assert len(cached) == 1
    calls = []
    original = quant.quantize_rows
    monkeypatch.setattr(quant, "quantize_rows", lambda w: calls.append(w.shape) or original(w))
    again = codegemma.load(path, dtype="bf16", int8=True)
    assert calls == []  # read from the cache, not quantized again
    prompt = first.tokenizer.encode(PROMPT_TEXT * 3, bos=True)  # over 16 tokens: PyTorch's int8 product too
    options = GenerateOptions(max_new_tokens=16, stop_ids=frozenset(), speculative=False)
    assert len(prompt) > 16
    assert again.generate(prompt, options).tokens == first.generate(prompt, options).tokens
    cached[0].write_bytes(b"damaged")  # a damaged cache is quantized and written again
    codegemma.load(path, dtype="bf16", int8=True)
    assert calls and cached[0].stat().st_size > 1000
