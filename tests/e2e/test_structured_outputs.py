"""Structured outputs: 20 different prompts, through both APIs, all return JSON valid against the schema."""

from __future__ import annotations

import json

import httpx
import jsonschema

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
