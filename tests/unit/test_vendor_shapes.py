"""The answers of /v1/messages and /v1/responses, read back by the official clients' own types and stream
state machines, for worker event sequences a generation really produces (thinking, text, tool calls).

The event sequences are the worker's contract (herd/contracts.py and the thinking event); what a real
model emits is tested end to end in tests/e2e/test_vendor_apis.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.anthropic_compat import MessagesRequest, MessagesShape
from app.openai_responses import ResponsesRequest, ResponsesShape
from app.shaped_generation import Answer

CALL = {
    "id": "call_abcd1234",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
}
DONE = {"type": "done", "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 9}
SEQUENCES: dict[str, list[dict[str, Any]]] = {
    "text": [{"type": "token", "text": "Hel"}, {"type": "token", "text": "lo"}, DONE],
    "thinking then text": [
        {"type": "thinking", "text": "Two plus "},
        {"type": "thinking", "text": "two."},
        {"type": "token", "text": "It is 4."},
        DONE,
    ],
    "thinking then a call": [
        {"type": "thinking", "text": "Need a tool."},
        {"type": "tool_call", "call": CALL},
        DONE,
    ],
    "text then two calls": [
        {"type": "token", "text": "Checking."},
        {"type": "tool_call", "call": CALL},
        {"type": "tool_call", "call": {**CALL, "id": "call_efgh5678"}},
        DONE,
    ],
    "nothing": [{**DONE, "done_reason": "length"}],
}


def _answer(events: list[dict[str, Any]]) -> Answer:
    answer = Answer()
    for event in events[:-1]:
        answer.take(event)
    return answer


def _sse(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event, checking each is one `event:` and one `data:` line."""
    out = []
    for chunk in chunks:
        text = chunk.decode()
        assert text.endswith("\n\n"), text
        name, data = text[:-2].split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), text
        out.append((name[len("event: ") :], json.loads(data[len("data: ") :])))
    return out


# --- /v1/messages -----------------------------------------------------------------------------------

MESSAGE_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def _messages_stream(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    shape = MessagesShape("tiny", 7)
    chunks = shape.opening()
    for event in events:
        chunks += shape.render(event)
    return _sse(chunks)


@pytest.mark.parametrize("name", SEQUENCES)
def test_a_streamed_message_accumulates_to_the_whole_message(name: str) -> None:
    events = SEQUENCES[name]
    whole = Message.model_validate(MessagesShape("tiny", 7).complete(_answer(events), events[-1]))
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    indexes = []
    for event_name, data in _messages_stream(events):
        assert event_name == data["type"]
        if event_name == "ping":
            continue
        event = MESSAGE_EVENT.validate_python(data)  # the client's own event types accept it
        if event_name == "content_block_start":
            indexes.append(data["index"])
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert indexes == list(range(len(whole.content)))  # one block at a time, numbered from 0
    assert snapshot.model_dump() == {**whole.model_dump(), "id": snapshot.id}


def test_message_blocks_and_stop_reasons() -> None:
    shape = MessagesShape("tiny", 7)
    called = shape.complete(_answer(SEQUENCES["thinking then a call"]), DONE)
    assert [b["type"] for b in called["content"]] == ["thinking", "tool_use"]
    assert called["content"][1] == {
        "type": "tool_use",
        "id": "call_abcd1234",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert called["stop_reason"] == "tool_use" and called["usage"] == {"input_tokens": 12, "output_tokens": 9}
    cut = shape.complete(Answer(text="Hel"), {**DONE, "done_reason": "length"})
    assert cut["stop_reason"] == "max_tokens" and cut["content"] == [{"type": "text", "text": "Hel"}]
    names = [n for n, _ in _messages_stream(SEQUENCES["text"])]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]


def test_a_late_error_ends_the_message_stream_with_an_error_event() -> None:
    shape = MessagesShape("tiny", 7)
    shape.render({"type": "token", "text": "Hi"})
    ((name, data),) = _sse(shape.render({"type": "error", "status": 500, "error": "the worker died"}))
    assert name == "error" and data["error"] == {"type": "api_error", "message": "the worker died"}


# --- /v1/responses ----------------------------------------------------------------------------------

RESPONSE_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}


def _request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "tiny", "input": "hi", "tools": [TOOL], **fields})


