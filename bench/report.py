"""The benchmark's figures as data (benchmarks.json) and as the page that states them (benchmarks.md).

``build_*`` turn measurements into plain JSON-able data with every ratio and verdict computed once;
``render_markdown`` only formats that data, so the page and the JSON can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from bench.stats import LevelSummary, PhaseStats, by_level, ratio, summarize
from bench.steps import CONTEXT_TOKENS

# The targets.
SCALING_TARGET = 1.8  # Herd at 8 streams / Herd at 1 stream
VS_LLAMA_SERVER_TARGET = 2.5  # Herd at 8 streams / llama-cpp-python's server at 8 streams
SINGLE_TPS_TARGET = 0.95  # (c) full stack / (b) engine, single stream
SINGLE_TTFT_TARGET_MS = 15.0  # (c) − (b) time to first token


def verdict(ok: bool | None) -> str:
    """The word a target line ends with."""
    return "not measured" if ok is None else ("met" if ok else "NOT met")


def phase_json(stats: PhaseStats) -> dict[str, Any]:
    """One measured round, raw."""
    return {
        "concurrency": stats.concurrency,
        "failed": stats.failed,
        "tokens": stats.tokens,
        "decode_tps": stats.decode_tps,
        "total_tps": stats.total_tps,
        "ttft_ms": list(stats.ttft_ms),
        "wall_s": stats.wall_s,
    }


def build_server(name: str, rounds: Mapping[int, Sequence[PhaseStats]]) -> dict[str, Any]:
    """One server's summary per level and its raw rounds."""
    return {
        "name": name,
        "levels": [asdict(summarize(rounds[c])) for c in sorted(rounds)],
        "rounds": {str(c): [phase_json(s) for s in rounds[c]] for c in sorted(rounds)},
    }


def concurrency_targets(herd: Sequence[LevelSummary], llama_server: Sequence[LevelSummary]) -> dict[str, Any]:
    """Herd's 8-stream throughput against its own 1-stream figure and against llama-cpp-python's server."""
    h = by_level(herd)
    ls = by_level(llama_server)
    scaling = ratio(h[8].decode_tps, h[1].decode_tps)
    vs_server = ratio(h[8].decode_tps, ls[8].decode_tps)
    return {
        "herd_8_vs_1": scaling,
        "herd_8_vs_1_target": SCALING_TARGET,
        "herd_8_vs_1_met": None if scaling is None else scaling >= SCALING_TARGET,
        "herd_vs_llama_server_at_8": vs_server,
        "herd_vs_llama_server_at_8_target": VS_LLAMA_SERVER_TARGET,
        "herd_vs_llama_server_at_8_met": None if vs_server is None else vs_server >= VS_LLAMA_SERVER_TARGET,
        "herd_failed": sum(s.failed for s in herd),
        "herd_requests": sum(s.requests for s in herd),
        "llama_server_failed_at_8": ls[8].failed,
        "llama_server_requests_at_8": ls[8].requests,
        "llama_server_failed": sum(s.failed for s in llama_server),
        "llama_server_requests": sum(s.requests for s in llama_server),
    }


def memory_figures(
    kv_bytes_per_token: int, num_ctx: int, parallel_1: Mapping[str, int], parallel_8: Mapping[str, int]
) -> dict[str, Any]:
    """Worker RSS growth from NUM_PARALLEL=1 to 8 against the KV cache the 7 extra sequences add."""
    extra_seqs = parallel_8["num_parallel"] - parallel_1["num_parallel"]
    extra_kv = kv_bytes_per_token * num_ctx * extra_seqs
    growth_loaded = parallel_8["rss_loaded"] - parallel_1["rss_loaded"]
    growth_after = parallel_8["rss_after"] - parallel_1["rss_after"]
    return {
        "kv_bytes_per_token": kv_bytes_per_token,
        "num_ctx": num_ctx,
        "extra_sequences": extra_seqs,
        "extra_kv_bytes": extra_kv,
        "parallel_1": dict(parallel_1),
        "parallel_8": dict(parallel_8),
        "rss_growth_loaded": growth_loaded,
        "rss_growth_after": growth_after,
        "ps_size_growth": parallel_8["ps_size"] - parallel_1["ps_size"],
        "met": max(growth_loaded, growth_after) <= extra_kv,
    }


