"""A JSON schema's `pattern` as GBNF: the regex taken atom by atom, as llama.cpp's converter takes it.

Apart from herd/json_schema.py (which schemas a `format` may be), which checks a pattern by translating it
here, and from workers/grammar.py, which writes the translation into the grammar.
"""

from __future__ import annotations

import re

# llama.cpp's grammar parser refuses a repetition past its MAX_REPETITION_THRESHOLD (2000), counting the
# rules a repeated group expands to; counts up to this many compile for any element, larger ones are
# refused rather than failing in the worker.
MAX_REPETITIONS = 1000


# Class escapes as code point ranges. \s is the space alone: the other white space would have to be
# written as JSON escapes inside the string, which a character class cannot say.
_CLASS_ESCAPES: dict[str, list[tuple[int, int]]] = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x20, 0x20)],
}
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
# What a JSON string cannot hold unescaped: a character class must leave these out.
_JSON_UNSAFE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_NOT_JSON_UNSAFE = r'"\\\x7F\x00-\x1F'
_ANY_SAFE_CHAR = f"[^{_NOT_JSON_UNSAFE}]"


def pattern_gbnf(pattern: str) -> str:
    r"""A `pattern` as the GBNF of the JSON string's inside (quotes excluded), or ValueError.

    GBNF reads like a regex, so this is the regex taken atom by atom, as llama.cpp's converter takes it,
    with the `^...$` anchors it needs. So that the output stays a JSON string whose value matches: `.`
    and classes leave out what JSON must escape (quote, backslash, control characters), a literal quote,
    backslash or control character is written as its JSON escape, `\d` `\w` `\s` (the space alone) and
    their negations are classes, `(?:` a plain group, `{m,n}` GBNF's own. Lookarounds, backreferences,
    anchors inside the pattern, lazy quantifiers and counts over llama.cpp's limit are refused.
    """
    if len(pattern) < 2 or not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError('must start with "^" and end with "$"')
    body = pattern[1:-1]
    out: list[str] = []
    i, depth, atom = 0, 0, False  # atom: something a quantifier may follow
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body):
                raise ValueError("ends in a lone backslash")
            e = body[i + 1]
            if e in _CLASS_ESCAPES:
                out.append(f"[{_ranges(_CLASS_ESCAPES[e])}]")
                i += 2
            elif e.lower() in _CLASS_ESCAPES:
                out.append(f"[^{_ranges(_CLASS_ESCAPES[e.lower()])}{_NOT_JSON_UNSAFE}]")
                i += 2
            else:
                char, i = _escaped_char(body, i)
                out.append(_literal(char))
            atom = True
        elif c == "[":
            end = body.find("]", i + 1)
            while end > 0 and _is_escaped(body, end):
                end = body.find("]", end + 1)
            if end < 0:
                raise ValueError("has an unclosed '['")
            out.append(_class(body[i + 1 : end]))
            i, atom = end + 1, True
        elif c == "(":
            if body.startswith("(?", i) and not body.startswith("(?:", i):
                raise ValueError("lookarounds and other (?...) groups have no grammar equivalent")
            out.append("(")
            i += 3 if body.startswith("(?:", i) else 1
            depth, atom = depth + 1, False
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("has an unbalanced ')'")
            out.append(")")
            i, atom = i + 1, True
        elif c == "|":
            out.append("|")
            i, atom = i + 1, False
        elif c in "*+?{":
            if not atom:
                raise ValueError(f"has a quantifier {c!r} with nothing to repeat")
            if c == "{":
                match = re.match(r"\{(\d+)(,(\d*))?\}", body[i:])
                if match is None:
                    raise ValueError("has a '{' that is not a {m}, {m,} or {m,n} quantifier")
                low, high = int(match.group(1)), match.group(3)
                if max(low, int(high or 0)) > MAX_REPETITIONS:
                    raise ValueError(
                        f"repeats more than {MAX_REPETITIONS} times (Herd's limit, under llama.cpp's grammar limit)"
                    )
                if high and int(high) < low:
                    raise ValueError(f"has a quantifier {match.group(0)} out of order")
                out.append(match.group(0))
                i += match.end()
            else:
                out.append(c)
                i += 1
            if body.startswith("?", i) or body.startswith("+", i):
                raise ValueError("lazy and possessive quantifiers have no grammar equivalent")
            atom = False
        elif c in "^$":
            raise ValueError(f"{c!r} may appear only at the pattern's ends")
        elif c == ".":
            out.append(_ANY_SAFE_CHAR)
            i, atom = i + 1, True
        else:
            out.append(_literal(c))
            i, atom = i + 1, True
    if depth:
        raise ValueError("has an unclosed '('")
    return " ".join(out) or '""'


