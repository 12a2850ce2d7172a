"""The benchmark's pure parts: percentiles, per-phase aggregation, target ratios, memory figures, the page.

No timing assertions: the records are built by hand, so every figure has one right value.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from bench.memory import parse_vm_rss
from bench.report import build_server, concurrency_targets, memory_figures, render_markdown, step_figures
from bench.stats import PhaseStats, StreamRecord, percentile, phase_stats, ratio, summarize


def _stream(sent: float, first: float, step: float, tokens: int, complete: bool = True) -> StreamRecord:
    """A stream whose tokens arrive every ``step`` seconds from ``first``."""
    arrivals = tuple(first + i * step for i in range(tokens))
    return StreamRecord(sent, arrivals, tokens, complete, None if complete else "interrupted")


def test_percentile_interpolates_between_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == pytest.approx(25.0)
    assert percentile(values, 90) == pytest.approx(37.0)
    assert percentile([7.0], 90) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_bad_input(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_phase_stats_counts_decode_after_each_first_token() -> None:
    # Two streams sent at 0: first tokens at 0.5 and 1.0, 11 tokens each, 0.1 s apart.
    records = [_stream(0.0, 0.5, 0.1, 11), _stream(0.0, 1.0, 0.1, 11)]
    stats = phase_stats(2, records)
    assert stats.tokens == 22
    assert stats.failed == 0
    # 10 + 10 decoded tokens between the earliest first token (0.5) and the latest last (2.0).
    assert stats.decode_tps == pytest.approx(20 / 1.5)
    # Every token over the phase: first send (0) to last token (2.0).
    assert stats.total_tps == pytest.approx(22 / 2.0)
    assert stats.ttft_ms == pytest.approx((500.0, 1000.0))
    assert stats.wall_s == pytest.approx(2.0)


def test_phase_stats_counts_cut_off_and_empty_streams_as_failed() -> None:
    records = [
        _stream(0.0, 0.2, 0.1, 3, complete=False),
        StreamRecord(0.0, (), 0, False, "ReadTimeout: timed out"),
        _stream(0.0, 0.3, 0.1, 5),
    ]
    stats = phase_stats(3, records)
    assert stats.failed == 2
    assert stats.tokens == 8
    assert len(stats.ttft_ms) == 2  # the stream that got nothing has no time to first token
    with pytest.raises(ValueError, match="concurrency 4 has 3 records"):
        phase_stats(4, records)


def _phase(c: int, tps: float, failed: int = 0, ttft: float = 100.0) -> PhaseStats:
    return PhaseStats(c, c, failed, 128 * c, tps, tps * 0.9, tuple(ttft + i for i in range(c)), 10.0)


def test_summarize_takes_the_median_round_and_pools_ttft() -> None:
    summary = summarize([_phase(2, 10.0), _phase(2, 30.0, failed=1), _phase(2, 20.0)])
    assert summary.decode_tps == 20.0
    assert summary.requests == 6
    assert summary.failed == 1
    assert summary.tokens_per_request == 128
    assert summary.ttft_max_ms == 101.0
    with pytest.raises(ValueError, match="different concurrency"):
        summarize([_phase(1, 10.0), _phase(2, 10.0)])


def test_ratio_of_nothing_measured_is_none() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None


def _levels(tps: dict[int, float], failed: dict[int, int] | None = None) -> dict[int, list[PhaseStats]]:
    return {c: [_phase(c, v, (failed or {}).get(c, 0))] for c, v in tps.items()}


def test_concurrency_targets_compare_within_the_run() -> None:
    herd = _levels({1: 50.0, 2: 80.0, 4: 110.0, 8: 100.0})
    server = _levels({1: 60.0, 2: 60.0, 4: 60.0, 8: 40.0}, failed={2: 1, 4: 3, 8: 7})
    targets = concurrency_targets(
        [summarize(v) for v in herd.values()], [summarize(v) for v in server.values()]
    )
    assert targets["herd_8_vs_1"] == pytest.approx(2.0)
    assert targets["herd_8_vs_1_met"] is True
    assert targets["herd_vs_llama_server_at_8"] == pytest.approx(2.5)
    assert targets["herd_vs_llama_server_at_8_met"] is True
    assert (targets["llama_server_failed_at_8"], targets["llama_server_requests_at_8"]) == (7, 8)
    assert (targets["llama_server_failed"], targets["llama_server_requests"]) == (11, 15)

    slow = _levels({1: 50.0, 2: 50.0, 4: 50.0, 8: 60.0})
    missed = concurrency_targets(
        [summarize(v) for v in slow.values()], [summarize(v) for v in server.values()]
    )
    assert missed["herd_8_vs_1_met"] is False
    assert missed["herd_vs_llama_server_at_8_met"] is False


def test_memory_figures_against_the_extra_kv_cache() -> None:
    mib = 2**20
    p1 = {"num_parallel": 1, "rss_loaded": 400 * mib, "rss_after": 410 * mib, "ps_size": 300 * mib}
    p8 = {"num_parallel": 8, "rss_loaded": 800 * mib, "rss_after": 830 * mib, "ps_size": 790 * mib}
    fig = memory_figures(18432, 4096, p1, p8)
    assert fig["extra_kv_bytes"] == 18432 * 4096 * 7
    assert fig["rss_growth_loaded"] == 400 * mib
    assert fig["rss_growth_after"] == 420 * mib
    assert fig["met"] is True  # 420 MiB ≤ 504 MiB
    assert memory_figures(18432, 2048, p1, p8)["met"] is False  # 420 MiB > 252 MiB


def test_step_figures_give_the_ceiling_of_herds_grouping_and_of_one_batch() -> None:
    fig = step_figures({1: 10.0, 2: 18.0, 4: 32.0, 7: 56.0, 8: 60.0}, 8)
    assert fig["groups"] == [4, 4]  # eight streams decode as two groups below the kernel switch
    assert fig["ceiling_grouped"] == pytest.approx(80 / 64)
    assert fig["ceiling_one_batch"] == pytest.approx(80 / 60)
    two = fig["rows"][1]
    assert two == {
        "rows": 2,
        "step_ms": 18.0,
        "tokens_per_s": pytest.approx(2000 / 18),
        "speedup": pytest.approx(20 / 18),
    }


def test_step_figures_without_the_rows_a_group_needs() -> None:
    fig = step_figures({1: 10.0, 8: 60.0}, 8)
    assert fig["ceiling_grouped"] is None
    assert fig["ceiling_one_batch"] == pytest.approx(80 / 60)


def test_parse_vm_rss() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n"
    assert parse_vm_rss(status) == 123456 * 1024
    with pytest.raises(ValueError, match="no VmRSS"):
        parse_vm_rss("Name:\tkthreadd\n")


def _data() -> dict[str, Any]:
    herd = _levels({1: 50.0, 2: 80.0, 4: 110.0, 8: 100.0})
    server = _levels({1: 60.0, 2: 60.0, 4: 60.0, 8: 40.0}, failed={8: 7})
    mib = 2**20
    single = [
        {"name": "(a) a", "ttft_ms": 16.0, "decode_tps": 60.0, "runs": [{}]},
        {"name": "(b) b", "ttft_ms": 40.0, "decode_tps": 66.0, "runs": [{}]},
        {"name": "(c) c", "ttft_ms": 50.0, "decode_tps": 64.0, "runs": [{}]},
    ]
    return {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench --threads 1",
        "machine": {"cpus": 2, "threads": 1, "python": "3.11", "loadavg_before": 2.0, "loadavg_after": 3.0},
        "model": "Gemma 3 270M",
        "tokens": 128,
        "num_ctx": 4096,
        "prompt_chars": 85,
        "results": single,
        "targets": {
            "stack_vs_engine_tps_ratio": 64 / 66,
            "stack_vs_engine_tps_target": 0.95,
            "stack_minus_engine_ttft_ms": 10.0,
            "stack_minus_engine_ttft_target_ms": 15.0,
        },
        "concurrency": {
            "levels": [1, 2, 4, 8],
            "rounds": 1,
            "num_parallel": 8,
            "herd": build_server("Herd", herd),
            "llama_server": build_server("llama-cpp-python server", server),
            "targets": concurrency_targets(
                [summarize(v) for v in herd.values()], [summarize(v) for v in server.values()]
            ),
        },
        "memory": memory_figures(
            18432,
            4096,
            {"num_parallel": 1, "rss_loaded": 400 * mib, "rss_after": 410 * mib, "ps_size": 300 * mib},
            {"num_parallel": 8, "rss_loaded": 950 * mib, "rss_after": 960 * mib, "ps_size": 800 * mib},
        ),
    }


def test_render_markdown_states_every_target_and_the_plot() -> None:
    page = render_markdown(_data(), "benchmarks-concurrency.png")
    assert "`python -m bench --threads 1`" in page
    assert "![Aggregate decode tokens/s" in page and "(benchmarks-concurrency.png)" in page
    # One row per level, with Herd's ratio to its own single stream and the other server's failures.
    assert "| 8 | 100.0 | 2.00 | 104 / 106 | 128 | 40.0 | 104 / 106 | 128 | 7 of 8 |" in page
    assert "**2.00** × — met" in page
    assert "**2.50** × — met" in page
    assert "**7 of 8**" in page
    # 550 MiB of growth against 504 MiB of extra KV cache.
    assert "**550.0 MiB** — NOT met" in page
    assert "**0.970** × — met" in page
    # One thread on two cores: the page says why.
    assert "Fewer threads than cores" in page
    assert "What one decode step costs" not in page  # a run from before the step figures


def test_render_markdown_shows_the_step_costs_and_the_ceiling() -> None:
    data = _data()
    data["steps"] = step_figures({1: 10.0, 2: 18.0, 4: 32.0, 7: 56.0, 8: 60.0}, 8)
    page = render_markdown(data, None)
    assert "| 2 | 18.0 | 111.1 | 1.11 |" in page
    assert "8 streams as 4 + 4 rows" in page
    assert "beyond **1.25** × one stream" in page
    assert "allows **1.33** ×" in page


def test_render_markdown_shows_herd_without_batch_invariance_against_its_targets() -> None:
    data = _data()
    throughput = _levels({1: 50.0, 2: 90.0, 4: 120.0, 8: 120.0})
    server = _levels({1: 60.0, 2: 60.0, 4: 60.0, 8: 40.0}, failed={8: 7})
    data["steps"] = step_figures({1: 10.0, 8: 60.0}, 8)  # the same run measured both
    data["concurrency"]["herd_throughput"] = build_server("Herd fast", throughput)
    data["concurrency"]["targets_throughput"] = concurrency_targets(
        [summarize(v) for v in throughput.values()], [summarize(v) for v in server.values()]
    )
    page = render_markdown(data, None)
    assert "### Herd with `HERD_BATCH_INVARIANT=false`" in page
    assert "| 8 | 120.0 | 2.40 | 104 / 106 | 128 | 0 of 8 |" in page
    assert "This Herd at 8 streams ≥ 1.8 × This Herd at 1 stream: **2.40** × — met" in page
    assert "llama-cpp-python's server at 8 streams: **3.00** × — met" in page
    assert "### Herd with" not in render_markdown(_data(), None)  # a run without it


def test_render_markdown_without_a_plot_or_a_thread_note() -> None:
    data = _data()
    data["machine"]["threads"] = 2
    page = render_markdown(data, None)
    assert "![" not in page
    assert "Fewer threads than cores" not in page


def test_build_server_keeps_raw_rounds() -> None:
    rounds = _levels({1: 50.0, 8: 100.0})
    server = build_server("Herd", rounds)
    assert [s["concurrency"] for s in server["levels"]] == [1, 8]
    assert server["levels"][1] == asdict(summarize(rounds[8]))
    assert server["rounds"]["8"][0]["decode_tps"] == 100.0
