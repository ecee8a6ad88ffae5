"""Rebuild a SentencePiece model from the vocabulary a GGUF file stores.

llama.cpp's converter keeps every piece of the original `tokenizer.model` (text, score, type) but not the
model file itself. Putting those pieces back into a SentencePiece `ModelProto` (BPE, byte fallback, no
normalisation) gives a tokenizer that splits text exactly as llama.cpp does, loads in a fraction of a
second and needs no Hugging Face conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from codegemma.errors import CheckpointError

# GGUF token types (llama.cpp's llama_token_type) use the same numbers as SentencePiece's piece types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_PIECE_TYPES = frozenset((_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE))
_SPACE = "\u2581"  # SentencePiece's escaped space


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer fields of a GGUF file (`tokenizer.ggml.*`)."""
    tokens: Sequence[str]
    scores: Sequence[float]
    types: Sequence[int]
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int


def sentencepiece_model(vocab: GGUFVocab, source: str) -> bytes:
    """A serialized SentencePiece `ModelProto` holding `vocab`; `source` names the file in errors."""
    n = len(vocab.tokens)
    if not (len(vocab.scores) == len(vocab.types) == n):
        raise CheckpointError(f"{source}: tokenizer has {n} tokens but {len(vocab.scores)} scores "
                              f"and {len(vocab.types)} token types")
    for role, i in (("unknown", vocab.unk_id), ("bos", vocab.bos_id), ("eos", vocab.eos_id), ("pad", vocab.pad_id)):
        if not isinstance(i, int) or not 0 <= i < n:
            raise CheckpointError(f"{source}: {role} token id {i!r} is outside the vocabulary of {n} tokens")
    proto = sp_pb2.ModelProto()
    seen: dict[str, int] = {}
    for i, (token, score, kind) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types)):
        # The converter stores user-defined whitespace pieces ("  ", ...) with real spaces; SentencePiece
        # matches pieces after escaping spaces, so they must read "▁▁" to be found at all.
        piece = token.replace(" ", _SPACE)
        if piece in seen:
            raise CheckpointError(f"{source}: tokens {seen[piece]} and {i} are the same piece {piece!r}")
        seen[piece] = i
        if kind not in _PIECE_TYPES:
            raise CheckpointError(f"{source}: token {i} ({token!r}) has unknown token type {kind}")
        if i == vocab.unk_id:
            kind = _UNKNOWN
        elif kind == _UNKNOWN:
            kind = _CONTROL  # SentencePiece allows exactly one UNKNOWN piece: the one at unk_id
        proto.pieces.add(piece=piece, score=float(score), type=kind)
    bytes_present = sum(1 for t in vocab.types if t == _BYTE)
    trainer = proto.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE
    trainer.vocab_size = n
    # byte fallback needs all 256 <0xNN> pieces; without them unknown characters map to <unk>
    trainer.byte_fallback = bytes_present == 256
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = (
        vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.pad_id)
    trainer.unk_piece = proto.pieces[vocab.unk_id].piece
    trainer.bos_piece = proto.pieces[vocab.bos_id].piece
    trainer.eos_piece = proto.pieces[vocab.eos_id].piece
    trainer.pad_piece = proto.pieces[vocab.pad_id].piece
    trainer.allow_whitespace_only_pieces = True
    trainer.split_digits = True
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    blob = proto.SerializeToString()
    try:  # SentencePiece checks more than is worth repeating here (byte pieces spelled <0xNN>, ...)
        SentencePieceProcessor(model_proto=blob)
    except (RuntimeError, OSError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source}: its vocabulary does not make a SentencePiece model: {reason}") from None
    return blob
