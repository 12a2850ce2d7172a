"""keep_alive values as Ollama reads them: Go duration strings, plain seconds, negatives for forever."""

from __future__ import annotations

import math
import re

# Go's time.ParseDuration units, in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

FOREVER = -1.0


class InvalidDuration(ValueError):
    """A keep_alive value that is neither a number nor a Go duration string."""


def parse_go_duration(text: str) -> float:
    """Parse a Go duration ("5m", "1h30m", "-1s", "300ms") into seconds."""
    s = text.strip()
    sign = 1.0
    if s and s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise InvalidDuration(f"time: invalid duration {text!r}")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise InvalidDuration(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_keep_alive(value: object) -> float:
    """Seconds to keep a model loaded; FOREVER (-1) for any negative value.

    Numbers are seconds (Ollama's JSON number form); strings are Go durations or bare integers.
    """
    if isinstance(value, bool):
        raise InvalidDuration(f'invalid keep_alive {value!r}: want a duration such as "5m" or seconds')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        stripped = value.strip()
        seconds = float(int(stripped)) if re.fullmatch(r"[+-]?\d+", stripped) else parse_go_duration(stripped)
    else:
        raise InvalidDuration(f'invalid keep_alive {value!r}: want a duration such as "5m" or seconds')
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidDuration(f"invalid keep_alive {value!r}")
    return FOREVER if seconds < 0 else seconds
