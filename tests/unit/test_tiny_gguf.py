"""The tiny GGUF writer produces models that real llama.cpp loads and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import pytest

from tests.support.tiny_gguf import (
    BOS_ID,
    CHATML_TEMPLATE,
    write_tiny_llama,
    write_tiny_models,
)

MAX_TOKENS = 32


def _load(path: Path, **kwargs: Any) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, **kwargs)


def _greedy(llm: llama_cpp.Llama, prompt: str = "Hello") -> dict[str, Any]:
    result = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0, seed=1)
    assert isinstance(result, dict)  # not a stream
    return dict(result["choices"][0]) | {"usage": dict(result["usage"])}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny.gguf")


def test_default_model_is_small(tiny: Path) -> None:
    assert tiny.stat().st_size < 500_000


def test_loads_with_the_requested_shape(tiny: Path) -> None:
    llm = _load(tiny)
    assert llm.n_embd() == 64
    assert llm.n_ctx() == 256
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["general.name"] == "tiny"
    assert llm.metadata["llama.block_count"] == "2"


@pytest.mark.parametrize("text", ["Hello world", "a  b\n\tc: {x}!", "naïve ☃"])
def test_tokenize_detokenize_round_trip(tiny: Path, text: str) -> None:
    llm = _load(tiny)
    tokens = llm.tokenize(text.encode())
    # BOS first (add_bos_token), then real content tokens.
    assert tokens[0] == BOS_ID
    assert len(tokens) > 1
    # Non-ASCII characters have no piece and must come back via byte fallback.
    assert llm.detokenize(tokens).decode() == text


def test_greedy_completion_is_full_length_and_deterministic(tiny: Path) -> None:
    llm = _load(tiny)
    first = _greedy(llm)
    second = _greedy(llm)
    # EOS can never win the argmax (its output row is zero), so the run is
    # cut by max_tokens, and every token is a printable single character.
    assert first["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == MAX_TOKENS
    assert len(first["text"]) == MAX_TOKENS
    assert first["text"].isprintable()
    assert second["text"] == first["text"]
    # A fresh load of the same file must agree too, not just a warm context.
    assert _greedy(_load(tiny))["text"] == first["text"]


def test_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7)
    b = write_tiny_llama(tmp_path / "b.gguf", seed=7)
    assert a.read_bytes() == b.read_bytes()


def test_different_seeds_give_different_models(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=0)
    b = write_tiny_llama(tmp_path / "b.gguf", seed=1)
    assert a.read_bytes() != b.read_bytes()
    assert _greedy(_load(a))["text"] != _greedy(_load(b))["text"]


def _metadata(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def test_chat_template_is_written_when_given(tmp_path: Path) -> None:
    with_template = write_tiny_llama(tmp_path / "chat.gguf", chat_template=CHATML_TEMPLATE)
    without = write_tiny_llama(tmp_path / "plain.gguf")
    assert _metadata(with_template)["tokenizer.chat_template"] == CHATML_TEMPLATE
    assert "tokenizer.chat_template" not in _metadata(without)


def test_chat_completion_uses_the_template(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "chat.gguf", chat_template=CHATML_TEMPLATE)
    llm = _load(path)
    result = llm.create_chat_completion(
        [{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, seed=1
    )
    assert isinstance(result, dict)
    # <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n with each marker
    # a single control token: 1+4+1+2+1+1+1+9+1. No BOS: llama-cpp-python's
    # Jinja formatter leaves BOS to the template, and ChatML has none.
    assert result["usage"]["prompt_tokens"] == 21
    assert result["usage"]["completion_tokens"] == 8
    assert result["choices"][0]["message"]["role"] == "assistant"


def test_write_tiny_models_gives_distinct_named_files(tmp_path: Path) -> None:
    paths = write_tiny_models(tmp_path / "models", 3)
    assert [p.name for p in paths] == ["tiny-0.gguf", "tiny-1.gguf", "tiny-2.gguf"]
    assert len({p.read_bytes() for p in paths}) == 3
    assert [_metadata(p)["general.name"] for p in paths] == ["tiny-0", "tiny-1", "tiny-2"]


def test_embedding_only_model_embeds(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "embed.gguf", embedding_only=True)
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(path).tensors}
    llm = _load(path, embedding=True)
    vectors = llm.embed(["Hello world", "something else"])
    # Mean pooling gives one n_embd vector per input, not one per token.
    assert [len(v) for v in vectors] == [64, 64]
    assert vectors[0] != vectors[1]


def test_text_round_trips_without_bos(tiny: Path) -> None:
    # No dummy space prefix: leading/trailing spaces survive, nothing is added.
    llm = _load(tiny)
    assert llm.detokenize(llm.tokenize(b" Hello  world ", add_bos=False)) == b" Hello  world "
