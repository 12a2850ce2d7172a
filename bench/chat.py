"""Chat follow-ups on a long shared history: the time to first token of each new turn.

A chat of about 2,000 tokens (a document and questions about it) grows by one question and its answer
per turn. A server that keeps the history's KV cells between requests (llama-server's prompt cache,
Ollama's runner) evaluates only the new turn; one that does not evaluates the whole history again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# Sentences varied enough that the history is ordinary text, not one repeated run of tokens.
_SUBJECTS = ("The harbour", "The old mill", "The village council", "The river", "The school", "The market")
_VERBS = ("was rebuilt", "was flooded", "was extended", "was sold", "was painted", "was closed")
_WHEN = ("in the spring of", "during the winter of", "late in", "early in", "before the end of")


def history_document(sentences: int = 105) -> str:
    """About 2,000 Gemma tokens of plain text: ~19 tokens a sentence."""
    lines = []
    for i in range(sentences):
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        verb = _VERBS[(i * 7) % len(_VERBS)]
        when = _WHEN[(i * 3) % len(_WHEN)]
        lines.append(f"{subject} {verb} {when} {1850 + i}, record {i + 1}.")
    return " ".join(lines)


QUESTIONS = (
    "What happened to the harbour first?",
    "Which year was the market closed?",
    "Summarise what happened to the river.",
    "What was the last record about?",
    "How many times was the school painted?",
    "Which building changed most often?",
)


def base_messages() -> list[dict[str, str]]:
    return [
        {"role": "user", "content": "Here is a town's history:\n\n" + history_document()},
        {"role": "assistant", "content": "I have read the town's history. Ask me about it."},
    ]


@dataclass(frozen=True)
class Turn:
    ttft_ms: float | None
    text: str
    error: str | None = None


ChatSender = Callable[[list[dict[str, str]], int], Turn]


def herd_chat(url: str, num_ctx: int) -> ChatSender:
    """/api/chat on Herd, streamed; greedy."""

    def send(messages: list[dict[str, str]], n_tokens: int) -> Turn:
        body = {
            "model": "gemma3:270m",
            "messages": messages,
            "stream": True,
            "options": {"temperature": 0, "num_predict": n_tokens, "repeat_penalty": 1.0, "num_ctx": num_ctx},
        }
        return _stream(url, body, lambda e: (e.get("message") or {}).get("content") or "", ndjson=True)

    return send


def openai_chat(url: str) -> ChatSender:
    """/v1/chat/completions on llama-server, streamed; greedy; its prompt cache on (cache_prompt)."""

    def send(messages: list[dict[str, str]], n_tokens: int) -> Turn:
        body = {
            "messages": messages,
            "stream": True,
            "max_tokens": n_tokens,
            "temperature": 0,
            "repeat_penalty": 1.0,
            "cache_prompt": True,
        }
        return _stream(
            url, body, lambda e: (e["choices"][0].get("delta") or {}).get("content") or "", ndjson=False
        )

    return send


def _stream(
    url: str, body: dict[str, object], text_of: Callable[[dict[str, Any]], str], *, ndjson: bool
) -> Turn:
    first: float | None = None
    parts: list[str] = []
    sent = time.perf_counter()
    try:
        with httpx.stream("POST", url, json=body, timeout=300.0) as response:
            if response.status_code != 200:
                return Turn(None, "", f"HTTP {response.status_code}: {response.read()[:200]!r}")
            for line in response.iter_lines():
                if not ndjson:
                    if not line.startswith("data:"):
                        continue
                    line = line[len("data:") :].strip()
                    if line == "[DONE]":
                        break
                if not line:
                    continue
                event = json.loads(line)
                if "error" in event:
                    return Turn(None, "".join(parts), str(event["error"]))
                piece = text_of(event)
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(piece)
    except httpx.HTTPError as exc:
        return Turn(None, "".join(parts), f"{type(exc).__name__}: {exc}")
    return Turn((first - sent) * 1000 if first is not None else None, "".join(parts))


def follow_ups(senders: dict[str, ChatSender], turns: int, n_tokens: int) -> dict[str, dict[str, object]]:
    """The first turn (cold: the whole history) then ``turns`` follow-ups, servers interleaved turn by turn."""
    chats = {name: base_messages() for name in senders}
    out: dict[str, dict[str, object]] = {
        name: {"cold_ms": None, "follow_up_ms": [], "errors": []} for name in senders
    }
    for turn in range(turns + 1):
        for name, send in senders.items():
            messages = [*chats[name], {"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]}]
            result = send(messages, n_tokens)
            record = out[name]
            if result.error is not None or result.ttft_ms is None:
                record["errors"].append(result.error or "no token")  # type: ignore[attr-defined]
            elif turn == 0:
                record["cold_ms"] = result.ttft_ms
            else:
                record["follow_up_ms"].append(result.ttft_ms)  # type: ignore[attr-defined]
            chats[name] = [*messages, {"role": "assistant", "content": result.text}]
    return out
