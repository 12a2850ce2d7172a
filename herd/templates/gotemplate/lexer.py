"""The lexer: splits Go template source into text and action tokens."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from herd.templates.gotemplate.errors import GoTemplateError, _position

_SPACE = " \t\r\n"  # Go's trim markers and action whitespace use exactly these four characters.
_SPACE_SET = frozenset(_SPACE)  # a set, so that an empty slice past the end of the source never matches
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
_IDENT = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)"
)
_VARIABLE = re.compile(r"\$\w*")
_FIELD = re.compile(r"(?:\.[^\W\d]\w*)+")
_ESCAPE = re.compile(
    r"\\(?:([abfnrtv\\'\"])|x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))"
)
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}


@dataclass
class _Token:
    kind: str  # text, {{, }}, field, dot, var, ident, kw, str, num, bool, nil, (, ), |, :=, =, ",", eof
    value: Any
    pos: int
    space: bool = False  # preceded by whitespace inside an action; Go needs this to tell `$x.F` from `$x .F`


def _unquote(body: str, quote: str, err: Callable[[str], NoReturn]) -> str:
    """Decode the escapes of a Go interpreted string/char literal body (without quotes)."""
    out = bytearray()
    i = 0
    while i < len(body):
        if body[i] != "\\":
            out += body[i].encode()
            i += 1
            continue
        m = _ESCAPE.match(body, i)
        if m is None or (m.group(1) and m.group(1) in "'\"" and m.group(1) != quote):
            err("invalid syntax in quoted literal")
        simple, hx, octal, u4, u8 = m.groups()
        if simple:
            out.append(_SIMPLE_ESCAPES[simple])
        elif hx or octal:
            # \x and octal escapes are raw bytes in Go, so "\xe2\x9c\x93" is one UTF-8 character.
            out.append(int(hx, 16) if hx else int(octal, 8) & 0xFF)
        else:
            out += chr(int(u4 or u8, 16)).encode("utf-8", "replace")
        i = m.end()
    return out.decode("utf-8", "replace")


class _Lexer:
    """Splits template source into text and action tokens, applying `{{-`/`-}}` trimming as Go's lexer does."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.tokens: list[_Token] = []

    def error(self, pos: int, msg: str) -> NoReturn:
        raise GoTemplateError(f"{_position(self.src, pos)}: {msg}")

    def run(self) -> list[_Token]:
        src, pos, trim_next = self.src, 0, False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if trim_next:
                text = text.lstrip(_SPACE)
            if start < 0:
                if text:
                    self.tokens.append(_Token("text", text, pos))
                self.tokens.append(_Token("eof", None, len(src)))
                return self.tokens
            inner = start + 2
            # Go only treats "-" as a trim marker when followed by whitespace; "{{-3}}" is the number -3.
            if src[inner : inner + 1] == "-" and src[inner + 1 : inner + 2] in _SPACE_SET:
                text = text.rstrip(_SPACE)
                inner += 2
            if text:
                self.tokens.append(_Token("text", text, pos))
            if src.startswith("/*", inner):
                pos, trim_next = self.comment(start, inner)
            else:
                self.tokens.append(_Token("{{", None, start))
                pos, trim_next = self.action(start, inner)

    def right_delim(self, i: int) -> tuple[int, bool] | None:
        """Return (end offset, trims) if a right delimiter (`}}` or ` -}}`) starts at i."""
        if self.src.startswith("}}", i):
            return i + 2, False
        if self.src[i : i + 1] in _SPACE_SET and self.src.startswith("-}}", i + 1):
            return i + 4, True
        return None

    def comment(self, start: int, inner: int) -> tuple[int, bool]:
        end = self.src.find("*/", inner + 2)
        if end < 0:
            self.error(start, "unclosed comment")
        delim = self.right_delim(end + 2)
        if delim is None:
            self.error(start, "comment ends before closing delimiter")
        return delim

    def action(self, start: int, i: int) -> tuple[int, bool]:
        src, n = self.src, len(self.src)
        space = False
        while True:
            delim = self.right_delim(i)
            if delim is not None:
                self.tokens.append(_Token("}}", None, i))
                return delim
            if i >= n:
                self.error(start, "unclosed action")
            c = src[i]
            if c in _SPACE:
                i, space = i + 1, True
                continue
            tok, i = self.action_token(i)
            tok.space, space = space, False
            self.tokens.append(tok)

    def action_token(self, i: int) -> tuple[_Token, int]:
        src = self.src
        c = src[i]
        if c in "()|,":
            return _Token(c, None, i), i + 1
        if src.startswith(":=", i):
            return _Token(":=", None, i), i + 2
        if c == "=":
            return _Token("=", None, i), i + 1
        if c == '"' or c == "'":
            end = i + 1
            while end < len(src) and src[end] != c and src[end] != "\n":
                end += 2 if src[end] == "\\" else 1
            if end >= len(src) or src[end] != c:
                self.error(i, "unterminated quoted string" if c == '"' else "unterminated character constant")
            body = _unquote(src[i + 1 : end], c, lambda m: self.error(i, m))
            if c == '"':
                return _Token("str", body, i), end + 1
            if len(body) != 1:
                self.error(i, "malformed character constant")
            return _Token("num", ord(body), i), end + 1
        if c == "`":
            end = src.find("`", i + 1)
            if end < 0:
                self.error(i, "unterminated raw quoted string")
            # strconv.Unquote drops carriage returns from raw strings.
            return _Token("str", src[i + 1 : end].replace("\r", ""), i), end + 1
        if c == "$":
            m = _VARIABLE.match(src, i)
            assert m is not None
            return _Token("var", m.group(), i), m.end()
        if c == "." and not src[i + 1 : i + 2].isdigit():
            m = _FIELD.match(src, i)
            if m is None:
                return _Token("dot", None, i), i + 1
            return _Token("field", tuple(m.group()[1:].split(".")), i), m.end()
        m = _NUMBER.match(src, i)
        if m is not None and (c not in "+-" or len(m.group()) > 1):
            end = m.end()
            if end < len(src) and (src[end].isalnum() or src[end] in "._"):
                self.error(i, f'bad number syntax: "{src[i : end + 1]}"')
            return _Token("num", self.number(m.group(), i), i), end
        m = _IDENT.match(src, i)
        if m is not None:
            word = m.group()
            if word in ("true", "false"):
                return _Token("bool", word == "true", i), m.end()
            if word == "nil":
                return _Token("nil", None, i), m.end()
            return _Token("kw" if word in _KEYWORDS else "ident", word, i), m.end()
        self.error(i, f'bad character "{c}" in action')

    def number(self, text: str, pos: int) -> int | float:
        """Convert a Go number literal; integers stay int and anything with '.' or an exponent is a float."""
        clean = text.replace("_", "")
        try:
            if re.fullmatch(r"[+-]?0[0-7]+", clean):
                return int(clean, 8)  # Go still reads a leading zero as octal
            if re.fullmatch(r"[+-]?(?:0[xXbBoO][0-9a-fA-F]+|\d+)", clean):
                return int(clean, 0)
            return float(clean)
        except ValueError:
            self.error(pos, f'bad number syntax: "{text}"')
