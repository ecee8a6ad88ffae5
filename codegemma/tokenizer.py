"""SentencePiece tokenizer with the ids the engine needs: bos/eos/pad and the CodeGemma FIM tokens.

Text is always encoded as plain text: a user's file that contains "<|fim_prefix|>" must not inject the
special token, so prompts place special ids by id, never by string.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from codegemma.errors import TokenizerError

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEPARATOR = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEPARATOR)
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in (*FIM_TOKENS, "<bos>", "<eos>", "<pad>")) + ")")


class Tokenizer:
    def __init__(self, sp: spm.SentencePieceProcessor, fim_aliases: dict[str, int] | None = None,
                 fim_order: str = "psm"):
        """`fim_aliases` maps FIM token strings onto ids of a vocabulary that lacks them (an adapter's tokens);
        `fim_order` is the FIM prompt layout the model takes: "psm" (CodeGemma:
        <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>) or "spm"
        (<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}, the middle continuing the prefix)."""
        self.sp = sp
        self.fim_order = fim_order
        self.vocab_size: int = sp.get_piece_size()
        self.bos_id: int = sp.bos_id()
        self.eos_id: int = sp.eos_id()
        self.pad_id: int = sp.pad_id() if sp.pad_id() >= 0 else 0
        fim = {t: self._piece_id(t) for t in FIM_TOKENS}
        fim.update(fim_aliases or {})
        self.fim_prefix_id: int | None = fim[FIM_PREFIX]
        self.fim_suffix_id: int | None = fim[FIM_SUFFIX]
        self.fim_middle_id: int | None = fim[FIM_MIDDLE]
        self.file_separator_id: int | None = fim[FILE_SEPARATOR]
        self.stop_ids: frozenset[int] = frozenset(i for i in (self.eos_id, *fim.values()) if i is not None)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls.from_bytes(Path(path).read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, model_proto: bytes, source: str = "tokenizer") -> "Tokenizer":
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError with C++ text
            raise TokenizerError(f"{source}: not a valid SentencePiece model ({e})") from None
        return cls(sp)

    def fim_layout(self) -> tuple[str, ...]:
        """The parts of a FIM prompt after the file header, in this model's order: "prefix", "suffix" and the
        special tokens' attribute names ("fim_prefix" for `fim_prefix_id`, ...)."""
        if self.fim_order == "spm":
            return ("fim_prefix", "fim_suffix", "suffix", "fim_middle", "prefix")
        return ("fim_prefix", "prefix", "fim_suffix", "suffix", "fim_middle")

    def fim_ids(self, prefix: list[int], suffix: list[int]) -> list[int]:
        """prefix and suffix ids laid out as `fim_layout` orders them."""
        parts = {"prefix": prefix, "suffix": suffix}
        return [i for part in self.fim_layout() for i in (parts[part] if part in parts else [getattr(self, f"{part}_id")])]

    @property
    def has_fim(self) -> bool:
        return None not in (self.fim_prefix_id, self.fim_suffix_id, self.fim_middle_id)

    def _piece_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids: list[int] = [self.bos_id] if bos else []
        # SentencePiece matches user-defined pieces inside text; split them off so they stay plain text
        for i, part in enumerate(_SPECIAL_RE.split(text)):
            if i % 2:
                ids += self.sp.encode(part[0], out_type=int) + self.sp.encode(part[1:], out_type=int)
            elif part:
                ids += self.sp.encode(part, out_type=int)
        return ids

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise TokenizerError for the first id outside the vocabulary."""
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        return self.sp.decode(list(ids))

    def id_to_piece(self, i: int) -> str:
        self.check_ids([i])
        return self.sp.id_to_piece(i)
