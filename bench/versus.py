"""`make bench`: Herd against llama.cpp's own llama-server and llama-batched-bench, in one interleaved run.

On the same machine, GGUF (the bundled Gemma 3 270M), threads and num_ctx:
- concurrency: Herd through nginx (the real `herd up` stack, NUM_PARALLEL=8) against llama-server
  (-np 8) at 1, 2, 4, 8 and 16 streams, level by level, one server then the other, for each round:
  aggregate decode tok/s, TTFT p50/p90, failures;
- chat follow-ups: TTFT of each new turn on a ~2,000-token shared history, llama-server with its
  prompt cache;
- memory: the worker's RSS at NUM_PARALLEL 1 and 8 against llama-server's at -np 1 and 8;
- step curves: Herd's decode step table (bench/steps.py) beside llama-batched-bench's.
llama.cpp's weight repacking is used by the peers only where workers/repack_probe.py found it safe.
Writes docs/benchmarks.md and docs/benchmarks.json. HERD_BENCH_SHORT=1: one round, short
generations, for a quick check (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chat import follow_ups as chat_follow_ups
from bench.chat import herd_chat, openai_chat
from bench.cpu_use import cpu_by_role, spent
from bench.engine_alone import engine_phases
from bench.load import herd_streamer, openai_streamer, run_phase
from bench.memory import rss_bytes
from bench.native import batched_bench, native_server
from bench.peers import build as build_peers
from bench.peers import llama_cpp_version
from bench.stack import running_stack, worker_rss
from bench.stats import PhaseStats
from bench.steps import bench_decode_rows
from bench.versus_report import render_markdown, summarize_run
from herd.names import ModelName
from herd.store import ModelStore
from stack.setup import ensure_default_model
from workers.repack_probe import repack_verdict

LEVELS = (1, 2, 4, 8, 16)
STEP_ROWS = (1, 2, 4, 8, 16)
ENGINE_LEVELS = (1, 8)
NUM_PARALLEL = 8
NUM_CTX = 4096
TTFT_TOKENS = 8  # tokens of each dedicated TTFT request
ROOT = Path(__file__).resolve().parent.parent

logger = logging.getLogger("bench")


def cpu_info() -> dict[str, str]:
    """The CPU's model name and flags, as /proc/cpuinfo states them."""
    info = {"model": platform.processor() or platform.machine(), "flags": ""}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["model"] in (
                "",
                platform.machine(),
                platform.processor(),
            ):
                info["model"] = value.strip()
            elif key.strip() in ("flags", "Features") and not info["flags"]:
                info["flags"] = value.strip()
    except OSError:
        pass
    return info


def _short() -> bool:
    return os.environ.get("HERD_BENCH_SHORT", "") not in ("", "0", "false")


