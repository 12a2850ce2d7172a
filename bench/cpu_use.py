"""CPU time by role (Herd's worker, its API, Redis, nginx, llama-server, the load client) over a phase.

On a machine with as many cores as decode threads, every CPU-second the API, Redis and nginx spend
relaying tokens is taken from the decode; these figures show how many per generated token. Read from
/proc: the processes counted are this one and its descendants (every server the benchmark starts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# Command-line fragments that name a process's role, first match wins.
ROLES = (
    ("llama-server", "llama-server"),
    ("workers.main", "herd worker"),
    ("workers.store", "herd store worker"),
    ("gunicorn", "herd api"),
    ("redis-server", "redis"),
    ("nginx", "nginx"),
)
CLIENT = "load client"
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """The process's parent pid and its CPU seconds (user + system, every thread), or None if gone."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after its last ")" are plain.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S


def _role(pid: int) -> str:
    try:
        cmdline = (
            (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "other"
    return next((role for fragment, role in ROLES if fragment in cmdline), "other")


def cpu_by_role(root: int | None = None) -> dict[str, float]:
    """CPU seconds so far of `root` (default: this process) and its descendants, summed by role."""
    root = os.getpid() if root is None else root
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if pid in stats:
            role = CLIENT if pid == root else _role(pid)
            totals[role] = totals.get(role, 0.0) + stats[pid][1]
    return totals


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds by role between two readings (a process that ended in between is not counted)."""
    return {
        role: after[role] - before.get(role, 0.0) for role in after if after[role] > before.get(role, 0.0)
    }
