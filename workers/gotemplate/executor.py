"""Pure-Python interpreter for the subset of Go's text/template used by Ollama TEMPLATE layers."""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

__all__ = ["GoTemplateError", "Template", "parse", "render"]


class GoTemplateError(ValueError):
    """A template parse or execution error; the message names the problem and its line and column."""


def _position(source: str, offset: int) -> str:
    """Return 'line L, col C' (both 1-based) for a character offset into source."""
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, col {col}"


# ---------------------------------------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# Parse tree
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Field:
    names: tuple[str, ...]
    pos: int


@dataclass
class _Var:
    name: str
    pos: int


@dataclass
class _Chain:
    """Field access on the result of a non-field term: `$x.A`, `(index .M 0).Role`."""

    node: _Expr
    names: tuple[str, ...]
    pos: int


@dataclass
class _Literal:
    value: Any
    pos: int


@dataclass
class _Dot:
    pos: int


@dataclass
class _Nil:
    pos: int


@dataclass
class _Ident:
    name: str
    pos: int


@dataclass
class _Command:
    args: list[_Expr]
    pos: int


@dataclass
class _Pipe:
    decl: list[str]
    is_assign: bool
    cmds: list[_Command]
    pos: int


_Expr = _Field | _Var | _Chain | _Literal | _Dot | _Nil | _Ident | _Pipe


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Branch:
    kind: str  # "if", "with" or "range"
    pipe: _Pipe
    body: list[_Node]
    else_body: list[_Node] | None
    pos: int


@dataclass
class _Jump:
    kind: str  # "break" or "continue"
    pos: int


_Node = _Text | _Action | _Branch | _Jump


def _show(e: _Expr) -> str:
    """Render an expression back to template syntax for error messages."""
    if isinstance(e, _Field):
        return "." + ".".join(e.names)
    if isinstance(e, _Var):
        return e.name
    if isinstance(e, _Chain):
        return _show(e.node) + "." + ".".join(e.names)
    if isinstance(e, _Literal):
        return _go_quote(e.value) if isinstance(e.value, str) else _to_text(e.value)
    if isinstance(e, _Dot):
        return "."
    if isinstance(e, _Nil):
        return "nil"
    if isinstance(e, _Ident):
        return e.name
    return "(" + " | ".join(" ".join(_show(a) for a in c.args) for c in e.cmds) + ")"


