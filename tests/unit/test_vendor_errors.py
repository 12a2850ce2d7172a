"""/v1/messages and /v1/responses refusals in process: each vendor's error shape, naming what is at fault.

The app is the real one with API keys on and a store holding a tiny model; Redis is a loopback port nothing
listens on, so a request that passes every check reaches admission and gets the 503 of a queue that is
down: the proof that it was accepted, in the route's own shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import ApiSettings
from herd.names import ModelName
from herd.settings import load_settings
from herd.store import ModelStore
from tests.support.ports import free_port
from tests.support.tiny_gguf import TOOLS_TEMPLATE, write_tiny_llama

KEY = "sk-unit-vendor"
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("vendor-errors")
    store = ModelStore(root / "models")
    gguf = write_tiny_llama(root / "tools.gguf", seed=4, chat_template=TOOLS_TEMPLATE)
    store.import_gguf(ModelName.parse("tiny-tools"), gguf)
    store.import_gguf(ModelName.parse("tiny-a"), write_tiny_llama(root / "a.gguf", seed=1))
    (root / "keys.txt").write_text(f"{KEY}\n")
    settings = load_settings(
        ApiSettings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        api_keys_file=root / "keys.txt",
        models_dir=root / "models",
    )
    with TestClient(create_app(settings), headers={"x-api-key": KEY}) as c:
        yield c


def _anthropic_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return str(body["error"]["message"])


def _openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert isinstance(error["message"], str) and error["type"], error
    return error


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": ASK}, "max_tokens: Field required"),
        ({"messages": ASK, "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": 4}, "messages: Field required"),
        ({"max_tokens": 4, "messages": []}, "messages: at least one message is required"),
        (
            {"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role: must be 'user' or 'assistant'",
        ),
        (
            {
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "messages.0.content.0: content block type 'document' is not supported",
        ),
        (
            {
                "max_tokens": 4,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}],
                    }
                ],
            },
            "invalid image source type: url. Only base64 images are supported.",
        ),
        (
            {
                "max_tokens": 4,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "not base64!"}}],
                    }
                ],
            },
            "messages.0.content.0.source.data: invalid base64 image data",
        ),
        (
            {
                "max_tokens": 4,
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}
                ],
            },
            "tool_use block missing required 'id' field",
        ),
        (
            {
                "max_tokens": 4,
                "messages": ASK,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools.0.type: tool type 'web_search_20250305' is not supported",
        ),
        (
            {"max_tokens": 4, "messages": ASK, "tools": [{"name": "f", "input_schema": "x"}]},
            "tools.0.input_schema",
        ),
        (
            {"max_tokens": 4, "messages": ASK, "thinking": {"type": "sometimes"}},
            "thinking.type: Input should be",
        ),
        (
            {"max_tokens": 4, "messages": ASK, "tool_choice": {"type": "always"}},
            "tool_choice.type: Input should be",
        ),
        (
            {"max_tokens": 4, "messages": ASK, "output_config": {"format": {"type": "json_object"}}},
            "output_config.format: must be",
        ),
        (
            {"max_tokens": 4, "messages": ASK, "system": [{"type": "image"}]},
            "system.0: each system block must be a text block",
        ),
        ({"max_tokens": 4, "messages": ASK, "model": "absent"}, "model 'absent' not found"),
    ],
)
def test_messages_refusals_name_the_field_in_anthropic_s_shape(
    client: TestClient, body: dict[str, Any], needle: str
) -> None:
    response = client.post("/v1/messages", json={"model": "tiny-tools", **body})
    status = 404 if needle.startswith("model ") else 400
    assert needle in _anthropic_error(response, status)


def test_messages_tools_on_a_model_without_them_are_refused(client: TestClient) -> None:
    body = {
        "model": "tiny-a",
        "max_tokens": 4,
        "messages": ASK,
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    }
    assert "does not support tools" in _anthropic_error(client.post("/v1/messages", json=body), 400)


def test_a_valid_message_request_reaches_the_queue(client: TestClient) -> None:
    body = {
        "model": "tiny-tools",
        "max_tokens": 4,
        "system": "Be brief.",
        "messages": ASK,
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
        # A model without thinking answers without it (as Ollama's Anthropic API does), not a 400.
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
    }
    response = client.post("/v1/messages", json=body)
    assert _anthropic_error(response, 503) == "service unavailable: queue unreachable"
    assert response.json()["error"]["type"] == "overloaded_error" and response.headers["retry-after"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        # Ollama's refusal on this API: the model has no thinking capability.
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}
                ]
            },
            "input[0].content[0]",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
            "input[0].arguments",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
            "text.format.schema",
        ),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_responses_refusals_name_the_param_in_openai_s_shape(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/responses", json={"model": "tiny-tools", "input": "hi", **body})
    assert _openai_error(response, 400)["param"] == param


def test_a_valid_response_request_reaches_the_queue(client: TestClient) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = {
        "model": "tiny-tools",
        "input": "hi",
        "instructions": "x",
        "tools": [tool],
        "reasoning": {"effort": "none"},
    }
    error = _openai_error(client.post("/v1/responses", json=body), 503)
    assert error["message"] == "service unavailable: queue unreachable"


def test_a_key_is_taken_from_x_api_key_or_bearer_and_refused_in_each_route_s_shape(
    client: TestClient,
) -> None:
    body = {"model": "tiny-tools", "max_tokens": 4, "messages": ASK}
    # Accepted either way (reaching the queue): x-api-key, and a Bearer token beside a wrong x-api-key.
    assert client.post("/v1/messages", json=body).status_code == 503
    both = {"x-api-key": "wrong", "Authorization": f"Bearer {KEY}"}
    assert client.post("/v1/messages", json=body, headers=both).status_code == 503
    assert client.get("/api/tags").status_code == 200
    for headers in ({"x-api-key": ""}, {"x-api-key": "wrong"}):
        refused = client.post("/v1/messages", json=body, headers=headers)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "authentication_error", refused.text
        assert _anthropic_error(refused, 401).endswith(
            "API key" if headers["x-api-key"] else "x-api-key: <key>)"
        )
        openai = client.post("/v1/responses", json={"model": "tiny-tools", "input": "hi"}, headers=headers)
        assert _openai_error(openai, 401)["code"] == "invalid_api_key"
        native = client.get("/api/tags", headers=headers)
        assert native.status_code == 401 and native.json()["error"].startswith("unauthorized: ")


def test_the_openapi_documents_each_route_s_error_shape(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, shape in (("/v1/messages", "AnthropicError"), ("/v1/responses", "OpenAIError")):
        responses = spec["paths"][path]["post"]["responses"]
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith(shape), path
        assert "text/event-stream" in responses["200"]["content"]
    assert spec["components"]["schemas"]["MessagesRequest"]["required"] == ["model", "max_tokens", "messages"]


def test_errors_answered_outside_the_route_are_in_anthropic_s_shape_too(client: TestClient) -> None:
    # An unserved path under /v1/messages (count_tokens), and a body refused before FastAPI parses it.
    unknown = _anthropic_error(client.post("/v1/messages/count_tokens", json={}), 404)
    assert unknown == "Unknown request URL: POST /v1/messages/count_tokens."
    deep = b'{"model": "tiny-tools", "x": ' + b"[" * 200 + b"]" * 200 + b"}"
    headers = {"Content-Type": "application/json"}
    assert "nested deeper" in _anthropic_error(
        client.post("/v1/messages", content=deep, headers=headers), 400
    )
    assert (
        "nested deeper"
        in _openai_error(client.post("/v1/responses", content=deep, headers=headers), 400)["message"]
    )
