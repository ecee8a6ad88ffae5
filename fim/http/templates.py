"""FIM prompts that clients render themselves, split back into the text before and after the cursor.

Continue renders its autocomplete prompt with a template it picks by model name (its
`core/autocomplete/templating/AutocompleteTemplate.ts`) and posts the result as one `prompt`, to
`/openai/v1/completions` (OpenAI provider) or `/completion` (llama.cpp provider). The server builds its own
prompt for its own model, so it needs the prefix and suffix back. Supported families, by the markers they use:

- CodeGemma and Qwen2.5-Coder: `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>`
- StarCoder, StableCode, CodeQwen (Continue's default): `<fim_prefix>P<fim_suffix>S<fim_middle>`
- CodeLlama: `<PRE> P <SUF>S <MID>`
- DeepSeek Coder: `<｜fim▁begin｜>P<｜fim▁hole｜>S<｜fim▁end｜>`
- Codestral: `[SUFFIX]S[PREFIX]P`, its prefix optionally led by `+++++ path` file headers

Text before the prefix marker (repository-level prompts: `<file_sep>` / `<|file_sep|>` separated files) and
Codestral's file headers become other-file context; the current file's path, where the prompt names it
(Codestral's last header, or the `# path` comment line Continue puts at the top of the prefix), gives the
language.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fim.languages import TEXT, language_from_path
from fim.request import FileContext


@dataclass(frozen=True)
class SplitPrompt:
    """A client-rendered FIM prompt taken apart."""

    template: str
    prefix: str
    suffix: str
    other_files: tuple[FileContext, ...] = ()
    path: str | None = None  # the current file, where the prompt names it


def _psm(name: str, prefix: str, suffix: str, middle: str) -> tuple[str, re.Pattern]:
    """A prefix-suffix-middle template: optional context, then prefix, suffix and the middle marker last."""
    p, s, m = (re.escape(x) for x in (prefix, suffix, middle))
    return name, re.compile(rf"\A(?P<context>.*?){p}(?P<prefix>.*?){s}(?P<suffix>.*){m}\Z", re.DOTALL)


_TEMPLATES: tuple[tuple[str, re.Pattern], ...] = (
    _psm("codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    _psm("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    _psm("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    # CodeLlama's markers carry a space on each side of the prefix and before <MID>: they are not text.
    ("codellama", re.compile(r"\A(?P<context>)<PRE> (?P<prefix>.*?) <SUF>(?P<suffix>.*) <MID>\Z", re.DOTALL)),
    ("codestral", re.compile(r"\A(?P<context>)\[SUFFIX\](?P<suffix>.*?)\[PREFIX\](?P<prefix>.*)\Z", re.DOTALL)),
)

_FILE_SEPARATORS = re.compile(r"<\|file_separator\|>|<\|file_sep\|>|<file_sep>|<\|repo_name\|>")
_CODESTRAL_HEADER = re.compile(r"^\+\+\+\+\+ (\S[^\n]*)\n", re.MULTILINE)
_LINE_COMMENT = r"(?:#|//|--|;|%|')"
# Continue's header line naming the current file: a line comment, a space, a path with an extension.
_PATH_COMMENT = re.compile(rf"^{_LINE_COMMENT} ([\w.\-/]+\.\w+)$")


def _looks_like_path(line: str) -> bool:
    return bool(line) and " " not in line and ("." in line or "/" in line)


def _context_files(context: str) -> tuple[FileContext, ...]:
    """Files of a repository-level prompt's leading part: separator-delimited chunks, each named by its
    first line when that looks like a path."""
    files = []
    for i, chunk in enumerate(c for c in _FILE_SEPARATORS.split(context) if c.strip()):
        first, _, rest = chunk.partition("\n")
        if _looks_like_path(first.strip()) and rest.strip():
            files.append(FileContext(first.strip(), rest))
        else:
            files.append(FileContext(f"context-{i}", chunk))
    return tuple(files)


def _codestral_files(prefix: str) -> tuple[str, tuple[FileContext, ...], str | None]:
    """Codestral's multi-file prefix: `+++++ path` headers, the last one the current file."""
    if not prefix.startswith("+++++ "):
        return prefix, (), None
    headers = list(_CODESTRAL_HEADER.finditer(prefix))
    files = tuple(FileContext(h.group(1), prefix[h.end():nxt.start()].rstrip("\n"))
                  for h, nxt in zip(headers, headers[1:]))
    last = headers[-1]
    return prefix[last.end():], tuple(f for f in files if f.text), last.group(1)


def header_path(prefix: str, lines: int = 64) -> str | None:
    """The current file's path from Continue's comment header at the top of the prefix (`# dir/file.py`,
    after its `Path:` snippets), or None. Only a path with a known language counts."""
    for line in prefix.split("\n")[:lines]:
        match = _PATH_COMMENT.match(line.strip())
        if match and language_from_path(match.group(1)) != TEXT:
            return match.group(1)
        if line.strip() and not re.match(_LINE_COMMENT, line.strip()):
            return None
    return None


def split_prompt(prompt: str) -> SplitPrompt | None:
    """The prompt taken apart when it is in one of the FIM templates above; None when it is plain text."""
    for name, pattern in _TEMPLATES:
        match = pattern.match(prompt)
        if match is None:
            continue
        prefix, suffix, context = match.group("prefix"), match.group("suffix"), match.group("context")
        others = _context_files(context) if context.strip() else ()
        path = None
        if name == "codestral":
            prefix, others, path = _codestral_files(prefix)
        return SplitPrompt(name, prefix, suffix, others, path or header_path(prefix))
    return None
