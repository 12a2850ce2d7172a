"""Thinking models through the whole stack, on scripted tiny GGUFs decoded by real llama.cpp.

Each model is written by tests/support/scripted_gguf.py, uploaded as a blob and made with /api/create
(as docs/testing.md shows), so its greedy output is a known script: `<think>…</think>answer`, a tool
call after thinking, a model that opens in thinking, or gpt-oss's harmony channels. The worker splits
that real output; the tests check what each API returns, streamed and not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.scripted_gguf import GO_TEMPLATES, write_scripted

QWEN3 = "think-qwen3"
TOOLS = "think-tools"
OPEN = "think-open"
HARMONY = "think-harmony"
HARMONY_CALL = "think-harmony-call"
NOT_THINKING = "tiny-chat"  # the session store's ChatML model: its template has no thinking

SCRIPTS: dict[str, tuple[str, str | None]] = {
    # name: (script, Go template for /api/create; None keeps the GGUF's own Jinja template)
    QWEN3: ("<think>Two plus two is four.</think>\n\nThe answer is 4.", GO_TEMPLATES["qwen3"]),
    TOOLS: (
        '<think>I need the weather tool.</think>\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Paris"}}\n</tool_call>',
        GO_TEMPLATES["qwen3"],
    ),
    OPEN: ("Counting on fingers.\n</think>\n\nFour.", None),
    HARMONY: (
        "<|channel|>analysis<|message|>A simple sum.<|end|><|start|>assistant<|channel|>final"
        "<|message|>It is 4.",
        GO_TEMPLATES["harmony"],
    ),
    HARMONY_CALL: (
        "<|channel|>analysis<|message|>Check the weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
        GO_TEMPLATES["harmony"],
    ),
}
ASK = [{"role": "user", "content": "What is 2+2?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 40}


@pytest.fixture(scope="module")
def thinking_models(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The scripted models, created through the API; deleted afterwards."""
    root = tmp_path_factory.mktemp("scripted")
    templates = {QWEN3: "qwen3", TOOLS: "qwen3", OPEN: "open", HARMONY: "harmony", HARMONY_CALL: "harmony"}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for name, (script, go_template) in SCRIPTS.items():
            data = write_scripted(root / f"{name}.gguf", script, template=templates[name]).read_bytes()
            digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
            assert client.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
            body: dict[str, Any] = {"model": name, "files": {"model.gguf": digest}, "stream": False}
            if go_template is not None:
                body["template"] = go_template
            created = client.post("/api/create", json=body)
            assert created.status_code == 200, created.text
        yield
        for name in SCRIPTS:
            client.request("DELETE", "/api/delete", json={"model": name})


@pytest.fixture
def api(client: httpx.Client, thinking_models: None) -> httpx.Client:
    return client


def _chat(client: httpx.Client, model: str, **body: Any) -> httpx.Response:
    return client.post(
        "/api/chat", json={"model": model, "messages": ASK, "options": GREEDY, "stream": False, **body}
    )


def _stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={"options": GREEDY, **body}) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line]


def test_thinking_capability_follows_the_template(api: httpx.Client) -> None:
    for name in SCRIPTS:
        assert "thinking" in api.post("/api/show", json={"model": name}).json()["capabilities"], name
    assert "thinking" not in api.post("/api/show", json={"model": NOT_THINKING}).json()["capabilities"]


def test_chat_splits_thinking_from_content(api: httpx.Client) -> None:
    r = _chat(api, QWEN3)  # `think` unset: on by default for a thinking model, as in Ollama
    assert r.status_code == 200, r.text
    message = r.json()["message"]
    assert message["thinking"] == "Two plus two is four."
    assert message["content"] == "The answer is 4."
    assert r.json()["eval_count"] > 5  # the script came from many decoded tokens


def test_streamed_chat_sends_thinking_then_content_and_nothing_leaks(api: httpx.Client) -> None:
    lines = _stream(api, "/api/chat", {"model": QWEN3, "messages": ASK, "think": True})
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert (thinking, content) == ("Two plus two is four.", "The answer is 4.")
    assert not any(
        "<think>" in line["message"]["content"] or "</think>" in line["message"]["content"] for line in lines
    )
    first_content = next(i for i, line in enumerate(lines) if line["message"]["content"])
    assert all(not line["message"].get("thinking") for line in lines[first_content:])
    assert lines[-1]["done"] is True


