"""Which JSON schemas a `format` may be: those llama.cpp's schema-to-grammar converter can enforce.

The API checks a schema here before it queues the job, so that a schema the grammar cannot enforce is a
400 naming the keyword, never a late error or a grammar that lets invalid output through. The check
follows the converter's own dispatch (llama.cpp `common/json-schema-to-grammar.cpp`, `visit`): each
schema node takes one branch, and the branch honours a known set of keywords. A validation keyword the
branch would ignore is refused by name; annotations (title, description, default, unknown `format`
values, ...) are ignored, as JSON Schema itself ignores them. The worker's converter (workers/grammar.py)
takes the same branches, so a schema accepted here always converts.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Keywords no branch of the converter enforces: a schema using them is refused whatever else it holds.
UNSUPPORTED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependentRequired",
        "dependencies",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "multipleOf",
        "$dynamicRef",
        "$recursiveRef",
    }
)

# llama.cpp's grammar parser refuses a repetition past its MAX_REPETITION_THRESHOLD (2000), counting the
# rules a repeated group expands to; counts up to this many compile for any element, larger ones are
# refused rather than failing in the worker.
MAX_REPETITIONS = 1000
_INT64_MAX = 2**63 - 1

TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# String formats the converter has a grammar for; any other `format` value is an annotation.
FORMATS = frozenset({"date", "time", "date-time"})
_UUID = re.compile(r"uuid[1-5]?")

# Keywords that constrain a value: each branch below honours some of them, and ignoring any other
# would let invalid output through.
_VALIDATION = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "pattern",
        "minLength",
        "maxLength",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        *BOUNDS,
    }
)


# The types a keyword constrains; on a value of any other type it holds whatever the value.
_APPLIES_TO: dict[str, frozenset[str]] = {
    **dict.fromkeys(BOUNDS, frozenset({"integer", "number"})),
    **dict.fromkeys(("pattern", "minLength", "maxLength"), frozenset({"string"})),
    **dict.fromkeys(("items", "prefixItems", "minItems", "maxItems", "uniqueItems"), frozenset({"array"})),
    **dict.fromkeys(("properties", "required", "additionalProperties"), frozenset({"object"})),
}


class SchemaError(ValueError):
    """A JSON schema the grammar converter cannot enforce; the message names the keyword and where."""

    def __init__(self, keyword: str, path: str, why: str):
        self.keyword = keyword
        super().__init__(f"unsupported JSON schema keyword {keyword!r} at {path or '/'}: {why}")


def is_enforced_format(fmt: Any) -> bool:
    """Whether the converter has a grammar for this string `format`."""
    return isinstance(fmt, str) and (fmt in FORMATS or _UUID.fullmatch(fmt) is not None)


def integer_bounds(node: dict[str, Any]) -> tuple[int | None, int | None]:
    """The inclusive integer range a node's bounds allow (None: unbounded on that side).

    Both the 2020-12 form (`exclusiveMinimum: 3`) and draft 4's (`minimum: 3, exclusiveMinimum: true`)
    are read; where several bounds apply to one side, the tightest wins.
    """
    lows: list[int] = []
    highs: list[int] = []
    for key in BOUNDS:
        value = node.get(key)
        if value is None or isinstance(value, bool):
            continue
        if key == "minimum":
            low = math.ceil(value)
            lows.append(low + 1 if node.get("exclusiveMinimum") is True and low == value else low)
        elif key == "exclusiveMinimum":
            lows.append(math.floor(value) + 1)
        elif key == "maximum":
            high = math.floor(value)
            highs.append(high - 1 if node.get("exclusiveMaximum") is True and high == value else high)
        else:
            highs.append(math.ceil(value) - 1)
    return (max(lows) if lows else None), (min(highs) if highs else None)


def branch(node: dict[str, Any]) -> str:
    """The converter's branch for a schema node, in the order its `visit` tries them."""
    kind = node.get("type")
    if "$ref" in node:
        return "ref"
    if "oneOf" in node or "anyOf" in node:
        return "union"
    if isinstance(kind, list):
        return "types"
    if "const" in node:
        return "const"
    if "enum" in node:
        return "enum"
    if kind in (None, "object") and (
        "properties" in node or ("additionalProperties" in node and node["additionalProperties"] is not True)
    ):
        return "object"
    if kind in (None, "object", "string") and "allOf" in node:
        return "allOf"
    if kind in (None, "array") and ("items" in node or "prefixItems" in node):
        return "array"
    if kind == "array" and ("minItems" in node or "maxItems" in node):
        return "array"  # items default to any value
    if kind in (None, "string") and "pattern" in node:
        return "pattern"
    if kind in (None, "string") and is_enforced_format(node.get("format")):
        return "format"
    if kind == "string" and ("minLength" in node or "maxLength" in node):
        return "length"
    if kind == "integer" and any(k in node for k in BOUNDS):
        return "range"
    if not node or kind == "object":
        return "object-any"
    if kind is None:
        return "any"
    return "primitive"


