"""Progress for pull, push and create: Ollama's bars on a terminal, plain status lines otherwise."""

from __future__ import annotations

import shutil
from typing import Any, TextIO

from cli.format import human_bytes

_BAR_WIDTH = 25


def bar_line(status: str, completed: int, total: int, width: int = _BAR_WIDTH) -> str:
    """One bar: ``pulling 8eeb52dfb3bb:  45% ▕███████         ▏  12 MB/ 26 MB``."""
    fraction = min(max(completed / total, 0.0), 1.0) if total > 0 else 0.0
    filled = int(fraction * width)
    bar = "█" * filled + " " * (width - filled)
    sizes = human_bytes(total) if completed >= total else f"{human_bytes(completed)}/{human_bytes(total)}"
    return f"{status}: {int(fraction * 100):3d}% ▕{bar}▏ {sizes}"


class Progress:
    """Renders the NDJSON progress objects of /api/pull, /api/push and /api/create.

    On a terminal, every status and every digest keeps one line that is redrawn in place. Elsewhere (a
    pipe, a log file) each status is printed once, and a digest's line once when it starts and once when
    it completes, so logs stay readable.
    """

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._lines: list[str] = []
        self._keys: list[str] = []
        self._drawn = 0
        self._plain_done: set[str] = set()

    def _set(self, key: str, text: str) -> None:
        if key in self._keys:
            self._lines[self._keys.index(key)] = text
        else:
            self._keys.append(key)
            self._lines.append(text)

    def update(self, event: dict[str, Any]) -> None:
        """Take one progress object (``status`` with optional ``digest``, ``total``, ``completed``)."""
        status = str(event.get("status", ""))
        if not status:
            return
        digest = event.get("digest")
        total = int(event.get("total") or 0)
        completed = int(event.get("completed") or 0)
        if not self.tty:
            self._plain(status, digest, total, completed)
            return
        if digest and total:
            self._set(f"digest:{digest}", bar_line(status, completed, total, self._bar_width()))
        else:
            self._set(f"status:{status}", status)
        self._redraw()

    def message(self, text: str) -> None:
        """A line of its own (a create step, a warning) kept above nothing, in order."""
        self.update({"status": text})

    def _plain(self, status: str, digest: Any, total: int, completed: int) -> None:
        if digest and total:
            done = completed >= total
            key = f"{digest}:{'done' if done else 'start'}"
            if key in self._plain_done:
                return
            self._plain_done.add(key)
            print(bar_line(status, completed, total) if done else f"{status}", file=self.out, flush=True)
            return
        if status in self._plain_done:
            return
        self._plain_done.add(status)
        print(status, file=self.out, flush=True)

    def _bar_width(self) -> int:
        columns = shutil.get_terminal_size((80, 24)).columns
        return max(10, min(_BAR_WIDTH, columns - 50))

    def _redraw(self) -> None:
        # Move up over what was drawn, then rewrite every line (each cleared to its end).
        parts = []
        if self._drawn:
            parts.append(f"\x1b[{self._drawn}F")
        parts.extend(f"\x1b[2K{line}\n" for line in self._lines)
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(self._lines)

    def close(self) -> None:
        """Leave the last drawing on screen (nothing to undo in plain mode)."""
        self.out.flush()
