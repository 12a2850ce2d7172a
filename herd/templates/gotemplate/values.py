"""Go value semantics: truth, type names, printing, fmt verbs and JSON encoding."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


class _FuncError(Exception):
    """Raised by builtin functions; the executor adds the function name and position."""


class GoMap(dict[str, Any]):
    """Data that stands for a Go map[string]any: a missing key is "no value", not a zero-valued field.

    Ollama executes its templates with such a map, parsed with missingkey=zero, which does not help
    for interface-valued maps (Go issue 24963): `{{ .Prompt }}` on the messages path prints "<no value>".
    A plain dict stands for a struct, whose absent fields are zero values.
    """


class _NoValue:
    """The value of a missing GoMap key: false, nil to functions, printed as Go prints it."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


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
    if v is None or v is NO_VALUE:
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
    if v is NO_VALUE:
        return "<no value>"
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