class _Parser:
    """Recursive-descent parser mirroring text/template/parse, including its parse-time variable checks."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.toks = _Lexer(source).run()
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def error(self, pos: int, msg: str) -> NoReturn:
        raise GoTemplateError(f"{_position(self.src, pos)}: {msg}")

    def peek(self, ahead: int = 0) -> _Token:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> _Token:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, context: str) -> _Token:
        tok = self.next()
        if tok.kind != kind:
            self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: _Token, context: str) -> NoReturn:
        if tok.kind == "eof":
            self.error(tok.pos, f"unexpected EOF in {context}")
        what = {"}}": "}}", "{{": "{{", "text": "text"}.get(tok.kind, str(tok.value or tok.kind))
        self.error(tok.pos, f'unexpected "{what}" in {context}')

    def parse(self) -> list[_Node]:
        nodes, term = self.item_list()
        if term.kind != "eof":
            self.error(term.pos, f"unexpected {{{{{term.value}}}}}")
        return nodes

    def item_list(self) -> tuple[list[_Node], _Token]:
        """Parse nodes up to `{{end}}`, `{{else` or EOF, returning them and the terminating token."""
        nodes: list[_Node] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                return nodes, tok
            if tok.kind == "text":
                nodes.append(_Text(tok.value))
                continue
            word = self.peek()
            if word.kind == "kw":
                self.i += 1
                if word.value == "end":
                    self.expect("}}", "end")
                    return nodes, word
                if word.value == "else":
                    return nodes, word
                if word.value in ("if", "with", "range"):
                    nodes.append(self.control(word.value, tok.pos))
                elif word.value in ("break", "continue"):
                    if self.range_depth == 0:
                        self.error(word.pos, f"{{{{{word.value}}}}} outside {{{{range}}}}")
                    self.expect("}}", word.value)
                    nodes.append(_Jump(word.value, word.pos))
                else:
                    # define/template/block need named sub-templates, which no Ollama model template uses.
                    self.error(word.pos, f"{{{{{word.value}}}}} is not supported")
                continue
            nodes.append(_Action(self.pipeline("command")))
            self.expect("}}", "command")

    def control(self, kind: str, pos: int) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(kind)
        self.expect("}}", kind)
        self.range_depth += kind == "range"
        body, term = self.item_list()
        self.range_depth -= kind == "range"
        else_body: list[_Node] | None = None
        if term.kind == "kw" and term.value == "else":
            nxt = self.peek()
            if nxt.kind == "kw" and nxt.value == kind and kind in ("if", "with"):
                # Go reads `{{else if x}}...{{end}}` as `{{else}}{{if x}}...{{end}}{{end}}`: one shared end.
                self.i += 1
                else_body = [self.control(kind, nxt.pos)]
                term = nxt
            else:
                self.expect("}}", "else")
                else_body, term = self.item_list()
                if term.kind == "kw" and term.value == "else":
                    self.error(
                        term.pos, f"expected {{{{end}}}}; found a second {{{{else}}}} in {{{{{kind}}}}}"
                    )
        if term.kind == "eof":
            self.error(pos, f"unclosed {{{{{kind}}}}}: missing {{{{end}}}} before end of template")
        del self.vars[mark:]  # variables live until the {{end}} of the control structure declaring them
        return _Branch(kind, pipe, body, else_body, pos)

    def pipeline(self, context: str) -> _Pipe:
        pos = self.peek().pos
        decl: list[str] = []
        is_assign = False
        while self.peek().kind == "var" and self.peek(1).kind in (":=", "=", ","):
            var, op = self.next(), self.next()
            decl.append(var.value)
            if op.kind == ",":
                if context != "range" or len(decl) > 1:
                    self.error(op.pos, f"too many declarations in {context}")
                if self.peek().kind != "var":
                    self.error(op.pos, "range can only initialize variables")
                continue
            is_assign = op.kind == "="
            if is_assign and var.value not in self.vars:
                self.error(var.pos, f'undefined variable "{var.value}"')
            break
        else:
            if decl:
                self.error(pos, "range can only initialize variables")
        cmds: list[_Command] = []
        while True:
            cmds.append(self.command(context))
            if self.peek().kind != "|":
                break
            self.i += 1
            if self.peek().kind in ("}}", ")"):
                break  # Go quietly accepts a trailing pipe: `{{ .X | }}` is `{{ .X }}`
        for n, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], (_Literal, _Dot, _Nil)):
                self.error(cmd.pos, f"non executable command in pipeline stage {n}")
        self.vars.extend(decl)  # in scope until the {{end}} of the enclosing control structure
        return _Pipe(decl, is_assign, cmds, pos)

    def command(self, context: str) -> _Command:
        pos = self.peek().pos
        args: list[_Expr] = []
        while self.peek().kind not in ("}}", ")", "|", "eof"):
            if args and not self.peek().space:
                self.unexpected(self.peek(), "operand")
            args.append(self.operand())
        if not args:
            self.error(pos, f"missing value for {context}")
        return _Command(args, pos)

    def operand(self) -> _Expr:
        node = self.term()
        tok = self.peek()
        if tok.kind == "field" and not tok.space:
            self.i += 1
            if isinstance(node, _Field):
                return _Field(node.names + tok.value, node.pos)
            if isinstance(node, (_Literal, _Dot, _Nil)):
                self.error(tok.pos, f'unexpected . after term "{_show(node)}"')
            return _Chain(node, tok.value, node.pos)
        return node

    def term(self) -> _Expr:
        tok = self.next()
        if tok.kind == "field":
            return _Field(tok.value, tok.pos)
        if tok.kind == "dot":
            return _Dot(tok.pos)
        if tok.kind == "var":
            if tok.value not in self.vars:
                self.error(tok.pos, f'undefined variable "{tok.value}"')
            return _Var(tok.value, tok.pos)
        if tok.kind == "ident":
            if tok.value not in _FUNCS and tok.value not in ("and", "or"):
                self.error(tok.pos, f'function "{tok.value}" not defined')
            return _Ident(tok.value, tok.pos)
        if tok.kind in ("str", "num", "bool"):
            return _Literal(tok.value, tok.pos)
        if tok.kind == "nil":
            return _Nil(tok.pos)
        if tok.kind == "(":
            pipe = self.pipeline("parenthesized pipeline")
            close = self.next()
            if close.kind != ")":
                self.error(tok.pos, "unclosed left paren")
            return pipe
        if tok.kind == ")":
            self.error(tok.pos, "unexpected right paren")
        self.unexpected(tok, "operand")


# ---------------------------------------------------------------------------------------------------------
# Values: truth, printing, JSON and comparison with Go semantics
# ---------------------------------------------------------------------------------------------------------

_MISSING: Any = object()  # "no value piped in from a previous command", distinct from nil (None)


class _FuncError(Exception):
    """Raised by builtin functions; the executor adds the function name and position."""


def _go_type(v: Any) -> str:
    """Name a value's Go-equivalent type for error messages."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    return "<nil>" if v is None else type(v).__name__


