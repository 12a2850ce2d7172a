"""The Herd-against-llama.cpp figures as data (every ratio and verdict computed once) and as a page.

``summarize_run`` turns measurements into JSON-able data; ``render_markdown`` only formats that data,
so docs/benchmarks.md and docs/benchmarks.json never disagree.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from bench.stats import PhaseStats, ratio, summarize

# The targets (issue 19), all as ratios or differences within one run.
TPS_RATIO_TARGET = 1.0  # Herd / llama-server aggregate decode tok/s, 1..8 streams (above it at 16)
TTFT_1_SLACK_MS = 10.0  # Herd's TTFT p50 at 1 stream ≤ llama-server's + this
FOLLOW_UP_SLACK_MS = 20.0  # Herd's follow-up TTFT ≤ llama-server's + this
# Measured once by hand (not by each run): why a peer's 1-row step is a little faster than Herd's.
LINKING_NOTE = (
    "Linking: the peers are static binaries, while Herd runs llama-cpp-python's shared libraries "
    "(position-independent code). llama-batched-bench built both ways from the same source on this "
    "machine (2026-12-07, 2 threads, interleaved): with 3 rounds of 64 steps a 1-row step was 4% slower "
    "shared (12.06 against 11.56 ms) and 8 rows took the same time; with 5 rounds of 200 steps the "
    "medians were 85.8 tok/s shared against 80.6 static at 1 row and 197.6 against 190.8 at 8, rounds "
    "spreading ±8%. Shared builds with -fno-semantic-interposition and -Wl,-Bsymbolic (86.0 and 188.9) "
    "or with GGML_LTO (80.0 and 184.7) were no faster. So the linking is not a measurable part of the "
    "gap, and Herd keeps llama-cpp-python's default build."
)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_run(
    herd_rounds: Mapping[int, Sequence[PhaseStats]],
    ls_rounds: Mapping[int, Sequence[PhaseStats]],
    *,
    chat: Mapping[str, Mapping[str, Any]],
    memory: Mapping[str, Mapping[str, int]],
    herd_steps: Mapping[int, float],
    native_steps: Mapping[int, Mapping[str, float]],
    cpu: Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]] | None = None,
    engine_alone: tuple[Mapping[int, Sequence[PhaseStats]], Mapping[int, Sequence[PhaseStats]]] | None = None,
    ttft: tuple[Sequence[float], Sequence[float]] | None = None,
    control: Mapping[int, Sequence[PhaseStats]] | None = None,
) -> dict[str, Any]:
    """Every figure of the run with its ratio to llama-server and each target's verdict.

    ``ttft``: Herd's and llama-server's TTFTs (ms) of the dedicated single-stream requests; the TTFT
    target is judged on them when given, else on the 1-stream phases' (a few samples only).
    ``control``: the rounds of a second, identical llama-server run beside the two: its ratio to the first
    is the spread a ratio shows on this machine when nothing differs (the A/A control).
    """
    levels: list[dict[str, Any]] = []
    for c in sorted(herd_rounds):
        h, ls = summarize(herd_rounds[c]), summarize(ls_rounds[c])
        r = paired_ratio(herd_rounds[c], ls_rounds[c])
        target_ok = None if r is None else (r > TPS_RATIO_TARGET if c > 8 else r >= TPS_RATIO_TARGET)
        levels.append(
            {
                "concurrency": c,
                "herd": asdict(h),
                "llama_server": asdict(ls),
                "ratio": r,
                "ratio_of_medians": ratio(h.decode_tps, ls.decode_tps),
                "met": target_ok,
            }
        )
    one = next((lv for lv in levels if lv["concurrency"] == 1), None)
    ttft_1 = None
    if ttft is not None and ttft[0] and ttft[1]:
        h_t, l_t = statistics.median(ttft[0]), statistics.median(ttft[1])
        ttft_1 = {
            "herd_p50_ms": h_t,
            "llama_server_p50_ms": l_t,
            "samples": min(len(ttft[0]), len(ttft[1])),
            "difference_ms": h_t - l_t,
            "met": h_t - l_t <= TTFT_1_SLACK_MS,
        }
    elif one and one["herd"]["ttft_p50_ms"] is not None and one["llama_server"]["ttft_p50_ms"] is not None:
        diff = one["herd"]["ttft_p50_ms"] - one["llama_server"]["ttft_p50_ms"]
        ttft_1 = {"difference_ms": diff, "met": diff <= TTFT_1_SLACK_MS}

    chat_out: dict[str, Any] = {}
    for name, rec in chat.items():
        chat_out[name] = {**rec, "follow_up_p50_ms": _median(rec.get("follow_up_ms") or [])}
    h_f = chat_out.get("herd", {}).get("follow_up_p50_ms")
    l_f = chat_out.get("llama-server", {}).get("follow_up_p50_ms")
    follow = None
    if h_f is not None and l_f is not None:
        follow = {
            "difference_ms": h_f - l_f,
            "ratio": ratio(h_f, l_f),
            "met": h_f - l_f <= FOLLOW_UP_SLACK_MS,
        }

    growth = {name: m["np8"] - m["np1"] for name, m in memory.items()}
    mem = {
        "servers": {name: {**m, "growth": growth[name]} for name, m in memory.items()},
        "met": growth["herd"] <= growth["llama_server"],
    }

    steps = []
    for rows in sorted(set(herd_steps) | set(native_steps)):
        h_ms = herd_steps.get(rows)
        n = native_steps.get(rows)
        steps.append(
            {
                "rows": rows,
                "herd_step_ms": h_ms,
                "herd_tps": rows * 1000 / h_ms if h_ms else None,
                "native_step_ms": n["step_ms"] if n else None,
                "native_tps": n["decode_tps"] if n else None,
                "ratio": ratio(n["step_ms"], h_ms) if n and h_ms else None,  # >1: Herd's step is faster
            }
        )
    cpu_out: list[dict[str, Any]] = []
    for c in sorted(herd_rounds):
        row: dict[str, Any] = {"concurrency": c}
        for server, rounds in (("herd", herd_rounds), ("llama_server", ls_rounds)):
            phases = (cpu or {}).get(server, {}).get(c, [])
            tokens = sum(s.tokens for s in rounds[c])
            row[server] = cpu_ms_per_token(phases, tokens)
        cpu_out.append(row)
    alone: list[dict[str, Any]] = []
    if engine_alone is not None:
        engine_rounds, ls_alone = engine_alone
        for c in sorted(engine_rounds):
            e, ls = summarize(engine_rounds[c]).decode_tps, summarize(ls_alone[c]).decode_tps
            r = paired_ratio(engine_rounds[c], ls_alone[c])
            alone.append({"concurrency": c, "engine_tps": e, "llama_server_tps": ls, "ratio": r})
    noise: list[dict[str, Any]] = []
    for c in sorted(control or {}):
        assert control is not None
        a, b = summarize(ls_rounds[c]).decode_tps, summarize(control[c]).decode_tps
        noise.append(
            {
                "concurrency": c,
                "llama_server_tps": a,
                "control_tps": b,
                "ratio": paired_ratio(control[c], ls_rounds[c]),
                "control_per_round": _per_round(control[c], ls_rounds[c]),
                "herd_per_round": _per_round(herd_rounds[c], ls_rounds[c]),
            }
        )
    return {
        "concurrency": {"levels": levels, "ttft_1": ttft_1},
        "control": noise,
        "cpu": cpu_out,
        "engine_alone": alone,
        "chat": {"servers": chat_out, "follow_up": follow},
        "memory": mem,
        "steps": steps,
        "raw": {
            "herd": {str(c): [asdict(s) for s in herd_rounds[c]] for c in sorted(herd_rounds)},
            "llama_server": {str(c): [asdict(s) for s in ls_rounds[c]] for c in sorted(ls_rounds)},
            "native_steps": {str(k): dict(v) for k, v in native_steps.items()},
        },
    }


def _per_round(server: Sequence[PhaseStats], against: Sequence[PhaseStats]) -> list[float | None]:
    """Each round's ratio of decode tok/s: the two phases of a round ran one after the other."""
    return [ratio(a.decode_tps, b.decode_tps) for a, b in zip(server, against, strict=True)]


