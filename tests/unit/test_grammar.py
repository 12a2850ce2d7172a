"""`format` to grammar: every keyword llama.cpp's converter can enforce converts, and is enforced; the
rest is refused by name, in the API's check (herd.json_schema) and the worker alike.

Each grammar is parsed by llama.cpp itself, and matched against instances by a small GBNF reader below,
so that a grammar that lets invalid JSON through fails here, not only in a model's output.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp as llama
import pytest

from herd.json_schema import SchemaError, check_schema
from tests.support.tiny_gguf import write_tiny_llama
from workers.grammar import JSON_OBJECT_GBNF, FormatError, grammar_for_format, int_range_gbnf
from workers.llama import LlamaModel


@pytest.fixture(scope="module")
def compiles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], None]]:
    """Asserts that llama.cpp compiles a grammar, as the worker's sampler does (a tiny model's vocab)."""
    model = LlamaModel(write_tiny_llama(Path(tmp_path_factory.mktemp("gguf")) / "g.gguf"))

    def check(grammar: str) -> None:
        sampler = llama.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
        assert sampler, grammar
        llama.llama_sampler_free(sampler)

    yield check
    model.close()


# --- a GBNF reader, for the non-recursive grammars of these schemas --------------------------------------

_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z0-9-]+|\{\d*(?:,\d*)?\}|[()|?*+]')


def _literal(token: str) -> str:
    text = json.loads(token) if "\\x" not in token else token[1:-1].encode().decode("unicode_escape")
    return re.escape(text)


def _regex(rules: dict[str, str], body: str, stack: tuple[str, ...]) -> str:
    out = []
    for token in _TOKEN.findall(body):
        if token.isspace():
            continue
        if token.startswith('"'):
            out.append(_literal(token))
        elif token[0] in "[{|?*+)":
            out.append(token)
        elif token == "(":
            out.append("(?:")
        elif stack.count(token) >= 3:  # a rule: inlined, recursion cut off at three levels
            out.append("(?!)")
        else:
            out.append(f"(?:{_regex(rules, rules[token], (*stack, token))})")
    return "".join(out)


def matcher(grammar: str) -> re.Pattern[str]:
    rules = dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())
    return re.compile(_regex(rules, rules["root"], ("root",)), re.DOTALL)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- accepted ----------------------------------------------------------------------------------------

UUID = "123e4567-e89b-12d3-a456-426614174000"
PET = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "name": {"type": "string", "maxLength": 5}},
    "required": ["kind", "name"],
}

# (what it shows, schema, valid instances, invalid instances)
ACCEPTED: list[tuple[str, dict[str, Any], list[Any], list[Any]]] = [
    ("minimum alone", {"type": "integer", "minimum": 105}, [105, 110, 999, 10**12], [15, 104, 100, -1]),
    ("maximum alone", {"type": "integer", "maximum": -3}, [-3, -400], [-2, 0, 5]),
    ("maximum >= 0", {"type": "integer", "maximum": 250}, [250, 0, -7, 99], [251, 1000]),
    ("negative minimum", {"type": "integer", "minimum": -15}, [-15, 0, 7, 10**9], [-16, -100]),
    (
        "exclusive bounds",
        {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 1_000_000},
        [1, 999_999],
        [0, 1_000_000],
    ),
    (
        "a range of any size",
        {"type": "integer", "minimum": -(2**63) + 1, "maximum": 2**63 - 1},
        [-(2**63) + 1, 0, 10**15, 2**63 - 1],
        [-(2**63), 2**63],
    ),
    (
        "draft 4 exclusive",
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "integer",
            "minimum": 5,
            "exclusiveMinimum": True,
        },
        [6],
        [5],
    ),
    ("fractional bound", {"type": "integer", "minimum": 1.5, "maximum": 3.5}, [2, 3], [1, 4]),
    (
        "pattern",
        {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}(?:x|y)?$"},
        ["ABC-12", "ABC-12x"],
        ["AB-12", "ABC-123", "abc-12"],
    ),
    (
        "pattern: quotes, backslashes and dots stay JSON",
        {"type": "string", "pattern": '^a\\."[b-z]+\\\\.\\s?"*$'},
        ['a."bc\\d', 'a."bc\\d ""'],
        ["a.bc\\d", 'a."bc\\', 'a."bc\\dxx'],
    ),
    (
        "minItems/maxItems",
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
        [[1], [1, 2, 3]],
        [[], [1, 2, 3, 4], ["a"]],
    ),
    ("minItems without items", {"type": "array", "minItems": 2}, [[1, "a"], [None, {}, []]], [[1]]),
    ("tuple", {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}, [["a", 1]], [[1]]),
    (
        "minLength/maxLength",
        {"type": "string", "minLength": 2, "maxLength": 4},
        ["ab", "abcd"],
        ["a", "abcde"],
    ),
    (
        "$ref/$defs",
        {"$defs": {"pet": PET}, "type": "array", "items": {"$ref": "#/$defs/pet"}},
        [[{"kind": "cat", "name": "Tom"}]],
        [[{"kind": "cow", "name": "x"}], [{"kind": "cat"}]],
    ),
    (
        "a $def named like a built-in rule",
        {
            "$defs": {"string": {"const": 7}},
            "type": "object",
            "properties": {"s": {"$ref": "#/$defs/string"}},
        },
        [{"s": 7}],
        [{"s": "x"}],
    ),
    (
        "anyOf",
        {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "null"}]},
        ["ab", None],
        ["abc", 1],
    ),
    ("oneOf", {"oneOf": [{"const": 1}, {"const": "one"}]}, [1, "one"], [2, "two"]),
    (
        "allOf of properties",
        {
            "allOf": [{"$ref": "#/$defs/pet"}, {"properties": {"age": {"type": "integer", "maximum": 30}}}],
            "$defs": {"pet": PET},
        },
        [{"kind": "cat", "name": "Tom", "age": 3}],
        [{"kind": "cat", "age": 3}, {"kind": "cat", "name": "Tom", "age": 31}],
    ),
    (
        "allOf of enums",
        {"allOf": [{"enum": ["a", "b", "c"]}, {"enum": ["b", "c", "d"]}]},
        ["b", "c"],
        ["a", "d"],
    ),
    ("enum", {"enum": ["red", 2, None]}, ["red", 2, None], ["blue", 3]),
    ("const", {"const": {"a": [1, 2]}}, [{"a": [1, 2]}], [{"a": [1]}]),
    (
        "additionalProperties: false",
        {"type": "object", "properties": {"a": {"type": "boolean"}}, "additionalProperties": False},
        [{"a": True}, {}],
        [{"a": True, "b": 1}],
    ),
    (
        "additionalProperties: a schema",
        {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
        [{"x": 1, "y": 2}, {}],
        [{"x": -1}, {"x": "s"}],
    ),
    (
        "additionalProperties: true",
        {
            "type": "object",
            "properties": {"a": {"type": "null"}, "ab-]": {"type": "null"}},
            "additionalProperties": True,
        },
        [{"a": None, "b": "anything"}, {"b": [1]}, {"abc": 1}, {"ab-x": 2}, {"x": {"a": 1}}],
        [{"a": 1}, {"ab-]": 1}],
    ),
    (
        "format date: days that exist",
        {"type": "string", "format": "date"},
        ["2024-02-29", "2000-02-29", "2023-12-31", "2023-04-30", "1999-02-28"],
        ["2024-13-01", "24-01-01", "2023-02-29", "2100-02-29", "2024-04-31", "2024-02-30", "2024-00-10"],
    ),
    ("format time", {"type": "string", "format": "time"}, ["12:30:00Z", "23:59:59.123+01:00"], ["25:00:00Z"]),
    ("format date-time", {"type": "string", "format": "date-time"}, ["2024-01-01T00:00:00Z"], ["2024-01-01"]),
    ("format uuid", {"type": "string", "format": "uuid"}, [UUID], ["not-a-uuid", UUID[:-1]]),
    ("an unknown format is an annotation", {"type": "string", "format": "email"}, ["a@b.c"], [1]),
    (
        "a type list, bounds on its integer",
        {"type": ["integer", "null"], "minimum": 5},
        [5, 6, None],
        [4, "5"],
    ),
    ("annotations only: any value", {"description": "anything"}, [1, "a", None, {"b": [True]}], []),
    (
        "vacuous forms: additionalProperties: true, required: [] without properties",
        {"type": "object", "additionalProperties": True, "required": []},
        [{}, {"a": 1}],
        [[], "x"],
    ),
    (
        "uniqueItems: false",
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": False},
        [[1, 1]],
        [["a"]],
    ),
    (
        "bounds on a string hold vacuously",
        {"type": "string", "minimum": 3, "maxLength": 3},
        ["abc"],
        ["abcd"],
    ),
]


@pytest.mark.parametrize(
    ("schema", "valid", "invalid"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_each_accepted_keyword_converts_and_is_enforced(
    schema: dict[str, Any], valid: list[Any], invalid: list[Any], compiles: Callable[[str], None]
) -> None:
    check_schema(schema)  # the API's check
    grammar = grammar_for_format(schema)
    assert grammar is not None
    compiles(grammar)
    match = matcher(grammar)
    for value in valid:
        validate(value, schema)  # the test data is right
        assert match.fullmatch(compact(value)), (value, grammar)
    for value in invalid:
        if schema.get("format") not in (
            "time",
            "date-time",
        ):  # jsonschema checks these with extra packages only
            with pytest.raises(jsonschema.ValidationError):
                validate(value, schema)
        assert not match.fullmatch(compact(value)), (value, grammar)


def validate(value: Any, schema: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)
    jsonschema.validate(value, schema, cls=validator, format_checker=validator.FORMAT_CHECKER)


def test_json_and_free_text() -> None:
    assert grammar_for_format("json") == JSON_OBJECT_GBNF
    assert grammar_for_format(None) is None and grammar_for_format("") is None
    with pytest.raises(FormatError, match="invalid format 'yaml'"):
        grammar_for_format("yaml")


def test_integer_ranges_hold_value_by_value() -> None:
    # llama.cpp's own builder drops the zeros after a one-sided bound's first digit (minimum 105 lets 15
    # through): each range here is checked against every integer near it and random far ones.
    rng = random.Random(17)
    for low, high in [
        (None, 0),
        (0, None),
        (None, -1),
        (-1, None),
        (105, None),
        (None, 105),
        (2999, None),
        (1900, 2100),
        (-250, 37),
        (-99, -10),
        (7, 7),
        (999, 1001),
        (123, 45678),
        (None, -1000),
    ]:
        match = matcher(f"root ::= {int_range_gbnf(low, high)}")
        for value in [*range(-3000, 3000), *(rng.randint(-(10**12), 10**12) for _ in range(2000))]:
            inside = (low is None or value >= low) and (high is None or value <= high)
            assert bool(match.fullmatch(str(value))) == inside, (low, high, value)
        for text in ("01", "-01", "00"):  # never a leading zero
            assert not match.fullmatch(text), (low, high, text)


# --- refused -----------------------------------------------------------------------------------------

REFUSED: list[tuple[Any, str, str]] = [
    ({"not": {"type": "string"}}, "not", "/"),
    ({"type": "object", "if": {}, "then": {}}, "if", "/"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties", "/"),
    (
        {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}},
        "multipleOf",
        "/properties/n",
    ),
    ({"type": "array", "items": {}, "uniqueItems": True}, "uniqueItems", "/"),
    ({"type": "object", "minProperties": 1}, "minProperties", "/"),
    ({"type": "array", "contains": {"type": "integer"}}, "contains", "/"),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames", "/"),
    (
        {"type": "object", "properties": {"a": {}}, "dependentRequired": {"a": ["b"]}},
        "dependentRequired",
        "/",
    ),
    ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties", "/"),
    ({"type": "number", "minimum": 0}, "minimum", "/"),
    ({"type": "object", "properties": {"x": {"exclusiveMaximum": 3}}}, "exclusiveMaximum", "/properties/x"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum", "/"),
    ({"type": "integer", "minimum": "5"}, "minimum", "/"),
    ({"type": "integer", "maximum": 10**19}, "maximum", "/"),
    ({"$ref": "https://example.com/schema.json"}, "$ref", "/"),
    ({"$ref": "#/$defs/missing"}, "$ref", "/"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "pattern", "/"),
    ({"type": "string", "pattern": "abc"}, "pattern", "/"),
    ({"type": "string", "pattern": "^(a)\\1$"}, "pattern", "/"),
    ({"type": "string", "pattern": "^a+?$"}, "pattern", "/"),
    ({"type": "string", "pattern": "^[a-z]+$", "minLength": 2}, "minLength", "/"),
    ({"type": "string", "format": "date", "maxLength": 9}, "maxLength", "/"),
    ({"allOf": [{"type": "string"}, {"minLength": 3}]}, "allOf", "/allOf/0"),
    ({"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {}}]}, "allOf", "/"),
    ({"allOf": [{"enum": [1]}, {"enum": [2]}]}, "allOf", "/"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "required", "/"),
    ({"type": "object", "required": ["a"]}, "required", "/"),
    ({"oneOf": [{"type": "string"}], "anyOf": [{"type": "null"}]}, "anyOf", "/"),
    ({"enum": ["a"], "minLength": 3}, "minLength", "/"),
    ({"type": "strin"}, "type", "/"),
    ({"type": "array", "items": True}, "items", "/items"),
    ({"type": "array", "prefixItems": [{}], "items": {"type": "string"}}, "items", "/"),
    ({"$defs": {"a": {"not": {}}}, "$ref": "#/$defs/a"}, "not", "/$defs/a"),
    ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems", "/"),
    # llama.cpp's grammars repeat an element under 2000 times; Herd allows 1000.
    ({"type": "string", "maxLength": 1001}, "maxLength", "/"),
    ({"type": "array", "items": {}, "minItems": 5000}, "minItems", "/"),
    ({"type": "string", "pattern": "^a{3000}$"}, "pattern", "/"),
    ([1, 2], "format", "/"),
]


@pytest.mark.parametrize(
    ("schema", "keyword", "path"), REFUSED, ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED)]
)
def test_each_unenforceable_keyword_is_refused_by_name(schema: Any, keyword: str, path: str) -> None:
    with pytest.raises(SchemaError) as refused:
        check_schema(schema)
    assert refused.value.keyword == keyword
    assert f"keyword {keyword!r} at {path}:" in str(refused.value)
    if isinstance(schema, dict):  # the worker refuses it too, with the same words, never a crash
        with pytest.raises(FormatError, match=re.escape(f"{keyword!r} at {path}:")):
            grammar_for_format(schema)


def test_property_names_that_look_like_keywords_are_names() -> None:
    schema = {
        "type": "object",
        "properties": {
            "not": {"type": "integer", "minimum": 2},
            "minimum": {"type": "string"},
            "leap-year": {"type": "string", "format": "date"},  # also the name of a rule of dates
        },
        "required": ["not", "minimum", "leap-year"],
    }
    match = matcher(grammar_for_format(schema) or "")
    assert match.fullmatch('{"not":2,"minimum":"x","leap-year":"2024-02-29"}')
    assert not match.fullmatch('{"not":1,"minimum":"x","leap-year":"2024-02-29"}')
    assert not match.fullmatch('{"not":2,"minimum":"x","leap-year":"2023-02-29"}')


def test_recursive_schemas_convert(compiles: Callable[[str], None]) -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                "required": ["v"],
            }
        },
        "$ref": "#/$defs/node",
    }
    check_schema(tree)
    grammar = grammar_for_format(tree)
    assert grammar is not None
    compiles(grammar)


def test_defs_nested_below_the_root_are_found_as_llama_cpp_finds_them() -> None:
    schema = {"type": "object", "properties": {"p": {"$ref": "#/$defs/pet", "$defs": {"pet": PET}}}}
    check_schema(schema)
    match = matcher(grammar_for_format(schema) or "")
    assert match.fullmatch('{"p":{"kind":"dog","name":"Rex"}}') and not match.fullmatch(
        '{"p":{"kind":"dog"}}'
    )


@pytest.mark.parametrize("pattern", ["^.$", "^[^a]$", "^[ -~]$", "^\\W$", "^\\S$"])
def test_a_pattern_never_lets_a_bare_quote_backslash_or_control_character_out(pattern: str) -> None:
    match = matcher(grammar_for_format({"type": "string", "pattern": pattern}) or "")
    assert match.fullmatch('"b"') or match.fullmatch('"~"') or match.fullmatch('" "')
    for bare in ('"""', '"\\"', '"\n"', '"\x7f"'):
        assert not match.fullmatch(bare), (pattern, bare)


def test_the_largest_counts_compile(compiles: Callable[[str], None]) -> None:
    for schema in (
        {"type": "string", "minLength": 1000, "maxLength": 1000},
        {"type": "string", "maxLength": 1000},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 1000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 999, "maxItems": 1000},
        {"type": "string", "pattern": '^(ab|c){0,1000}x{1000}"{1000}[a-z]{1,1000}$'},
    ):
        compiles(grammar_for_format(schema) or "")


def test_the_compile_check_can_fail(compiles: Callable[[str], None]) -> None:
    with pytest.raises(AssertionError):
        compiles('root ::= "a" undefined-rule')
