r"""Weighted prompts as ComfyUI and A1111 write them, parsed into (text, weight) segments.

Pure and stdlib-only, so a config check can reject a malformed prompt before anything heavy is imported.

Both syntaxes (`comfy`, `a1111`):
- `(text:w)` weights `text` by w, a number > 0 written after the group's last colon; a colon right after the word
  `embedding` is an identity reference (`embedding:ann`), never a weight. In `a1111` w multiplies the enclosing
  groups' weights (`((a:1.5))` is 1.5 * 1.1); in `comfy` it replaces them, as ComfyUI's parser does
  (`((a:1.5))` is 1.5, and `(a (b:1.5) c:0.5)` gives b 1.5), while groups inside it still multiply
  (`((a):0.5)` is a at 0.55).
- `(text)` multiplies by 1.1; nested groups multiply: `((a))` is 1.1 * 1.1.
- `\(` and `\)` are literal parentheses, `\\` a literal backslash; a backslash before anything else stays as is.
Only `a1111`:
- `[text]` divides by 1.1; `\[` and `\]` are literal brackets. A1111 writes `[from:to:when]` for prompt editing
  (the prompt changes during sampling), which is not supported: the brackets only divide and their content stays
  text, so `[a:1.2]` is the text `a:1.2` at weight 1 / 1.1.
In `comfy`, square brackets are text, as ComfyUI does not weight them. `none` takes the prompt literally.
"""

import math
import re
from dataclasses import dataclass, field
from itertools import groupby

WEIGHTINGS = ("comfy", "a1111", "none")

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ENDS_WITH_REFERENCE = re.compile(r"(?<!\w)embedding\Z")  # before the colon of `embedding:NAME`
_OPENER = {")": "(", "]": "["}
_NAMES = {"(": ("parentheses", "parenthesis"), "[": ("brackets", "bracket")}

Segments = list[tuple[str, float]]
_Pieces = list[tuple[str, float, bool]]  # (character, weight, fixed: set by a comfy explicit weight, final)


@dataclass
class _Group:
    """An open `(` or `[` (or, with opener "", the whole prompt) and what has been read inside it so far."""

    opener: str
    start: int
    pieces: _Pieces = field(default_factory=list)  # one per character, weights relative to this group
    colon: tuple[int, int] | None = None  # the last weight colon: (position in the prompt, index in pieces)


def _unbalanced(char: str, position: int, what: str) -> str:
    plural, singular = _NAMES[_OPENER.get(char, char)]
    return f"unbalanced {plural}: '{char}' at character {position} {what}; write \\{char} for a literal {singular}"


def _close(text: str, group: _Group, end: int, problems: list[str], syntax: str) -> _Pieces:
    """The group's pieces with its own weight applied; a weight that is not usable goes to `problems`. Pieces an
    inner comfy explicit weight fixed keep their weight."""
    if group.opener == "[":
        return [(piece, weight if fixed else weight / 1.1, fixed) for piece, weight, fixed in group.pieces]
    if group.colon is None:
        return [(piece, weight if fixed else weight * 1.1, fixed) for piece, weight, fixed in group.pieces]
    colon, index = group.colon
    written, source = text[colon + 1 : end].strip(), text[group.start : end + 1]
    if not written:
        problems.append(f"weight in '{source}' is empty")
    elif not _NUMBER.fullmatch(written) or math.isinf(float(written)):
        problems.append(f"weight '{written}' in '{source}' is not a number")
    elif float(written) <= 0:
        problems.append(f"weight {float(written)} in '{source}' must be > 0")
    else:
        replaces = syntax == "comfy"
        return [(piece, weight if fixed else weight * float(written), fixed or replaces)
                for piece, weight, fixed in group.pieces[:index]]
    return []


def _parse(text: str, syntax: str) -> tuple[Segments, list[str]]:
    """One pass with a stack of open groups; a group's weight is known only at its close, where it is applied."""
    if syntax not in WEIGHTINGS:
        raise ValueError(f"unknown prompt weighting {syntax!r}; expected one of {', '.join(WEIGHTINGS)}")
    if syntax == "none":
        return [(text, 1.0)], []
    openers, closers = ("([", ")]") if syntax == "a1111" else ("(", ")")
    stack, problems = [_Group("", -1)], []
    i = 0
    while i < len(text):
        char, top = text[i], stack[-1]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in openers + closers + "\\":
            top.pieces.append((text[i + 1], 1.0, False))
            i += 1
        elif char in openers:
            stack.append(_Group(char, i))
        elif char in closers:
            if not top.opener:
                problems.append(_unbalanced(char, i, f"has no matching '{_OPENER[char]}'"))
            elif top.opener != _OPENER[char]:
                problems.append(_unbalanced(char, i, f"cannot close '{top.opener}' at character {top.start}"))
            else:
                stack.pop()
                stack[-1].pieces += _close(text, top, i, problems, syntax)
        else:
            if char == ":" and top.opener == "(" and not _ENDS_WITH_REFERENCE.search(text, 0, i):
                top.colon = (i, len(top.pieces))
            top.pieces.append((char, 1.0, False))
        i += 1
    problems += [_unbalanced(group.opener, group.start, "is never closed") for group in stack[1:]]
    runs = groupby(stack[0].pieces, key=lambda piece: piece[1])
    return [("".join(piece for piece, _, _ in run), weight) for weight, run in runs], problems


def parse_weighted(text: str, syntax: str) -> Segments:
    """The prompt as (text, weight) segments in order. Adjacent segments with equal weight are merged; segments
    that are empty are dropped; escapes are unescaped in the returned text. Raises ValueError with the first
    problem weighting_problems would report."""
    segments, problems = _parse(text, syntax)
    if problems:
        raise ValueError(problems[0])
    return segments


def weighting_problems(text: str, syntax: str) -> list[str]:
    """Why `text` cannot be parsed (empty list when it can), each message saying what and where, in reading order
    of where the problem shows (a group's weight is checked at its closing parenthesis)."""
    return _parse(text, syntax)[1]