def _truth(v: Any) -> bool:
    """Go's isTrue: false, 0, nil and empty strings, lists and maps are false; everything else is true."""
    if v is None:
        return False
    if isinstance(v, (bool, int, float, str, Mapping, list, tuple)):
        return bool(v)
    return True


def _format_float(f: float, json_mode: bool = False) -> str:
    """Format a float like Go's %v (fmt) or, with json_mode, like encoding/json; both use shortest digits."""
    if not math.isfinite(f):
        return "NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf")
    d = Decimal(repr(f)).normalize()
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    x = len(digits) + exp - 1  # decimal exponent of the leading digit
    # encoding/json switches to exponents outside [1e-6, 1e21); %v is strconv "g" shortest, which uses 1e6.
    sci = (f != 0 and not 1e-6 <= abs(f) < 1e21) if json_mode else (x < -4 or x >= 6)
    if not sci:
        return format(d, "f")
    mant = "".join(map(str, digits))
    mant = mant[0] + ("." + mant[1:] if len(mant) > 1 else "")
    expo = f"{abs(x):d}" if json_mode and x < 0 else f"{abs(x):02d}"  # json writes e-7, fmt writes e-07
    return f"{'-' if f < 0 else ''}{mant}e{'-' if x < 0 else '+'}{expo}"


_JSON_HTML = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _json_str(s: str) -> str:
    """Encode a string as json.Marshal does, which HTML-escapes <, > and & by default."""
    import json  # local: only this helper needs it

    return json.dumps(s, ensure_ascii=False).translate(_JSON_HTML)


def _json(v: Any) -> str:
    """Compact JSON like Go's json.Marshal, but keeping dict insertion order (Ollama's structs are ordered)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _FuncError(f"json: unsupported value: {_format_float(v)}")
        return _format_float(v, json_mode=True)
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{_json_str(str(k))}:{_json(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_json(x) for x in v) + "]"
    return _json_str(str(v))


def _to_text(v: Any) -> str:
    """Render a value the way an action `{{ x }}` prints it."""
    # Go prints "<no value>" for a missing map key. Ollama passes structs, where an absent field is simply
    # its zero value, so a key missing from our dict must print as nothing, like an empty string would.
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _format_float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (Mapping, list, tuple)):
        # Ollama's Tool, ToolFunction and ToolCallFunctionArguments all have a String() method that
        # json.Marshals them, so templates such as `{{ .Function.Arguments }}` rely on getting JSON.
        try:
            return _json(v)
        except _FuncError:
            return ""
    return str(v)


def _go_quote(s: str) -> str:
    """Quote a string like strconv.Quote (used by printf %q)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out) + '"'


