"""A prompt's token ids as the text an OpenAI-compatible engine takes, and that text back into ids.

`/v1/completions` takes a prompt as text, and every engine (vLLM, TGI, llama.cpp's server, a `codegemma
serve`) tokenizes it the same way: its model's `<bos>` first, special-token strings (`<|fim_prefix|>`,
`<|file_separator|>` ...) as their ids, the rest with the model's tokenizer. So the text leaves the `<bos>`
out, writes special tokens as their strings and decodes the rest run by run; `text_to_ids` is that
engine-side parsing, used by the engine route of `codegemma serve` and by the tests that check the round
trip (the remote path is only equal to the local one where the round trip gives the same ids).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from codegemma.tokenizer import Tokenizer


def _specials(tokenizer: Tokenizer) -> dict[int, str]:
    """The special tokens a prompt may hold, id -> the string an engine parses back into that id."""
    ids = (tokenizer.fim_prefix_id, tokenizer.fim_suffix_id, tokenizer.fim_middle_id, tokenizer.file_separator_id)
    return {i: tokenizer.id_to_piece(i) for i in ids if i is not None}


def ids_to_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The prompt text for an engine that adds `<bos>` itself (a leading `<bos>` is dropped)."""
    specials = _specials(tokenizer)
    body = list(ids[1:] if ids and ids[0] == tokenizer.bos_id else ids)
    parts: list[str] = []
    run: list[int] = []
    for token in body:
        if token in specials:
            parts += [tokenizer.decode(run), specials[token]]
            run = []
        else:
            run.append(token)
    parts.append(tokenizer.decode(run))
    return "".join(parts)


def text_to_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """An engine's reading of a text prompt: `<bos>`, then special-token strings as their ids and the text
    between them as the tokenizer encodes it."""
    specials = {piece: i for i, piece in _specials(tokenizer).items()}
    ids = [tokenizer.bos_id]
    if not specials:
        return ids + tokenizer.encode(text)
    pattern = re.compile("(" + "|".join(re.escape(p) for p in specials) + ")")
    for index, part in enumerate(pattern.split(text)):
        if index % 2:
            ids.append(specials[part])
        elif part:
            ids += tokenizer.encode(part)
    return ids