# What each branch enforces. `type` is honoured wherever the branch itself implies or checks it.
_HONOURED: dict[str, frozenset[str]] = {
    "ref": frozenset({"$ref"}),
    "union": frozenset({"anyOf", "oneOf", "type"}),
    "types": frozenset(_VALIDATION),  # each type is checked as its own node
    "const": frozenset({"const", "type"}),
    "enum": frozenset({"enum", "type"}),
    "object": frozenset({"type", "properties", "required", "additionalProperties"}),
    "allOf": frozenset({"type", "allOf", "required"}),
    "array": frozenset({"type", "items", "prefixItems", "minItems", "maxItems"}),
    "pattern": frozenset({"type", "pattern"}),
    "format": frozenset({"type"}),
    "length": frozenset({"type", "minLength", "maxLength"}),
    "range": frozenset({"type", *BOUNDS}),
    "object-any": frozenset({"type"}),
    "any": frozenset(),
    "primitive": frozenset({"type"}),
}


def check_schema(schema: Any) -> None:
    """Raise SchemaError unless the grammar converter can enforce every constraint of `schema`."""
    if not isinstance(schema, dict):
        raise SchemaError("format", "/", "a JSON schema must be an object")
    _Checker(schema).node(schema, "", "format")


def resolve_pointer(root: dict[str, Any], ref: str) -> Any:
    """The node a local `#/...` reference names, or None. Like the converter, a `#/$defs/x` that is not
    at the root is looked for in the `$defs` nested anywhere in the schema."""
    target: Any = root
    # As the converter reads a pointer: object keys only, taken literally.
    for part in ref[2:].split("/") if ref != "#/" else []:
        if isinstance(target, dict) and part in target:
            target = target[part]
        else:
            target = None
            break
    if target is None and ref.startswith("#/$defs/") and ref.count("/") == 2:
        return nested_defs(root).get(ref.rsplit("/", 1)[1])
    return target


