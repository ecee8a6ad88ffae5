"""Post-processing of a raw model completion: line mode, block end, suffix overlap, syntax guard.

Rules, in order (each recorded in the debug record when it changes something):
1. line mode: single-line completions end at the first newline; multi-line or single-line is decided
   from the syntax at the cursor before generating (`decide_mode`);
2. block end: a multi-line completion is cut where the block it is in ends (indentation for Python,
   brace balance for the brace languages, both for plain text);
3. suffix overlap: a tail that repeats the start of the text after the cursor is dropped;
4. syntax guard: a completion that adds tree-sitter parse errors the file without it did not have is
   replaced by its longest shorter prefix that does not, when there is one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from fim.languages import TEXT, is_brace_language, parse, syntax_errors

SYNTAX_WINDOW_CHARS = 8000  # the syntax guard parses this much text on each side of the cursor
MAX_SYNTAX_CHECKS = 48  # shorter prefixes tried by the syntax guard, longest first
_OPENERS = ("{", "(", "[")
_CLOSE = {")": "(", "]": "[", "}": "{"}
_WORD = re.compile(r"\w")


# --- lexing ---------------------------------------------------------------------------------------------


def brackets(code: str, language: str) -> Iterator[tuple[int, int]]:
    """(index, +1 or -1) for each bracket of `code` outside strings and comments.

    A light lexer, not a parser: good enough to balance brackets in a few lines of model output.
    """
    hash_comment = language in ("python", TEXT)
    slash_comment = language != "python"
    quotes = "" if language == TEXT else ("\"'`" if language in ("javascript", "typescript", "tsx", "go") else "\"'")
    i, n = 0, len(code)
    while i < n:
        ch = code[i]
        if (hash_comment and ch == "#") or (slash_comment and code.startswith("//", i)):
            end = code.find("\n", i)
            i = n if end < 0 else end
        elif slash_comment and code.startswith("/*", i):
            end = code.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch in quotes:
            i = _skip_string(code, i, language)
        else:
            if ch in _OPENERS:
                yield i, 1
            elif ch in _CLOSE:
                yield i, -1
            i += 1


def _skip_string(code: str, i: int, language: str) -> int:
    """Index after the string literal starting at code[i] (or after the quote when it is not one)."""
    quote = code[i]
    if quote == "'" and language == "rust" and not re.match(r"'(\\.[^']*|[^\\'])'", code[i:]):
        return i + 1  # a lifetime such as 'a, not a char literal
    if language == "python" and code.startswith(quote * 3, i):
        end = code.find(quote * 3, i + 3)
        return len(code) if end < 0 else end + 3
    j = i + 1
    while j < len(code):
        if code[j] == "\\":
            j += 2
            continue
        if code[j] == quote:
            return j + 1
        if code[j] == "\n" and quote != "`":
            return j  # an unterminated string ends with its line
        j += 1
    return len(code)


def _min_depth(code: str, language: str) -> int:
    depth = low = 0
    for _, delta in brackets(code, language):
        depth += delta
        low = min(low, depth)
    return low


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _window(text: str, cursor: int) -> tuple[str, str]:
    """Text before and after the cursor, bounded at line starts so huge files parse quickly."""
    start = max(0, cursor - SYNTAX_WINDOW_CHARS)
    if start:
        start = text.find("\n", start, cursor) + 1 or cursor
    end = min(len(text), cursor + SYNTAX_WINDOW_CHARS)
    if end < len(text):
        newline = text.rfind("\n", cursor, end)
        end = newline if newline >= 0 else cursor
    return text[start:cursor], text[cursor:end]


# --- 1. line mode ---------------------------------------------------------------------------------------


def _cursor_in(text: str, cursor: int, language: str) -> str | None:
    """"comment" or "string" when the cursor is inside one (by tree-sitter), else None."""
    before, after = _window(text, cursor)
    tree = parse(language, before + after)
    if tree is None or not before:
        return None
    offset = len(before.encode("utf-8"))
    node = tree.root_node.descendant_for_byte_range(offset - 1, offset)
    while node is not None:
        kind = node.type
        if "comment" in kind and node.start_byte < offset <= node.end_byte:
            closed = node.text is not None and node.text.endswith(b"*/")
            if offset < node.end_byte or not closed:
                return "comment"
        if ("string" in kind or kind == "template_string") and node.start_byte < offset < node.end_byte:
            return "string"
        node = node.parent
    return None


def decide_mode(text: str, cursor: int, language: str, mode: str) -> tuple[bool, str]:
    """(multi-line?, reason) from the option, or from the syntax around the cursor when mode is "auto"."""
    if mode == "single":
        return False, "single-line requested"
    if mode == "multi":
        return True, "multi-line requested"
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = text.find("\n", cursor)
    before = text[line_start:cursor]
    after = text[cursor:] if line_end < 0 else text[cursor:line_end]
    if after.strip():
        return False, "text right of the cursor"
    inside = _cursor_in(text, cursor, language)
    if inside is not None:
        return False, f"inside a {inside}"
    stripped = before.rstrip()
    openers = _OPENERS + ((":",) if language in ("python", TEXT) else ())
    if stripped.endswith(openers):
        return True, f"after the block opener {stripped[-1]!r}"
    if not stripped:
        return True, "at the start of an empty line"
    return False, "inside a statement"


# --- 2. block end ---------------------------------------------------------------------------------------


def _indent_cut(completion: str, line_prefix: str) -> int | None:
    """Where an indentation-structured completion leaves its block (index into completion), or None."""
    full = line_prefix + completion
    depth = 0
    events = dict(brackets(full, "python"))
    lines = full.split("\n")
    if line_prefix.rstrip().endswith(":"):
        block = _indent(line_prefix) + 1  # the body must be deeper than the opener's line
    else:
        first = next((line for line in lines if line.strip()), "")
        block = _indent(line_prefix) if line_prefix.strip() else _indent(first)
    pos = 0
    for number, line in enumerate(lines):
        if number and line.strip() and depth <= 0 and _indent(line) < block:
            return max(0, pos - 1 - len(line_prefix))
        for k in range(len(line)):
            depth += events.get(pos + k, 0)
        depth = max(depth, 0)  # closers of brackets opened before the cursor's line do not count
        pos += len(line) + 1
    return None


def _brace_cut(completion: str, language: str, done: bool) -> int | None:
    """Where a completion closes the block the cursor is in: the end of that line, or None.

    While streaming (done=False) the cut is only known once that line is complete.
    """
    depth = 0
    for index, delta in brackets(completion, language):
        depth += delta
        if depth < 0:
            end = completion.find("\n", index)
            if end >= 0:
                return end
            return len(completion) if done else None
    return None


def block_end(completion: str, text: str, cursor: int, language: str, done: bool = True) -> int | None:
    """Index in `completion` where its block ends, or None when it does not end inside the completion."""
    line_prefix = text[text.rfind("\n", 0, cursor) + 1:cursor]
    cuts = []
    if not is_brace_language(language):
        cuts.append(_indent_cut(completion, line_prefix))
    if language != "python":
        cuts.append(_brace_cut(completion, language, done))
    found = [c for c in cuts if c is not None]
    return min(found) if found else None


@dataclass
class BlockEndWatcher:
    """Tells a streaming generation to stop once the completion's block has ended (saves decode steps)."""

    text: str
    cursor: int
    language: str
    multiline: bool
    received: str = ""
    ended: bool = False

    def feed(self, piece: str) -> None:
        self.received += piece
        if self.multiline:
            self.ended = self.ended or block_end(self.received, self.text, self.cursor, self.language, done=False) is not None
        else:
            self.ended = self.ended or "\n" in self.received


