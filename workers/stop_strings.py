"""Stop strings in generated text: where the first one starts, and how much text to hold back because it
may be the start of one (sent once the next tokens show it is not)."""

from __future__ import annotations


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop string in text, if any."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-n:]):
                best = n
                break
    return best