def main() -> None:
    short = _short()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    # Five: on a shared VM one round swings by 5-7% either way, and the median of three still moved the
    # 1- and 2-stream ratios by as much from one run to the next.
    parser.add_argument("--rounds", type=int, default=1 if short else 5, help="rounds of every level")
    parser.add_argument("--tokens", type=int, default=32 if short else 128, help="tokens per stream")
    parser.add_argument("--turns", type=int, default=2 if short else 4, help="chat follow-ups")
    parser.add_argument(
        "--ttft-samples", type=int, default=5 if short else 20, help="single-stream requests for TTFT"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("app").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    peers = build_peers()
    with (
        tempfile.TemporaryDirectory(prefix="herd-bench-models-") as models,
        tempfile.TemporaryDirectory(prefix="herd-bench-logs-") as logs,
    ):
        store = ModelStore(Path(models))
        ensure_default_model(store)
        gguf = store.get(ModelName.parse("gemma3:270m")).model_path
        verdict = repack_verdict(gguf)
        logger.info("repack probe: %s", verdict.detail)
        repack = verdict.use

        def server(parallel: int, name: str) -> Any:
            return native_server(
                peers.server, gguf, threads=args.threads, num_ctx=NUM_CTX, parallel=parallel,
                repack=repack, log_path=Path(logs) / f"{name}.log",
            )  # fmt: skip

        # Memory at one slot: each server alone, loaded and warmed by one request.
        with running_stack(Path(models), args.threads, 1) as stack1:
            run_phase(herd_streamer(f"{stack1.url}/api/generate", 8, NUM_CTX), 1)
            herd_rss_1 = worker_rss(stack1)
        with server(1, "llama-server-np1") as ls1:
            run_phase(openai_streamer(f"{ls1.url}/v1/completions", 8), 1)
            ls_rss_1 = rss_bytes(ls1.pid)
        logger.info(
            "RSS at 1 slot: herd worker %d MiB, llama-server %d MiB", herd_rss_1 >> 20, ls_rss_1 >> 20
        )

        herd_rounds: dict[int, list[PhaseStats]] = {c: [] for c in LEVELS}
        ls_rounds: dict[int, list[PhaseStats]] = {c: [] for c in LEVELS}
        # CPU seconds by role (bench/cpu_use.py) for each phase, beside its PhaseStats.
        herd_cpu: dict[int, list[dict[str, float]]] = {c: [] for c in LEVELS}
        ls_cpu: dict[int, list[dict[str, float]]] = {c: [] for c in LEVELS}
        # The A/A control: a second llama-server, identical to the first (see versus_report).
        control_rounds: dict[int, list[PhaseStats]] = {c: [] for c in LEVELS}
        control_cpu: dict[int, list[dict[str, float]]] = {c: [] for c in LEVELS}
        with (
            running_stack(Path(models), args.threads, NUM_PARALLEL) as stack,
            server(NUM_PARALLEL, "llama-server") as ls,
            server(NUM_PARALLEL, "llama-server-control") as ls_control,
        ):
            herd = herd_streamer(f"{stack.url}/api/generate", args.tokens, NUM_CTX)
            llama = openai_streamer(f"{ls.url}/v1/completions", args.tokens)
            control = openai_streamer(f"{ls_control.url}/v1/completions", args.tokens)
            run_phase(herd, 1)
            run_phase(llama, 1)
            run_phase(control, 1)
            herd_rss_8, ls_rss_8 = worker_rss(stack), rss_bytes(ls.pid)
            # And once at the top level, untimed: every slot and batch size in use once before the rounds
            # (Herd's first phase at a new concurrency ran 5-10% below its later ones on a fresh stack).
            for streamer in (herd, llama, control):
                run_phase(streamer, max(LEVELS))
            servers = [
                ("herd", herd, herd_rounds, herd_cpu),
                ("llama-server", llama, ls_rounds, ls_cpu),
                ("llama-server (control)", control, control_rounds, control_cpu),
            ]
            for i in range(args.rounds):
                logger.info("concurrency round %d/%d", i + 1, args.rounds)
                # Level by level, one server after another, so outside load falls on all alike; the order
                # rotates from round to round, so none always follows the same one.
                order = servers[i % len(servers) :] + servers[: i % len(servers)]
                for c in LEVELS:
                    for name, streamer, into, cpu in order:
                        before = cpu_by_role()
                        stats = run_phase(streamer, c)
                        cpu[c].append(spent(before, cpu_by_role()))
                        into[c].append(stats)
                        logger.info(
                            "  %s c=%d: %.1f tok/s decode, %d failed, ttft max %.0f ms",
                            name, c, stats.decode_tps, stats.failed, max(stats.ttft_ms, default=0),
                        )  # fmt: skip
            # TTFT at one stream from more samples than the rounds give: short requests, one server then
            # the other.
            ttft: tuple[list[float], list[float]] = ([], [])
            herd_short = herd_streamer(f"{stack.url}/api/generate", TTFT_TOKENS, NUM_CTX)
            llama_short = openai_streamer(f"{ls.url}/v1/completions", TTFT_TOKENS)
            for _ in range(args.ttft_samples):
                ttft[0].extend(run_phase(herd_short, 1).ttft_ms)
                ttft[1].extend(run_phase(llama_short, 1).ttft_ms)
            logger.info(
                "ttft at 1 stream: herd p50 %.1f ms, llama-server p50 %.1f ms",
                statistics.median(ttft[0]), statistics.median(ttft[1]),
            )  # fmt: skip
            logger.info("chat follow-ups")
            chat = chat_follow_ups(
                {
                    "herd": herd_chat(f"{stack.url}/api/chat", NUM_CTX),
                    "llama-server": openai_chat(f"{ls.url}/v1/chat/completions"),
                },
                args.turns,
                8,
            )
            logger.info("chat: %s", json.dumps(chat))
            herd_rss_8_after, ls_rss_8_after = worker_rss(stack), rss_bytes(ls.pid)

        logger.info("engine alone")
        engine_rounds: dict[int, list[PhaseStats]] = {c: [] for c in ENGINE_LEVELS}
        ls_alone: dict[int, list[PhaseStats]] = {c: [] for c in ENGINE_LEVELS}
        phase, unload = engine_phases(
            gguf,
            threads=args.threads,
            num_ctx=NUM_CTX,
            parallel=NUM_PARALLEL,
            repack=repack,
            n_tokens=args.tokens,
        )
        try:
            with server(NUM_PARALLEL, "llama-server-alone") as ls:
                llama = openai_streamer(f"{ls.url}/v1/completions", args.tokens)
                phase(1)
                run_phase(llama, 1)
                for _ in range(args.rounds):
                    for c in ENGINE_LEVELS:
                        engine_rounds[c].append(phase(c))
                        ls_alone[c].append(run_phase(llama, c))
                        logger.info(
                            "  engine alone c=%d: %.1f tok/s; llama-server %.1f tok/s",
                            c, engine_rounds[c][-1].decode_tps, ls_alone[c][-1].decode_tps,
                        )  # fmt: skip
        finally:
            unload()

        logger.info("step curves")
        herd_steps = bench_decode_rows(
            gguf, args.threads, 256, rows=STEP_ROWS, repeats=5 if short else 15, repack=repack
        )
        ntg = 16 if short else 64
        native_steps, batched_cmd = batched_bench(
            peers.batched_bench, gguf, threads=args.threads, rows=STEP_ROWS, npp=32, ntg=ntg, repack=repack
        )
        logger.info("herd steps %s; llama-batched-bench %s", herd_steps, native_steps)

    data = summarize_run(
        herd_rounds,
        ls_rounds,
        chat=chat,
        memory={
            "herd": {"np1": herd_rss_1, "np8": herd_rss_8, "np8_after": herd_rss_8_after},
            "llama_server": {"np1": ls_rss_1, "np8": ls_rss_8, "np8_after": ls_rss_8_after},
        },
        herd_steps=herd_steps,
        native_steps=native_steps,
        cpu={"herd": herd_cpu, "llama_server": ls_cpu},
        engine_alone=(engine_rounds, ls_alone),
        ttft=ttft,
        control=control_rounds,
    )
    data["run"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "short": short,
        "command": " ".join(["python -m bench.versus", *sys.argv[1:]])
        + (" (HERD_BENCH_SHORT=1)" if short else ""),
        "wall_s": time.monotonic() - started,
        "cpu": cpu_info(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "llama_cpp_python": llama_cpp_version(),
        "peers_cmake_args": os.environ.get("CMAKE_ARGS", ""),
        "repack": {"used": repack, "probe": verdict.detail},
        "model": "Gemma 3 270M (gemma3:270m, Q4_K_M)",
        "num_ctx": NUM_CTX,
        "num_parallel": NUM_PARALLEL,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "turns": args.turns,
        "batched_bench": batched_cmd.replace(str(gguf), "gemma3-270m.gguf"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "benchmarks.md").write_text(render_markdown(data))
    logger.info("wrote %s and benchmarks.json in %.0f s", args.out / "benchmarks.md", data["run"]["wall_s"])


if __name__ == "__main__":
    main()
