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


# Integer ranges up to this many values are enforced by listing them; wider bounds are refused.
MAX_ENUMERATED_RANGE = 1000
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


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


def _enforce_bounds(node: Any, path: str) -> Any:
    """A copy of the schema whose integer bounds the grammar converter can enforce.

    The converter ignores minimum/maximum, which would let "age": 43774 through a 0..120 schema. A
    bounded integer becomes the enum of its values; any other numeric bound is refused by name.
    """
    if isinstance(node, list):
        return [_enforce_bounds(v, f"{path}/{i}") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    # Under "properties" the keys are property names, which may well be "minimum".
    names = path.endswith("/properties")
    out = {k: _enforce_bounds(v, f"{path}/{k}") for k, v in node.items() if names or k not in _BOUNDS}
    bounds = {} if names else {k: node[k] for k in _BOUNDS if k in node}
    if not bounds:
        return out
    low = bounds.get("minimum", bounds["exclusiveMinimum"] + 1 if "exclusiveMinimum" in bounds else None)
    high = bounds.get("maximum", bounds["exclusiveMaximum"] - 1 if "exclusiveMaximum" in bounds else None)
    integral = node.get("type") == "integer" and all(isinstance(v, int) for v in bounds.values())
    if not integral or low is None or high is None or high - low + 1 > MAX_ENUMERATED_RANGE:
        feature = next(iter(bounds))
        raise FormatError(
            f"unsupported JSON schema feature {feature!r} at {path or '/'}: only integer ranges of at most "
            f"{MAX_ENUMERATED_RANGE} values can be enforced"
        )
    if high < low:
        raise FormatError(f"empty integer range at {path or '/'}: minimum {low} > maximum {high}")
    out.pop("type", None)
    return {**out, "enum": list(range(low, high + 1))}


def grammar_for_format(fmt: str | dict[str, Any] | None) -> str | None:
    """The GBNF grammar for a request's `format`, or None for free text."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JSON_OBJECT_GBNF
    if isinstance(fmt, str):
        raise FormatError(f'invalid format {fmt!r}: format must be an empty string, "json", or a JSON schema')
    _check_supported(fmt, "")
    schema = _enforce_bounds(fmt, "")
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, NotImplementedError, AssertionError) as exc:
        raise FormatError(f"unsupported JSON schema: {exc}") from exc
