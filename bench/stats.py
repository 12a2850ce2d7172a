"""What one concurrent load phase measured: per-stream records in, aggregate figures and target ratios out.

Pure functions only (no clocks, no I/O), so the definitions the report states are the ones tested.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamRecord:
    """One streamed request: when it was sent, when each token arrived, and how it ended.

    Times are seconds on one monotonic clock (time.perf_counter). ``tokens`` is the number of tokens
    the server says it generated (Herd's ``eval_count``) or, where it does not say, the number of
    token chunks received. ``complete`` is True when the stream ended normally (Herd's ``done`` line,
    an OpenAI ``finish_reason``); ``error`` names what went wrong otherwise.
    """

    sent: float
    arrivals: tuple[float, ...]
    tokens: int
    complete: bool
    error: str | None = None

    @property
    def failed(self) -> bool:
        """An error, a timeout, or a stream cut off before the server finished it."""
        return self.error is not None or not self.complete

    @property
    def ttft_s(self) -> float | None:
        """Seconds from sending the request to the first token, or None when no token came."""
        return self.arrivals[0] - self.sent if self.arrivals else None


@dataclass(frozen=True)
class PhaseStats:
    """One round of ``concurrency`` simultaneous streams."""

    concurrency: int
    requests: int
    failed: int
    tokens: int
    decode_tps: float
    total_tps: float
    ttft_ms: tuple[float, ...]
    wall_s: float


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def phase_stats(concurrency: int, records: Sequence[StreamRecord]) -> PhaseStats:
    """Aggregate one phase.

    decode_tps: tokens after each stream's first, summed over streams, divided by the time from the
    earliest first token to the latest last token (prompt evaluation before the first token is left
    out; a serialising server's queueing between streams is not). total_tps: every token over the
    whole phase, from the first request sent to the last token received.
    """
    if len(records) != concurrency:
        raise ValueError(f"phase of concurrency {concurrency} has {len(records)} records")
    firsts = [r.arrivals[0] for r in records if r.arrivals]
    lasts = [r.arrivals[-1] for r in records if r.arrivals]
    tokens = sum(r.tokens for r in records)
    # Every stream's first token starts its decode; only the tokens after it are decode output.
    decoded = sum(max(r.tokens - 1, 0) for r in records if r.arrivals)
    decode_window = max(lasts) - min(firsts) if firsts else 0.0
    start = min(r.sent for r in records)
    wall = (max(lasts) if lasts else start) - start
    return PhaseStats(
        concurrency=concurrency,
        requests=len(records),
        failed=sum(r.failed for r in records),
        tokens=tokens,
        decode_tps=decoded / decode_window if decode_window > 0 else 0.0,
        total_tps=tokens / wall if wall > 0 else 0.0,
        ttft_ms=tuple(t * 1000 for r in records if (t := r.ttft_s) is not None),
        wall_s=wall,
    )


@dataclass(frozen=True)
class LevelSummary:
    """Every round at one concurrency level: the median round's throughput, TTFT over all streams."""

    concurrency: int
    rounds: int
    requests: int
    failed: int
    tokens_per_request: float
    decode_tps: float
    total_tps: float
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_max_ms: float | None


def summarize(rounds: Sequence[PhaseStats]) -> LevelSummary:
    """Rounds of one level into one row: throughput is the median round's, TTFT pools every stream."""
    if not rounds:
        raise ValueError("no rounds to summarize")
    levels = {r.concurrency for r in rounds}
    if len(levels) != 1:
        raise ValueError(f"rounds of different concurrency levels {sorted(levels)} summarized together")
    ttfts = [t for r in rounds for t in r.ttft_ms]
    requests = sum(r.requests for r in rounds)
    return LevelSummary(
        concurrency=rounds[0].concurrency,
        rounds=len(rounds),
        requests=requests,
        failed=sum(r.failed for r in rounds),
        tokens_per_request=sum(r.tokens for r in rounds) / requests,
        decode_tps=statistics.median(r.decode_tps for r in rounds),
        total_tps=statistics.median(r.total_tps for r in rounds),
        ttft_p50_ms=percentile(ttfts, 50) if ttfts else None,
        ttft_p90_ms=percentile(ttfts, 90) if ttfts else None,
        ttft_max_ms=max(ttfts) if ttfts else None,
    )


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is zero (nothing was measured)."""
    return numerator / denominator if denominator > 0 else None


def by_level(summaries: Sequence[LevelSummary]) -> dict[int, LevelSummary]:
    """Summaries keyed by their concurrency; a level given twice is an error."""
    out: dict[int, LevelSummary] = {}
    for s in summaries:
        if s.concurrency in out:
            raise ValueError(f"concurrency level {s.concurrency} summarized twice")
        out[s.concurrency] = s
    return out
