"""Languages the service knows: file extension -> language name -> tree-sitter grammar.

Grammars come from the per-language wheels (tree_sitter_python, ...), which ship the compiled grammar, so
nothing is downloaded at run time. A language without a grammar (or "text") gets the plain-text rules.
"""

from __future__ import annotations

import functools
import importlib
import os

from tree_sitter import Language, Node, Parser, Tree

TEXT = "text"

# extension -> language name
_EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
}

# language name -> (grammar module, function returning the language pointer)
_GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}

# Names users and editors commonly send for the same grammar (LSP languageId values among them).
_ALIASES: dict[str, str] = {
    "py": "python", "js": "javascript", "javascriptreact": "javascript", "ts": "typescript",
    "typescriptreact": "tsx", "golang": "go", "rs": "rust", "c++": "cpp", "cc": "cpp", "cxx": "cpp",
    "plaintext": TEXT, "txt": TEXT,
}

LANGUAGES: frozenset[str] = frozenset(_GRAMMARS) | {TEXT}

# Line comment syntax, used to label other files in a left-to-right prompt.
_LINE_COMMENT: dict[str, str] = {"python": "#", TEXT: "#"}


def language_from_path(path: str) -> str:
    """The language of a file from its extension; "text" when the extension is unknown."""
    return _EXTENSIONS.get(os.path.splitext(path)[1].lower(), TEXT)


def normalize_language(name: str | None, path: str) -> str:
    """The language to use for a request: an explicit known name wins, else the extension decides.

    An unknown explicit name falls back to "text" (plain-text rules) rather than failing the request.
    """
    if name is None or not name.strip():
        return language_from_path(path)
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in LANGUAGES else TEXT


def line_comment(language: str) -> str:
    """The line-comment prefix of a language ("//" for the C family, "#" for Python and text)."""
    return _LINE_COMMENT.get(language, "//")


def is_brace_language(language: str) -> bool:
    """True for languages whose blocks are delimited by braces rather than indentation."""
    return language in _GRAMMARS and language != "python"


@functools.cache
def _language(name: str) -> Language | None:
    spec = _GRAMMARS.get(name)
    if spec is None:
        return None
    module = importlib.import_module(spec[0])
    return Language(getattr(module, spec[1])())


def parser_for(language: str) -> Parser | None:
    """A fresh tree-sitter parser for the language, or None when it has no grammar.

    Parsers are cheap but not thread-safe, so each caller gets its own.
    """
    grammar = _language(language)
    return Parser(grammar) if grammar is not None else None


def parse(language: str, text: str) -> Tree | None:
    """Parse text with the language's grammar; None for languages without one."""
    parser = parser_for(language)
    return parser.parse(text.encode("utf-8")) if parser is not None else None


def error_spans(node: Node) -> list[tuple[str, int, int]]:
    """(kind, start byte, end byte) of each ERROR and MISSING node under node."""
    if not node.has_error and not node.is_missing:
        return []
    spans = []
    if node.is_error or node.is_missing:
        spans.append(("missing " + node.type if node.is_missing else "error", node.start_byte, node.end_byte))
    for child in node.children:
        spans += error_spans(child)
    return spans


def syntax_errors(language: str, text: str) -> list[tuple[str, int, int]] | None:
    """The parse errors of text in language as error_spans lists them; None when there is no grammar."""
    tree = parse(language, text)
    return error_spans(tree.root_node) if tree is not None else None
