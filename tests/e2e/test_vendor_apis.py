"""OpenAI's Responses API and Anthropic's Messages API through the whole stack, with their official clients.

One stack with API keys on serves the module: the OpenAI client sends its key as `Authorization: Bearer`,
the Anthropic client as `x-api-key`. `tiny-tools` is the random-weight model of tests/e2e/test_tools.py:
a JSON schema (`text.format` / `output_config.format`) makes its output a call of get_weather for Paris,
so the real path runs: the template receives the tools, the worker parses the call, the route hands it out
in the vendor's shape, and the call's result goes back in the next request's prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from herd.names import ModelName
from herd.store import ModelStore
from stack.supervisor import Stack
from tests.e2e.conftest import start_stack
from tests.support.prompts import CALL_SCHEMA
from tests.support.tiny_gguf import CHATML_TEMPLATE, TOOLS_TEMPLATE, write_tiny_llama

KEY = "sk-herd-vendor-apis"
MODEL = "tiny-tools"
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city's name."}},
        "required": ["city"],
    },
}
TOOL_RESULT = "18 degrees, sunny, light wind from the west"
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("vendor-apis")
    store = ModelStore(root / "models")
    for name, seed, template in (("tiny-tools", 4, TOOLS_TEMPLATE), ("tiny-chat", 2, CHATML_TEMPLATE)):
        store.import_gguf(
            ModelName.parse(name), write_tiny_llama(root / f"{name}.gguf", seed=seed, chat_template=template)
        )
    keys = root / "keys.txt"
    keys.write_text(f"{KEY}\n")
    with start_stack(root / "models", root / "run", env={"HERD_API_KEYS_FILE": str(keys)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def oai(keyed: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{keyed.settings.base_url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def claude(keyed: Stack) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key (never as a Bearer token) and appends /v1/messages itself.
    return anthropic.Anthropic(base_url=keyed.settings.base_url, api_key=KEY, max_retries=0)


# --- /v1/responses ----------------------------------------------------------------------------------

RESPONSES_TOOL: Any = {
    "type": "function",
    "name": WEATHER["name"],
    "description": WEATHER["description"],
    "parameters": WEATHER["schema"],
    "strict": False,
}
FORCED_TEXT: Any = {"format": {"type": "json_schema", "name": "call", "schema": CALL_SCHEMA}}


def test_responses_stream_is_the_event_sequence_and_matches_the_whole_answer(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(
        model="tiny-chat", input=ASK, instructions="Be brief.", max_output_tokens=6, temperature=0
    )
    assert whole.status == "completed" and whole.object == "response"
    (message,) = whole.output
    assert message.type == "message" and message.role == "assistant"
    assert whole.usage is not None and whole.usage.output_tokens == 6
    assert whole.instructions == "Be brief." and whole.max_output_tokens == 6

    events = list(
        oai.responses.create(
            model="tiny-chat",
            input=ASK,
            instructions="Be brief.",
            max_output_tokens=6,
            temperature=0,
            stream=True,
        )
    )
    names = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ], names
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].response  # type: ignore[union-attr]
    assert "".join(deltas) == whole.output_text == completed.output_text
    assert completed.usage is not None and completed.usage.output_tokens == 6


def test_responses_function_call_and_its_output_round_trip(oai: openai.OpenAI) -> None:
    first = oai.responses.create(
        model=MODEL, input=ASK, tools=[RESPONSES_TOOL], text=FORCED_TEXT, temperature=0, max_output_tokens=80
    )
    (call,) = first.output
    assert call.type == "function_call" and call.status == "completed"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_")

    # The call (as the first answer's output item) and its output go back as input items.
    history: Any = [{"role": "user", "content": ASK}, call.model_dump(exclude_none=True)]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}
    second = oai.responses.create(
        model=MODEL, input=[*history, result], tools=[RESPONSES_TOOL], temperature=0, max_output_tokens=4
    )
    without = oai.responses.create(
        model=MODEL, input=history, tools=[RESPONSES_TOOL], temperature=0, max_output_tokens=1
    )
    assert second.status == "completed" and second.output[0].type == "message"
    assert second.usage is not None and without.usage is not None
    # The result is in the prompt: a dozen tokens at least, of a byte-level vocabulary.
    assert second.usage.input_tokens - without.usage.input_tokens >= 12


def test_responses_refusals_are_openai_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="absent-model", input="hi")
    with pytest.raises(openai.AuthenticationError):
        oai.with_options(api_key="wrong").responses.create(model=MODEL, input="hi")


# --- /v1/messages -----------------------------------------------------------------------------------

ANTHROPIC_TOOL: Any = {
    "name": WEATHER["name"],
    "description": WEATHER["description"],
    "input_schema": WEATHER["schema"],
}
FORCED_OUTPUT: Any = {"format": {"type": "json_schema", "schema": CALL_SCHEMA}}
RAW_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop"}
RAW_EVENTS |= {"message_delta", "message_stop"}
# This SDK has no temperature argument any more; the API still takes the field.
GREEDY = {"temperature": 0}


def test_messages_stream_is_the_event_sequence_and_matches_the_whole_answer(
    claude: anthropic.Anthropic,
) -> None:
    system: Any = [{"type": "text", "text": "Be brief."}]
    ask: Any = [{"role": "user", "content": ASK}]
    whole = claude.messages.create(
        model="tiny-chat", system=system, messages=ask, max_tokens=6, extra_body=GREEDY
    )
    assert whole.type == "message" and whole.role == "assistant" and whole.stop_reason == "max_tokens"
    (text,) = whole.content
    assert text.type == "text"
    assert whole.usage.output_tokens == 6 and whole.usage.input_tokens > 0

    events = list(
        claude.messages.create(
            model="tiny-chat", system=system, messages=ask, max_tokens=6, extra_body=GREEDY, stream=True
        )
    )
    names = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(deltas),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ], names  # the SDK reads the ping and passes it on to no one
    assert "".join(d.text for d in deltas if d.type == "text_delta") == text.text
    end = events[-2]
    assert (
        end.type == "message_delta" and end.delta.stop_reason == "max_tokens" and end.usage.output_tokens == 6
    )


def test_messages_tool_use_and_its_result_round_trip(claude: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": ASK}]
    with claude.messages.stream(
        model=MODEL,
        messages=ask,
        tools=[ANTHROPIC_TOOL],
        output_config=FORCED_OUTPUT,
        max_tokens=80,
        extra_body=GREEDY,
    ) as stream:
        raw = [event for event in stream if event.type in RAW_EVENTS]
        first = stream.get_final_message()
    # The whole call in one block: its start, the arguments as one JSON delta, its stop.
    assert [e.type for e in raw] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert raw[2].delta.type == "input_json_delta"  # type: ignore[union-attr]
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}

    turns: Any = [*ask, {"role": "assistant", "content": [use.model_dump()]}]
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": TOOL_RESULT}],
    }
    second = claude.messages.create(
        model=MODEL, messages=[*turns, result], tools=[ANTHROPIC_TOOL], max_tokens=4, extra_body=GREEDY
    )
    without = claude.messages.create(
        model=MODEL,
        messages=[*turns, {"role": "user", "content": "ok"}],
        tools=[ANTHROPIC_TOOL],
        max_tokens=1,
        extra_body=GREEDY,
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert second.usage.input_tokens - without.usage.input_tokens >= 12


def test_messages_errors_are_anthropic_errors(claude: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="absent-model", messages=ask, max_tokens=4)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'absent-model' not found"},
        "request_id": missing.value.body["request_id"],
    }  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as refused:
        claude.with_options(api_key="wrong").messages.create(model=MODEL, messages=ask, max_tokens=4)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL,
            messages=ask,
            max_tokens=4,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    assert "web_search_20250305" in bad.value.body["error"]["message"]  # type: ignore[index]


# --- thinking ---------------------------------------------------------------------------------------

# Scripted GGUFs (greedy output is the script, under real decoding) in Qwen3's manner: thinking in
# <think> tags, then an answer or a tool call.
THINKS = "think-answer"
THINKS_THEN_CALLS = "think-call"
SCRIPTS = {
    THINKS: "<think>Two plus two is four.</think>\n\nThe answer is 4.",
    THINKS_THEN_CALLS: '<think>I need the weather tool.</think>\n<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "Paris"}}\n</tool_call>',
}


@pytest.fixture(scope="module")
def thinkers(keyed: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The scripted models, created through the API (once scripted GGUFs and thinking exist)."""
    scripted = pytest.importorskip("tests.support.scripted_gguf", reason="needs the scripted GGUF writer")
    root = tmp_path_factory.mktemp("thinkers")
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=keyed.settings.base_url, headers=auth, timeout=120) as client:
        for name, script in SCRIPTS.items():
            data = scripted.write_scripted(root / f"{name}.gguf", script, template="qwen3").read_bytes()
            digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
            assert client.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
            body = {
                "model": name,
                "files": {"model.gguf": digest},
                "template": scripted.GO_TEMPLATES["qwen3"],
            }
            created = client.post("/api/create", json={**body, "stream": False})
            assert created.status_code == 200, created.text


