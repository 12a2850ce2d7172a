"""The official `ollama` Python client, unchanged, against Herd through nginx."""

from __future__ import annotations

import math

import ollama
import pytest

from tests.e2e.conftest import GEMMA

OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 8}


@pytest.fixture
def ollama_client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url)


def test_list_and_show(ollama_client: ollama.Client) -> None:
    names = [m.model for m in ollama_client.list().models]
    assert GEMMA in names
    shown = ollama_client.show(GEMMA)
    assert shown.details is not None and shown.details.family == "gemma3"
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.template and "<start_of_turn>" in shown.template


def test_generate_stream_and_not(ollama_client: ollama.Client) -> None:
    whole = ollama_client.generate(model=GEMMA, prompt="Say hello.", options=OPTIONS)
    assert whole.done and whole.eval_count == 8 and whole.response
    parts = list(ollama_client.generate(model=GEMMA, prompt="Say hello.", options=OPTIONS, stream=True))
    assert parts[-1].done and "".join(p.response for p in parts) == whole.response


def test_chat_stream_and_not(ollama_client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name a planet."}]
    whole = ollama_client.chat(model=GEMMA, messages=messages, options=OPTIONS)
    assert whole.message.role == "assistant" and whole.message.content
    parts = list(ollama_client.chat(model=GEMMA, messages=messages, options=OPTIONS, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done_reason in ("stop", "length")


def test_embed(ollama_client: ollama.Client) -> None:
    out = ollama_client.embed(model=GEMMA, input=["one", "two"])
    assert len(out.embeddings) == 2
    assert math.isclose(math.sqrt(sum(v * v for v in out.embeddings[0])), 1.0, rel_tol=1e-4)
    legacy = ollama_client.embeddings(model=GEMMA, prompt="one")
    assert len(legacy.embedding) == len(out.embeddings[0])


def test_ps_preload_and_unload(ollama_client: ollama.Client) -> None:
    ollama_client.generate(model=GEMMA, prompt="", keep_alive="5m")
    assert GEMMA in [m.model for m in ollama_client.ps().models]
    ollama_client.generate(model=GEMMA, prompt="", keep_alive=0)
    assert GEMMA not in [m.model for m in ollama_client.ps().models]


def test_errors_raise_response_error(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.generate(model="no-such-model", prompt="x")
    assert info.value.status_code == 404 and "not found" in info.value.error
