"""Read the header of a GGUF file: its metadata and where each tensor's bytes lie.

`gguf.GGUFReader` builds a numpy view per array element, which takes 11-17 s on the 262,144-token
vocabulary of Gemma 3; this reader parses the same layout (GGUF v2/v3, little-endian) in a fraction of a
second and checks every length against the file size, so a truncated or corrupt file gives one clear
error instead of a numpy exception. The quantisation tables and the dequantisers stay `gguf`'s.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from codegemma.errors import CheckpointError, ModelNotFoundError

_MAGIC = b"GGUF"
_MAX_DIMS = 4  # ggml tensors have at most four dimensions
_DEFAULT_ALIGNMENT = 32
_MAX_NESTING = 8  # arrays of arrays: real files use one level; a hostile one could recurse without end
# The fewest bytes one metadata value of a type can take (a string: its length; an array: type + count).
_MIN_BYTES = {8: 8, 9: 12}
# GGUF metadata value types with a fixed size: type id -> struct format
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file; `shape` is in numpy order (GGUF stores it innermost first)."""
    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    offset: int      # absolute byte offset of the data in the file
    n_bytes: int


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    _data: np.memmap

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 rows ([..., bytes per row]), the layout `gguf.quants.dequantize` takes."""
        flat = self._data[info.offset:info.offset + info.n_bytes]
        return flat.reshape(*info.shape[:-1], -1)


class _Cursor:
    """Sequential little-endian reads over a buffer; running past its end means the file is truncated."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise CheckpointError(f"{self.path}: truncated: {what} at byte {self.pos} runs past the end "
                                  f"of the file ({len(self.buf)} bytes)")
        chunk = self.buf[self.pos:end]
        self.pos = end
        return chunk

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.scalar("Q", what), what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: corrupt: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise CheckpointError(f"{self.path}: corrupt: {what} nests arrays more than {_MAX_NESTING} deep")
            etype, count = self.scalar("I", what), self.scalar("Q", what)
            if etype in _SCALARS:  # one numpy read instead of `count` struct calls (scores, token types)
                fmt = "<" + _SCALARS[etype]
                raw = self.take(count * struct.calcsize(fmt), what)
                return np.frombuffer(raw, dtype=np.dtype(fmt)).tolist()
            if count * _MIN_BYTES.get(etype, 1) > len(self.buf) - self.pos:  # before looping `count` times
                raise CheckpointError(f"{self.path}: truncated: {what} claims {count} elements, more than the "
                                      "rest of the file holds")
            return [self.value(etype, what, depth + 1) for _ in range(count)]
        raise CheckpointError(f"{self.path}: corrupt: {what} has unknown value type {vtype}")


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header; tensor data stays memory-mapped and is only read on demand."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such file")
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: not a GGUF file (it is empty)") from None
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    cur = _Cursor(memoryview(data), path)
    if len(data) < 4 or bytes(data[:4]) != _MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file")
    cur.take(4, "magic")
    version = cur.scalar("I", "version")
    if version not in (2, 3):
        raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 or 3; big-endian files "
                              "are not supported either)")
    n_tensors, n_kv = cur.scalar("Q", "tensor count"), cur.scalar("Q", "metadata count")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        metadata[key] = cur.value(cur.scalar("I", f"type of {key}"), f"metadata {key}")
    infos = [_tensor_info(cur, i) for i in range(n_tensors)]
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise CheckpointError(f"{path}: corrupt: general.alignment is {alignment!r}")
    start = -(-cur.pos // alignment) * alignment
    tensors = [_locate(path, name, dims, qtype, start + rel, len(data)) for name, dims, qtype, rel in infos]
    return GGUFFile(path, metadata, tensors, data)


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, list[int], int, int]:
    name = cur.string(f"name of tensor {i}")
    n_dims = cur.scalar("I", f"dimensions of {name}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise CheckpointError(f"{cur.path}: corrupt: tensor {name} has {n_dims} dimensions")
    dims = [cur.scalar("Q", f"shape of {name}") for _ in range(n_dims)]
    return name, dims, cur.scalar("I", f"type of {name}"), cur.scalar("Q", f"offset of {name}")


def _locate(path: Path, name: str, dims: list[int], qtype: int, offset: int, file_size: int) -> TensorInfo:
    try:
        qt = GGMLQuantizationType(qtype)
    except ValueError:
        raise CheckpointError(f"{path}: tensor {name} has unknown type {qtype}") from None
    block, type_size = GGML_QUANT_SIZES[qt]
    if dims[0] % block:
        raise CheckpointError(f"{path}: corrupt: tensor {name} rows of {dims[0]} do not fit {qt.name} "
                              f"blocks of {block}")
    n_bytes = math.prod(dims[1:]) * (dims[0] // block) * type_size  # Python ints: int64 could wrap
    if offset + n_bytes > file_size:
        raise CheckpointError(f"{path}: truncated: tensor {name} ends at byte {offset + n_bytes} but the "
                              f"file has {file_size} bytes")
    return TensorInfo(name, tuple(reversed(dims)), qt, offset, n_bytes)