def _sprint(args: tuple[Any, ...]) -> str:
    """Go's fmt.Sprint: a space goes between two operands only when neither is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_to_text(a))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.)?", re.S)


def _format_verb(verb: str, flags: str, width: int, prec: int | None, v: Any) -> str:
    """Format one printf operand; unsupported verb/type pairs produce Go's %!v(type=value) marker."""
    is_int = isinstance(v, int) and not isinstance(v, bool)
    is_rune = is_int and 0 <= v <= 0x10FFFF
    sign = "+" if "+" in flags else (" " if " " in flags else "")
    body: str | None = None
    if verb == "v" or (verb == "s" and not isinstance(v, (bool, int, float))):
        body = _to_text(v)
        if isinstance(v, str) and prec is not None:
            body = body[:prec]
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and sign and v >= 0:
            body = sign + body
    elif verb == "d" and is_int:
        body = format(v, sign + "d")
    elif verb in "xXob" and is_int:
        body = format(v, sign + ("#" if "#" in flags else "") + verb)
    elif verb in "xX" and isinstance(v, str):
        body = v.encode().hex()
        body = body.upper() if verb == "X" else body
    elif verb == "c" and is_rune:
        body = chr(v)
    elif verb == "q" and isinstance(v, str):
        body = _go_quote(v)
    elif verb == "q" and is_rune:
        body = "'" + _go_quote(chr(v))[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
    elif verb == "t" and isinstance(v, bool):
        body = "true" if v else "false"
    elif verb in "eEfFgG" and isinstance(v, float):
        if verb in "gG" and prec is None:
            body = sign + _format_float(v) if v >= 0 else _format_float(v)
        else:
            body = format(v, f"{sign}.{6 if prec is None else prec}{verb}")
    if body is None:
        return f"%!{verb}(<nil>)" if v is None else f"%!{verb}({_go_type(v)}={_to_text(v)})"
    if len(body) >= width:
        return body
    if "-" in flags:
        return body.ljust(width)
    if "0" in flags and verb in "dxXobeEfFgGv" and not isinstance(v, str):
        lead = body[0] if body[:1] in ("+", "-", " ") else ""
        return lead + body[len(lead) :].rjust(width - len(lead), "0")
    return body.rjust(width)


def _sprintf(fmt: str, *args: Any) -> str:
    """A subset of Go's fmt.Sprintf covering the verbs templates use (%s %d %v %q %t %x %f %e %g %c)."""
    if not isinstance(fmt, str):
        raise _FuncError(f"wrong type for value; expected string; got {_go_type(fmt)}")
    out: list[str] = []
    pos = n = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb is None:
            out.append("%!(NOVERB)")
        elif verb == "%":
            out.append("%")
        elif n >= len(args):
            out.append(f"%!{verb}(MISSING)")
        else:
            precision = None if prec is None else int(prec or 0)
            out.append(_format_verb(verb, flags, int(width or 0), precision, args[n]))
            n += 1
    out.append(fmt[pos:])
    if n < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{_go_type(a)}={_to_text(a)}" for a in args[n:]) + ")")
    return "".join(out)


def _kind(v: Any) -> str:
    """Classify a value for comparisons: Go only compares basic kinds."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"  # Go would reject int vs float64; Python data blurs the two, so we do not
    if isinstance(v, str):
        return "string"
    if isinstance(v, (Mapping, list, tuple)):
        return "noncomparable"
    return "other"


def _eq2(a: Any, b: Any) -> bool:
    """Go's eq for two operands."""
    if a is None or b is None:
        return a is b  # nil equals only nil and, as in Go, is never a type error
    ka, kb = _kind(a), _kind(b)
    if "noncomparable" in (ka, kb):
        raise _FuncError("invalid type for comparison")
    if ka != kb:
        raise _FuncError("incompatible types for comparison")
    return bool(a == b)


def _fn_eq(a: Any, *bs: Any) -> bool:
    """Go's eq: true when a equals any of the following operands."""
    if not bs:
        raise _FuncError("missing argument for comparison")
    return any(_eq2(a, b) for b in bs)


