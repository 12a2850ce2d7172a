"""Tool calling through the whole stack, on the native /api/chat and on /v1 with the official client.

`tiny-tools` is a random-weight model whose Jinja template lists the tools and writes a call as a bare
JSON object (the Llama 3.1 manner). Its output is made a call deterministically with a JSON schema
(`format` / `response_format`), so every test sees the real path: the template receives `tools`, the
worker parses the call out of the generated text, the API hands it out as `tool_calls`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest

from tests.support.prompts import CALL_SCHEMA

MODEL = "tiny-tools"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 80}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
EXPECTED_CALL = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
# Ollama's call ids: "call_" and 8 random lowercase letters or digits.
CALL_ID = re.compile(r"call_[a-z0-9]{8}")
TOOL_RESULT = "18 degrees, sunny, light wind from the west"


def _without_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls without their ids, once each id is checked to be Ollama's shape and all differ."""
    ids = [call.get("id", "") for call in calls]
    assert all(CALL_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids), ids
    return [{k: v for k, v in call.items() if k != "id"} for call in calls]


def _chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/api/chat", json={"model": MODEL, "options": GREEDY, "stream": False, **body})


def test_native_chat_returns_a_parsed_tool_call(client: httpx.Client) -> None:
    r = _chat(client, messages=ASK, tools=[WEATHER_TOOL], format=CALL_SCHEMA)
    assert r.status_code == 200, r.text
    message = r.json()["message"]
    assert message["content"] == ""
    assert _without_ids(message["tool_calls"]) == [EXPECTED_CALL]
    assert r.json()["done_reason"] == "stop"


def test_native_stream_delivers_the_call_whole_and_never_the_markup(client: httpx.Client) -> None:
    lines = []
    with client.stream(
        "POST",
        "/api/chat",
        json={
            "model": MODEL,
            "messages": ASK,
            "tools": [WEATHER_TOOL],
            "format": CALL_SCHEMA,
            "options": GREEDY,
        },
    ) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    calls = [c for line in lines for c in line.get("message", {}).get("tool_calls", [])]
    assert _without_ids(calls) == [EXPECTED_CALL]
    assert "".join(line["message"]["content"] for line in lines) == ""
    assert lines[-1]["done"] is True


# Two calls in one answer: a JSON list of calls, which the bare-JSON parser reads as two.
TWO_CALLS_SCHEMA = {
    "type": "array",
    "prefixItems": [
        CALL_SCHEMA,
        {**CALL_SCHEMA, "properties": {**CALL_SCHEMA["properties"], "name": {"const": "get_time"}}},  # type: ignore[dict-item]
    ],
    "items": False,
}
# Two tools as short as can be: the tiny model's 512-token context holds them, the prompt and two calls.
TWO_TOOLS = [{"type": "function", "function": {"name": name}} for name in ("get_weather", "get_time")]


def test_several_calls_are_numbered_and_each_has_its_own_id(client: httpx.Client) -> None:
    r = _chat(
        client,
        messages=ASK,
        tools=TWO_TOOLS,
        format=TWO_CALLS_SCHEMA,
        options={**GREEDY, "num_predict": 300},  # two calls: about 120 characters, one token each
    )
    assert r.status_code == 200, r.text
    message = r.json()["message"]
    assert "tool_calls" in message, r.json()
    calls = _without_ids(message["tool_calls"])
    assert [(c["function"]["index"], c["function"]["name"]) for c in calls] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]


def test_the_template_receives_the_tools(client: httpx.Client) -> None:
    # One token per character in this model: the tool definitions add at least their JSON's length.
    plain = _chat(client, messages=ASK, options={**GREEDY, "num_predict": 1}).json()
    offered = _chat(client, messages=ASK, tools=[WEATHER_TOOL], options={**GREEDY, "num_predict": 1}).json()
    assert offered["prompt_eval_count"] - plain["prompt_eval_count"] >= len(json.dumps(WEATHER_TOOL))