# --- 3. suffix overlap ----------------------------------------------------------------------------------


def drop_suffix_overlap(completion: str, text: str, cursor: int, language: str) -> tuple[str, str | None]:
    """Remove a tail of the completion that the text after the cursor already has; returns (text, what)."""
    suffix = text[cursor:]
    line_prefix = text[text.rfind("\n", 0, cursor) + 1:cursor]
    suffix_lines = [line.strip() for line in suffix.split("\n") if line.strip()]
    lines = completion.split("\n")
    first = 0 if not line_prefix.strip() else 1  # a whole first line can only repeat when it starts a line
    for i in range(first, len(lines)):
        tail = [line.strip() for line in lines[i:] if line.strip()]
        if not tail:
            break
        whole = tail == suffix_lines[: len(tail)]
        strong = len(tail) >= 3 and tail[:3] == suffix_lines[:3] and any(_WORD.search(t) for t in tail[:3])
        if whole or strong:
            kept = "\n".join(lines[:i])
            return kept, completion[len(kept):]
    rest = suffix.split("\n", 1)[0].strip()
    if rest and completion and "\n" not in completion[-len(rest):]:
        for k in range(len(rest), 0, -1):
            overlap = rest[:k]
            if not completion.endswith(overlap):
                continue
            head = completion[: -k]
            closes_outer = _min_depth(completion, language) < 0 and _min_depth(head, language) >= 0
            plain = k == len(rest) and not any(c in "()[]{}" for c in overlap)
            if closes_outer or plain:
                return head, overlap
    return completion, None


