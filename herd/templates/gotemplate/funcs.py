"""The built-in template functions (comparisons, index, slice, escapers, json, dates)."""

from __future__ import annotations

import datetime as _dt
import itertools
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from herd.templates.gotemplate.values import _FuncError, _go_type, _json, _sprint, _sprintf, _to_text, _truth


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


def _ts_type(json_type: Any) -> str:
    """api.mapToTypeScriptType: a JSON-schema type name as TypeScript spells it."""
    return (
        {
            "string": "string",
            "number": "number",
            "integer": "number",
            "boolean": "boolean",
            "array": "any[]",
            "object": "Record<string, any>",
            "null": "null",
        }.get(json_type, "any")
        if isinstance(json_type, str)
        else "any"
    )


def _fn_to_typescript_type(v: Any) -> str:
    """Ollama's toTypeScriptType: a tool parameter's schema (a dict) as a TypeScript type; else "any"."""
    if not isinstance(v, Mapping):
        return "any"
    any_of = v.get("anyOf")
    if isinstance(any_of, list) and any_of:
        return " | ".join(_fn_to_typescript_type(p) for p in any_of)
    types = v.get("type")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not types:
        return "any"
    return " | ".join(_ts_type(t) for t in types)


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
    "currentDate": (lambda *_: _date(0), 0, None),  # Ollama accepts and ignores a format argument
    "yesterdayDate": (lambda *_: _date(1), 0, None),
    "toTypeScriptType": (_fn_to_typescript_type, 1, 1),
}
_LAZY = ("and", "or")
