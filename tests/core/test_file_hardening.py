"""Hostile or damaged files (issue 18): GGUF headers that nest arrays without end, claim more elements than
the file holds or sizes past int64; a damaged model cache is rebuilt once with a one-line notice."""

from __future__ import annotations

import struct

import pytest

import codegemma
from codegemma.errors import CheckpointError
from codegemma.gguf.format import read_gguf
from codegemma.gguf.loader import gguf_cache_dir
from tests.core.test_gguf_loader import write_gguf


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _header(n_tensors: int, metadata: bytes = b"", n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + metadata


def test_deeply_nested_arrays_are_refused_without_recursion_error(tmp_path):
    levels = 100_000
    value = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * levels + struct.pack("<IQ", 4, 0)
    path = tmp_path / "nested.gguf"
    path.write_bytes(_header(0, _string("deep") + value, 1))
    with pytest.raises(CheckpointError, match="nests arrays more than 8 deep"):
        read_gguf(path)


def test_an_array_claiming_more_elements_than_the_file_holds(tmp_path):
    value = struct.pack("<I", 9) + struct.pack("<IQ", 8, 2**60)  # 2**60 strings
    path = tmp_path / "huge.gguf"
    path.write_bytes(_header(0, _string("many") + value, 1) + b"\0" * 64)
    with pytest.raises(CheckpointError, match="more than the rest of the file holds"):
        read_gguf(path)


def test_tensor_sizes_past_int64_do_not_wrap(tmp_path):
    # 32 x 2**40 x 2**40 float32 values: 2**87 bytes, which int64 arithmetic wraps to 0
    tensor = _string("t") + struct.pack("<I", 3) + struct.pack("<QQQ", 32, 2**40, 2**40) + struct.pack("<IQ", 0, 0)
    path = tmp_path / "wrap.gguf"
    path.write_bytes(_header(1) + tensor + b"\0" * 64)
    with pytest.raises(CheckpointError, match="truncated: tensor t ends at byte"):
        read_gguf(path)


@pytest.mark.parametrize("dtype, which", [("bfloat16", "variant"), ("float32", "base")])
def test_a_truncated_cache_is_rebuilt_with_a_notice(tmp_path, monkeypatch, capsys, dtype, which):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny-gemma3.gguf"
    write_gguf(path)
    first = codegemma.load(str(path), dtype=dtype)
    base = gguf_cache_dir(path)
    damaged = base / "bfloat16" if which == "variant" else base
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    again = codegemma.load(str(path), dtype=dtype)
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "is damaged" in notice[0] and "rebuilding" in notice[0]
    assert again.name == first.name
    capsys.readouterr()
    codegemma.load(str(path), dtype=dtype)
    assert "damaged" not in capsys.readouterr().err  # rebuilt for good


def test_truncated_cached_kernels_are_rebuilt_with_a_notice(tmp_path):
    """A truncated shared library is no dlopen error but a SIGBUS: the checksum beside it catches it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CODEGEMMA_CACHE": str(tmp_path)}
    build = [sys.executable, "-c", "import codegemma.kernels as k; k._build(); print('built')"]
    first = subprocess.run(build, env=env, capture_output=True, text=True, timeout=300)
    if first.returncode != 0 or "built" not in first.stdout:
        pytest.skip(f"the native kernels do not build here: {first.stderr.strip()[-200:]}")
    (library,) = (tmp_path / "kernels").glob("ops-*.so")
    library.write_bytes(library.read_bytes()[:1000])
    again = subprocess.run(build, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "built" in again.stdout, again.stderr
    notice = [line for line in again.stderr.splitlines() if "damaged" in line]
    assert len(notice) == 1 and "checksum mismatch" in notice[0]
    assert library.stat().st_size > 1000
