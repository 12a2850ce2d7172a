"""`format` (native) as a llama.cpp grammar, so structured output always parses."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from llama_cpp import llama_grammar as lg

from herd.json_pattern import pattern_gbnf
from herd.json_schema import (
    SchemaError,
    branch,
    check_schema,
    integer_bounds,
    nested_defs,
    resolve_pointer,
)

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


class FormatError(ValueError):
    """A `format` value that is not "json", a JSON schema, or a schema this server can enforce."""


# llama-cpp-python ships an older copy of llama.cpp's converter. These rules are those of llama.cpp's
# current one (common/json-schema-to-grammar.cpp): a JSON string's characters exclude control characters.
_PRIMITIVES = {
    **lg.PRIMITIVE_RULES,
    "char": lg.BuiltinRule(r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', []),
}
# Dates that exist: llama.cpp's rule takes any day 01-31 of any month (2023-02-30), which date parsers
# refuse. Month lengths are kept, and February 29 in leap years only (proleptic Gregorian, as RFC 3339).
_FORMATS = {
    "date": lg.BuiltinRule(
        '[0-9]{4} "-" ( ("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
        ' | ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
        ' | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]) ) | leap-year "-02-29"',
        ["leap-year"],
    ),
    "leap-year": lg.BuiltinRule(
        '[0-9] [0-9] ("0" [48] | [2468] [048] | [13579] [26]) | ([02468] [048] | [13579] [26]) "00"', []
    ),
}
# A stand-in schema for "any JSON value" (the old converter reads `{}` as "any object").
_ANY_VALUE = {"$comment": "any JSON value"}


def int_range_gbnf(low: int | None, high: int | None) -> str:
    """A GBNF expression for the JSON integers in [low, high] (None: unbounded on that side).

    As llama.cpp builds it, digit position by digit position, so that a range of any size costs a few
    alternatives rather than one per value. (llama.cpp's one-sided case drops the zeros after the
    first digit of the bound, so that `minimum: 105` lets 15 through; this one keeps them.)
    """
    out: list[str] = []
    if low is not None and high is not None:
        _between(low, high, out)
    elif low is not None and low < 0:
        out.append('"-" (')
        _between(1, -low, out)
        out.append(f") | {_NATURAL}")
    elif low is not None:
        _at_least(low, out)
    elif high is not None and high >= 0:
        out.append(f'"-" {_POSITIVE} | ')
        _between(0, high, out)
    elif high is not None:
        out.append('"-" (')
        _at_least(-high, out)
        out.append(")")
    else:
        raise ValueError("an integer range needs a bound")
    return "".join(out)


# JSON integers of up to 16 digits, as llama.cpp's number rules allow.
_MAX_DIGITS = 16
_POSITIVE = f"[1-9] [0-9]{{0,{_MAX_DIGITS - 1}}}"
_NATURAL = f"[0] | {_POSITIVE}"


def _at_least(low: int, out: list[str]) -> None:
    """The integers >= low (low >= 0): those of low's length from low up, and every longer one."""
    if low == 0:
        out.append(_NATURAL)
        return
    n = len(str(low))
    _same_length(str(low), "9" * n, out)
    if n < _MAX_DIGITS:
        out.append(
            f" | [1-9] [0-9]{{{n},{_MAX_DIGITS - 1}}}" if n < _MAX_DIGITS - 1 else f" | [1-9] [0-9]{{{n}}}"
        )


def _between(low: int, high: int, out: list[str]) -> None:
    """The integers in [low, high], split by sign and then by number of digits."""
    if high < 0:
        out.append('"-" (')
        _between(-high, -low, out)
        out.append(")")
        return
    if low < 0:
        out.append('"-" (')
        _between(1, -low, out)
        out.append(") | ")
        low = 0
    frm, to = str(low), str(high)
    for n in range(len(frm), len(to)):
        _same_length(frm, "9" * n, out)
        frm = "1" + "0" * n
        out.append(" | ")
    _same_length(frm, to, out)