def test_native_round_trip_feeds_the_tool_result_back(client: httpx.Client) -> None:
    first = _chat(client, messages=ASK, tools=[WEATHER_TOOL], format=CALL_SCHEMA).json()["message"]
    history = [*ASK, first]
    without_result = _chat(client, messages=history, tools=[WEATHER_TOOL]).json()
    answer = _chat(
        client,
        messages=[*history, {"role": "tool", "content": TOOL_RESULT, "tool_name": "get_weather"}],
        tools=[WEATHER_TOOL],
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["done"] is True
    assert body["message"]["role"] == "assistant"
    # The call and the tool's result were both rendered into the prompt of the second turn.
    assert body["prompt_eval_count"] - without_result["prompt_eval_count"] >= len(TOOL_RESULT)
    assert without_result["prompt_eval_count"] > _chat(client, messages=ASK, tools=[WEATHER_TOOL]).json()[
        "prompt_eval_count"
    ] + len('"get_weather"')


def test_a_model_whose_template_has_no_tools_is_refused(client: httpx.Client) -> None:
    r = client.post("/api/chat", json={"model": "gemma3:270m", "messages": ASK, "tools": [WEATHER_TOOL]})
    assert r.status_code == 400
    assert "does not support tools" in r.json()["error"]


@pytest.mark.parametrize(
    ("tools", "needle"),
    [([{"type": "function"}], "tools[0]"), ([{"type": "function", "function": {"name": ""}}], "name")],
)
def test_malformed_tools_are_refused_by_name(client: httpx.Client, tools: list[Any], needle: str) -> None:
    r = client.post("/api/chat", json={"model": MODEL, "messages": ASK, "tools": tools})
    assert r.status_code == 400
    assert needle in r.json()["error"]


# --- /v1 with the official client ----------------------------------------------------------------------


@pytest.fixture
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def _forced() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "call", "schema": CALL_SCHEMA},
    }


def test_v1_tool_call_round_trip(oai: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        response_format=_forced(),  # type: ignore[arg-type]
        temperature=0,
        seed=1,
        max_tokens=80,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert CALL_ID.fullmatch(call.id)  # the worker's id, as Ollama's /v1 passes its own on
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    second = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],
        temperature=0,
        seed=1,
        max_tokens=8,  # type: ignore[list-item]
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert not second.choices[0].message.tool_calls
    # The call and the result are in the prompt: compare with the same turn without the result.
    without = oai.chat.completions.create(
        model=MODEL,
        messages=messages[:-1],
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=1,  # type: ignore[list-item]
    )
    assert second.usage is not None and without.usage is not None
    assert second.usage.prompt_tokens - without.usage.prompt_tokens >= len(TOOL_RESULT)


def test_v1_streamed_tool_call_comes_in_one_delta(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        response_format=_forced(),  # type: ignore[arg-type]
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].index == 0 and CALL_ID.fullmatch(calls[0].id or "")
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments or "") == {"city": "Paris"}
    assert "".join(d.content or "" for d in deltas) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_v1_streamed_calls_carry_their_index_and_id(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=TWO_TOOLS,  # type: ignore[list-item]
        response_format={"type": "json_schema", "json_schema": {"name": "calls", "schema": TWO_CALLS_SCHEMA}},  # type: ignore[arg-type, typeddict-item]
        temperature=0,
        max_tokens=300,
        stream=True,
    )
    calls = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function and c.function.name) for c in calls] == [(0, "get_weather"), (1, "get_time")]
    ids = [c.id or "" for c in calls]
    assert all(CALL_ID.fullmatch(i) for i in ids) and ids[0] != ids[1]


def test_v1_tool_choice_none_offers_no_tools(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_tokens=1,
    )
    offered = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        temperature=0,
        max_tokens=1,
    )
    assert r.usage is not None and offered.usage is not None
    assert offered.usage.prompt_tokens > r.usage.prompt_tokens


def test_v1_refusals_name_the_field(client: httpx.Client) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ]
    for extra, param in cases:
        r = client.post("/v1/chat/completions", json={**base, **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param, r.text
    gemma = client.post(
        "/v1/chat/completions", json={**base, "model": "gemma3:270m", "tools": [WEATHER_TOOL]}
    )
    assert gemma.status_code == 400
    assert gemma.json()["error"]["param"] == "tools"