def test_generate_splits_thinking_streamed_and_not(api: httpx.Client) -> None:
    r = api.post("/api/generate", json={"model": QWEN3, "prompt": "2+2?", "options": GREEDY, "stream": False})
    assert r.status_code == 200, r.text
    assert (r.json()["thinking"], r.json()["response"]) == ("Two plus two is four.", "The answer is 4.")
    lines = _stream(api, "/api/generate", {"model": QWEN3, "prompt": "2+2?", "think": "high"})
    assert "".join(line.get("thinking", "") for line in lines) == "Two plus two is four."
    assert "".join(line["response"] for line in lines) == "The answer is 4."


def test_think_false_leaves_the_output_unparsed(api: httpx.Client) -> None:
    # As Ollama: without think the tags are not parsed (the template told the model not to think).
    message = _chat(api, QWEN3, think=False, options={**GREEDY, "num_predict": 2}).json()["message"]
    assert "thinking" not in message
    assert message["content"].startswith("<think>Two")


def test_openai_reasoning(base_url: str, thinking_models: None) -> None:
    oa = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    done = oa.chat.completions.create(model=QWEN3, messages=ASK, temperature=0, reasoning_effort="low")  # type: ignore[arg-type]
    message = done.choices[0].message
    assert message.content == "The answer is 4."
    assert getattr(message, "reasoning", None) == "Two plus two is four."
    chunks = list(oa.chat.completions.create(model=QWEN3, messages=ASK, temperature=0, stream=True))  # type: ignore[arg-type]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [getattr(d, "reasoning", None) for d in deltas]
    assert "".join(r for r in reasoning if r) == "Two plus two is four."
    assert "".join(d.content or "" for d in deltas) == "The answer is 4."
    assert not any(getattr(d, "reasoning", None) and d.content for d in deltas)  # separate chunks
    # A model that cannot think refuses an effort (how each effort maps: tests/unit/test_thinking.py).
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        oa.chat.completions.create(model=NOT_THINKING, messages=ASK, reasoning_effort="high")  # type: ignore[arg-type]


def test_history_thinking_reaches_the_template(api: httpx.Client) -> None:
    # The template writes an earlier turn's thinking back (<think>…</think>): the prompt grows by it.
    history = [*ASK, {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"}]
    with_thinking = [*ASK, {"role": "assistant", "content": "4", "thinking": "easy sum"}, history[-1]]
    one = {**GREEDY, "num_predict": 1}
    plain = _chat(api, QWEN3, messages=history, options=one).json()["prompt_eval_count"]
    thought = _chat(api, QWEN3, messages=with_thinking, options=one).json()["prompt_eval_count"]
    # One token per character of the scripted vocabulary, and one each for <think>, </think> and "\n".
    assert thought - plain == len("easy sum") + 3


def test_model_that_opens_in_thinking(api: httpx.Client) -> None:
    message = _chat(api, OPEN).json()["message"]
    assert (message["thinking"], message["content"]) == ("Counting on fingers.\n", "Four.")


def test_tool_call_after_thinking(api: httpx.Client) -> None:
    r = _chat(api, TOOLS, tools=[WEATHER_TOOL])
    assert r.status_code == 200, r.text
    message = r.json()["message"]
    assert message["thinking"] == "I need the weather tool."
    assert message["content"] == ""
    assert [c["function"] for c in message["tool_calls"]] == [
        {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    ]


def test_harmony_channels(api: httpx.Client) -> None:
    message = _chat(api, HARMONY, think="low").json()["message"]
    assert (message["thinking"], message["content"]) == ("A simple sum.", "It is 4.")
    lines = _stream(api, "/api/chat", {"model": HARMONY, "messages": ASK})
    assert "".join(line["message"].get("thinking", "") for line in lines) == "A simple sum."
    assert "".join(line["message"]["content"] for line in lines) == "It is 4."


def test_harmony_commentary_is_a_tool_call(api: httpx.Client) -> None:
    message = _chat(api, HARMONY_CALL, tools=[WEATHER_TOOL]).json()["message"]
    assert message["thinking"] == "Check the weather."
    assert message["content"] == ""
    assert [c["function"] for c in message["tool_calls"]] == [
        {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    ]


def test_think_on_a_model_without_thinking_is_refused(api: httpx.Client) -> None:
    for path, body in (("/api/chat", {"messages": ASK}), ("/api/generate", {"prompt": "hi"})):
        r = api.post(path, json={"model": NOT_THINKING, "think": True, "stream": False, **body})
        assert r.status_code == 400, r.text
        assert r.json() == {"error": f'"{NOT_THINKING}" does not support thinking'}
    r = api.post("/api/chat", json={"model": QWEN3, "messages": ASK, "think": "extreme"})
    assert r.status_code == 400 and "invalid think value" in r.json()["error"]
    # think false is fine anywhere
    assert _chat(api, NOT_THINKING, think=False, options={"num_predict": 1}).status_code == 200