def step_figures(step_ms: Mapping[int, float], streams: int) -> dict[str, Any]:
    """The decode-step costs, with the best ratio of `streams` streams to one that they allow.

    Herd decodes `streams` sequences in the groups the engine forms (HERD_BATCH_INVARIANT keeps each
    below llama.cpp's kernel switch), so its ceiling is `streams` × t(1) over the sum of its groups' steps.
    """
    from workers.engine import MAX_DECODE_ROWS, decode_groups

    one = step_ms[1]
    groups = [len(g) for g in decode_groups(list(range(streams)), MAX_DECODE_ROWS)]  # type: ignore[arg-type]
    grouped = sum(step_ms[g] for g in groups) if all(g in step_ms for g in groups) else None
    return {
        "rows": [
            {"rows": rows, "step_ms": ms, "tokens_per_s": rows * 1000 / ms, "speedup": rows * one / ms}
            for rows, ms in sorted(step_ms.items())
        ],
        "streams": streams,
        "max_rows": MAX_DECODE_ROWS,
        "groups": groups,
        "ceiling_grouped": streams * one / grouped if grouped else None,
        "ceiling_one_batch": streams * one / step_ms[streams] if streams in step_ms else None,
    }


def _steps_section(data: Mapping[str, Any]) -> str:
    st = data.get("steps")
    if not st:
        return ""
    rows = "\n".join(
        f"| {r['rows']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f} |"
        for r in st["rows"]
    )
    groups = " + ".join(str(g) for g in st["groups"])
    return f"""## What one decode step costs

The ceiling under the concurrency figures. One `llama_decode` of 1 to 8 rows in the worker's own context
(each row a distinct sequence {CONTEXT_TOKENS} tokens into its text, every row with logits, weights not repacked), the
median of 15 interleaved runs:

| rows | step (ms) | tokens/s | speed-up over 1 row |
|---|---|---|---|
{rows}

By default Herd decodes {st["streams"]} streams as {groups} rows (HERD_BATCH_INVARIANT), so on this machine
no scheduling can take {st["streams"]} streams beyond **{_x(st["ceiling_grouped"])}** × one stream; one batch of
{st["streams"]} rows (`HERD_BATCH_INVARIANT=false`) allows **{_x(st["ceiling_one_batch"])}** ×. On this CPU a step's
cost grows almost with its rows: Gemma's output layer (262,144 tokens × 640, Q8_0, 62% of the model's
parameters) is bound by arithmetic, not by reading the weights, so a second row costs about what the first
did until llama.cpp's kernels for wider batches take over. Batching pays most where reading the weights
bounds a step: on a GPU, or with larger models.
"""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _single_section(data: Mapping[str, Any]) -> str:
    results = data["results"]
    base = results[0]["decode_tps"]
    rows = "\n".join(
        f"| {r['name']} | {r['decode_tps']:.1f} | {r['decode_tps'] / base:.2f} | {r['ttft_ms']:.1f} |"
        for r in results
    )
    t = data["targets"]
    ok_tps = t["stack_vs_engine_tps_ratio"] >= t["stack_vs_engine_tps_target"]
    ok_ttft = t["stack_minus_engine_ttft_ms"] <= t["stack_minus_engine_ttft_target_ms"]
    return f"""## One stream

Each figure is the median of {len(results[0]["runs"])} runs after a warm-up.

| path | decode tokens/s | ratio to (a) | time to first token (ms) |
|---|---|---|---|
{rows}

Targets:
- (c) decode tokens/s ≥ {t["stack_vs_engine_tps_target"]} × (b): **{t["stack_vs_engine_tps_ratio"]:.3f}** × — {verdict(ok_tps)}.
- (c) time to first token within {t["stack_minus_engine_ttft_target_ms"]:.0f} ms of (b): **{t["stack_minus_engine_ttft_ms"]:+.1f} ms** — {verdict(ok_ttft)}.

Time to first token includes prompt evaluation ({data["prompt_chars"]} characters of prompt); for (c) it also
includes the HTTP request through nginx, admission into Redis, the worker taking the job, and the relay
of the first NDJSON line. (a)'s time to first token is low because `Llama` keeps the previous run's KV
cache and, for the identical prompt, evaluates only its last token; Herd's engine evaluates the whole
prompt on every request.
"""