def _is_escaped(text: str, at: int) -> bool:
    backslashes = len(text[:at]) - len(text[:at].rstrip("\\"))
    return backslashes % 2 == 1


def _escaped_char(text: str, i: int) -> tuple[str, int]:
    """The one character an escape at text[i] stands for, and where the escape ends."""
    e = text[i + 1]
    if e in _CONTROL_ESCAPES:
        return _CONTROL_ESCAPES[e], i + 2
    for lead, width in (("x", 2), ("u", 4)):
        if e == lead:
            digits = text[i + 2 : i + 2 + width]
            if not re.fullmatch(f"[0-9a-fA-F]{{{width}}}", digits):
                raise ValueError(f"has a malformed \\{lead} escape")
            return chr(int(digits, 16)), i + 2 + width
    if e.isalnum():
        raise ValueError(f"the escape \\{e} has no grammar equivalent")
    return e, i + 2


def _literal(char: str) -> str:
    """One literal character as a GBNF atom that writes it inside a JSON string: itself, or its JSON
    escape (a backslash, then more) grouped so that a quantifier repeats the whole escape."""
    if char == '"':
        return r'("\\\"")'
    if char == "\\":
        return r'("\\\\")'
    if char in "\n\t\r":
        return r'("\\' + {"\n": "n", "\t": "t", "\r": "r"}[char] + '")'
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return rf'("\\u{ord(char):04x}")'
    if char.isascii() and char.isalnum():
        return f'"{char}"'
    return f"[{_ranges([(ord(char), ord(char))])}]"


def _class(body: str) -> str:
    """A regex class as a GBNF class that a JSON string can hold unescaped."""
    negated = body.startswith("^")
    if negated:
        body = body[1:]
    ranges: list[tuple[int, int]] = []
    i = 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1].lower() in _CLASS_ESCAPES:
            if body[i + 1] not in _CLASS_ESCAPES:
                raise ValueError(f"\\{body[i + 1]} inside a class has no grammar equivalent")
            ranges.extend(_CLASS_ESCAPES[body[i + 1]])
            i += 2
            continue
        low, i = _class_char(body, i)
        if i + 1 < len(body) and body[i] == "-":
            high, i = _class_char(body, i + 1)
            if high < low:
                raise ValueError("has a class range out of order")
            ranges.append((low, high))
        else:
            ranges.append((low, low))
    if negated:
        return f"[^{_ranges(ranges)}{_NOT_JSON_UNSAFE}]"
    safe = _without(ranges, _JSON_UNSAFE)
    if not safe:
        raise ValueError("has a class of only characters a JSON string must escape")
    return f"[{_ranges(safe)}]"


def _class_char(body: str, i: int) -> tuple[int, int]:
    if body[i] == "\\":
        if i + 1 >= len(body):
            raise ValueError("ends a class in a lone backslash")
        char, end = _escaped_char(body, i)
        return ord(char), end
    return ord(body[i]), i + 1


def _without(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = ranges
    for c_low, c_high in cut:
        kept: list[tuple[int, int]] = []
        for low, high in out:
            if high < c_low or low > c_high:
                kept.append((low, high))
                continue
            if low < c_low:
                kept.append((low, c_low - 1))
            if high > c_high:
                kept.append((c_high + 1, high))
        out = kept
    return out


def _ranges(ranges: list[tuple[int, int]]) -> str:
    """Code point ranges as the inside of a GBNF class, every character escaped."""

    def one(cp: int) -> str:
        return f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"

    return "".join(one(low) if low == high else f"{one(low)}-{one(high)}" for low, high in ranges)
