"""The CLI's human formats, tables, show sections and progress bars, against Ollama's outputs."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from cli.format import (
    human_bytes,
    human_duration,
    human_number,
    human_time,
    parse_time,
    processor,
    table,
)
from cli.progress import Progress, bar_line
from cli.repl import go_duration, stats_text
from cli.show import render_info


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (253_000_000, "253 MB"),
        (291_554_930, "291 MB"),
        (4_700_000_000, "4.7 GB"),
        (12_999_999_999, "12 GB"),
        (2 * 10**12, "2 TB"),
    ],
)
def test_human_bytes_uses_decimal_units_like_ollama(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (8_000_000_000, "8B"),
        (1_500_000_000, "1.5B"),
        (268_098_176, "268.10M"),
        (7_000_000, "7M"),
        (12_345, "12K"),
    ],
)
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (42, "42 seconds"),
        (90, "About a minute"),
        (240, "4 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_human_time_past_future_forever_and_zero() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert human_time(now - timedelta(minutes=2, seconds=5), "Never", now) == "2 minutes ago"
    assert human_time(now + timedelta(minutes=4, seconds=30), "Never", now) == "4 minutes from now"
    assert human_time(now + timedelta(days=365 * 200), "Never", now) == "Forever"
    assert human_time(None, "Never", now) == "Never"


def test_parse_time_takes_go_timestamps() -> None:
    got = parse_time("2025-06-01T10:20:30.123456789Z")
    assert got == datetime(2025, 6, 1, 10, 20, 30, 123456, tzinfo=UTC)
    assert parse_time("2025-06-01T12:20:30+02:00") == datetime(2025, 6, 1, 10, 20, 30, tzinfo=UTC)
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("yesterday") is None


@pytest.mark.parametrize(
    ("size", "vram", "text"),
    [(100, 0, "100% CPU"), (100, 100, "100% GPU"), (100, 52, "48%/52% CPU/GPU"), (100, 200, "Unknown")],
)
def test_processor_column(size: int, vram: int, text: str) -> None:
    assert processor(size, vram) == text


def test_table_pads_columns_without_trailing_blanks() -> None:
    out = table(
        ["NAME", "ID", "SIZE"], [["gemma3:270m", "e7d36fb2c3b3", "291 MB"], ["x:latest", "0123", "1 B"]]
    )
    assert out == (
        "NAME           ID              SIZE\n"
        "gemma3:270m    e7d36fb2c3b3    291 MB\n"
        "x:latest       0123            1 B\n"
    )


def test_show_sections_like_ollama() -> None:
    info = {
        "details": {"family": "llama", "parameter_size": "", "quantization_level": "F32"},
        "model_info": {
            "general.architecture": "llama",
            "general.parameter_count": 268_098_176,
            "llama.context_length": 2048,
            "llama.embedding_length": 64,
        },
        "capabilities": ["completion"],
        "parameters": 'stop                           "<|end|>"\ntemperature                    0',
        "system": "Line one.\nLine two.\nLine three.",
        "license": "MIT",
    }
    assert render_info(info) == (
        "  Model\n"
        "    architecture        llama\n"
        "    parameters          268.10M\n"
        "    context length      2048\n"
        "    embedding length    64\n"
        "    quantization        F32\n"
        "\n"
        "  Capabilities\n"
        "    completion\n"
        "\n"
        "  Parameters\n"
        '    stop           "<|end|>"\n'
        "    temperature    0\n"
        "\n"
        "  System\n"
        "    Line one.\n"
        "    Line two.\n"
        "    ...\n"
        "\n"
        "  License\n"
        "    MIT\n"
        "\n"
    )


def test_bar_line() -> None:
    assert (
        bar_line("pulling 8eeb52dfb3bb", 45, 100, width=10)
        == "pulling 8eeb52dfb3bb:  45% ▕████      ▏ 45 B/100 B"
    )
    assert (
        bar_line("pulling 8eeb52dfb3bb", 100, 100, width=10)
        == "pulling 8eeb52dfb3bb: 100% ▕██████████▏ 100 B"
    )


def test_progress_on_a_pipe_prints_each_status_once_and_each_digest_at_start_and_end() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    events = [
        {"status": "pulling manifest"},
        {"status": "pulling aaaaaaaaaaaa", "digest": "sha256:aa", "total": 2000, "completed": 0},
        {"status": "pulling aaaaaaaaaaaa", "digest": "sha256:aa", "total": 2000, "completed": 1000},
        {"status": "pulling aaaaaaaaaaaa", "digest": "sha256:aa", "total": 2000, "completed": 2000},
        {"status": "verifying sha256 digest"},
        {"status": "verifying sha256 digest"},
        {"status": "success"},
    ]
    for event in events:
        progress.update(event)
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[1] == "pulling aaaaaaaaaaaa"
    assert lines[2].startswith("pulling aaaaaaaaaaaa: 100% ▕") and lines[2].endswith("▏ 2 KB")
    assert lines[3:] == ["verifying sha256 digest", "success"]


def test_progress_on_a_terminal_redraws_lines_in_place() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.update({"status": "pulling manifest"})
    progress.update({"status": "pulling bbbbbbbbbbbb", "digest": "sha256:bb", "total": 100, "completed": 50})
    progress.update({"status": "pulling bbbbbbbbbbbb", "digest": "sha256:bb", "total": 100, "completed": 100})
    text = out.getvalue()
    # Three draws: the second and third move the cursor up over the 1 and 2 lines drawn before.
    assert text.count("\x1b[1F") == 1 and text.count("\x1b[2F") == 1
    last = text.rsplit("\x1b[2F", 1)[1]
    first, second, rest = last.split("\n")
    assert first == "\x1b[2Kpulling manifest"
    assert second.startswith("\x1b[2Kpulling bbbbbbbbbbbb: 100% ▕") and rest == ""
    assert "pulling bbbbbbbbbbbb:  50% ▕" in text


def test_verbose_stats() -> None:
    final = {
        "total_duration": 1_500_000_000,
        "load_duration": 250_000_000,
        "prompt_eval_count": 10,
        "prompt_eval_duration": 500_000_000,
        "eval_count": 20,
        "eval_duration": 1_000_000_000,
    }
    text = stats_text(final)
    assert "total duration:       1.5s\n" in text
    assert "load duration:        250ms\n" in text
    assert "prompt eval rate:     20.00 tokens/s\n" in text
    assert "eval count:           20 token(s)\n" in text
    assert "eval rate:            20.00 tokens/s\n" in text
    assert go_duration(61_500_000_000) == "1m1.5s"