def _lt(a: Any, b: Any) -> bool:
    """Go's lt: only numbers and strings are ordered."""
    ka, kb = _kind(a), _kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise _FuncError("invalid type for comparison")
    if ka != kb:
        raise _FuncError("incompatible types for comparison")
    return bool(a < b)


def _fn_len(v: Any) -> int:
    """Go's len; strings count UTF-8 bytes as in Go."""
    if v is None:
        return 0  # a missing key stands for Ollama's zero value, a nil slice, whose len is 0
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, (Mapping, list, tuple)):
        return len(v)
    raise _FuncError(f"len of type {_go_type(v)}")


def _int_index(i: Any, limit: int) -> int:
    """Validate an index operand against 0..limit inclusive."""
    if not isinstance(i, int) or isinstance(i, bool):
        raise _FuncError(f"cannot index slice/array with type {_go_type(i)}")
    if not 0 <= i <= limit:
        raise _FuncError(f"index out of range: {i}")
    return i


def _fn_index(item: Any, *keys: Any) -> Any:
    """Go's index: item[k1][k2]...; an absent map key yields nil (the zero value) rather than an error."""
    for k in keys:
        if item is None:
            raise _FuncError("index of untyped nil")
        if isinstance(item, Mapping):
            try:
                item = item.get(k)
            except TypeError:  # an unhashable key, e.g. a list
                raise _FuncError(f"value has type {_go_type(k)}; should be string") from None
        elif isinstance(item, (list, tuple, str)):
            seq: Any = item.encode() if isinstance(item, str) else item  # Go indexes strings by byte
            item = seq[_int_index(k, len(seq) - 1)]
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _fn_slice(item: Any, *idx: Any) -> Any:
    """Go's slice: slice x i j k is x[i:j] (k caps capacity); strings slice by byte as in Go."""
    if item is None:
        raise _FuncError("slice of untyped nil")
    if len(idx) > 3:
        raise _FuncError(f"too many slice indexes: {len(idx)}")
    if isinstance(item, str):
        if len(idx) == 3:
            raise _FuncError("cannot 3-index slice a string")
        data: Any = item.encode()
    elif isinstance(item, (list, tuple)):
        data = item
    else:
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    bounds = [_int_index(i, len(data)) for i in idx]
    for lo, hi in itertools.pairwise(bounds):
        if lo > hi:
            raise _FuncError(f"invalid slice index: {lo} > {hi}")
    start = bounds[0] if bounds else 0
    stop = bounds[1] if len(bounds) > 1 else len(data)
    part = data[start:stop]
    return part.decode("utf-8", "replace") if isinstance(part, bytes) else list(part)


def _escape_arg(args: tuple[Any, ...]) -> str:
    """Go's evalArgs for html/js/urlquery: a lone string as-is, anything else via fmt.Sprint."""
    return args[0] if len(args) == 1 and isinstance(args[0], str) else _sprint(args)


_HTML_ESCAPES = str.maketrans(
    {"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;", "\0": "\ufffd"}
)


def _fn_html(*args: Any) -> str:
    """Go's html: HTMLEscapeString of the operands."""
    s = _escape_arg(args)
    return s.translate(_HTML_ESCAPES)


def _fn_js(*args: Any) -> str:
    """Go's js: JSEscapeString of the operands."""
    out = []
    for ch in _escape_arg(args):
        if ch in "\\'\"":
            out.append("\\" + ch)
        elif ch in "<>&=" or ord(ch) < 0x20 or (ord(ch) >= 0x80 and not ch.isprintable()):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _fn_json(v: Any) -> str:
    """Ollama's json: json.Marshal, with the error ignored (so unencodable values give "")."""
    try:
        return _json(v)
    except _FuncError:
        return ""


def _date(days_ago: int) -> str:
    """Local date as YYYY-MM-DD, like Ollama's time.Now().Format("2006-01-02")."""
    return (_dt.date.today() - _dt.timedelta(days=days_ago)).isoformat()


