"""`make bench`'s comparison with llama.cpp: its parsing of llama-batched-bench and the ratios and verdicts
its report states (pure functions on given figures)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from bench.cpu_use import cpu_by_role, spent
from bench.native import parse_batched_bench
from bench.stats import PhaseStats
from bench.versus_report import render_markdown, summarize_run

BATCHED = """
main: n_kv_max = 1600, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, n_gpu_layers = -1

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    32 |     64 |    1 |     96 |    0.047 |   680.85 |    1.488 |    43.01 |    1.535 |    62.54 |
|    32 |     64 |    8 |    768 |    0.372 |   688.17 |    3.346 |   153.02 |    3.718 |   206.56 |
"""


def test_parse_batched_bench_gives_the_step_time_of_each_batch() -> None:
    rows = parse_batched_bench(BATCHED)
    assert set(rows) == {1, 8}
    assert rows[1]["decode_tps"] == 43.01
    assert rows[8]["step_ms"] == pytest.approx(3.346 / 64 * 1000)
    assert rows[8]["prefill_tps"] == 688.17
    with pytest.raises(ValueError, match="no result rows"):
        parse_batched_bench("main: error: failed to load model\n")


def _phase(c: int, tps: float, ttft: float) -> PhaseStats:
    return PhaseStats(c, c, 0, 64 * c, tps, tps, tuple(ttft for _ in range(c)), 2.0)


def _data(herd_tps: dict[int, float], ls_tps: dict[int, float]) -> dict[str, Any]:
    data = summarize_run(
        {c: [_phase(c, t, 80.0)] for c, t in herd_tps.items()},
        {c: [_phase(c, t, 75.0)] for c, t in ls_tps.items()},
        chat={
            "herd": {"cold_ms": 4400.0, "follow_up_ms": [4300.0, 4500.0, 4400.0], "errors": []},
            "llama-server": {"cold_ms": 4300.0, "follow_up_ms": [85.0, 95.0, 90.0], "errors": []},
        },
        memory={
            "herd": {"np1": 500 << 20, "np8": 1100 << 20, "np8_after": 1100 << 20},
            "llama_server": {"np1": 400 << 20, "np8": 600 << 20, "np8_after": 600 << 20},
        },
        herd_steps={1: 25.0, 8: 50.0},
        native_steps=parse_batched_bench(BATCHED),
    )
    data["run"] = {
        "date": "2026-12-07T07:00:00+00:00",
        "command": "python -m bench.versus",
        "wall_s": 600.0,
        "cpu": {"model": "Test CPU", "flags": "avx2 avx512f amx_tile"},
        "cpus": 2,
        "threads": 2,
        "loadavg_before": 1.0,
        "loadavg_after": 2.0,
        "llama_cpp_python": "0.3.36",
        "peers_cmake_args": "",
        "repack": {"used": False, "probe": "a decode with repacked weights crashed"},
        "model": "Gemma 3 270M",
        "num_ctx": 4096,
        "num_parallel": 8,
        "tokens": 128,
        "rounds": 1,
        "turns": 3,
        "batched_bench": "llama-batched-bench -npp 32 -ntg 64 -npl 1,8",
    }
    return data


def test_ratios_and_verdicts_against_llama_server() -> None:
    data = _data({1: 40.0, 8: 160.0, 16: 150.0}, {1: 42.0, 8: 150.0, 16: 150.0})
    levels = {lv["concurrency"]: lv for lv in data["concurrency"]["levels"]}
    assert levels[1]["ratio"] == pytest.approx(40 / 42) and levels[1]["met"] is False
    assert levels[8]["met"] is True
    assert levels[16]["ratio"] == 1.0 and levels[16]["met"] is False  # at 16 it must be above
    assert data["concurrency"]["ttft_1"] == {"difference_ms": 5.0, "met": True}
    follow = data["chat"]["follow_up"]
    assert follow["difference_ms"] == 4310.0 and follow["met"] is False
    assert data["memory"]["servers"]["herd"]["growth"] == 600 << 20
    assert data["memory"]["met"] is False
    steps = {s["rows"]: s for s in data["steps"]}
    assert steps[8]["ratio"] == pytest.approx(3.346 / 64 * 1000 / 50.0)


def test_the_page_states_machine_figures_and_targets() -> None:
    page = render_markdown(_data({1: 40.0, 8: 160.0}, {1: 42.0, 8: 150.0}))
    assert "Test CPU" in page and "`avx2 avx512f amx_tile`" in page
    assert "| 8 | 160.0 | 150.0 | 1.07× |" in page
    assert "| herd | 4400 | 4300, 4500, 4400 | 4400 |" in page
    assert "indicative" in page and "HERD_BENCH_SHORT=1" in page
    assert "off (`--no-repack`)" in page


# summarize_run's other figures, empty: for tests of one section.
_ONLY_CONCURRENCY: dict[str, Any] = {
    "chat": {},
    "memory": {
        "herd": {"np1": 1, "np8": 2, "np8_after": 2},
        "llama_server": {"np1": 1, "np8": 2, "np8_after": 2},
    },
    "herd_steps": {},
    "native_steps": {},
}


def test_cpu_per_token_by_role_and_the_relay_it_adds_up() -> None:
    data = summarize_run(
        {1: [_phase(1, 40.0, 80.0)], 8: [_phase(8, 160.0, 80.0)]},
        {1: [_phase(1, 42.0, 75.0)], 8: [_phase(8, 150.0, 75.0)]},
        **_ONLY_CONCURRENCY,
        # One round each: 64 tokens at 1 stream, 512 at 8 (_phase's 64 per stream).
        cpu={
            "herd": {
                1: [{"herd worker": 1.28, "herd api": 0.032, "redis": 0.0128}],
                8: [{"herd api": 0.256}],
            },
            "llama_server": {1: [{"llama-server": 1.28}], 8: [{"llama-server": 5.12}]},
        },
    )
    rows = {row["concurrency"]: row for row in data["cpu"]}
    assert rows[1]["herd"] == pytest.approx({"herd api": 0.5, "herd worker": 20.0, "redis": 0.2})
    assert rows[8]["llama_server"] == pytest.approx({"llama-server": 10.0})
    data["run"] = _data({1: 40.0}, {1: 42.0})["run"]
    page = render_markdown(data)
    assert "| 1 | 20.00 | 0.50 | 0.20 | – | 0.70 | 20.00 |" in page
    assert "every millisecond the relay spends is taken from the decode" in page


def test_cpu_by_role_counts_a_child_process_under_its_role() -> None:
    before = cpu_by_role()
    # A child that burns 0.3 s of CPU, then idles; "gunicorn" in its command line makes it the API.
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy, "gunicorn"])
    try:
        deadline = time.monotonic() + 10
        while (used := spent(before, cpu_by_role()).get("herd api", 0.0)) < 0.25:
            assert time.monotonic() < deadline, "the child's CPU time was not counted"
            time.sleep(0.1)
        assert used < 5
    finally:
        child.kill()
        child.wait()


def test_the_engine_alone_against_llama_server() -> None:
    data = summarize_run(
        {1: [_phase(1, 40.0, 80.0)]},
        {1: [_phase(1, 42.0, 75.0)]},
        **_ONLY_CONCURRENCY,
        engine_alone=(
            {1: [_phase(1, 44.0, 0.0)], 8: [_phase(8, 160.0, 0.0)]},
            {1: [_phase(1, 42.0, 75.0)], 8: [_phase(8, 150.0, 75.0)]},
        ),
    )
    rows = {row["concurrency"]: row for row in data["engine_alone"]}
    assert rows[1]["ratio"] == pytest.approx(44 / 42) and rows[8]["engine_tps"] == 160.0
    data["run"] = _data({1: 40.0}, {1: 42.0})["run"]
    assert "| 8 | 160.0 | 150.0 | 1.07× |" in render_markdown(data).split("engine alone")[1]


def test_the_ttft_target_is_judged_on_the_dedicated_single_stream_requests() -> None:
    rounds = {1: [_phase(1, 40.0, 80.0)]}  # a 1-stream round alone would say +20 ms: not met
    data = summarize_run(
        rounds,
        {1: [_phase(1, 42.0, 60.0)]},
        **_ONLY_CONCURRENCY,
        ttft=([31.0, 33.0, 32.0, 90.0], [29.0, 30.0, 28.0, 31.0]),
    )
    t1 = data["concurrency"]["ttft_1"]
    assert t1["herd_p50_ms"] == 32.5 and t1["llama_server_p50_ms"] == 29.5 and t1["samples"] == 4
    assert t1["difference_ms"] == 3.0 and t1["met"] is True
    data["run"] = _data({1: 40.0}, {1: 42.0})["run"]
    page = render_markdown(data)
    assert "from 4 single-stream requests of each server" in page
    assert "Herd 32.5 ms, llama-server 29.5 ms" in page


def test_the_a_a_control_gives_each_rounds_ratio_beside_herds() -> None:
    data = summarize_run(
        {1: [_phase(1, 40.0, 80.0), _phase(1, 44.0, 80.0), _phase(1, 42.0, 80.0)]},
        {1: [_phase(1, 40.0, 75.0), _phase(1, 42.0, 75.0), _phase(1, 42.0, 75.0)]},
        **_ONLY_CONCURRENCY,
        control={1: [_phase(1, 38.0, 75.0), _phase(1, 42.0, 75.0), _phase(1, 43.0, 75.0)]},
    )
    (row,) = data["control"]
    # The median of its rounds' ratios (0.95, 1.0, 1.02).
    assert row["ratio"] == 1.0
    assert row["control_per_round"] == pytest.approx([38 / 40, 1.0, 43 / 42])
    assert row["herd_per_round"] == pytest.approx([1.0, 44 / 42, 1.0])
    data["run"] = _data({1: 40.0}, {1: 42.0})["run"]
    page = render_markdown(data)
    assert "| 1 | 42.0 | 42.0 | 1.00× | 0.95, 1.00, 1.02 | 1.00, 1.05, 1.00 |" in page
    assert "llama-server against itself" in page


def test_the_ratio_pairs_each_round_so_a_machine_slowing_between_rounds_is_not_read_as_a_gap() -> None:
    """The machine slowed from 72 to 59 tok/s over the run (as it did in one make bench): each round's
    ratio compares phases run one after the other; the two medians come from different rounds."""
    herd = [72.0, 67.0, 59.0, 59.0, 60.0]
    llama = [71.0, 70.0, 57.0, 62.0, 57.0]
    data = summarize_run(
        {1: [_phase(1, t, 80.0) for t in herd]}, {1: [_phase(1, t, 75.0) for t in llama]}, **_ONLY_CONCURRENCY
    )
    (level,) = data["concurrency"]["levels"]
    assert level["ratio"] == pytest.approx(72 / 71)  # per round 1.01, 0.96, 1.04, 0.95, 1.05
    assert level["met"] is True
    assert level["ratio_of_medians"] == pytest.approx(60 / 62)  # reported beside it, not judged on
    data["run"] = _data({1: 40.0}, {1: 42.0})["run"]
    assert "| 1.01× | 0.97× |" in render_markdown(data)
