"""Eight plain-text openings the bundled Gemma continues for dozens of tokens: the greedy-determinism
tests run them alone and together, in the engine and through the whole stack."""

from __future__ import annotations

from typing import Any

OPENINGS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "In 1969, the first humans",
    "Water boils at",
    "A haiku about the sea:",
    "The quick brown fox",
]

# A raw story opening Gemma continues far past any test's patience: the tests that need a stream still
# running when they act use it (through the chat template, "Tell me a very long story." can be answered
# and done within a second).
STORY_OPENING = "Once upon a time, in a small village at the edge of a great forest, there lived"


def endless_stream(model: str) -> dict[str, Any]:
    """A /api/generate body whose greedy stream runs for thousands of tokens."""
    return {
        "model": model,
        "prompt": STORY_OPENING,
        "raw": True,
        "options": {"temperature": 0, "num_predict": 3000},
    }


# A JSON schema that forces tiny-tools' output into a call of get_weather for Paris (its Llama 3.1 manner):
# the tool-call tests of the native, OpenAI, Responses and Anthropic APIs share it.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather"]},
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "parameters"],
    "additionalProperties": False,
}