def test_messages_thinking_blocks(claude: anthropic.Anthropic, thinkers: None) -> None:
    # Streamed with thinking asked for; then, not streamed and not asked (a thinking model thinks).
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    ask: Any = [{"role": "user", "content": "What is 2+2?"}]
    with claude.messages.stream(
        model=THINKS, messages=ask, thinking=thinking, max_tokens=64, extra_body=GREEDY
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        streamed = stream.get_final_message()
    thoughts, said = deltas.count("thinking_delta"), deltas.count("text_delta")
    assert thoughts and said and deltas == ["thinking_delta"] * thoughts + ["text_delta"] * said
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in streamed.content] == [
        ("thinking", "Two plus two is four."),
        ("text", "The answer is 4."),
    ]
    called = claude.messages.create(
        model=THINKS_THEN_CALLS, messages=ask, tools=[ANTHROPIC_TOOL], max_tokens=64, extra_body=GREEDY
    )
    assert [b.type for b in called.content] == ["thinking", "tool_use"] and called.stop_reason == "tool_use"
    assert called.content[0].thinking == "I need the weather tool."  # type: ignore[union-attr]
    assert called.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_responses_reasoning_items(oai: openai.OpenAI, thinkers: None) -> None:
    # Streamed with an effort; then, not streamed and without one (a thinking model thinks).
    events = list(
        oai.responses.create(
            model=THINKS,
            input="What is 2+2?",
            reasoning={"effort": "high"},
            temperature=0,
            max_output_tokens=64,
            stream=True,
        )
    )
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")  # type: ignore[union-attr]
    assert thought == "Two plus two is four."
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "The answer is 4."

    called = oai.responses.create(
        model=THINKS_THEN_CALLS, input="Weather?", tools=[RESPONSES_TOOL], temperature=0, max_output_tokens=64
    )
    reasoning, call = called.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "I need the weather tool."  # type: ignore[union-attr]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
