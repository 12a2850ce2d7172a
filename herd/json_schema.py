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

from herd.json_pattern import MAX_REPETITIONS, pattern_gbnf

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
