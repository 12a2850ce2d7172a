"""Images end to end through nginx: /api/create with a projector, /api/show's vision, images evaluated.

A tiny text model and a tiny random-weight projector GGUF (tests/support/tiny_projector.py) are uploaded
as blobs and created as one vision model, as `ollama create` sends a Modelfile with two FROM lines.
Every generation is a real llama.cpp decode with the image's embeddings from libmtmd in the KV cache.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_llama
from tests.support.tiny_projector import (
    TOKENS_PER_IMAGE,
    png,
    write_tiny_projector,
    write_tiny_qwen2vl_projector,
    write_tiny_qwen3vl_projector,
    write_tiny_qwen25vl_projector,
)

MODEL = "vision-tiny:latest"
QWEN = "vision-qwen2vl:latest"  # M-RoPE: its images take fewer positions than KV cells
QWEN25 = "vision-qwen25vl:latest"  # the same, with Qwen2.5-VL's window-attention projector
QWEN3 = "vision-qwen3vl:latest"  # interleaved M-RoPE, deepstack features in each image embedding
BLIND = "tiny-chat:latest"  # the session store's ChatML model, which has no projector
RED = base64.b64encode(png(40, 30, (255, 0, 0))).decode()
BLUE = base64.b64encode(png(24, 24, (0, 0, 255), stripe=(255, 255, 0))).decode()
OPTIONS = {"temperature": 0, "num_predict": 6, "seed": 1}


def _upload(client: httpx.Client, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response = client.post(f"/api/blobs/{digest}", content=data)
    assert response.status_code in (200, 201), response.text
    return digest


@pytest.fixture(scope="module")
def vision_model(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("vision")
    text = write_tiny_llama(root / "text.gguf", seed=7, chat_template=CHATML_TEMPLATE).read_bytes()
    projector = write_tiny_projector(root / "mmproj.gguf", text_n_embd=64).read_bytes()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        files = {"model.gguf": _upload(client, text), "mmproj.gguf": _upload(client, projector)}
        response = client.post("/api/create", json={"model": MODEL, "files": files, "stream": False})
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "success"}
        yield MODEL
        client.request("DELETE", "/api/delete", json={"model": MODEL})


@pytest.fixture(scope="module")
def qwen_model(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("qwen2vl")
    # A trained context above Ollama's 768 tokens an image, so a second turn keeps the first one's image.
    text = write_tiny_llama(
        root / "text.gguf", seed=8, chat_template=CHATML_TEMPLATE, architecture="qwen2vl", context_length=4096
    )
    projector = write_tiny_qwen2vl_projector(root / "mmproj.gguf", text_n_embd=64)
    yield from _created(base_url, QWEN, text, projector)


@pytest.fixture(scope="module")
def qwen25_model(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("qwen25vl")
    text = write_tiny_llama(root / "text.gguf", seed=9, chat_template=CHATML_TEMPLATE, architecture="qwen2vl")
    projector = write_tiny_qwen25vl_projector(root / "mmproj.gguf", text_n_embd=64)
    yield from _created(base_url, QWEN25, text, projector)


@pytest.fixture(scope="module")
def qwen3_model(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("qwen3vl")
    text = write_tiny_llama(root / "text.gguf", seed=9, chat_template=CHATML_TEMPLATE, architecture="qwen3vl")
    projector = write_tiny_qwen3vl_projector(root / "mmproj.gguf", text_n_embd=64)
    yield from _created(base_url, QWEN3, text, projector)


def _created(base_url: str, model: str, text: Path, projector: Path) -> Iterator[str]:
    """Upload a text model and its projector, create `model` of them, yield it, then delete it."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        files = {
            "model.gguf": _upload(client, text.read_bytes()),
            "mmproj.gguf": _upload(client, projector.read_bytes()),
        }
        response = client.post("/api/create", json={"model": model, "files": files, "stream": False})
        assert response.status_code == 200, response.text
        yield model
        client.request("DELETE", "/api/delete", json={"model": model})


def _chat(
    client: httpx.Client,
    model: str,
    images: list[str] | None,
    content: str = "what is it?",
    history: list[dict[str, Any]] | None = None,
) -> httpx.Response:
    message: dict[str, Any] = {"role": "user", "content": content}
    if images is not None:
        message["images"] = images
    body: dict[str, Any] = {"model": model, "messages": [*(history or []), message], "stream": False}
    if history is None:
        body["options"] = OPTIONS
    else:
        # Room for a chat with an image, and each token's log probability to compare turns by.
        body |= {"options": {**OPTIONS, "num_ctx": 2048}, "logprobs": True}
    return client.post("/api/chat", json=body)


def test_show_lists_vision_only_with_a_projector(client: httpx.Client, vision_model: str) -> None:
    shown = client.post("/api/show", json={"model": vision_model}).json()
    assert "vision" in shown["capabilities"]
    assert shown["projector_info"]["clip.projector_type"] == "mlp"
    assert shown["modelfile"].count("\nFROM ") == 2  # the model and its projector, as Ollama writes it
    assert "vision" not in client.post("/api/show", json={"model": BLIND}).json()["capabilities"]


