"""`codegemma info`: module trees and parameter counts built on the meta device, checked against the published
parameter counts and the architecture printouts of the Gemma write-ups (transformers' `print(model)` output)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from codegemma import cli
from codegemma import kernels
from codegemma.config import PRESETS
from codegemma.model import Transformer
from tests.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[2]

# Total parameters as published on the models' Hugging Face pages (the tied output layer counted once).
PUBLISHED_TOTALS = {
    "codegemma-2b": 2_506_172_416, "codegemma-7b": 8_537_680_896,
    "codegemma-1.1-2b": 2_506_172_416, "codegemma-1.1-7b": 8_537_680_896,
    "gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896,
    "gemma-2-2b": 2_614_341_888, "gemma-2-9b": 9_241_705_984, "gemma-2-27b": 27_227_128_320,
    "gemma-3-270m": 268_098_176, "gemma-3-1b": 999_885_952,
}


def _linear(name: str, n_in: int, n_out: int) -> str:
    return f"({name}): Linear(in_features={n_in}, out_features={n_out}, bias=False)"


# Lines of the architecture printouts quoted in the Gemma write-ups ("Gemma explained" series): Gemma 7B and
# 2B (CodeGemma shares them), Gemma 2 27B and 9B. Our tree must contain each line (whitespace aside);
# the embedding is compared by shape only, since transformers also prints its padding_idx.
PRINTOUTS = {
    "gemma-7b": {"layers": 28, "embedding": (256000, 3072), "lines": [
        _linear("q_proj", 3072, 4096), _linear("k_proj", 3072, 4096), _linear("v_proj", 3072, 4096),
        _linear("o_proj", 4096, 3072), _linear("gate_proj", 3072, 24576), _linear("up_proj", 3072, 24576),
        _linear("down_proj", 24576, 3072), "(input_layernorm): RMSNorm()", "(post_attention_layernorm): RMSNorm()"]},
    "gemma-2b": {"layers": 18, "embedding": (256000, 2048), "lines": [
        _linear("q_proj", 2048, 2048), _linear("k_proj", 2048, 256), _linear("v_proj", 2048, 256),
        _linear("o_proj", 2048, 2048)]},
    "gemma-2-27b": {"layers": 46, "embedding": (256000, 4608), "lines": [
        _linear("q_proj", 4608, 4096), _linear("k_proj", 4608, 2048), _linear("v_proj", 4608, 2048),
        _linear("o_proj", 4096, 4608), _linear("gate_proj", 4608, 36864), _linear("up_proj", 4608, 36864),
        _linear("down_proj", 36864, 4608), "(pre_feedforward_layernorm): RMSNorm()",
        "(post_feedforward_layernorm): RMSNorm()"]},
    "gemma-2-9b": {"layers": 42, "embedding": (256000, 3584), "lines": [
        _linear("q_proj", 3584, 4096), _linear("k_proj", 3584, 2048), _linear("v_proj", 3584, 2048),
        _linear("o_proj", 4096, 3584)]},
}
PRINTOUTS["codegemma-7b"] = PRINTOUTS["gemma-7b"]
PRINTOUTS["codegemma-2b"] = PRINTOUTS["gemma-2b"]


def run_info(capsys, spec: str) -> tuple[int, str, str]:
    code = cli.main(["info", spec])
    out, err = capsys.readouterr()
    return code, out, err


def total_of(output: str) -> int:
    match = re.search(r"^\s*total\s+([\d,]+)\s*$", output, re.MULTILINE)
    assert match, f"no total line in:\n{output}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTALS))
def test_total_equals_the_published_count(capsys, name):
    code, out, err = run_info(capsys, name)
    assert (code, err) == (0, "")
    assert total_of(out) == PUBLISHED_TOTALS[name]


@pytest.mark.parametrize("name", sorted(PRINTOUTS))
def test_shapes_match_the_published_printouts(capsys, name):
    code, out, _ = run_info(capsys, name)
    assert code == 0
    lines = {line.strip() for line in out.splitlines()}
    spec = PRINTOUTS[name]
    for expected in spec["lines"]:
        assert expected in lines, f"{name}: {expected!r} not in the module tree"
    n = spec["layers"]
    assert any(line.startswith(f"(0-{n - 1}): {n} x ") for line in lines), f"{name}: not {n} layers"
    vocab, width = spec["embedding"]
    assert re.search(rf"\(embed_tokens\): \w*Embedding\({vocab}, {width}\b", out), f"{name}: embedding shape"


def test_every_preset_builds_on_meta_and_per_component_counts_add_up(capsys):
    """All presets, the ones without a published printout included: no weights allocated, components sum up."""
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = Transformer(cfg)
        assert all(p.is_meta for p in model.parameters()), name
        code, out, _ = run_info(capsys, name)
        assert code == 0, name
        parts = dict(re.findall(r"^  (embedding \(tied lm_head\)|attention|mlp|norms)\s+([\d,]+)$", out, re.MULTILINE))
        assert len(parts) == 4, (name, out[-400:])
        assert sum(int(v.replace(",", "")) for v in parts.values()) == total_of(out) == \
            sum(p.numel() for p in model.parameters()), name


def test_info_on_a_checkpoint_directory_counts_its_tensors(capsys, checkpoint_writer):
    path = checkpoint_writer(tiny_config("gemma2"), shards=2)
    on_disk = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            on_disk += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    code, out, err = run_info(capsys, str(path))
    assert (code, err) == (0, "")
    assert total_of(out) == on_disk
    assert "(pre_feedforward_layernorm): RMSNorm()" in out  # read as Gemma 2 from config.json


def test_info_on_the_embedded_gguf(capsys):
    from codegemma.loader import default_gguf

    code, out, err = run_info(capsys, str(default_gguf()))
    assert (code, err) == (0, "")
    assert out.startswith("gemma-3-270m")
    assert total_of(out) == PUBLISHED_TOTALS["gemma-3-270m"]
    assert _linear("q_proj", 640, 1024) in out and _linear("k_proj", 640, 256) in out
    assert "(q_norm): RMSNorm()" in out
    formats = out.split("weight formats (GGUF):\n")[1].splitlines()
    assert [line.split()[0] for line in formats] == ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"]  # by size
    how = "native blocks" if kernels.available() else "dequantized float copy"
    assert all(line.endswith(how) for line in formats)


def test_unknown_preset_is_one_line_naming_the_presets(capsys):
    code, out, err = run_info(capsys, "codegemma-3b")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "codegemma-3b" in err and all(name in err for name in PRESETS)


def test_missing_path_is_one_line_saying_so(capsys):
    code, out, err = run_info(capsys, "no/such/checkpoint")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no/such/checkpoint: no such file or directory" in err


def test_a_file_that_is_not_a_checkpoint(capsys, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 64)
    code, out, err = run_info(capsys, str(path))
    assert code == 2 and out == "" and err.count("\n") == 1 and str(path) in err


def test_info_as_a_command():
    """The module runs as a program (what the `codegemma` console script calls)."""
    proc = subprocess.run([sys.executable, "-m", "codegemma.cli", "info", "codegemma-7b"], check=False,
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert total_of(proc.stdout) == 8_537_680_896
    assert _linear("gate_proj", 3072, 24576) in proc.stdout