@pytest.mark.parametrize("name", SEQUENCES)
def test_a_streamed_response_runs_through_the_client_state_machine(name: str) -> None:
    events = SEQUENCES[name]
    request = _request(reasoning={"effort": "high"})
    shape = ResponsesShape(request)
    chunks = shape.opening()
    for event in events:
        chunks += shape.render(event)
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[TOOL], text_format=omit)  # type: ignore[arg-type]
    parsed = _sse(chunks)
    for sequence, (event_name, data) in enumerate(parsed):
        assert event_name == data["type"] and data["sequence_number"] == sequence
        state.handle_event(RESPONSE_EVENT.validate_python(data))  # raises on an event out of place
    final = parsed[-1][1]["response"]
    assert parsed[-1][0] == "response.completed" and final["status"] == "completed"
    whole = ResponsesShape(request).complete(_answer(events), events[-1])
    Response.model_validate(whole)
    # The same items, but that a whole answer without output still holds an (empty) message.
    streamed = [(i["type"], i.get("content"), i.get("summary"), i.get("arguments")) for i in final["output"]]
    expected = [(i["type"], i.get("content"), i.get("summary"), i.get("arguments")) for i in whole["output"]]
    assert streamed == (expected if name != "nothing" else [])
    assert (
        final["usage"]
        == whole["usage"]
        == {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 21,
        }
    )


def test_response_items_in_order() -> None:
    shape = ResponsesShape(_request())
    whole = shape.complete(_answer(SEQUENCES["thinking then a call"]), DONE)
    reasoning, call = whole["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [
        {"type": "summary_text", "text": "Need a tool."}
    ]
    assert reasoning["encrypted_content"] == "Need a tool."  # what a client passes back next turn
    assert call["call_id"] == "call_abcd1234" and json.loads(call["arguments"]) == {"city": "Paris"}
    text = shape.complete(_answer(SEQUENCES["text"]), DONE)
    assert [i["type"] for i in text["output"]] == ["message"] and text["output"][0]["content"][0][
        "text"
    ] == "Hello"


def test_a_late_error_fails_the_response() -> None:
    shape = ResponsesShape(_request())
    shape.opening()
    shape.render({"type": "token", "text": "Hi"})
    names = [n for n, _ in _sse(shape.render({"type": "error", "status": 500, "error": "the worker died"}))]
    assert names[-1] == "response.failed" and "response.output_item.done" in names


# --- requests into chat turns -----------------------------------------------------------------------


def test_anthropic_messages_become_chat_turns() -> None:
    from app.anthropic_compat import ToolChoice, chat_messages, options, think, tools

    image = "aGVsbG8="
    body = MessagesRequest.model_validate(
        {
            "model": "tiny",
            "max_tokens": 9,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "stop_sequences": ["\n\n"],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": image},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Hm.", "signature": ""},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {"type": "text", "text": "And?"},
                    ],
                },
            ],
        }
    )
    turns = [t.model_dump(exclude_none=True) for t in chat_messages(body)]
    assert turns == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Look", "images": [image]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "Hm.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        # The result comes before the user's words, named after the call it answers.
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1", "tool_name": "get_weather"},
        {"role": "user", "content": "And?"},
    ]
    assert options(body) == {"num_predict": 9, "stop": ["\n\n"]}
    assert think(body) is True
    assert tools(body) == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "", "parameters": {"type": "object"}},
        }
    ]
    assert tools(body.model_copy(update={"tool_choice": ToolChoice(type="none")})) is None


def test_response_input_items_become_chat_turns() -> None:
    from app.openai_responses import chat_messages, options, text_format, think

    body = ResponsesRequest.model_validate(
        {
            "model": "tiny",
            "instructions": "Be brief.",
            "max_output_tokens": 5,
            "reasoning": {"effort": "minimal"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "input": [
                {"role": "developer", "content": "Use tools."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Weather "},
                        {"type": "input_text", "text": "in Paris?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,aGVsbG8="},
                    ],
                },
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [{"type": "summary_text", "text": "Need it."}],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Paris"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Sunny."}],
                },
            ],
        }
    )
    assert [t.model_dump(exclude_none=True) for t in chat_messages(body)] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?", "images": ["aGVsbG8="]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "Need it.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "tool_name": "get_weather"},
        {"role": "assistant", "content": "Sunny."},
    ]
    assert options(body) == {"num_predict": 5, "temperature": 1.0}
    assert think(body) == "low"
    assert text_format(body) == {"type": "object"}