# --- 4. syntax guard ------------------------------------------------------------------------------------


def _shorter_prefixes(completion: str) -> list[str]:
    """Shorter non-empty prefixes worth trying: line ends and word boundaries, longest first."""
    def kind(c: str) -> int:
        return 0 if c.isspace() else 1 if _WORD.match(c) else 2

    cuts = set()
    for i in range(1, len(completion)):
        a, b = completion[i - 1], completion[i]
        if b == "\n" or (not a.isspace() and (kind(a) != kind(b) or kind(a) == 2)):
            cuts.add(i)
    ordered = sorted(cuts, reverse=True)[:MAX_SYNTAX_CHECKS]
    return [completion[:i] for i in ordered if completion[:i].strip()]


def _new_errors(before: str, inserted: str, after: str, language: str,
                base: Counter[tuple[str, int, int]]) -> tuple[int, int] | None:
    """(errors, errors not in `base`) of before + inserted + after, positions mapped back to the text
    without the insertion; None when the language has no grammar.

    An error is "new" unless the file without the completion has the same kind of error at the same place,
    so a completion that only moves or extends an existing error counts as adding one.
    """
    spans = syntax_errors(language, before + inserted + after)
    if spans is None:
        return None
    cursor, length = len(before.encode("utf-8")), len(inserted.encode("utf-8"))

    def mapped(position: int) -> int:
        return position if position <= cursor else max(cursor, position - length)

    found = Counter((kind, mapped(start), mapped(end)) for kind, start, end in spans)
    return len(spans), sum((found - base).values())


def syntax_guard(completion: str, text: str, cursor: int, language: str) -> tuple[str, dict]:
    """The completion, or its longest shorter prefix that adds no parse errors; with the evidence."""
    before, after = _window(text, cursor)
    base_spans = syntax_errors(language, before + after)
    if base_spans is None:
        return completion, {"checked": False, "reason": f"no grammar for {language}"}
    base = Counter(base_spans)
    checked = _new_errors(before, completion, after, language, base)
    assert checked is not None  # the language has a grammar
    errors, new = checked
    record = {"checked": True, "errors_without": len(base_spans), "errors_with": errors, "new_errors": new}
    if not new or not completion.strip():
        return completion, {**record, "action": "kept"}
    for candidate in _shorter_prefixes(completion):
        result = _new_errors(before, candidate, after, language, base)
        if result is not None and not result[1]:
            return candidate, {**record, "action": f"shortened to {len(candidate)} of {len(completion)} characters",
                               "errors_after": result[0]}
    return completion, {**record, "action": "kept: every shorter prefix adds errors too"}


# --- all rules ------------------------------------------------------------------------------------------


def postprocess(raw: str, text: str, cursor: int, language: str, multiline: bool) -> tuple[str, list[dict]]:
    """Apply the rules in order; returns the completion and one debug entry per rule that acted."""
    steps: list[dict] = []
    completion = raw
    if not multiline:
        newline = completion.find("\n")
        if newline >= 0:
            steps.append({"rule": "single_line", "dropped_chars": len(completion) - newline})
            completion = completion[:newline]
    else:
        cut = block_end(completion, text, cursor, language)
        if cut is not None and cut < len(completion):
            steps.append({"rule": "block_end", "dropped_chars": len(completion) - cut})
            completion = completion[:cut]
        trimmed = completion.rstrip()
        if trimmed != completion and ("\n" in completion[len(trimmed):] or not trimmed):
            completion = trimmed  # trailing blank lines are never useful in ghost text
    completion, overlap = drop_suffix_overlap(completion, text, cursor, language)
    if overlap:
        steps.append({"rule": "suffix_overlap", "dropped": overlap})
    guarded, record = syntax_guard(completion, text, cursor, language)
    steps.append({"rule": "syntax", **record})
    return guarded, steps
