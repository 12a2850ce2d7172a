"""The error type raised for bad template syntax or a failed execution, and its position format."""

from __future__ import annotations


class GoTemplateError(ValueError):
    """A template parse or execution error; the message names the problem and its line and column."""


def _position(source: str, offset: int) -> str:
    """Return 'line L, col C' (both 1-based) for a character offset into source."""
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, col {col}"