def _same_length(frm: str, to: str, out: list[str]) -> None:
    """The numbers from `frm` to `to`, both written with the same number of digits."""

    def digits(a: str, b: str) -> None:
        out.append(f"[{a}]" if a == b else f"[{a}-{b}]")

    i = 0
    while i < len(frm) and frm[i] == to[i]:
        i += 1
    if i > 0:
        out.append(f'"{frm[:i]}"')
    if i == len(frm):
        return
    if i > 0:
        out.append(" ")
    rest = len(frm) - i - 1
    if rest == 0:
        digits(frm[i], to[i])
        return
    zeros, nines = "0" * rest, "9" * rest
    below, above = chr(ord(to[i]) - 1), chr(ord(frm[i]) + 1)
    any_rest = "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"
    to_reached = False
    out.append("(")
    if frm[i + 1 :] == zeros:
        digits(frm[i], below)
        out.append(f" {any_rest}")
    else:
        out.append(f"[{frm[i]}] (")
        _same_length(frm[i + 1 :], nines, out)
        out.append(")")
        if frm[i] < below:
            out.append(" | ")
            if to[i + 1 :] == nines:
                digits(above, to[i])
                to_reached = True
            else:
                digits(above, below)
            out.append(f" {any_rest}")
    if not to_reached:
        out.append(" | ")
        digits(to[i], to[i])
        out.append(" ")
        _same_length(zeros, to[i + 1 :], out)
    out.append(")")


def repetition(item: str, low: int, high: int | None, separator: str = "") -> str:
    """`item` repeated low..high times (None: no limit), separated, in GBNF's {m,n} form as llama.cpp
    writes it (the old converter nests one group per optional item, as deep as the count)."""
    if high == 0:
        return ""
    if low == 0 and high == 1:
        return f"{item}?"
    if not separator:
        if high is None:
            return f"{item}+" if low == 1 else f"{item}*" if low == 0 else f"{item}{{{low},}}"
        return f"{item}{{{low},{high}}}" if low != high else f"{item}{{{low}}}"
    rest = repetition(f"({separator} {item})", max(low - 1, 0), None if high is None else high - 1)
    return f"({item} {rest})?" if low == 0 else f"{item} {rest}"


