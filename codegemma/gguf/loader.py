"""Load a Gemma GGUF file: fully into memory (`load_gguf`), or once into a cached checkpoint directory.

By default a GGUF file runs in its own block formats (codegemma.gguf.native) and only its tokenizer is
cached (`cached_tokenizer`). When a float copy is asked for explicitly (a dtype or int8),
`gguf_cache_dir` dequantises the file on first use into a Hugging Face checkpoint directory
(`model.safetensors` in float32, `config.json`, `tokenizer.model`) under `$CODEGEMMA_CACHE` or
`~/.cache/codegemma/`, keyed by the GGUF's path, size and modification time. Later loads memory-map that
directory, which takes well under a second instead of the seconds dequantising costs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from codegemma.config import GemmaConfig, to_hf_config
from codegemma.errors import CodegemmaError, ModelNotFoundError
from codegemma.gguf.convert import check_tensors, dequantize_tensor, dequantized_rows, gguf_config, tokenizer_model
from codegemma.gguf.format import GGUFFile, read_gguf
from codegemma.tokenizer import Tokenizer

CACHE_ENV = "CODEGEMMA_CACHE"
# Bump when the cache layout or the conversion changes, so old caches are rebuilt rather than trusted.
_CACHE_VERSION = 1
_FILES = ("model.safetensors", "config.json", "tokenizer.model", "source.json")
_STALE_TMP_S = 24 * 3600  # a build directory this old is abandoned even if its process id was reused


@dataclass
class GGUFModel:
    config: GemmaConfig
    tensors: dict[str, torch.Tensor]   # float32, Hugging Face names and shapes ([out_features, in_features])
    tokenizer_model: bytes             # a serialized SentencePiece ModelProto


def load_gguf(path: str | Path) -> GGUFModel:
    """Read a Gemma / Gemma 2 / Gemma 3 GGUF file fully into memory, dequantised to float32."""
    f = read_gguf(path)
    config = gguf_config(f)
    names = check_tensors(f, config)
    tensors = {name: dequantize_tensor(f, info) for info, name in zip(f.tensors, names)}
    return GGUFModel(config, tensors, tokenizer_model(f))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "codegemma") / "gguf"


def gguf_cache_dir(path: str | Path) -> Path:
    """The checkpoint directory converted from this GGUF file, building it first if it is not cached yet."""
    src = Path(path)
    if not src.is_file():
        raise ModelNotFoundError(f"{src}: no such file")
    source = _source_record(src)
    target = cache_root() / f"{src.stem}-{source_key(src)}"
    if _complete(target):
        return target
    _build(src, source, target)
    return target


def source_key(path: Path) -> str:
    """A key that changes when the file or directory at `path` (its resolved path, size, modification time)
    or this cache layout does."""
    return hashlib.sha256(json.dumps(_source_record(path), sort_keys=True).encode()).hexdigest()[:16]


def cached_tokenizer(path: Path, f: GGUFFile) -> Tokenizer:
    """The file's vocabulary as a SentencePiece tokenizer, rebuilt once and cached (5 MB for Gemma 3)."""
    cached = cache_root() / "tokenizers" / f"{path.stem}-{source_key(path)}.model"
    if cached.is_file():
        try:
            return Tokenizer.from_file(cached)
        except CodegemmaError:  # damaged (a full disk, say): rebuilt below
            cached.unlink(missing_ok=True)
    model = tokenizer_model(f)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        _write(tmp, model)
        os.replace(tmp, cached)  # atomic: a reader never sees half a file
    except OSError:
        pass  # a read-only cache only costs the rebuild next time
    return Tokenizer.from_bytes(model, source=str(path))


def _source_record(src: Path) -> dict:
    st = src.stat()
    record = {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": _CACHE_VERSION}
    if src.is_dir():  # a checkpoint directory: its files, which change without changing the directory's stat
        record["files"] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in src.iterdir() if f.is_file())
    return record


def _complete(d: Path) -> bool:
    return all((d / name).is_file() for name in _FILES)


def _build(src: Path, source: dict, target: Path) -> None:
    """Convert into a temporary directory beside `target` and rename it into place: a reader never sees a
    half-written cache, and an interrupted build leaves only a temporary directory that a later build removes."""
    f = read_gguf(src)           # the checks come first: a bad file raises before anything is written
    config = gguf_config(f)
    names = check_tensors(f, config)
    tokenizer = tokenizer_model(f)
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root, source["path"], keep=target)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))
    except OSError as e:
        raise CodegemmaError(f"cannot create the model cache {root}: {e.strerror or e}") from None
    try:
        _write_safetensors(tmp / "model.safetensors", f, names)
        _write(tmp / "tokenizer.model", tokenizer)
        hf = {**to_hf_config(config), "_name_or_path": config.name}
        _write(tmp / "config.json", json.dumps(hf, indent=2).encode())
        _write(tmp / "source.json", json.dumps(source, indent=2).encode())  # last: marks the build finished
        if target.exists() and not _complete(target):  # a file was deleted by hand: replace the lot
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # otherwise another process finished the same build first
                raise
    except OSError as e:
        raise CodegemmaError(f"cannot write the model cache {target}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_safetensors(path: Path, f: GGUFFile, names: list[str]) -> None:
    """Write the safetensors layout a block of rows at a time: the cold build never holds a whole
    dequantised tensor (the 671 MB float32 embedding) in memory."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for info, name in zip(f.tensors, names):
        size = 4 * int(torch.Size(info.shape).numel())
        header[name] = {"dtype": "F32", "shape": list(info.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data that follows the header to 8 bytes
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for info in f.tensors:
            for block in dequantized_rows(f, info):
                out.write(block.data)
        out.flush()
        os.fsync(out.fileno())


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _remove_leftovers(root: Path, source_path: str, keep: Path) -> None:
    """Delete caches of earlier versions of the same GGUF file and temporary directories of dead builds."""
    now = time.time()
    for d in root.iterdir():
        if d == keep:
            continue
        if d.name.startswith(".tmp-"):
            if not _alive(d.name.split("-")[1]) or now - d.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(d, ignore_errors=True)
            continue
        try:
            old = json.loads((d / "source.json").read_text())
        except (OSError, ValueError):
            continue
        if old.get("path") == source_path:
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Whether the process that named a temporary build directory (".tmp-<pid>-...") still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True
