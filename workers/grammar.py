"""`format` (native) as a llama.cpp grammar, so structured output always parses."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

# Any JSON value with an object at the top. Whitespace is bounded: an unbounded `ws` lets a small model
# emit newlines for ever without ever closing the object.
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""

# JSON Schema keywords the grammar converter cannot express: refused by name rather than ignored.
_UNSUPPORTED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependentRequired",
        "patternProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "contains",
        "propertyNames",
        "multipleOf",
        "$dynamicRef",
    }
)


class FormatError(ValueError):
    """A `format` value that is not "json", a JSON schema, or a schema this server can enforce."""


def _check_supported(node: Any, path: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            # Property *names* may be anything; only keywords of a schema node matter.
            if key in _UNSUPPORTED and not path.endswith("/properties"):
                raise FormatError(f"unsupported JSON schema feature {key!r} at {path or '/'}")
            _check_supported(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_supported(value, f"{path}/{i}")


def grammar_for_format(fmt: str | dict[str, Any] | None) -> str | None:
    """The GBNF grammar for a request's `format`, or None for free text."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JSON_OBJECT_GBNF
    if isinstance(fmt, str):
        raise FormatError(f'invalid format {fmt!r}: format must be an empty string, "json", or a JSON schema')
    _check_supported(fmt, "")
    try:
        return json_schema_to_gbnf(json.dumps(fmt))
    except (ValueError, KeyError, TypeError, NotImplementedError, AssertionError) as exc:
        raise FormatError(f"unsupported JSON schema: {exc}") from exc