# name -> (function, minimum args, maximum args or None); and/or are handled lazily by the executor.
_FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "eq": (_fn_eq, 1, None),
    "ne": (lambda a, b: not _eq2(a, b), 2, 2),
    "lt": (_lt, 2, 2),
    "le": (lambda a, b: _lt(a, b) or _eq2(a, b), 2, 2),
    "gt": (lambda a, b: not (_lt(a, b) or _eq2(a, b)), 2, 2),
    "ge": (lambda a, b: not _lt(a, b), 2, 2),
    "not": (lambda a: not _truth(a), 1, 1),
    "len": (_fn_len, 1, 1),
    "index": (_fn_index, 1, None),
    "slice": (_fn_slice, 1, None),
    "print": (lambda *a: _sprint(a), 0, None),
    "println": (lambda *a: " ".join(_to_text(x) for x in a) + "\n", 0, None),
    "printf": (_sprintf, 1, None),
    "html": (_fn_html, 0, None),
    "js": (_fn_js, 0, None),
    "urlquery": (lambda *a: urllib.parse.quote_plus(_escape_arg(a), safe=""), 0, None),
    "json": (_fn_json, 1, 1),
    "toJson": (_fn_json, 1, 1),
    "currentDate": (lambda *_: _date(0), 0, None),  # Ollama accepts and ignores a format argument
    "yesterdayDate": (lambda *_: _date(1), 0, None),
}
_LAZY = ("and", "or")


# ---------------------------------------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------------------------------------


class _BreakLoop(Exception):
    """Unwinds to the innermost range for {{break}}."""


class _ContinueLoop(Exception):
    """Unwinds to the innermost range for {{continue}}."""