class _Converter(lg.SchemaConverter):
    """llama-cpp-python's converter, taking the branches of llama.cpp's current one (herd.json_schema.branch)."""

    def visit(self, schema: dict[str, Any], name: str) -> str:
        how = branch(schema)
        if name in _FORMATS:  # a property named like one of the rules above must not replace it
            name += "-"
        rule_name = name + "-" if name in lg.RESERVED_NAMES else name or "root"
        if how == "types":
            alternatives = [{**schema, "type": t} for t in schema["type"]]
            return self._add_rule(rule_name, self._generate_union_rule(name, alternatives))
        if how == "const":
            return self._add_rule(rule_name, self._generate_constant_rule(schema["const"]) + " space")
        if how == "enum":
            values = " | ".join(self._generate_constant_rule(v) for v in schema["enum"])
            return self._add_rule(rule_name, f"({values}) space")
        if how == "object" and schema.get("additionalProperties") is True:
            schema = {**schema, "additionalProperties": _ANY_VALUE}
        if how == "allOf":
            return self._all_of(schema, name, rule_name)
        if how == "array":
            return self._array(schema, name, rule_name)
        if how == "pattern":
            return self._add_rule(rule_name, f'"\\"" ({pattern_gbnf(schema["pattern"])}) "\\"" space')
        if how == "length":
            char = self._add_primitive("char", _PRIMITIVES["char"])
            repeated = repetition(char, schema.get("minLength", 0), schema.get("maxLength"))
            return self._add_rule(rule_name, f'"\\"" {repeated} "\\"" space')
        if how == "range":
            low, high = integer_bounds(schema)
            return self._add_rule(rule_name, f"({int_range_gbnf(low, high)}) space")
        if how == "any":
            return self._add_rule(rule_name, self._add_primitive("value", _PRIMITIVES["value"]))
        return str(super().visit(schema, name))

    def _all_of(self, schema: dict[str, Any], name: str, rule_name: str) -> str:
        required: set[str] = set()
        properties: list[tuple[str, Any]] = []
        enums: dict[str, int] = {}

        def add(part: dict[str, Any], is_required: bool) -> None:
            if "$ref" in part:
                add(self._refs[part["$ref"]], is_required)
            elif "properties" in part:
                properties.extend(part["properties"].items())
                if is_required:
                    required.update(part["properties"])
            elif "enum" in part:
                for value in part["enum"]:
                    rule = self._generate_constant_rule(value)
                    enums[rule] = enums.get(rule, 0) + 1

        for part in schema["allOf"]:
            for alt in part.get("anyOf", ()):
                add(alt, False)
            if "anyOf" not in part:
                add(part, True)
        common = [rule for rule, n in enums.items() if n == len(schema["allOf"])]
        if common:
            return self._add_rule(rule_name, f"({' | '.join(common)}) space")
        return self._add_rule(rule_name, self._build_object_rule(properties, required, name, None))

    def _array(self, schema: dict[str, Any], name: str, rule_name: str) -> str:
        items = schema.get("items")
        if isinstance(items, list) or "prefixItems" in schema:
            tuple_items = items if isinstance(items, list) else schema["prefixItems"]
            parts = ' "," space '.join(
                self.visit(item, f"{name}{'-' if name else ''}tuple-{i}")
                for i, item in enumerate(tuple_items)
            )
            return self._add_rule(rule_name, f'"[" space {parts} "]" space')
        item = self.visit(items if items is not None else _ANY_VALUE, f"{name}{'-' if name else ''}item")
        repeated = repetition(item, schema.get("minItems", 0), schema.get("maxItems"), '"," space')
        return self._add_rule(rule_name, f'"[" space {repeated} "]" space')

    def resolve_refs(self, schema: dict[str, Any], url: str) -> dict[str, Any]:
        """Every local `$ref` made absolute and its target recorded, including the refs inside targets
        and beside other refs (the old converter stops at the first `$ref` of a branch)."""

        def walk(node: Any) -> None:
            if isinstance(node, list):
                for value in node:
                    walk(value)
            elif isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith("#/"):
                    node["$ref"] = url + ref
                    self._refs.setdefault(url + ref, resolve_pointer(schema, ref))
                for value in node.values():
                    walk(value)

        walk(schema)
        return schema

    def _generate_constant_rule(self, value: Any) -> str:
        # Compact, as llama.cpp writes it (the old converter wrote ", " and ": ").
        return str(self._format_literal(json.dumps(value, separators=(",", ":"))))

    def _build_object_rule(
        self,
        properties: list[tuple[str, Any]],
        required: set[str],
        name: str,
        additional_properties: Any,
    ) -> str:
        """Required properties in order, then any of the optional ones in order, then (where allowed)
        further keys: keys that are none of the declared names, as llama.cpp builds it."""
        prefix = f"{name}-" if name else ""
        kv: dict[str, str] = {}
        required_keys: list[str] = []
        optional_keys: list[str] = []
        for prop, prop_schema in properties:
            value_rule = self.visit(prop_schema, f"{prefix}{prop}")
            key = self._format_literal(json.dumps(prop))
            kv[prop] = self._add_rule(f"{prefix}{prop}-kv", f'{key} space ":" space {value_rule}')
            (required_keys if prop in required else optional_keys).append(prop)
        if additional_properties is True or isinstance(additional_properties, dict):
            extra = additional_properties if isinstance(additional_properties, dict) else _ANY_VALUE
            value_rule = self.visit(extra, f"{prefix}additional-value")
            names = [prop for prop, _ in properties]
            key_rule = (
                self._add_rule(f"{prefix}additional-k", self._not_strings(names))
                if names
                else self._add_primitive("string", _PRIMITIVES["string"])
            )
            kv["*"] = self._add_rule(f"{prefix}additional-kv", f'{key_rule} ":" space {value_rule}')
            optional_keys.append("*")

        def rest(keys: list[str], first_optional: bool) -> str:
            key, more = keys[0], keys[1:]
            comma = f'( "," space {kv[key]} )'
            if first_optional:
                out = comma + ("*" if key == "*" else "?")
            else:
                out = kv[key] + (f" {comma}*" if key == "*" else "")
            if more:
                out += " " + self._add_rule(f"{prefix}{key}-rest", rest(more, True))
            return out

        rule = '"{" space ' + ' "," space '.join(kv[k] for k in required_keys)
        if optional_keys:
            alternatives = " | ".join(rest(optional_keys[i:], False) for i in range(len(optional_keys)))
            rule += f' ( "," space ( {alternatives} ) )?' if required_keys else f" ( {alternatives} )?"
        return rule + ' "}" space'

    def _not_strings(self, strings: list[str]) -> str:
        """A JSON string that is none of `strings`: a trie of their characters, leaving it at any point."""
        char = self._add_primitive("char", _PRIMITIVES["char"])
        trie: dict[str, Any] = {}
        for text in strings:
            node = trie
            for c in text:
                node = node.setdefault(c, {})
            node[""] = {}  # a word ends here

        def cls(c: str) -> str:  # a character inside [...]: escaped unless a plain letter or digit
            if c.isascii() and c.isalnum():
                return c
            return f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}"

        def visit(node: dict[str, Any]) -> str:
            parts = []
            for c, child in sorted((c, n) for c, n in node.items() if c):
                inner = [k for k in child if k]
                if inner:
                    parts.append(f"[{cls(c)}] ({visit(child)})")
                else:  # c ends a word and nothing follows: the key must go on
                    parts.append(f"[{cls(c)}] {char}+")
            rejects = "".join(cls(c) for c in node if c)
            parts.append(f'[^"{rejects}] {char}*')
            return " | ".join(parts)

        return f'["] ( {visit(trie)} ){"" if "" in trie else "?"} ["] space'

    def _resolve_ref(self, ref: str) -> str:
        # Named after the whole pointer (as llama.cpp names it), so that a definition called, say,
        # "string" or "space" does not collide with a built-in rule.
        name = "ref" + re.sub(r"[^a-zA-Z0-9-]+", "-", ref.split("#", 1)[-1])
        if name not in self._rules and ref not in self._refs_being_resolved:
            self._refs_being_resolved.add(ref)
            name = self.visit(self._refs[ref], name)
            self._refs_being_resolved.remove(ref)
        return name

    def _add_primitive(self, name: str, rule: lg.BuiltinRule) -> str:
        rule = _PRIMITIVES.get(name) or _FORMATS.get(name) or rule
        key = str(self._add_rule(name, rule.content))
        for dep in rule.deps:
            dep_rule = _PRIMITIVES.get(dep) or _FORMATS.get(dep) or lg.STRING_FORMAT_RULES[dep]
            if dep not in self._rules:
                self._add_primitive(dep, dep_rule)
        return key


def schema_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar for a JSON schema that herd.json_schema.check_schema accepted."""
    schema = copy.deepcopy(schema)
    defs = nested_defs(schema)  # llama.cpp hoists $defs found anywhere to the root
    if defs:
        schema["$defs"] = {**defs, **(schema.get("$defs") or {})}
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = converter.resolve_refs(schema, "stdin")
    converter.visit(schema, "")
    return str(converter.format_grammar())


def grammar_for_format(fmt: str | dict[str, Any] | None) -> str | None:
    """The GBNF grammar for a request's `format`, or None for free text."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JSON_OBJECT_GBNF
    if isinstance(fmt, str):
        raise FormatError(f'invalid format {fmt!r}: format must be an empty string, "json", or a JSON schema')
    try:
        check_schema(fmt)
        return schema_gbnf(fmt)
    except SchemaError as exc:
        raise FormatError(str(exc)) from exc
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise FormatError(f"unsupported JSON schema: {exc}") from exc
