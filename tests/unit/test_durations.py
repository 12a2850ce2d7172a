"""keep_alive parsing as Ollama reads it."""

from __future__ import annotations

import pytest

from app.durations import FOREVER, InvalidDuration, parse_keep_alive


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
    ],
)
def test_keep_alive_values(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["five minutes", "5x", "", "m", True, None, [1], float("nan")])
def test_bad_keep_alive_names_the_value(value: object) -> None:
    with pytest.raises(InvalidDuration):
        parse_keep_alive(value)
