"""`format` to grammar: what the converter cannot enforce is either rewritten so it can, or refused by name."""

from __future__ import annotations

import pytest

from workers.grammar import JSON_OBJECT_GBNF, FormatError, grammar_for_format


def test_json_and_free_text() -> None:
    assert grammar_for_format("json") == JSON_OBJECT_GBNF
    assert grammar_for_format(None) is None and grammar_for_format("") is None


def test_bounded_integer_becomes_the_list_of_its_values() -> None:
    grammar = grammar_for_format(
        {
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 0, "maximum": 3},
                # A property may be *named* like a keyword.
                "minimum": {"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 4},
            },
        }
    )
    assert grammar is not None
    assert 'age ::= "0" | "1" | "2" | "3"' in grammar
    assert 'minimum ::= "2" | "3"' in grammar


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "number", "minimum": 0, "maximum": 1}, "'minimum' at /"),
        (
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
            "'minimum' at /properties/n",
        ),
        ({"type": "integer", "minimum": 0, "maximum": 100_000}, "at most 1000 values"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "empty integer range"),
        ({"not": {"type": "string"}}, "'not' at /"),
        ({"type": "object", "patternProperties": {"^a": {}}}, "'patternProperties'"),
        ("yaml", "invalid format"),
    ],
)
def test_unenforceable_schemas_are_refused_by_name(schema: object, message: str) -> None:
    with pytest.raises(FormatError, match=message.replace("(", r"\(")):
        grammar_for_format(schema)  # type: ignore[arg-type]
