"""Ollama's human formats (format/bytes.go, format/time.go) and its borderless tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

_BYTE_UNITS = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB"))


def human_bytes(n: int) -> str:
    """Decimal units like Ollama's HumanBytes: "253 MB", "1.5 GB", "12 KB", "999 B"."""
    for scale, unit in _BYTE_UNITS:
        if n >= scale:
            value = n / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_number(n: int) -> str:
    """A parameter count like Ollama's HumanNumber: "8B", "1.5B", "268.10M", "12K"."""
    if n >= 10**9:
        value = n / 10**9
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if n >= 10**6:
        value = n / 10**6
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if n >= 10**3:
        return f"{n / 10**3:.0f}K"
    return str(n)


def human_duration(seconds: float) -> str:
    """Ollama's humanDuration: "Less than a second", "5 seconds", "About a minute", "3 days"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    # Go's math.Round rounds half away from zero; Python's round() would round half to even.
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def parse_time(raw: str) -> datetime | None:
    """An RFC 3339 time from the API (Go writes nanoseconds and 'Z'); None for Go's zero time or garbage."""
    if not raw or raw.startswith("0001-01-01"):
        return None
    text = raw.replace("Z", "+00:00")
    # Python takes at most microseconds: cut a longer fraction down to six digits.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_time(when: datetime | None, zero: str, now: datetime | None = None) -> str:
    """Ollama's HumanTime: "2 minutes ago", "4 minutes from now", "Forever" beyond 20 years ahead."""
    if when is None:
        return zero
    delta = ((now or datetime.now(UTC)) - when).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return f"{human_duration(-delta)} from now"
    return f"{human_duration(delta)} ago"


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model lives, as ``ollama ps`` says it: "100% GPU", "100% CPU", "48%/52% CPU/GPU"."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = math.floor((size - size_vram) / size * 100 + 0.5)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]], padding: str = "    ") -> str:
    """Left-aligned columns without borders, as Ollama's tablewriter prints them; no trailing blanks."""
    all_rows = [list(headers)] if headers else []
    all_rows += [list(r) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(r[i]) if i < len(r) else 0 for r in all_rows) for i in range(max(map(len, all_rows)))]
    lines = []
    for r in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(r)]
        lines.append(padding.join(cells).rstrip())
    return "\n".join(lines) + "\n"
