"""The OpenAI-compatible /v1 API through the real stack, driven by the official `openai` client unchanged.

Error paths go over raw HTTP (httpx) so the exact status, body shape and headers are asserted.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import redis
from openai import OpenAI

from herd.contracts import QUEUE_KEYS_SET
from tests.e2e.conftest import GEMMA, HANDMADE

GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def oai(base_url: str) -> Iterator[OpenAI]:
    # No retries: a 503 must reach the test, not be retried away.
    with OpenAI(base_url=f"{base_url}/v1", api_key="herd", max_retries=0, timeout=120) as c:
        yield c


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body's `error` object, after checking the status and OpenAI's shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- models -----------------------------------------------------------------------------------------


def test_models_list_and_retrieve_including_a_namespaced_name(oai: OpenAI) -> None:
    models = {m.id: m for m in oai.models.list()}
    assert {GEMMA, "tiny-a:latest", "tiny-chat:latest", HANDMADE} <= set(models)
    assert models[GEMMA].object == "model" and models[GEMMA].owned_by == "library"
    assert models[HANDMADE].owned_by == "someone"
    assert models[GEMMA].created > 1_600_000_000
    handmade = oai.models.retrieve(HANDMADE)
    assert handmade.id == HANDMADE and handmade.owned_by == "someone"
    assert oai.models.retrieve("tiny-a").id == "tiny-a:latest"  # the default tag is filled in
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("someone/missing:v1")


def test_retrieve_unknown_model_is_a_404_in_openai_shape(client: httpx.Client) -> None:
    error = openai_error(client.get("/v1/models/someone/missing:v1"), 404)
    assert error["type"] == "not_found_error" and error["code"] == "model_not_found"
    assert error["message"] == "The model 'someone/missing:v1' does not exist"


# --- chat completions -------------------------------------------------------------------------------


def test_chat_completion_object(oai: OpenAI) -> None:
    done = oai.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=24, **GREEDY)
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.model == GEMMA and done.system_fingerprint == "fp_herd" and done.created > 1_600_000_000
    assert len(done.choices) == 1
    choice = done.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert done.usage is not None
    assert done.usage.prompt_tokens > 5 and 0 < done.usage.completion_tokens <= 24
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_max_tokens_ends_with_length_and_counts_exactly(oai: OpenAI) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        done = oai.chat.completions.create(
            model=GEMMA,
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            **{field: 5},
            **GREEDY,
        )
        assert done.choices[0].finish_reason == "length", field
        assert done.usage is not None and done.usage.completion_tokens == 5, field


def test_chat_stream_matches_the_single_object(oai: OpenAI) -> None:
    # By default a repeated prompt reuses its cached cells and evaluates only its last token, alone; that
    # need not pick the same greedy tokens as a first evaluation in one batch (HERD_BATCH_INVARIANT=true
    # is the deterministic mode). A first request puts the prompt in the cache, so both below reuse it.
    oai.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=1, **GREEDY)
    whole = oai.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=20, **GREEDY)
    chunks = list(
        oai.chat.completions.create(
            model=GEMMA,
            messages=CHAT,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert len(chunks) >= 4
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.system_fingerprint == "fp_herd" for c in chunks)
    # The role comes once, in the first chunk, with empty content.
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    # The finish reason has a chunk of its own with an empty delta, then the usage chunk closes.
    *body, finish, last = chunks
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert all(c.choices[0].finish_reason is None for c in body)
    assert last.choices == [] and last.usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in body) == whole.choices[0].message.content


def test_chat_stream_is_server_sent_events_ending_with_done(client: httpx.Client) -> None:
    body = {"model": "tiny-chat", "messages": CHAT, "max_tokens": 4, "stream": True, **GREEDY}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    parsed = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "usage" not in parsed[-1]  # no usage chunk unless asked for
    assert parsed[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_content_parts_developer_role_and_stop(oai: OpenAI) -> None:
    plain = oai.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello\nthere"}],
        max_tokens=6,
        **GREEDY,
    )
    parts = oai.chat.completions.create(
        model="tiny-chat",
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}],
            },
        ],
        max_tokens=6,
        **GREEDY,
    )
    # Text parts are joined by newlines and `developer` is a system turn: the same prompt, the same output.
    assert parts.usage == plain.usage
    assert parts.choices[0].message.content == plain.choices[0].message.content
    text = plain.choices[0].message.content or ""
    if len(text) >= 2:
        cut = oai.chat.completions.create(
            model="tiny-chat",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello\nthere"},
            ],
            max_tokens=6,
            stop=text[1],
            **GREEDY,
        )
        assert text[1] not in (cut.choices[0].message.content or "")
        assert cut.choices[0].finish_reason == "stop"


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
}
PROMPTS = [
    "Describe a person as JSON.",
    "Invent a character for a novel.",
    "Tell me about your best friend.",
    "Give me a JSON record of a famous scientist.",
    "Who is the oldest person you know?",
]


def test_response_format_json_schema_output_validates(oai: OpenAI) -> None:
    finished = 0
    for prompt in PROMPTS:
        done = oai.chat.completions.create(
            model=GEMMA,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=80,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
            **GREEDY,
        )
        if done.choices[0].finish_reason == "stop":
            finished += 1
            jsonschema.validate(json.loads(done.choices[0].message.content or ""), PERSON)
    assert finished >= 3


def test_response_format_json_object(oai: OpenAI) -> None:
    done = oai.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Name two fruits."}],
        max_tokens=60,
        response_format={"type": "json_object"},
        **GREEDY,
    )
    text = done.choices[0].message.content or ""
    prose = oai.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Name two fruits."}], max_tokens=20, **GREEDY
    )
    # Without the grammar this prompt gets prose; with it the output is an object (cut when it hits max_tokens).
    assert not (prose.choices[0].message.content or "").lstrip().startswith("{")
    assert text.lstrip().startswith("{"), text
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


# --- completions ------------------------------------------------------------------------------------


def test_completion_object_stream_and_list_of_one(oai: OpenAI) -> None:
    done = oai.completions.create(model="tiny-a", prompt="Once upon", max_tokens=5, **GREEDY)
    assert done.object == "text_completion" and done.id.startswith("cmpl-") and done.model == "tiny-a"
    choice = done.choices[0]
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 5
    assert (choice.finish_reason == "length") == (done.usage.completion_tokens == 5)
    listed = oai.completions.create(model="tiny-a", prompt=["Once upon"], max_tokens=5, **GREEDY)
    assert listed.choices[0].text == choice.text and listed.usage == done.usage
    chunks = list(
        oai.completions.create(
            model="tiny-a",
            prompt="Once upon",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert "".join(c.choices[0].text for c in chunks[:-1]) == choice.text


def test_completion_suffix_reaches_the_model(client: httpx.Client) -> None:
    # tiny-a's template has no .Suffix: the worker refuses the suffix, which proves it was passed through.
    body = {"model": "tiny-a", "prompt": "def f(", "suffix": "return x", "max_tokens": 3}
    error = openai_error(client.post("/v1/completions", json=body), 400)
    assert "does not support insert" in error["message"]


# --- embeddings -------------------------------------------------------------------------------------


def test_embeddings_float_base64_and_dimensions(oai: OpenAI, client: httpx.Client) -> None:
    floats = oai.embeddings.create(model=GEMMA, input=["hello world", "a"], encoding_format="float")
    assert floats.object == "list" and floats.model == GEMMA
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens > 2 and floats.usage.total_tokens == floats.usage.prompt_tokens
    vectors = [np.array(d.embedding) for d in floats.data]
    assert len(vectors[0]) > 100
    assert all(math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-4) for v in vectors)
    assert not np.allclose(vectors[0], vectors[1])

    raw = client.post(
        "/v1/embeddings", json={"model": GEMMA, "input": ["hello world", "a"], "encoding_format": "base64"}
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    for got, want in zip(decoded, vectors, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    # The client's default asks for base64 and decodes it itself.
    default = oai.embeddings.create(model=GEMMA, input="hello world")
    np.testing.assert_allclose(default.data[0].embedding, vectors[0], rtol=1e-6, atol=1e-7)

    short = oai.embeddings.create(model=GEMMA, input="hello world", dimensions=16, encoding_format="float")
    assert len(short.data[0].embedding) == 16
    assert math.isclose(float(np.linalg.norm(short.data[0].embedding)), 1.0, rel_tol=1e-4)


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": CHAT}, "model"),
        ("/v1/chat/completions", {"model": GEMMA}, "messages"),
        ("/v1/chat/completions", {"model": GEMMA, "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"model": GEMMA, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": GEMMA, "messages": CHAT, "temperature": 5}, "temperature"),
        ("/v1/chat/completions", {"model": GEMMA, "messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"model": GEMMA, "messages": CHAT, "top_p": 2}, "top_p"),
        (
            "/v1/chat/completions",
            {"model": GEMMA, "messages": [{"role": "robot", "content": "hi"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": GEMMA, "messages": [{"content": "hi"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": GEMMA, "messages": CHAT, "response_format": {"type": "xml"}},
            "response_format.type",
        ),
        (
            "/v1/chat/completions",
            {"model": "../../etc/passwd", "messages": CHAT},
            "model",
        ),
        ("/v1/completions", {"model": "tiny-a"}, "prompt"),
        ("/v1/completions", {"model": "tiny-a", "prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"model": "tiny-a", "prompt": [1, 2, 3]}, "prompt"),
        ("/v1/embeddings", {"model": GEMMA, "input": []}, "input"),
        ("/v1/embeddings", {"model": GEMMA, "input": ["ok", ""]}, "input[1]"),
        ("/v1/embeddings", {"model": GEMMA, "input": [[1, 2]]}, "input[0]"),
        ("/v1/embeddings", {"model": GEMMA, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_requests_are_400_naming_the_param(
    client: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    error = openai_error(client.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param != "model":
        assert param in error["message"]


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "n", 2),
        ("/v1/chat/completions", "logit_bias", {"42": 10}),
        ("/v1/chat/completions", "functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
        ("/v1/chat/completions", "modalities", ["text", "audio"]),
        ("/v1/completions", "echo", True),
        ("/v1/completions", "n", 3),
        ("/v1/completions", "best_of", 2),
    ],
)
def test_unsupported_fields_are_refused_by_name(
    client: httpx.Client, path: str, field: str, value: Any
) -> None:
    body: dict[str, Any] = {"model": "tiny-chat", field: value}
    body.update({"messages": CHAT} if "chat" in path else {"prompt": "hi"})
    error = openai_error(client.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_parameter"
    assert error["param"] == field and f"'{field}'" in error["message"]


def test_openai_client_raises_its_typed_errors(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=GEMMA, messages=CHAT, n=2)
    assert bad.value.param == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="nope", messages=CHAT)
    assert missing.value.code == "model_not_found"


def test_non_text_parts_are_refused(client: httpx.Client) -> None:
    # image_url parts are images (tests/e2e/test_vision.py); audio is not served.
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    parts = [{"type": "text", "text": "what is this?"}, audio]
    error = openai_error(
        client.post(
            "/v1/chat/completions",
            json={"model": "tiny-chat", "messages": [{"role": "user", "content": parts}]},
        ),
        400,
    )
    assert error["param"] == "messages[0].content[1].type" and "input_audio" in error["message"]


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models/nope:latest"]
)
def test_unknown_model_is_a_404_in_openai_shape(client: httpx.Client, path: str) -> None:
    body = {"model": "nope:latest", "messages": CHAT, "prompt": "hi", "input": "hi"}
    response = client.get(path) if "models" in path else client.post(path, json=body)
    error = openai_error(response, 404)
    assert error["type"] == "not_found_error" and error["param"] == "model"
    assert error["message"] == "The model 'nope:latest' does not exist"


def test_worker_errors_before_output_keep_their_status(client: httpx.Client) -> None:
    # A schema feature no grammar can enforce is refused by the worker: still a 400 in OpenAI's shape.
    schema = {"type": "object", "not": {"required": ["a"]}}
    for stream in (False, True):
        body = {
            "model": "tiny-chat",
            "messages": CHAT,
            "stream": stream,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        }
        error = openai_error(client.post("/v1/chat/completions", json=body), 400)
        assert "not" in error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_unknown_route_and_native_shape_unchanged(client: httpx.Client) -> None:
    bad = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert openai_error(bad, 400)["type"] == "invalid_request_error"
    assert openai_error(client.get("/v1/nothing-here"), 404)["code"] == "unknown_url"
    assert openai_error(client.get("/v1/chat/completions"), 405)["type"] == "invalid_request_error"
    # The native API keeps Ollama's shape for the same mistakes.
    native = client.post("/api/chat", json={"model": "nope:latest", "messages": CHAT})
    assert native.status_code == 404 and native.json() == {"error": "model 'nope:latest' not found"}
    assert client.get("/api/nothing-here").json() == {"error": "404 page not found"}


def test_full_queue_is_a_503_with_retry_after(client: httpx.Client, redis_client: redis.Redis) -> None:
    # Fill the backlog admission counts with a list no worker reads, so the next job cannot be admitted.
    fake = "herd:test-openai-full-queue"
    redis_client.rpush(fake, *(["x"] * 1024))
    redis_client.sadd(QUEUE_KEYS_SET, fake)
    try:
        for path, body in (
            ("/v1/chat/completions", {"model": "tiny-chat", "messages": CHAT}),
            ("/v1/embeddings", {"model": GEMMA, "input": "hi"}),
        ):
            response = client.post(path, json=body)
            error = openai_error(response, 503)
            assert error["type"] == "server_error" and "busy" in error["message"]
            assert int(response.headers["retry-after"]) >= 1
    finally:
        redis_client.srem(QUEUE_KEYS_SET, fake)
        redis_client.delete(fake)
