"""keep_alive values as Ollama reads them: Go duration strings, plain seconds, negatives for forever."""

from __future__ import annotations

import math
import re

# Go's time.ParseDuration units, in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

FOREVER = -1.0
# The longest Go time.Duration (2**63 - 1 ns, about 292 years): Ollama's keep_alive cannot say more, and
# a negative one becomes exactly that. Anything longer is kept for ever here too, instead of reaching a
# worker whose timers and timestamps (time_t, datetime) overflow on it.
MAX_KEEP_ALIVE_S = (2**63 - 1) / 1e9


class InvalidDuration(ValueError):
    """A keep_alive value that is neither a number nor a Go duration string."""


def parse_go_duration(text: str) -> float:
    """Parse a Go duration ("5m", "1h30m", "-1s", "300ms") into seconds (±inf when it overflows a float)."""
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


def _seconds(value: object) -> float:
    """The seconds ``value`` says, before saturation: any sign, possibly ±inf for a huge string."""
    if isinstance(value, bool):
        raise InvalidDuration(f'invalid keep_alive {value!r}: want a duration such as "5m" or seconds')
    if isinstance(value, int):
        # Compared before float(), which raises OverflowError on a JSON integer of hundreds of digits.
        return FOREVER if value < 0 or value > MAX_KEEP_ALIVE_S else float(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            # Not a JSON number at all (Python's decoder takes NaN and 1e999; Go's refuses both).
            raise InvalidDuration(f"invalid keep_alive {value!r}")
        return value
    if isinstance(value, str):
        stripped = value.strip()
        # float() of a long digit string is inf, never an error: it saturates below like any long one.
        return float(stripped) if re.fullmatch(r"[+-]?\d+", stripped) else parse_go_duration(stripped)
    raise InvalidDuration(f'invalid keep_alive {value!r}: want a duration such as "5m" or seconds')


def parse_keep_alive(value: object) -> float:
    """Seconds to keep a model loaded; FOREVER (-1) for any negative value and any beyond MAX_KEEP_ALIVE_S.

    Numbers are seconds (Ollama's JSON number form); strings are Go durations or bare integers.
    """
    seconds = _seconds(value)
    return FOREVER if seconds < 0 or seconds > MAX_KEEP_ALIVE_S else seconds
