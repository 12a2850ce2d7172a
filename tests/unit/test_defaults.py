"""Ollama's defaults and parsing: sampling defaults, the tiered num_ctx, /v1's defaults, tool_choice, JSON
null as absent, and HEAD on the probe routes, checked in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import openai_compat
from app.main import create_app
from app.openai_compat import ChatCompletionRequest, CompletionRequest
from app.schemas import ChatRequest, CreateRequest, GenerateRequest
from app.settings import ApiSettings
from herd.settings import load_settings
from tests.support.ports import free_port
from workers import prepare
from workers.sampling import SamplingParams
from workers.settings import GIB, WorkerSettings, tiered_num_ctx

KEY = "sk-unit-key"

# Ollama's api/types.go, DefaultOptions, at the commit Herd follows (fb30760).
OLLAMA_DEFAULTS = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
}


def test_sampling_defaults_are_ollama_s() -> None:
    # What a request that sets nothing samples with, through the function the worker calls.
    params = prepare.sampling_params({}, grammar=None)
    assert {k: getattr(params, k) for k in OLLAMA_DEFAULTS} == OLLAMA_DEFAULTS
    assert params == SamplingParams()
    assert params.min_p == 0.0  # Ollama's default min_p is 0: the stage is left out


def test_a_set_option_overrides_and_a_null_one_does_not() -> None:
    params = prepare.sampling_params({"repeat_penalty": 1.3, "top_k": None}, grammar=None)
    assert params.repeat_penalty == 1.3 and params.top_k == 40


@pytest.mark.parametrize(
    ("memory", "n_ctx"),
    [
        (None, 4096),  # CPU only
        (8 * GIB, 4096),
        (23 * GIB - 1, 4096),
        (23 * GIB, 32768),  # a 24 GiB card that reports a little less
        (47 * GIB - 1, 32768),
        (47 * GIB, 262144),
        (80 * GIB, 262144),
    ],
)
def test_num_ctx_is_tiered_by_gpu_memory_as_ollama_tiers_it(memory: int | None, n_ctx: int) -> None:
    assert tiered_num_ctx(memory) == n_ctx


def test_ollama_context_length_wins_over_the_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OLLAMA_CONTEXT_LENGTH", raising=False)
    assert load_settings(WorkerSettings).context_length == 4096  # this machine's CPU tier
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "")  # compose's unset
    assert load_settings(WorkerSettings).context_length == 4096
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "8192")
    assert load_settings(WorkerSettings).context_length == 8192


# --- /v1 ------------------------------------------------------------------------------------------


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_v1_chat_defaults_are_those_of_ollama_s_openai_layer() -> None:
    # temperature and top_p default to OpenAI's 1.0, overriding the model's; penalties only when set.
    assert openai_compat.options(_chat()) == {"temperature": 1.0, "top_p": 1.0}
    assert openai_compat.options(_chat(temperature=None, top_p=None, seed=None)) == {
        "temperature": 1.0,
        "top_p": 1.0,
    }
    set_all = _chat(temperature=0, top_p=0.5, seed=3, stop="x", max_tokens=7, frequency_penalty=0.5)
    assert openai_compat.options(set_all) == {
        "temperature": 0,
        "top_p": 0.5,
        "seed": 3,
        "stop": ["x"],
        "num_predict": 7,
        "frequency_penalty": 0.5,
    }


def test_v1_completion_defaults_are_those_of_ollama_s_openai_layer() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "top_p": 0})
    # Completions send both penalties always, and read top_p 0 as unset.
    assert openai_compat.options(body) == {
        "temperature": 1.0,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
    }


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("choice", "offered"),
    [
        (None, True),
        ("auto", True),
        ("required", True),
        ({"type": "function", "function": {"name": "get_weather"}}, True),
        ("none", False),
    ],
)
def test_v1_tool_choice_is_taken_in_every_form_ollama_takes(choice: Any, offered: bool) -> None:
    body = _chat(tools=[TOOL], tool_choice=choice)
    openai_compat.refuse_unsupported(body)  # never a 400
    tools = openai_compat.tools(body)
    assert (tools is not None) is offered


def test_v1_assistant_content_null_with_tool_calls_and_a_tool_message() -> None:
    body = _chat(
        messages=[
            {"role": "user", "content": "weather?", "name": None},
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
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "unknown": 1},
            {"role": "tool", "content": "rainy", "name": "get_rain"},  # no id: Ollama takes it too
        ]
    )
    messages = openai_compat.chat_messages(body)
    assert messages[1].content == "" and messages[1].tool_calls is not None
    assert messages[1].tool_calls[0].function.name == "get_weather"
    assert (messages[2].tool_name, messages[2].tool_call_id) == ("get_weather", "call_1")
    assert (messages[3].tool_name, messages[3].tool_call_id) == ("get_rain", None)


# --- native ---------------------------------------------------------------------------------------


def test_native_chat_nulls_are_absent_and_tool_fields_are_kept() -> None:
    body = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi", "images": None, "thinking": None, "extra": True},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"function": {"name": "f", "arguments": {"city": None}, "index": None}, "id": None}
                    ],
                },
                {"role": "tool", "content": "x", "tool_name": "f", "tool_call_id": "c1"},
            ],
            "tools": None,
            "format": None,
            "options": {"temperature": None, "num_ctx": None},
            "stream": None,
            "think": None,
            "keep_alive": None,
            "logprobs": None,
            "unknown_field": {"a": 1},
        }
    )
    assistant, tool = body.messages[1], body.messages[2]
    assert assistant.content == "" and assistant.tool_calls is not None
    assert assistant.tool_calls[0].function.arguments == {"city": None}  # an argument's null is its value
    assert (tool.tool_name, tool.tool_call_id) == ("f", "c1")
    assert body.stream is True and body.options is not None and body.options.as_payload() == {}


def test_native_generate_and_create_nulls_are_absent() -> None:
    generate = GenerateRequest.model_validate(
        {"model": "m", "prompt": None, "system": None, "raw": None, "context": None, "suffix": None, "x": 1}
    )
    assert (generate.prompt, generate.system, generate.raw) == ("", "", False)
    create = CreateRequest.model_validate(
        {"model": "m", "from": "base", "messages": [{"role": "assistant", "content": None}], "system": None}
    )
    assert create.messages is not None and create.messages[0].content == ""


# --- HEAD -----------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    settings = load_settings(
        ApiSettings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        api_keys_file=keys,
        models_dir=tmp_path / "models",
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
def test_head_on_the_probe_routes_answers_200_without_a_body(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200, response.text
    assert response.content == b""
    assert client.get(path).status_code == 200