def test_images_are_evaluated_and_steer_the_output(client: httpx.Client, vision_model: str) -> None:
    plain = _chat(client, vision_model, None).json()
    red = _chat(client, vision_model, [RED]).json()
    blue = _chat(client, vision_model, [BLUE]).json()
    red_again = _chat(client, vision_model, [RED]).json()
    # The image's embeddings are prompt tokens: "[img-0]" is replaced by TOKENS_PER_IMAGE positions.
    assert red["prompt_eval_count"] == plain["prompt_eval_count"] + TOKENS_PER_IMAGE
    assert red["message"]["content"] != blue["message"]["content"]
    assert red["message"]["content"] == red_again["message"]["content"]
    assert red["message"]["content"] != plain["message"]["content"]

    generated = client.post(
        "/api/generate",
        json={
            "model": vision_model,
            "prompt": "what is it?",
            "images": [BLUE],
            "stream": False,
            "options": OPTIONS,
        },
    ).json()
    assert generated["prompt_eval_count"] == blue["prompt_eval_count"]

    url = f"data:image/png;base64,{RED}"
    completion = client.post(
        "/v1/chat/completions",
        json={
            "model": vision_model,
            "temperature": 0,
            "seed": 1,
            "max_tokens": 6,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "what is it?"},
                    ],
                }
            ],
        },
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["prompt_tokens"] == red["prompt_eval_count"]


def test_image_errors(client: httpx.Client, vision_model: str) -> None:
    refused = _chat(client, BLIND, [RED])
    assert refused.status_code == 400
    assert refused.json() == {"error": f"{BLIND} does not support vision"}
    refused = client.post(
        "/api/generate", json={"model": BLIND, "prompt": "x", "images": [RED], "stream": False}
    )
    assert refused.status_code == 400 and "does not support vision" in refused.json()["error"]
    v1 = client.post(
        "/v1/chat/completions",
        json={
            "model": BLIND,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": f"data:image/png;base64,{RED}"}],
                }
            ],
        },
    )
    assert v1.status_code == 400 and "does not support vision" in v1.json()["error"]["message"]

    bad_base64 = _chat(client, vision_model, ["not base64!"])
    assert bad_base64.status_code == 400 and "invalid base64" in bad_base64.json()["error"]
    not_image = _chat(client, vision_model, [base64.b64encode(b"plain text, no picture").decode()])
    assert not_image.status_code == 400 and "is not an image" in not_image.json()["error"]
    web = client.post(
        "/v1/chat/completions",
        json={
            "model": vision_model,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
            ],
        },
    )
    assert (
        web.status_code == 400 and "image URLs are not currently supported" in web.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    ("fixture", "projector_type"),
    [
        ("qwen_model", "qwen2vl_merger"),
        ("qwen25_model", "qwen2.5vl_merger"),
        ("qwen3_model", "qwen3vl_merger"),
    ],
)
def test_mrope_images_are_evaluated_and_steer_the_output(
    client: httpx.Client, request: pytest.FixtureRequest, fixture: str, projector_type: str
) -> None:
    qwen_model: str = request.getfixturevalue(fixture)
    shown = client.post("/api/show", json={"model": qwen_model}).json()
    assert shown["projector_info"]["clip.projector_type"] == projector_type
    plain = _chat(client, qwen_model, None).json()
    red = _chat(client, qwen_model, [RED]).json()
    blue = _chat(client, qwen_model, [BLUE]).json()
    red_again = _chat(client, qwen_model, [RED]).json()
    # RED (40x30) becomes 4x3 embeddings, BLUE (24x24) 3x3; libmtmd puts each between <|vision_start|>
    # and <|vision_end|>, 30 one-character tokens of the tiny vocabulary. Every embedding counts.
    assert red["prompt_eval_count"] == plain["prompt_eval_count"] + 12 + 30
    assert blue["prompt_eval_count"] == plain["prompt_eval_count"] + 9 + 30
    assert red["message"]["content"] != blue["message"]["content"]
    assert red["message"]["content"] == red_again["message"]["content"]
    assert plain["message"]["content"] not in (red["message"]["content"], blue["message"]["content"])


def test_mrope_a_turn_after_an_image_reused_from_the_cache_matches_a_cold_one(
    client: httpx.Client, qwen_model: str
) -> None:
    first = _chat(client, qwen_model, [RED], history=[]).json()
    history = [
        {"role": "user", "content": "what is it?", "images": [RED]},
        {"role": "assistant", "content": first["message"]["content"]},
    ]
    # The worker's one slot still holds turn one, image and reply: turn two evaluates only its new
    # text, at the positions after the image's (fewer than its cells).
    warm = _chat(client, qwen_model, None, "and then?", history).json()
    # Another prompt takes the slot, so the same turn two is evaluated afresh, image and all.
    _chat(client, qwen_model, None, "something else entirely", [])
    cold = _chat(client, qwen_model, None, "and then?", history).json()
    assert warm["prompt_eval_count"] == cold["prompt_eval_count"] > first["prompt_eval_count"]
    assert warm["message"]["content"] == cold["message"]["content"]
    # Greedy tokens can agree at wrong positions; their log probabilities cannot (they moved by 0.06 to
    # 0.4 with the new text eight positions late; the KV cells' F16 rounding moves them by 2e-3).
    warm_logprobs = [entry["logprob"] for entry in warm["logprobs"]]
    assert warm_logprobs == pytest.approx([entry["logprob"] for entry in cold["logprobs"]], abs=1e-2)
