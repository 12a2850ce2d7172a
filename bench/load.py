"""Concurrent streaming load: c simultaneous requests against Herd's /api/generate or an OpenAI /v1/completions.

Each request records when it was sent and when every token arrived; an error or a timeout is recorded
on its stream, never raised, so a server that drops requests is measured rather than aborting the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx

from bench.stats import PhaseStats, StreamRecord, phase_stats

# Story openings in raw mode: Gemma 3 270M continues each for well over 128 tokens under greedy
# decoding, so the streams run to num_predict instead of stopping early at an end-of-turn token.
PROMPTS = (
    "Here is a long story about a lighthouse keeper and the storm that changed his life.\n\n",
    "Chapter one. The old train station had been closed for thirty years when Maria found the key.\n\n",
    "The following is a detailed history of the small mountain village of Alderbrook, from its founding.\n\n",
    "Once upon a time, in a kingdom beside the sea, there lived a baker who could not sleep.\n\n",
    "This is the diary of a young engineer sent to build a bridge across a wide and dangerous river.\n\n",
    "A long letter from a grandmother to her grandson, telling him everything about the family farm.\n\n",
    "The expedition left the harbour at dawn. This is the account of what the sailors saw on the voyage.\n\n",
    "In the year the comet appeared, the people of the valley began to tell a strange and long tale.\n\n",
    "The museum's new guide describes every room of the old palace, one by one, in great detail.\n\n",
    "Notes from a long walk along the coast path, written each evening in a small notebook.\n\n",
    "The story of the two brothers who built the first clock tower in their town, and why it stopped.\n\n",
    "A ship's cook remembers the long voyages of his youth and the people he sailed with.\n\n",
    "Here is the complete account of how the forest village prepared for the longest winter.\n\n",
    "The inventor's journal begins on the morning she decided to build a flying machine.\n\n",
    "An old fisherman tells the children of the harbour about the great whale he once saw.\n\n",
    "This chronicle follows a travelling theatre company through one long summer of performances.\n\n",
)

Streamer = Callable[[httpx.AsyncClient, str], Awaitable[StreamRecord]]


def herd_streamer(url: str, n_tokens: int, num_ctx: int) -> Streamer:
    """Streams one /api/generate request (NDJSON) at Herd: greedy, raw prompt, n_tokens at most."""

    async def run(client: httpx.AsyncClient, prompt: str) -> StreamRecord:
        body = {
            "model": "gemma3:270m",
            "prompt": prompt,
            "raw": True,
            "options": {"temperature": 0, "num_predict": n_tokens, "repeat_penalty": 1.0, "num_ctx": num_ctx},
        }
        arrivals: list[float] = []
        tokens: int | None = None
        sent = time.perf_counter()
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    return StreamRecord(sent, (), 0, False, f"HTTP {response.status_code}: {text[:200]}")
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        return StreamRecord(sent, tuple(arrivals), len(arrivals), False, str(event["error"]))
                    if event.get("done"):
                        tokens = int(event.get("eval_count", len(arrivals)))
                        break
                    arrivals.append(time.perf_counter())
        except httpx.HTTPError as exc:
            return StreamRecord(sent, tuple(arrivals), len(arrivals), False, f"{type(exc).__name__}: {exc}")
        complete = tokens is not None
        return StreamRecord(sent, tuple(arrivals), tokens if tokens is not None else len(arrivals), complete)

    return run


def openai_streamer(url: str, n_tokens: int) -> Streamer:
    """Streams one /v1/completions request (SSE): greedy, n_tokens at most; one chunk per token."""

    async def run(client: httpx.AsyncClient, prompt: str) -> StreamRecord:
        body = {
            "prompt": prompt,
            "max_tokens": n_tokens,
            "temperature": 0,
            "repeat_penalty": 1.0,
            "stream": True,
        }
        arrivals: list[float] = []
        finish: str | None = None
        sent = time.perf_counter()
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    return StreamRecord(sent, (), 0, False, f"HTTP {response.status_code}: {text[:200]}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        break
                    choice = json.loads(payload)["choices"][0]
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if choice.get("text"):
                        arrivals.append(time.perf_counter())
        except httpx.HTTPError as exc:
            return StreamRecord(sent, tuple(arrivals), len(arrivals), False, f"{type(exc).__name__}: {exc}")
        # llama-cpp-python's server ends an interrupted stream with [DONE] and no finish_reason.
        error = None if finish else "stream ended without a finish_reason (interrupted)"
        return StreamRecord(sent, tuple(arrivals), len(arrivals), finish is not None, error)

    return run


async def _phase(streamer: Streamer, prompts: Sequence[str], timeout: float) -> list[StreamRecord]:
    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        return list(await asyncio.gather(*(streamer(client, p) for p in prompts)))


def run_phase(streamer: Streamer, concurrency: int, timeout: float = 300.0) -> PhaseStats:
    """``concurrency`` simultaneous streams, each with its own prompt, measured together."""
    if not 1 <= concurrency <= len(PROMPTS):
        raise ValueError(f"concurrency {concurrency} is outside 1..{len(PROMPTS)}")
    records = asyncio.run(_phase(streamer, PROMPTS[:concurrency], timeout))
    return phase_stats(concurrency, records)