def _targets_lines(t: Mapping[str, Any], who: str) -> str:
    return f"""- {who} at 8 streams ≥ {t["herd_8_vs_1_target"]} × {who} at 1 stream: **{_x(t["herd_8_vs_1"])}** × — {verdict(t["herd_8_vs_1_met"])}.
- {who} at 8 streams ≥ {t["herd_vs_llama_server_at_8_target"]} × llama-cpp-python's server at 8 streams: **{_x(t["herd_vs_llama_server_at_8"])}** × — {verdict(t["herd_vs_llama_server_at_8_met"])}."""


def _throughput_section(data: Mapping[str, Any]) -> str:
    c = data["concurrency"]
    if "herd_throughput" not in c:
        return ""
    levels = {s["concurrency"]: s for s in c["herd_throughput"]["levels"]}
    rows = "\n".join(
        f"| {level} | {h['decode_tps']:.1f} | {_x(ratio(h['decode_tps'], levels[1]['decode_tps']))} | "
        f"{_ms(h['ttft_p50_ms'])} / {_ms(h['ttft_p90_ms'])} | {h['tokens_per_request']:.0f} | "
        f"{h['failed']} of {h['requests']} |"
        for level, h in sorted(levels.items())
    )
    return f"""
### Herd with `HERD_BATCH_INVARIANT=false`

The same rounds, interleaved with the two above, against a third stack whose worker trades batch
invariance for speed: weights repacked for the CPU's matrix kernels and all generating sequences in one
batch (by default they go in groups of at most {data["steps"]["max_rows"]} rows, so that a greedy answer never
depends on what else runs).

| streams | tokens/s | ratio to 1 stream | TTFT p50 / p90 (ms) | tokens/request | failed requests |
|---|---|---|---|---|---|
{rows}

{_targets_lines(c["targets_throughput"], "This Herd")}
"""


def _concurrency_section(data: Mapping[str, Any], plot_name: str | None) -> str:
    c = data["concurrency"]
    herd = {s["concurrency"]: s for s in c["herd"]["levels"]}
    ls = {s["concurrency"]: s for s in c["llama_server"]["levels"]}
    t = c["targets"]
    rows = []
    for level in c["levels"]:
        h, s = herd[level], ls[level]
        rows.append(
            f"| {level} | {h['decode_tps']:.1f} | {_x(ratio(h['decode_tps'], herd[1]['decode_tps']))} | "
            f"{_ms(h['ttft_p50_ms'])} / {_ms(h['ttft_p90_ms'])} | {h['tokens_per_request']:.0f} | "
            f"{s['decode_tps']:.1f} | {_ms(s['ttft_p50_ms'])} / {_ms(s['ttft_p90_ms'])} | "
            f"{s['tokens_per_request']:.0f} | {s['failed']} of {s['requests']} |"
        )
    table = "\n".join(rows)
    plot = (
        f"\n![Aggregate decode tokens/s and time to first token against concurrency]({plot_name})\n"
        if plot_name
        else ""
    )
    return f"""## Concurrent streams

{c["rounds"]} rounds of 1, 2, 4 and 8 simultaneous streaming requests on one model, each stream with its own
prompt (raw story openings that Gemma continues past the limit), greedy, `num_predict`/`max_tokens`
{data["tokens"]}, `num_ctx` {data["num_ctx"]}, {data["machine"]["threads"]} threads, against:

- **Herd**: the full stack through nginx (`/api/generate`, NDJSON) with `OLLAMA_NUM_PARALLEL={c["num_parallel"]}`;
- **llama-cpp-python's server**: `python -m llama_cpp.server` on the same GGUF, threads and context
  size, its settings left at their defaults, through its OpenAI `/v1/completions` (SSE).

Both servers run side by side and every round measures Herd, then the other server, at every level,
so outside load on the machine falls on both alike.

Definitions:
- **aggregate decode tokens/s**: the tokens each stream generated after its first one, summed over the
  streams, divided by the time from the earliest first token to the latest last token of the round
  (prompt evaluation before the first token is left out; a server's queueing between streams is not).
  The table gives the median round's figure.
- **time to first token (TTFT)**: from sending a request to its first token, p50 / p90 over every stream
  of every round at that level.
- **tokens/request**: tokens actually generated per request (Herd's `eval_count`; token chunks received
  from the other server), averaged over every stream at that level.
- **failed**: a request that got an error or a timeout, or whose stream ended without finishing
  (no `done` line; no `finish_reason`). llama-cpp-python's server serialises requests, and with its
  default `interrupt_requests=True` a request that arrives while another streams cuts that stream short.
{plot}
| streams | Herd tokens/s | Herd ratio to 1 stream | Herd TTFT p50 / p90 (ms) | Herd tokens/request | llama-cpp-python server tokens/s | its TTFT p50 / p90 (ms) | its tokens/request | its failed requests |
|---|---|---|---|---|---|---|---|---|
{table}

Targets:
{_targets_lines(t, "Herd")}
  Its failed requests at 8 streams: **{t["llama_server_failed_at_8"]} of {t["llama_server_requests_at_8"]}**
  ({t["llama_server_failed"]} of {t["llama_server_requests"]} at all levels; Herd: {t["herd_failed"]} of {t["herd_requests"]}).
{_throughput_section(data)}"""


