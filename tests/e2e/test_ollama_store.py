"""A store laid out exactly as Ollama writes it is served unchanged: listed, shown, and rendered."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import HANDMADE, HANDMADE_TEMPLATE


def test_listed_by_its_short_name(client: httpx.Client) -> None:
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert HANDMADE in names


def test_show_returns_the_layers(client: httpx.Client) -> None:
    show = client.post("/api/show", json={"model": HANDMADE}).json()
    assert show["template"] == HANDMADE_TEMPLATE
    assert show["system"] == "You are terse."
    assert '"<|end|>"' in show["parameters"] and "num_predict" in show["parameters"]
    assert show["details"]["family"] == "llama"
    # The fully qualified name reaches the same model.
    full = client.post("/api/show", json={"model": "registry.ollama.ai/someone/handmade:v1"}).json()
    assert full["template"] == HANDMADE_TEMPLATE


def test_generate_uses_the_template_system_and_params_layers(client: httpx.Client) -> None:
    out = client.post("/api/generate", json={"model": HANDMADE, "prompt": "hello", "stream": False}).json()
    # params layer: num_predict 12 and the stop; template + system layer: the exact rendered prompt.
    assert out["eval_count"] <= 12
    rendered = "<|system|>You are terse.<|end|><|user|>hello<|end|><|assistant|>"
    raw = client.post(
        "/api/generate", json={"model": HANDMADE, "prompt": rendered, "raw": True, "stream": False}
    ).json()
    assert raw["prompt_eval_count"] == out["prompt_eval_count"]
    assert raw["response"] == out["response"]


def test_chat_with_a_prompt_style_template_renders_each_turn(client: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    chat = client.post("/api/chat", json={"model": HANDMADE, "messages": messages, "stream": False}).json()
    rendered = (
        "<|system|>You are terse.<|end|><|user|>a<|end|><|assistant|>b<|end|><|user|>c<|end|><|assistant|>"
    )
    raw = client.post(
        "/api/generate", json={"model": HANDMADE, "prompt": rendered, "raw": True, "stream": False}
    ).json()
    assert chat["message"]["content"] == raw["response"]
    assert chat["prompt_eval_count"] == raw["prompt_eval_count"]