def nested_defs(root: Any) -> dict[str, Any]:
    """Every `$defs` entry anywhere in the schema, the first of each name winning."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            defs = node.get("$defs")
            if isinstance(defs, dict):
                for name, value in defs.items():
                    found.setdefault(name, value)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(root)
    return found


class _Checker:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.seen_refs: set[str] = set()

    def node(self, node: Any, path: str, keyword: str) -> None:
        if not isinstance(node, dict):
            raise SchemaError(keyword, path, "a schema here must be an object")
        for key in node:
            if key in UNSUPPORTED:
                raise SchemaError(key, path, "llama.cpp's grammar converter cannot enforce it")
        node = {k: v for k, v in node.items() if not _constrains_nothing(k, v)}
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        for name in kinds:
            if name not in TYPES:
                raise SchemaError("type", path, f"unknown type {name!r}")
        how = branch(node)
        if how == "types":
            for name in kinds:
                self.node({**node, "type": name}, path, "type")
            return
        for key in node:
            # A keyword of another type than the node's (minimum on a string) holds vacuously.
            vacuous = isinstance(kind, str) and kind not in _APPLIES_TO.get(key, TYPES)
            if key in _VALIDATION and key not in _HONOURED[how] and not vacuous:
                raise SchemaError(key, path, _ignored(key, how))
        getattr(self, "_" + how.replace("-", "_"), _nothing)(node, path)

    def _ref(self, node: dict[str, Any], path: str) -> None:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError("$ref", path, "only local references (#/...) can be resolved")
        target = resolve_pointer(self.root, ref)
        if target is None:
            raise SchemaError("$ref", path, f"{ref} names nothing in the schema")
        if ref not in self.seen_refs:  # recursive schemas are fine: check each target once
            self.seen_refs.add(ref)
            self.node(target, ref[1:], "$ref")

    def _union(self, node: dict[str, Any], path: str) -> None:
        key = "oneOf" if "oneOf" in node else "anyOf"
        if key == "oneOf" and "anyOf" in node:
            raise SchemaError("anyOf", path, "is not enforced alongside oneOf")
        alternatives = node[key]
        if not isinstance(alternatives, list) or not alternatives:
            raise SchemaError(key, path, "must be a non-empty list of schemas")
        for i, alt in enumerate(alternatives):
            self.node(alt, f"{path}/{key}/{i}", key)

    def _enum(self, node: dict[str, Any], path: str) -> None:
        if not isinstance(node["enum"], list) or not node["enum"]:
            raise SchemaError("enum", path, "must be a non-empty list")

    def _object(self, node: dict[str, Any], path: str) -> None:
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError("properties", path, "must be an object")
        for name, sub in properties.items():
            self.node(sub, f"{path}/properties/{name}", "properties")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            self.node(extra, f"{path}/additionalProperties", "additionalProperties")
        elif extra is not None and not isinstance(extra, bool):
            raise SchemaError("additionalProperties", path, "must be a boolean or a schema")
        required = node.get("required", [])
        if not isinstance(required, list):
            raise SchemaError("required", path, "must be a list of property names")
        missing = [r for r in required if r not in properties]
        if missing:  # the converter requires declared properties only
            raise SchemaError("required", path, f"{missing[0]!r} is not one of the properties")

    def _allOf(self, node: dict[str, Any], path: str) -> None:
        parts = node["allOf"]
        if not isinstance(parts, list) or not parts:
            raise SchemaError("allOf", path, "must be a non-empty list of schemas")
        enums: list[list[Any]] = []
        objects = 0
        for i, part in enumerate(parts):
            where = f"{path}/allOf/{i}"
            if isinstance(part, dict) and "anyOf" in part:
                for j, alt in enumerate(part["anyOf"]):
                    objects += self._all_of_component(alt, f"{where}/anyOf/{j}", enums, optional=True)
            else:
                objects += self._all_of_component(part, where, enums, optional=False)
        if enums and objects:
            raise SchemaError("allOf", path, "mixes enums with object properties")
        if enums:
            common = [v for v in enums[0] if all(v in e for e in enums[1:])]
            if len(enums) != len(parts) or not common:
                raise SchemaError("allOf", path, "its enums have no value in common")

    def _all_of_component(self, part: Any, path: str, enums: list[list[Any]], optional: bool) -> int:
        """Check one allOf part as the converter merges it: 1 for a properties part, 0 for an enum."""
        if isinstance(part, dict) and "$ref" in part:
            self.node(part, path, "allOf")
            ref = part["$ref"]
            return self._all_of_component(resolve_pointer(self.root, ref), ref[1:], enums, optional)
        if isinstance(part, dict) and "properties" in part:
            self.node(part, path, "allOf")
            extra = part.get("additionalProperties")
            if extra is True or isinstance(extra, dict):
                raise SchemaError("additionalProperties", path, "is not enforced inside allOf")
            return 1
        if isinstance(part, dict) and "enum" in part and not optional:
            self.node(part, path, "allOf")
            enums.append(list(part["enum"]))
            return 0
        raise SchemaError(
            "allOf", path, "each part must declare properties, an enum, or be a $ref to one of those"
        )

    def _array(self, node: dict[str, Any], path: str) -> None:
        items = node.get("items")
        prefix = node.get("prefixItems")
        if isinstance(items, list):  # draft 4 tuples
            for i, sub in enumerate(items):
                self.node(sub, f"{path}/items/{i}", "items")
            return
        if prefix is not None:
            if items not in (None, False):
                raise SchemaError("items", path, "is not enforced after prefixItems (only items: false is)")
            if not isinstance(prefix, list):
                raise SchemaError("prefixItems", path, "must be a list of schemas")
            for i, sub in enumerate(prefix):
                self.node(sub, f"{path}/prefixItems/{i}", "prefixItems")
            return
        if items is not None:
            self.node(items, f"{path}/items", "items")
        _counts(node, path, "minItems", "maxItems")

    def _pattern(self, node: dict[str, Any], path: str) -> None:
        pattern = node["pattern"]
        if not isinstance(pattern, str):
            raise SchemaError("pattern", path, "must be a string")
        try:
            pattern_gbnf(pattern)
        except ValueError as exc:
            raise SchemaError("pattern", path, str(exc)) from exc

    def _length(self, node: dict[str, Any], path: str) -> None:
        _counts(node, path, "minLength", "maxLength")

    def _range(self, node: dict[str, Any], path: str) -> None:
        for key in BOUNDS:
            value = node.get(key)
            if value is None or (isinstance(value, bool) and key.startswith("exclusive")):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise SchemaError(key, path, "must be a number")
            if abs(value) > _INT64_MAX:  # llama.cpp reads integer bounds as 64-bit integers
                raise SchemaError(key, path, "must lie within the 64-bit integers")
        low, high = integer_bounds(node)
        if low is not None and high is not None and low > high:
            raise SchemaError(next(k for k in BOUNDS if k in node), path, f"no integer lies in {low}..{high}")


def _constrains_nothing(key: str, value: Any) -> bool:
    """Keywords in a form that allows everything, so that no branch need honour them."""
    return (
        (key == "uniqueItems" and value is False)
        or (key == "additionalProperties" and value is True)
        or (key == "required" and value == [])
    )


def _nothing(node: dict[str, Any], path: str) -> None:
    return None


def _counts(node: dict[str, Any], path: str, low_key: str, high_key: str) -> None:
    for key in (low_key, high_key):
        value = node.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SchemaError(key, path, "must be a non-negative integer")
        if value is not None and value > MAX_REPETITIONS:
            raise SchemaError(
                key, path, f"is over {MAX_REPETITIONS}, the most Herd lets llama.cpp's grammars repeat"
            )
    if node.get(high_key) is not None and node.get(low_key, 0) > node[high_key]:
        raise SchemaError(low_key, path, f"is greater than {high_key}")


def _ignored(key: str, how: str) -> str:
    """Why a keyword is refused: the branch the node takes would ignore it."""
    if key in BOUNDS:
        return "only integer bounds can be enforced (not those of other types)"
    if key == "uniqueItems":
        return "llama.cpp's grammar converter cannot enforce it"
    if key == "allOf" and how == "object":
        return "is not enforced alongside properties"
    reasons = {
        "ref": "is not enforced alongside $ref",
        "union": "is not enforced alongside anyOf/oneOf",
        "const": "is not enforced alongside const",
        "enum": "is not enforced alongside enum",
        "pattern": "is not enforced alongside pattern",
        "format": "is not enforced alongside a string format",
    }
    return reasons.get(how, "is not enforced for this kind of schema")


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
