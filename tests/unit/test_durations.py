"""keep_alive parsing as Ollama reads it."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from herd.durations import FOREVER, MAX_KEEP_ALIVE_S, InvalidDuration, parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("10s", 10.0),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
        (42, 42.0),
        (1.5, 1.5),
        ("120", 120.0),
        (-1, FOREVER),
        ("-1", FOREVER),
        ("-1m", FOREVER),
        (-0.5, FOREVER),
        # Past Go's longest Duration (about 292 years) a keep_alive saturates to for ever, as in Ollama,
        # instead of overflowing the worker's timestamps (the audit's 1e15 wedged a worker).
        (1e15, FOREVER),
        (1e308, FOREVER),
        (10**400, FOREVER),
        (-(10**400), FOREVER),
        ("9" * 5000, FOREVER),
        ("-" + "9" * 5000, FOREVER),
        ("99999999999999h", FOREVER),
        ("9" * 400 + "h", FOREVER),
        (9_223_372_036, 9_223_372_036.0),
        (9_223_372_037, FOREVER),
        ("2562047h", 2562047 * 3600.0),
        ("2562048h", FOREVER),
    ],
)
def test_keep_alive_values(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["five minutes", "5x", "", "m", True, None, [1], float("nan"), float("inf"), "1e400s"]
)
def test_bad_keep_alive_names_the_value(value: object) -> None:
    with pytest.raises(InvalidDuration):
        parse_keep_alive(value)


def test_every_kept_duration_fits_a_timestamp() -> None:
    # The longest finite keep_alive still gives an expiry that time_t and datetime can hold.
    longest = parse_keep_alive(MAX_KEEP_ALIVE_S)
    assert longest == MAX_KEEP_ALIVE_S
    expiry = time.time() + longest
    assert dt.datetime.fromtimestamp(expiry, dt.UTC).year > 2300
    time.gmtime(expiry)
