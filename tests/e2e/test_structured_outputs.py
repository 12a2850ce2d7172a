"""Structured outputs: 20 different prompts, through both APIs, all return JSON valid against the schema."""

from __future__ import annotations

import datetime
import json

import httpx
import jsonschema
import pytest

# Nested objects, an array, enums, required fields and $defs; bounded lengths so that even a tiny
# random-weight model always closes the document.
SCHEMA = {
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog", "fish"]},
                "name": {"type": "string", "maxLength": 8},
            },
            "required": ["kind", "name"],
        }
    },
    "type": "object",
    "properties": {
        "owner": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "maxItems": 3},
        "indoor": {"type": "boolean"},
    },
    "required": ["owner", "age", "pets", "indoor"],
}
PROMPTS = [f"Describe pet owner number {i} who lives in town {chr(65 + i)}." for i in range(20)]


def test_native_format_schema_for_twenty_prompts(client: httpx.Client) -> None:
    for i, prompt in enumerate(PROMPTS):
        out = client.post(
            "/api/chat",
            json={
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": prompt}],
                "format": SCHEMA,
                "stream": False,
                "options": {"temperature": 0.8, "seed": i, "num_predict": 400},
            },
        ).json()
        assert out["done_reason"] == "stop", out
        jsonschema.validate(json.loads(out["message"]["content"]), SCHEMA)


def test_v1_response_format_json_schema_for_twenty_prompts(client: httpx.Client) -> None:
    for i, prompt in enumerate(PROMPTS):
        out = client.post(
            "/v1/chat/completions",
            json={
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": prompt}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "owner", "schema": SCHEMA},
                },
                "temperature": 0.8,
                "seed": i,
                "max_tokens": 400,
            },
        ).json()
        choice = out["choices"][0]
        assert choice["finish_reason"] == "stop", out
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


# Every kind of keyword llama.cpp's converter enforces, in one schema (issue 17). Lengths and counts are
# bounded where a random-weight model could otherwise write for ever.
KEYWORDS_SCHEMA = {
    "$defs": {"code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}(?:x|y)?$"}},
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "born": {"type": "string", "format": "date"},
        "seen": {"type": "string", "format": "date-time"},
        "at": {"type": "string", "format": "time"},
        "score": {"type": "integer", "minimum": -50, "exclusiveMaximum": 10**12},
        "floor": {"type": "integer", "minimum": 105},
        "ceiling": {"type": "integer", "exclusiveMaximum": -7},
        "code": {"$ref": "#/$defs/code"},
        "tags": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 6},
            "minItems": 1,
            "maxItems": 3,
        },
        "nick": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
        "kind": {"oneOf": [{"const": "a"}, {"enum": [1, 2]}]},
        "meta": {
            "allOf": [
                {"properties": {"x": {"type": "boolean"}}},
                {"properties": {"y": {"type": "integer", "maximum": 3}}},
            ]
        },
        "flags": {
            "type": "object",
            "properties": {"on": {"type": "boolean"}},
            "required": ["on"],
            "additionalProperties": False,
        },
    },
    "required": [
        "id",
        "born",
        "seen",
        "at",
        "score",
        "floor",
        "ceiling",
        "code",
        "tags",
        "nick",
        "kind",
        "meta",
        "flags",
    ],
    "additionalProperties": False,
}


def _valid(text: str) -> None:
    """The output parses and validates, formats included (time and date-time by the standard library)."""
    value = json.loads(text)
    jsonschema.validate(value, KEYWORDS_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    datetime.datetime.fromisoformat(value["seen"].replace("Z", "+00:00"))
    datetime.time.fromisoformat(value["at"].replace("Z", "+00:00"))


def test_a_schema_using_every_enforceable_keyword_holds_on_both_apis(client: httpx.Client) -> None:
    for seed in range(4):
        native = client.post(
            "/api/generate",
            json={
                "model": "tiny-chat",
                "prompt": f"Record number {seed}.",
                "format": KEYWORDS_SCHEMA,
                "stream": False,
                "options": {"temperature": 1.0, "seed": seed, "num_predict": 600},
            },
        )
        assert native.status_code == 200, native.text
        assert native.json()["done_reason"] == "stop", native.json()
        _valid(native.json()["response"])
        v1 = client.post(
            "/v1/chat/completions",
            json={
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": f"Record number {seed}."}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": KEYWORDS_SCHEMA},
                },
                "temperature": 1.0,
                "seed": seed,
                "max_tokens": 600,
            },
        )
        assert v1.status_code == 200, v1.text
        choice = v1.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        _valid(choice["message"]["content"])


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}}, "multipleOf"),
        ({"type": "object", "properties": {"p": {"type": "number", "minimum": 0}}}, "minimum"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "pattern": "^(?!x).*$"}, "pattern"),
        ({"not": {"type": "null"}}, "not"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_unenforceable_keyword_is_a_400_naming_it_on_both_apis(
    client: httpx.Client, schema: dict[str, object], keyword: str, stream: bool
) -> None:
    native = client.post(
        "/api/chat",
        json={
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "x"}],
            "format": schema,
            "stream": stream,
        },
    )
    assert native.status_code == 400, native.text
    assert f"keyword {keyword!r}" in native.json()["error"]
    v1 = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            "stream": stream,
        },
    )
    assert v1.status_code == 400, v1.text
    error = v1.json()["error"]
    assert f"keyword {keyword!r}" in error["message"]
    assert error["param"] == "response_format.json_schema.schema" and error["type"] == "invalid_request_error"
