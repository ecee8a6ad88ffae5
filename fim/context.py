"""Context from other files: what of the workspace the model should see before the current file.

Two sources, both deterministic (same inputs, same snippets in the same order):
- for Python, the definitions the current file imports from the workspace, found with tree-sitter;
- windows of the other files ranked by identifier Jaccard similarity with the code around the cursor.
Every candidate keeps its score and, once the prompt is built, whether it was used and why not.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from tree_sitter import Node

from fim.languages import parse
from fim.request import FileContext

WINDOW_LINES = 16  # lines per similarity window
WINDOW_STRIDE = 8  # windows overlap by half so a relevant block is whole in at least one
QUERY_LINES_BEFORE = 20
QUERY_LINES_AFTER = 10
MIN_SIMILARITY = 0.05
MAX_DEFINITION_LINES = 30  # longer definitions are shown as an outline of their signatures
MAX_DEBUG_CANDIDATES = 32
MAX_PARENT_LEVELS = 3  # how far above the current file an absolute import may be resolved

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keywords shared by the supported languages: they say nothing about which code is related.
_KEYWORDS = frozenset(
    "and as assert async await break case catch class const continue def default defer del do elif else enum "
    "except export extends false final finally fn for from func function go if impl implements import in "
    "interface is let lambda let match mod mut new nil none not null or package pass pub private protected "
    "public raise return self static struct super switch this throw throws true try type typedef use var void "
    "while with yield int char float double long bool string str unsigned signed auto include define".split()
)


@dataclass
class Snippet:
    """A piece of another file that may go into the prompt, with its rank evidence."""

    path: str
    text: str
    start_line: int  # 1-based, inclusive
    end_line: int
    source: str  # "import" (imported definition) or "similar" (similarity window)
    score: float
    status: str = "candidate"  # "used" | "dropped" | "candidate"
    reason: str = ""
    tokens: int | None = None

    def to_debug(self) -> dict:
        """The snippet as the debug record shows it (without its text)."""
        return {
            "path": self.path, "lines": [self.start_line, self.end_line], "source": self.source,
            "score": round(self.score, 4), "status": self.status, "reason": self.reason, "tokens": self.tokens,
        }


def identifiers(text: str) -> set[str]:
    """The identifiers of a piece of code, without keywords and one-letter names."""
    return {w for w in _IDENTIFIER.findall(text) if len(w) > 1 and w.lower() not in _KEYWORDS}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|, 0 for two empty sets."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def query_text(text: str, cursor: int) -> str:
    """The code around the cursor that snippets are compared with.

    The cursor's own line is left out: that way the ranking, and with it the prompt's leading context,
    does not change while the user types within a line, which keeps the prompt's KV cache reusable.
    """
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = text.find("\n", cursor)
    before = text[:line_start].split("\n")[-QUERY_LINES_BEFORE - 1:]
    after = text[line_end + 1:].split("\n")[:QUERY_LINES_AFTER] if line_end >= 0 else []
    return "\n".join(before + after)


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _windows(file: FileContext) -> list[Snippet]:
    lines = file.text.split("\n")
    starts = range(0, max(1, len(lines) - WINDOW_LINES + WINDOW_STRIDE), WINDOW_STRIDE)
    windows = []
    for start in starts:
        chunk = lines[start:start + WINDOW_LINES]
        if any(line.strip() for line in chunk):
            windows.append(Snippet(file.path, "\n".join(chunk), start + 1, start + len(chunk), "similar", 0.0))
    return windows


def _overlaps(a: Snippet, b: Snippet) -> bool:
    return a.path == b.path and a.start_line <= b.end_line and b.start_line <= a.end_line


def rank_snippets(path: str, text: str, cursor: int, language: str,
                  other_files: tuple[FileContext, ...]) -> tuple[list[Snippet], dict]:
    """Candidate snippets, best first, each marked "candidate" or "dropped" with its reason; plus a summary.

    Imported definitions come first (in import order), then similarity windows by descending score,
    ties broken by path and line so the order never depends on dict or set iteration.
    """
    others = tuple(f for f in other_files if f.path != path and f.text.strip())
    ranked = python_import_snippets(path, text, others) if language == "python" else []
    for snippet in ranked:
        snippet.score = 1.0

    query = identifiers(query_text(text, cursor))
    windows = [w for f in others for w in _windows(f)]
    for window in windows:
        window.score = jaccard(query, identifiers(window.text))
    windows.sort(key=lambda w: (-w.score, w.path, w.start_line))
    ranked += windows

    current = _normalized(text)
    seen: dict[str, Snippet] = {}
    kept: list[Snippet] = []
    for snippet in ranked:
        key = _normalized(snippet.text)
        if snippet.source == "similar" and snippet.score < MIN_SIMILARITY:
            snippet.status, snippet.reason = "dropped", f"similarity {snippet.score:.3f} below {MIN_SIMILARITY}"
        elif key in seen:
            first = seen[key]
            snippet.status, snippet.reason = "dropped", f"duplicate of {first.path}:{first.start_line}-{first.end_line}"
        elif key and key in current:
            snippet.status, snippet.reason = "dropped", "already in the current file"
        elif (better := next((k for k in kept if _overlaps(k, snippet)), None)) is not None:
            snippet.status = "dropped"
            snippet.reason = f"overlaps higher-ranked lines {better.start_line}-{better.end_line} of the same file"
        else:
            kept.append(snippet)
        seen.setdefault(key, snippet)
    summary = {"files": len(others), "candidates": len(ranked), "imports": sum(s.source == "import" for s in ranked),
               "query_identifiers": len(query)}
    return ranked, summary


def debug_snippets(ranked: list[Snippet]) -> tuple[list[dict], int]:
    """The debug view: every used or import snippet and the best others, capped; plus how many were left out."""
    shown = [s for s in ranked if s.status == "used" or s.source == "import"]
    rest = [s for s in ranked if s not in shown]
    room = max(0, MAX_DEBUG_CANDIDATES - len(shown))
    shown_ids = {id(s) for s in shown + rest[:room]}
    return [s.to_debug() for s in ranked if id(s) in shown_ids], max(0, len(rest) - room)


# --- Python imports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonImport:
    """One imported module, and the names taken from it (empty for `import module`)."""

    module: str  # dotted, without the leading dots of a relative import
    level: int  # number of leading dots (0 = absolute)
    names: tuple[str, ...]


def python_imports(text: str) -> list[PythonImport]:
    """The import statements of a Python file, in source order (including those nested in functions)."""
    tree = parse("python", text)
    if tree is None:
        return []
    found: list[PythonImport] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "import_statement":
            for name in node.children_by_field_name("name"):
                dotted = name.child_by_field_name("name") if name.type == "aliased_import" else name
                found.append(PythonImport(_text(dotted), 0, ()))
        elif node.type == "import_from_statement":
            module = node.child_by_field_name("module_name")
            level, dotted = _relative(module)
            names = []
            for name in node.children_by_field_name("name"):
                target = name.child_by_field_name("name") if name.type == "aliased_import" else name
                names.append(_text(target))
            found.append(PythonImport(dotted, level, tuple(names)))
        else:
            stack.extend(reversed(node.children))
    return found


def _text(node: Node | None) -> str:
    return node.text.decode("utf-8") if node is not None and node.text is not None else ""


def _relative(module: Node | None) -> tuple[int, str]:
    if module is None:
        return 0, ""
    if module.type != "relative_import":
        return 0, _text(module)
    prefix = next((c for c in module.children if c.type == "import_prefix"), None)
    dotted = next((c for c in module.children if c.type == "dotted_name"), None)
    return len(_text(prefix)), _text(dotted)


def module_paths(module: str, level: int, current_path: str) -> list[str]:
    """Relative paths (posix) a module may live at, as seen from the current file's directory.

    Absolute imports are tried from the current directory and a few parents (the workspace root is
    unknown here), nearest first; relative imports from the directory `level - 1` levels up.
    """
    parts = [p for p in module.split(".") if p]
    here = posixpath.dirname(current_path.replace(os.sep, "/"))
    if level:
        bases = [posixpath.normpath(posixpath.join(here, *[".."] * (level - 1)))]
    else:
        bases, base = [], here
        for _ in range(MAX_PARENT_LEVELS + 1):
            bases.append(base)
            parent = posixpath.dirname(base)
            if parent == base or not base:
                break
            base = parent
    candidates = []
    for base in bases:
        stem = posixpath.join(base, *parts) if parts else base
        candidates += [stem + ".py", posixpath.join(stem, "__init__.py")] if parts else [posixpath.join(stem, "__init__.py")]
    return [posixpath.normpath(c) for c in candidates]


def _find_file(candidates: list[str], files: dict[str, FileContext]) -> FileContext | None:
    for candidate in candidates:
        if candidate in files:
            return files[candidate]
    return None


def python_import_snippets(path: str, text: str, others: tuple[FileContext, ...]) -> list[Snippet]:
    """Snippets for what the current Python file imports from the other files: each named definition, or an
    outline of a module imported as a whole."""
    files = {posixpath.normpath(f.path.replace(os.sep, "/")): f for f in others}
    current = path.replace(os.sep, "/")
    snippets: list[Snippet] = []
    for imp in python_imports(text):
        module_file = _find_file(module_paths(imp.module, imp.level, current), files)
        if not imp.names:
            if module_file is not None:
                snippets.append(_outline_snippet(module_file))
            continue
        for name in imp.names:
            definition = _definition_snippet(module_file, name) if module_file is not None else None
            if definition is None:  # `from package import module`
                sub = _find_file(module_paths(f"{imp.module}.{name}" if imp.module else name, imp.level, current), files)
                definition = _outline_snippet(sub) if sub is not None else None
            if definition is not None:
                snippets.append(definition)
    unique: dict[tuple[str, int], Snippet] = {}
    for snippet in snippets:
        unique.setdefault((snippet.path, snippet.start_line), snippet)
    return list(unique.values())


_DEFINITIONS = ("function_definition", "class_definition")


def _definition_name(node: Node) -> str | None:
    if node.type == "decorated_definition":
        inner = node.child_by_field_name("definition")
        return _definition_name(inner) if inner is not None else None
    if node.type in _DEFINITIONS:
        return _text(node.child_by_field_name("name"))
    if node.type == "expression_statement" and node.named_children and node.named_children[0].type == "assignment":
        left = node.named_children[0].child_by_field_name("left")
        return _text(left) if left is not None and left.type == "identifier" else None
    return None


def _definition_snippet(file: FileContext, name: str) -> Snippet | None:
    tree = parse("python", file.text)
    if tree is None:
        return None
    for node in tree.root_node.named_children:
        if _definition_name(node) == name:
            lines = node.end_point[0] - node.start_point[0] + 1
            body = _text(node) if lines <= MAX_DEFINITION_LINES else _outline(node)
            return Snippet(file.path, body, node.start_point[0] + 1, node.end_point[0] + 1, "import", 1.0,
                           reason=f"definition of {name} imported by the current file")
    return None


def _outline_snippet(file: FileContext) -> Snippet:
    tree = parse("python", file.text)
    assert tree is not None  # python always has a grammar
    outline = "\n".join(_outline(node) for node in tree.root_node.named_children if _definition_name(node))
    lines = file.text.count("\n") + 1
    return Snippet(file.path, outline, 1, lines, "import", 1.0, reason="outline of a module imported by the current file")


def _outline(node: Node) -> str:
    """Signatures (and first docstring line) of a definition and of the definitions nested in it."""
    if node.type == "decorated_definition":
        inner = node.child_by_field_name("definition")
        decorators = [_text(c) for c in node.children if c.type == "decorator"]
        return "\n".join(decorators + [_outline(inner)]) if inner is not None else _text(node)
    if node.type not in _DEFINITIONS:
        return _text(node).split("\n")[0]
    body = node.child_by_field_name("body")
    indent = " " * node.start_point[1]
    if body is None:
        return _text(node)
    header = node.text[: body.start_byte - node.start_byte].decode("utf-8").rstrip()
    lines = [header]
    body_indent = indent + "    "
    for child in body.named_children:
        if child.type == "expression_statement" and child.named_children and child.named_children[0].type == "string":
            if child is body.named_children[0]:
                lines.append(body_indent + _text(child).split("\n")[0])
            continue
        if child.type in _DEFINITIONS or child.type == "decorated_definition":
            lines.append(body_indent + _outline(child))  # nested lines already carry their own indentation
    if len(lines) == 1:
        lines.append(body_indent + "...")
    return "\n".join(lines)


def workspace_python_imports(path: str, text: str, max_bytes: int = 1_000_000) -> list[FileContext]:
    """The workspace files a Python file imports, read from disk next to it (for the CLI).

    Only files under the current file's directory tree or its parents are considered, as `module_paths`
    lists them; unreadable or non-UTF-8 files are skipped.
    """
    found: dict[str, FileContext] = {}
    here = os.path.abspath(path)
    for imp in python_imports(text):
        modules = [imp.module] + [f"{imp.module}.{n}" if imp.module else n for n in imp.names]
        for module in modules:
            for candidate in module_paths(module, imp.level, here):
                if candidate in found or candidate == here or not os.path.isfile(candidate):
                    continue
                try:
                    if os.path.getsize(candidate) > max_bytes:
                        continue
                    with open(candidate, encoding="utf-8") as handle:
                        found[candidate] = FileContext(candidate, handle.read())
                except (OSError, UnicodeDecodeError):
                    continue
                break
    return list(found.values())