def paired_ratio(server: Sequence[PhaseStats], against: Sequence[PhaseStats]) -> float | None:
    """The median of the rounds' ratios: each compares two phases that ran one after the other, on the
    machine as it was then. (A ratio of the two medians may take them from different rounds: with the
    machine's speed drifting by 20% over a run, that compares the drift, not the servers.)"""
    return _median([r for r in _per_round(server, against) if r is not None])


def cpu_ms_per_token(phases: Sequence[Mapping[str, float]], tokens: int) -> dict[str, float]:
    """CPU milliseconds per generated token by role, over every round of a level."""
    totals: dict[str, float] = {}
    for phase in phases:
        for role, seconds in phase.items():
            totals[role] = totals.get(role, 0.0) + seconds
    return {role: seconds * 1000 / tokens for role, seconds in sorted(totals.items())} if tokens else {}


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


# The roles of bench/cpu_use.py that relay Herd's tokens, beside its worker.
_RELAY = ("herd api", "redis", "nginx")


def _cpu_section(rows: Sequence[Mapping[str, Any]], threads: int, cpus: int) -> list[str]:
    if not rows:
        return []
    out = [
        "## Where the CPU went: milliseconds of CPU per generated token",
        "",
        "| streams | Herd worker | Herd API | Redis | nginx | relay (API + Redis + nginx) | llama-server | load client (Herd / llama-server) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        h, ls = row["herd"], row["llama_server"]
        relay = sum(h.get(role, 0.0) for role in _RELAY)
        out.append(
            f"| {row['concurrency']} | {_f(h.get('herd worker'), '{:.2f}')} | {_f(h.get('herd api'), '{:.2f}')} "
            f"| {_f(h.get('redis'), '{:.2f}')} | {_f(h.get('nginx'), '{:.2f}')} | {relay:.2f} "
            f"| {_f(ls.get('llama-server'), '{:.2f}')} "
            f"| {_f(h.get('load client'), '{:.2f}')} / {_f(ls.get('load client'), '{:.2f}')} |"
        )
    out += [
        "",
        f"Measured from /proc over each phase (bench/cpu_use.py). The decode threads of both servers spin "
        f"while they wait for each other, so a server's own figure is about its threads × the phase's time. "
        f"With {threads} decode threads on {cpus} CPUs"
        + (
            ", every millisecond the relay spends is taken from the decode: Herd's API, Redis and nginx share "
            "the cores with its worker, while llama-server answers from its own process. (Herd's worker "
            "figure includes sending each step's events to Redis, which it does between steps there.)"
            if threads >= cpus
            else ", the relay has CPUs of its own."
        ),
        "",
    ]
    return out


def _engine_alone_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = [
        "## Herd's engine alone against llama-server",
        "",
        "| streams | Herd engine, in-process tok/s | llama-server tok/s | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row['concurrency']} | {_f(row['engine_tps'])} | {_f(row['llama_server_tps'])} | {_x(row['ratio'])} |"
        )
    out += [
        "",
        "The same prompts and greedy decoding through Herd's BatchEngine step loop in the benchmark's own "
        "process (bench/engine_alone.py), interleaved with llama-server over HTTP, after the stack has stopped: "
        "what the engine decodes without the relay in front of it.",
        "",
    ]
    return out


def _control_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = [
        "## The noise floor: llama-server against itself",
        "",
        "| streams | llama-server tok/s | a second llama-server tok/s | ratio (A/A) | per round, second ÷ first "
        "| per round, Herd ÷ llama-server |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        control = ", ".join(_x(r).rstrip("×") for r in row["control_per_round"])
        herd = ", ".join(_x(r).rstrip("×") for r in row["herd_per_round"])
        out.append(
            f"| {row['concurrency']} | {_f(row['llama_server_tps'])} | {_f(row['control_tps'])} "
            f"| {_x(row['ratio'])} | {control} | {herd} |"
        )
    out += [
        "",
        "A second llama-server, identical to the first (same binary, GGUF, threads and slots), ran in every "
        "round beside Herd and the first, the three in an order that rotates from round to round. Its ratio "
        "to the first is what a ratio reads on this machine when the two servers do not differ at all: a "
        "ratio of Herd's within that spread of 1.0 is parity as far as this run can tell.",
        "",
    ]
    return out


def render_markdown(data: Mapping[str, Any]) -> str:
    run = data["run"]
    out = [
        "# Benchmarks: Herd against llama.cpp's own server",
        "",
        f"Measured {run['date']} by `make bench` ({run['command']}) in {run['wall_s'] / 60:.1f} minutes.",
        "",
        "**These figures are indicative.** The machine was shared with other work while they were taken "
        f"(load average {run['loadavg_before']:.1f} before, {run['loadavg_after']:.1f} after); both servers ran "
        "interleaved, level by level, so outside load falls on both alike and the ratios are fairer than "
        "the absolute figures.",
        "",
        "## Machine and setup",
        "",
        f"- CPU: {run['cpu']['model']}, {run['cpus']} logical CPUs; {run['threads']} threads for every server.",
        f"- CPU flags: `{run['cpu']['flags']}`",
        f"- Model: {run['model']}; num_ctx {run['num_ctx']} per sequence; greedy; {run['tokens']} tokens per stream;"
        f" {run['rounds']} round(s) per level.",
        f"- Herd: the full stack as `herd up` runs it (nginx → gunicorn → Redis → worker), "
        f"NUM_PARALLEL={run['num_parallel']}, its default settings.",
        f"- llama-server and llama-batched-bench built from the llama.cpp vendored in llama-cpp-python "
        f"{run['llama_cpp_python']} (the version Herd runs) with Herd's build flags"
        + (
            f" (CMAKE_ARGS `{run['peers_cmake_args']}`)"
            if run["peers_cmake_args"]
            else " (llama.cpp's defaults: GGML_NATIVE)"
        )
        + f"; llama-server `-np {run['num_parallel']} -c {run['num_ctx'] * run['num_parallel']}`, prompt cache on.",
        f"- Weight repacking: {'on' if run['repack']['used'] else 'off (`--no-repack`)'} for the peers; "
        f"probe: {run['repack']['probe']}.",
        "",
        "## Concurrency: aggregate decode tok/s and time to first token",
        "",
        "| streams | Herd tok/s | llama-server tok/s | ratio | ratio of the medians | Herd TTFT p50 / p90 ms "
        "| llama-server TTFT p50 / p90 ms | failures (Herd / llama-server) | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in data["concurrency"]["levels"]:
        h, ls = lv["herd"], lv["llama_server"]
        want = "> 1.0×" if lv["concurrency"] > 8 else "≥ 1.0×"
        out.append(
            f"| {lv['concurrency']} | {_f(h['decode_tps'])} | {_f(ls['decode_tps'])} | {_x(lv['ratio'])} "
            f"| {_x(lv.get('ratio_of_medians'))} | {_f(h['ttft_p50_ms'], '{:.0f}')} / {_f(h['ttft_p90_ms'], '{:.0f}')} "
            f"| {_f(ls['ttft_p50_ms'], '{:.0f}')} / {_f(ls['ttft_p90_ms'], '{:.0f}')} "
            f"| {h['failed']} / {ls['failed']} of {h['requests']} | {want}: {_met(lv['met'])} |"
        )
    t1 = data["concurrency"]["ttft_1"]
    out += [
        "",
        "Decode tok/s: tokens after each stream's first, over the time from the earliest first token to the "
        "latest last one (the median round). Ratio: the median of the rounds' ratios, each of two phases "
        "run one after the other (the target is judged on it); the ratio of the two median rounds, which "
        "earlier runs reported, may pair rounds run minutes apart. TTFT pools every stream of every round. "
        "The servers run for the whole bench, warmed before the rounds by one request and one untimed phase "
        "of 16 streams each: on a freshly started stack Herd's first phase at a new concurrency ran 5-10% "
        "below its later ones.",
        "",
        f"TTFT p50 at 1 stream, Herd − llama-server: {_f(t1['difference_ms'] if t1 else None)} ms "
        f"(target ≤ +{TTFT_1_SLACK_MS:.0f} ms: {_met(t1['met'] if t1 else None)})"
        + (
            f", from {t1['samples']} single-stream requests of each server, interleaved, beside the rounds "
            f"above: Herd {t1['herd_p50_ms']:.1f} ms, llama-server {t1['llama_server_p50_ms']:.1f} ms."
            if t1 and "samples" in t1
            else "."
        ),
        "",
        *_control_section(data.get("control") or []),
        *_cpu_section(data.get("cpu") or [], run["threads"], run["cpus"]),
        *_engine_alone_section(data.get("engine_alone") or []),
        "## Chat follow-ups on a ~2,000-token shared history",
        "",
        "| server | first turn TTFT ms (whole history) | follow-up TTFT ms, each turn | median follow-up ms |",
        "|---|---:|---|---:|",
    ]
    for name, rec in data["chat"]["servers"].items():
        turns = ", ".join(f"{v:.0f}" for v in rec.get("follow_up_ms") or []) or "–"
        errors = f" ({len(rec['errors'])} failed)" if rec.get("errors") else ""
        out.append(
            f"| {name}{errors} | {_f(rec.get('cold_ms'), '{:.0f}')} | {turns} | {_f(rec['follow_up_p50_ms'], '{:.0f}')} |"
        )
    fu = data["chat"]["follow_up"]
    out += [
        "",
        f"Herd − llama-server, median follow-up: {_f(fu['difference_ms'] if fu else None, '{:.0f}')} ms "
        f"({_x(fu['ratio'] if fu else None)}; target ≤ +{FOLLOW_UP_SLACK_MS:.0f} ms: {_met(fu['met'] if fu else None)}).",
        "",
        "## Memory: resident set size",
        "",
        "| server | 1 slot | 8 slots (loaded) | 8 slots (after the run) | growth 1 → 8 |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"herd": "Herd worker (NUM_PARALLEL)", "llama_server": "llama-server (-np)"}
    for name, m in data["memory"]["servers"].items():
        out.append(
            f"| {names.get(name, name)} | {_mib(m['np1'])} | {_mib(m['np8'])} | {_mib(m['np8_after'])} | {_mib(m['growth'])} |"
        )
    out += [
        "",
        f"Target: Herd's growth ≤ llama-server's, same num_ctx per sequence: {_met(data['memory']['met'])}.",
        "",
        "## Decode step curves",
        "",
        f"Herd's step table (bench/steps.py: one `llama_decode` of N rows in Herd's own context, each row a "
        f"sequence 64 tokens in, weights repacked as the peers' are) beside llama-batched-bench's (`{run['batched_bench']}`: N sequences of 32 prompt "
        "tokens, then decode steps).",
        "",
        "| rows | Herd step ms | Herd tok/s | llama-batched-bench step ms | llama-batched-bench tok/s | batched-bench ms / Herd ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in data["steps"]:
        out.append(
            f"| {s['rows']} | {_f(s['herd_step_ms'])} | {_f(s['herd_tps'])} | {_f(s['native_step_ms'])} "
            f"| {_f(s['native_tps'])} | {_x(s['ratio'])} |"
        )
    out += [
        "",
        LINKING_NOTE,
        "",
        "## Targets (issue 19)",
        "",
        "- Herd's aggregate decode tok/s ≥ 1.0 × llama-server's at 1 to 8 streams, above it at 16.",
        f"- TTFT p50 at 1 stream ≤ llama-server's + {TTFT_1_SLACK_MS:.0f} ms.",
        f"- Follow-up TTFT with a 2,000-token shared history ≤ llama-server's + {FOLLOW_UP_SLACK_MS:.0f} ms.",
        "- Worker RSS growth from NUM_PARALLEL 1 to 8 ≤ llama-server's for the same num_ctx.",
        "",
        "## Weight repacking and the crash guards",
        "",
        "llama.cpp can repack quantised CPU weights for the CPU's wide matrix kernels (its extra buffer "
        "types). With the llama.cpp of llama-cpp-python 0.3.36 that segfaults at the first decode of the "
        "bundled model on AMX CPUs (4th-generation Xeons on), in llama-server, llama-batched-bench and Herd "
        "alike. So a worker asked to repack (`LlamaModel(repack=True)`) first runs "
        "`python -m workers.repack_probe` in a child process: load with repacking, decode a prompt and "
        "1- and 8-row steps, and time the same without it. The verdict (crashed, or safe and which is "
        "faster) is recorded once per model file digest, CPU flags and llama.cpp build in "
        "`<OLLAMA_MODELS>/repack-probe.json` (`HERD_REPACK_PROBE_FILE` to move it), and the worker "
        "repacks only where the child survived and repacking was at least 3% faster at 8 rows. This run "
        "gives the peers the same verdict.",
        "",
        "A load that crashes the worker itself is not retried in a loop: each load of a store blob leaves "
        "a marker (`<OLLAMA_MODELS>/load-guard/`) removed when the load returns; a marker left by a dead "
        "process counts as a crash, and the model's next loads fail at once with an error naming the "
        "crash and when it will be tried again (30 s, doubling to an hour), then one load is tried again.",
        "",
        "## Running it",
        "",
        "```",
        "make bench                      # about 10 minutes the first time: builds the peers into .cache/peers/",
        "HERD_BENCH_SHORT=1 make bench   # one round, short generations: a quick check",
        'make bench BENCH_ARGS="--rounds 5 --threads 2"',
        "# One decode thread per server, a core left for the relay: docs/bench-threads-1/benchmarks.md",
        'make bench BENCH_ARGS="--threads 1 --out docs/bench-threads-1"',
        "python -m bench.peers           # only build (or locate) llama-server and llama-batched-bench",
        "```",
        "",
        "Everything runs on loopback. The peers are built once per llama-cpp-python version, CMAKE_ARGS and CPU "
        "(a stamp in .cache/peers/<version>/stamp.json), from the llama.cpp in that version's sdist, at nice 19. "
        "Raw rounds are in benchmarks.json. The older in-process comparison (llama-cpp-python, Herd's engine "
        "and the stack, one stream) is `python -m bench --out <dir>`.",
        "",
    ]
    return "\n".join(out)
