"""Prompt parity with Ollama against the running stack: what the worker evaluates for Ollama's templates,
Modelfile SYSTEM and MESSAGE turns, long chats and template errors.

A prompt is checked by its token count: a chat's `prompt_eval_count` must equal that of a raw generate of
the text Ollama would render (written out by hand below from Ollama's template), tokenized by the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.e2e.conftest import GEMMA, HANDMADE

GEMMA3_TEMPLATE = (
    (Path(__file__).parents[1] / "unit" / "data" / "ollama_templates" / "gemma3-instruct.gotmpl")
    .read_text()
    .rstrip("\n")
)
PARITY = "parity-gemma3"
PARITY_MESSAGES = "parity-messages"
ONE = {"temperature": 0, "seed": 1, "num_predict": 1}


def _create(client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post("/api/create", json={**body, "stream": False})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def parity_models(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=300) as client:
        _create(client, {"model": PARITY, "from": GEMMA, "template": GEMMA3_TEMPLATE})
        _create(
            client,
            {
                "model": PARITY_MESSAGES,
                "from": PARITY,
                "system": "Be terse.",
                "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            },
        )


def _raw_count(client: httpx.Client, model: str, text: str, **options: Any) -> int:
    response = client.post(
        "/api/generate",
        json={"model": model, "prompt": text, "raw": True, "stream": False, "options": {**ONE, **options}},
    )
    assert response.status_code == 200, response.text
    count: int = response.json()["prompt_eval_count"]
    return count


def _chat(client: httpx.Client, model: str, messages: list[dict[str, str]], **body: Any) -> httpx.Response:
    options = {**ONE, **body.pop("options", {})}
    return client.post(
        "/api/chat", json={"model": model, "messages": messages, "stream": False, "options": options, **body}
    )


def test_ollama_client_chat_keeps_the_system_prompt_under_gemma3s_template(
    parity_models: None, base_url: str, client: httpx.Client
) -> None:
    chat = ollama.Client(host=base_url).chat(
        model=PARITY,
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
        options=ONE,
    )
    # gemma3's template puts .System into the first user turn.
    expected = "<start_of_turn>user\nAnswer in French.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat.prompt_eval_count == _raw_count(client, PARITY, expected)
    without = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat.prompt_eval_count > _raw_count(client, PARITY, without)


def test_modelfile_system_and_message_turns_come_before_the_chat(
    parity_models: None, client: httpx.Client
) -> None:
    response = _chat(client, PARITY_MESSAGES, [{"role": "user", "content": "Bye"}])
    assert response.status_code == 200, response.text
    expected = (
        "<start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert response.json()["prompt_eval_count"] == _raw_count(client, PARITY_MESSAGES, expected)


def test_legacy_template_keeps_the_assistant_turns(client: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    response = _chat(client, HANDMADE, messages)
    assert response.status_code == 200, response.text
    # Once per user turn, with the Modelfile's SYSTEM in the first; the last turn cut after .Response.
    expected = (
        "<|system|>You are terse.<|end|><|user|>a<|end|><|assistant|>b<|end|><|user|>c<|end|><|assistant|>"
    )
    assert response.json()["prompt_eval_count"] == _raw_count(client, HANDMADE, expected)


def _long_chat(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a careful assistant."}]
    for i in range(turns - 1):
        messages.append(
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}? Explain it slowly."}
        )
        messages.append({"role": "assistant", "content": f"{i} plus {i} is {2 * i}, counted one by one."})
    messages.append({"role": "user", "content": "And what is two plus two?"})
    return messages


def test_a_chat_over_num_ctx_drops_its_oldest_turns(parity_models: None, client: httpx.Client) -> None:
    messages = _long_chat(30)
    num_ctx = 256
    whole = _chat(client, PARITY, messages, options={"num_ctx": 4096})
    assert whole.status_code == 200, whole.text
    assert whole.json()["prompt_eval_count"] > num_ctx  # the whole chat does not fit 256
    response = _chat(client, PARITY, messages, options={"num_ctx": num_ctx})
    assert response.status_code == 200, response.text
    assert 0 < response.json()["prompt_eval_count"] < num_ctx
    refused = _chat(client, PARITY, messages, options={"num_ctx": num_ctx}, truncate=False)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert f"{whole.json()['prompt_eval_count']} tokens" in error and f"num_ctx {num_ctx}" in error


def test_suffix_renders_prompt_and_suffix(client: httpx.Client) -> None:
    template = "{{ if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{ else }}{{ .Prompt }}{{ end }}"
    response = client.post(
        "/api/generate",
        json={
            "model": GEMMA,
            "prompt": "def add(",
            "suffix": "return x",
            "template": template,
            "stream": False,
            "options": ONE,
        },
    )
    assert response.status_code == 200, response.text
    expected = "<PRE> def add( <SUF>return x <MID>"
    assert response.json()["prompt_eval_count"] == _raw_count(client, GEMMA, expected)


def test_template_errors_are_400_naming_the_error(client: httpx.Client) -> None:
    bad = client.post(
        "/api/generate", json={"model": GEMMA, "prompt": "x", "template": "{{ .Prompt ", "stream": False}
    )
    assert bad.status_code == 400 and bad.json()["error"].startswith("template error: line 1, col")
    _create(client, {"model": "parity-broken", "from": GEMMA, "template": "{{ index .Messages 5 }}"})
    failing = _chat(client, "parity-broken", [{"role": "user", "content": "x"}])
    assert failing.status_code == 400, failing.text
    assert (
        failing.json()["error"].startswith("template error: line 1, col")
        and "index" in failing.json()["error"]
    )
