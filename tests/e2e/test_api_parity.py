"""Ollama's parsing and probes through nginx: HEAD routes, JSON null as absent, an assistant turn with
`content: null` and `tool_calls`, and every `tool_choice` Ollama takes on /v1."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

TOOLS_MODEL = "tiny-tools"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
QUICK = {"num_predict": 1, "temperature": 0, "seed": 7}


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
def test_head_answers_200_as_ollama_does(client: httpx.Client, path: str) -> None:
    head = client.head(path)
    assert head.status_code == 200, head.text
    assert head.content == b""
    get = client.get(path)
    assert get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"]


def test_nulls_are_absent_on_chat_and_generate(client: httpx.Client) -> None:
    chat = client.post(
        "/api/chat",
        json={
            "model": "tiny-chat",
            "messages": [
                {"role": "user", "content": "hi", "images": None, "tool_calls": None, "thinking": None}
            ],
            "stream": False,
            "format": None,
            "tools": None,
            "keep_alive": None,
            "think": None,
            "options": {**QUICK, "top_k": None, "num_ctx": None},
            "an_unknown_field": {"nested": [1, 2]},
        },
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["done"] is True
    generate = client.post(
        "/api/generate",
        json={
            "model": "tiny-a",
            "prompt": "hi",
            "system": None,
            "template": None,
            "context": None,
            "suffix": None,
            "raw": None,
            "images": None,
            "stream": False,
            "options": QUICK,
        },
    )
    assert generate.status_code == 200, generate.text


def _chat_tokens(client: httpx.Client, messages: list[dict[str, Any]]) -> int:
    response = client.post(
        "/api/chat",
        json={
            "model": TOOLS_MODEL,
            "messages": messages,
            "tools": [WEATHER_TOOL],
            "stream": False,
            "options": QUICK,
        },
    )
    assert response.status_code == 200, response.text
    return int(response.json()["prompt_eval_count"])


def test_options_take_a_bare_stop_string_and_refuse_a_boolean_number(client: httpx.Client) -> None:
    body = {"model": "tiny-a", "prompt": "hi", "stream": False}
    taken = client.post("/api/generate", json={**body, "options": {**QUICK, "stop": "\n"}})
    assert taken.status_code == 200, taken.text
    # A JSON boolean is no number to Ollama: a 400 naming the option, never read as 0 or 1.
    for path, extra in (("/api/generate", {}), ("/api/embeddings", {})):
        refused = client.post(path, json={**body, **extra, "options": {"seed": False}})
        assert refused.status_code == 400, refused.text
        assert "seed" in refused.json()["error"]


def test_assistant_content_null_with_tool_calls_reaches_the_template(client: httpx.Client) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    }
    result = {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": None}
    with_call = _chat_tokens(client, [question, call, result])
    without_call = _chat_tokens(client, [question, result])
    # The template writes the call as JSON in the assistant turn: the prompt is longer by that turn.
    assert with_call > without_call + 10


def _v1(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {
        "model": TOOLS_MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "max_tokens": 1,
        "temperature": 0,
        **fields,
    }
    return client.post("/v1/chat/completions", json=body)


def test_v1_tool_choice_takes_every_form_ollama_takes(client: httpx.Client) -> None:
    prompt_tokens = {}
    for choice in (
        "auto",
        "required",
        {"type": "function", "function": {"name": "get_weather"}},
        "none",
        None,
    ):
        response = _v1(client, tool_choice=choice)
        assert response.status_code == 200, (choice, response.text)
        prompt_tokens[str(choice)] = response.json()["usage"]["prompt_tokens"]
    offered = prompt_tokens["auto"]
    # "required" and a named function offer the tools and leave the choice to the model, as "auto" does.
    assert (
        prompt_tokens["required"]
        == prompt_tokens[str({"type": "function", "function": {"name": "get_weather"}})]
    )
    assert prompt_tokens["required"] == offered == prompt_tokens["None"]
    assert prompt_tokens["none"] < offered  # "none" offers no tools


def test_v1_assistant_content_null_and_a_tool_turn_without_an_id(client: httpx.Client) -> None:
    response = _v1(
        client,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "name": "get_weather"},
        ],
        seed=None,
        top_p=None,
        stop=None,
    )
    assert response.status_code == 200, response.text