_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class _Exec:
    """Walks a parse tree with a variable stack, as text/template's exec.go state does."""

    def __init__(self, source: str, data: Any) -> None:
        self.src = source
        self.vars: list[list[Any]] = [["$", data]]  # [name, value] pairs; innermost last
        self.out: list[str] = []

    def error(self, pos: int, msg: str) -> NoReturn:
        raise GoTemplateError(f"{_position(self.src, pos)}: {msg}")

    def walk(self, nodes: list[_Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipeline(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append(_to_text(value))
            elif isinstance(node, _Branch):
                mark = len(self.vars)
                try:
                    self.branch(node, dot)
                finally:
                    del self.vars[mark:]
            else:
                raise _BreakLoop if node.kind == "break" else _ContinueLoop

    def branch(self, node: _Branch, dot: Any) -> None:
        value = self.pipeline(node.pipe, dot)
        if node.kind == "range":
            self.range(node, value, dot)
        elif _truth(value):
            self.walk(node.body, value if node.kind == "with" else dot)
        elif node.else_body is not None:
            self.walk(node.else_body, dot)

    def range(self, node: _Branch, value: Any, dot: Any) -> None:
        decl = node.pipe.decl
        if value is None:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, Mapping):
            try:
                keys = sorted(value)  # Go visits map entries in sorted key order
            except TypeError:
                keys = list(value)
            items = [(k, value[k]) for k in keys]
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(decl) > 1:
                self.error(node.pos, f"can't use {value} to iterate over more than one variable")
            items = [(i, i) for i in range(value)]  # Go 1.22+ ranges over integers
        else:
            self.error(node.pos, f"range can't iterate over {_to_text(value)}")
        if not items:
            if node.else_body is not None:
                self.walk(node.else_body, dot)
            return
        mark = len(self.vars)
        for key, elem in items:
            if node.pipe.is_assign:
                for name, v in zip(decl, (key, elem) if len(decl) > 1 else (elem,), strict=True):
                    self.assign(name, v, node.pos)
            elif decl:
                # The declared variables were pushed by pipeline(): the element is on top, the index below.
                self.vars[mark - 1][1] = elem
                if len(decl) > 1:
                    self.vars[mark - 2][1] = key
            try:
                self.walk(node.body, elem)
            except _ContinueLoop:
                pass
            except _BreakLoop:
                break
            finally:
                del self.vars[mark:]

    def pipeline(self, pipe: _Pipe, dot: Any) -> Any:
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.assign(name, value, pipe.pos)
            else:
                self.vars.append([name, value])
        return value

    def command(self, cmd: _Command, dot: Any, final: Any) -> Any:
        first, rest = cmd.args[0], cmd.args[1:]
        if isinstance(first, _Ident):
            return self.call(first, rest, dot, final)
        if isinstance(first, _Nil):
            self.error(first.pos, "nil is not a command")
        if rest or final is not _MISSING:
            if isinstance(first, (_Field, _Chain)):
                self.error(first.pos, f"{first.names[-1]} is not a method but has arguments")
            self.error(first.pos, f"can't give argument to non-function {_show(first)}")
        return self.arg(first, dot)

    def arg(self, e: _Expr, dot: Any) -> Any:
        if isinstance(e, _Field):
            return self.fields(dot, e.names, e.pos)
        if isinstance(e, _Var):
            return self.lookup(e.name, e.pos)
        if isinstance(e, _Chain):
            return self.fields(self.arg(e.node, dot), e.names, e.pos)
        if isinstance(e, _Ident):
            return self.call(e, [], dot, _MISSING)
        if isinstance(e, _Pipe):
            return self.pipeline(e, dot)
        if isinstance(e, _Literal):
            return e.value
        return dot if isinstance(e, _Dot) else None

    def call(self, ident: _Ident, args: list[_Expr], dot: Any, final: Any) -> Any:
        name = ident.name
        count = len(args) + (final is not _MISSING)
        if name in _LAZY:
            if count == 0:
                self.error(ident.pos, f"wrong number of args for {name}: want at least 1 got 0")
            # and/or short-circuit (Go 1.18+): return the first operand that decides, else the last one.
            value = None
            for a in args:
                value = self.arg(a, dot)
                if _truth(value) == (name == "or"):
                    return value
            return final if final is not _MISSING else value
        fn, lo, hi = _FUNCS[name]
        values = [self.arg(a, dot) for a in args]
        if final is not _MISSING:
            values.append(final)
        if count < lo or (hi is not None and count > hi):
            want = f"at least {lo}" if hi is None else str(lo)
            self.error(ident.pos, f"wrong number of args for {name}: want {want} got {count}")
        try:
            return fn(*values)
        except _FuncError as exc:
            self.error(ident.pos, f"error calling {name}: {exc}")

    def lookup(self, name: str, pos: int) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        self.error(pos, f"undefined variable: {name}")

    def assign(self, name: str, value: Any, pos: int) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        self.error(pos, f"undefined variable: {name}")

    def fields(self, value: Any, names: tuple[str, ...], pos: int) -> Any:
        for name in names:
            if value is None:
                continue  # Ollama parses with missingkey=zero: a field of nothing is nothing, not an error
            if not isinstance(value, Mapping):
                self.error(pos, f"can't evaluate field {name} in type {_go_type(value)}")
            # A missing key falls back to its JSON spelling (ToolCalls -> tool_calls) so dicts shaped like
            # Ollama's API JSON can be passed straight in, and `json` then emits the keys Go's tags would.
            value = value[name] if name in value else value.get(_SNAKE.sub("_", name).lower())
        return value


# ---------------------------------------------------------------------------------------------------------
# Public interface
# ---------------------------------------------------------------------------------------------------------


class Template:
    """A parsed template that can be rendered any number of times."""

    def __init__(self, source: str, nodes: list[_Node]) -> None:
        self.source = source
        self._nodes = nodes

    def render(self, data: dict[str, Any]) -> str:
        """Execute the template with data as both dot and `$`."""
        state = _Exec(self.source, data)
        state.walk(self._nodes, data)
        return "".join(state.out)


def parse(source: str) -> Template:
    """Parse Go template source, raising GoTemplateError on bad syntax."""
    return Template(source, _Parser(source).parse())


def render(source: str, data: dict[str, Any]) -> str:
    """Parse source and render it with data."""
    return parse(source).render(data)