def _memory_section(data: Mapping[str, Any]) -> str:
    m = data["memory"]
    p1, p8 = m["parallel_1"], m["parallel_8"]
    return f"""## Worker memory, NUM_PARALLEL 1 → {p8["num_parallel"]}

The worker's resident set (`VmRSS` in `/proc/<pid>/status`) with the model loaded (after the warm-up
request) and after the measured requests, in the single-stream stack (`NUM_PARALLEL={p1["num_parallel"]}`) and the
concurrency stack (`NUM_PARALLEL={p8["num_parallel"]}`), both at `num_ctx` {m["num_ctx"]}. The extra KV cache is the worker's
own per-token figure ({m["kv_bytes_per_token"]} bytes, f16 K and V over all layers) × `num_ctx` × {m["extra_sequences"]}
extra sequences. Gemma 3's sliding-window layers do not shrink it: llama.cpp's default (`swa_full`) gives
them a full-size cache too. RSS also counts whatever else llama.cpp sizes by the total context.

| | NUM_PARALLEL={p1["num_parallel"]} | NUM_PARALLEL={p8["num_parallel"]} | growth |
|---|---|---|---|
| RSS, model loaded | {_mib(p1["rss_loaded"])} | {_mib(p8["rss_loaded"])} | {_mib(m["rss_growth_loaded"])} |
| RSS, after the requests | {_mib(p1["rss_after"])} | {_mib(p8["rss_after"])} | {_mib(m["rss_growth_after"])} |
| `/api/ps` size (weights + KV) | {_mib(p1["ps_size"])} | {_mib(p8["ps_size"])} | {_mib(m["ps_size_growth"])} |

Target: RSS growth ≤ the extra KV cache ({_mib(m["extra_kv_bytes"])}): **{_mib(max(m["rss_growth_loaded"], m["rss_growth_after"]))}** — {verdict(m["met"])}.
"""


def render_markdown(data: Mapping[str, Any], plot_name: str | None) -> str:
    """benchmarks.md from the data benchmarks.json holds."""
    machine = data["machine"]
    load = machine["loadavg_before"], machine["loadavg_after"]
    threads_note = (
        f"\nFewer threads than cores: llama.cpp's threads wait for each other at every step, so on a shared\n"
        f"machine, load on any one core stalls them all (with {machine['cpus']} threads here, decode fell to a few\n"
        f"tokens/s at times); fewer threads are slower but steady, and every path uses the same count.\n"
        if machine["threads"] < machine["cpus"]
        else ""
    )
    return f"""# Benchmarks

Measured by `make bench` (`{data["command"]}`) in one run on {data["date"]}: the bundled {data["model"]},
greedy sampling, {data["tokens"]} generated tokens per request, {machine["threads"]} thread(s), on this machine's CPU ({machine["cpus"]} cores).
The machine is shared and was busy (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end):
compare the ratios, each taken within this one run, more than the absolute figures. Raw runs are in
`benchmarks.json`.
{threads_note}
{_single_section(data)}
{_concurrency_section(data, plot_name)}
{_steps_section(data)}
{_memory_section(data)}"""
