"""Shared helpers of the reliability suite: the e2e model store, log parsing, memory and latency figures.

Every test here starts its own stack (its own settings, its own faults), so none of them can disturb
another's figures; the models come from the e2e suite's session store.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from herd.contracts import WorkerState, worker_state_key
from stack.nginx import logs_dir
from stack.supervisor import Stack
from tests.e2e.conftest import models_dir  # noqa: F401  (the session fixture, shared with e2e)


@contextmanager
def supervised(stack: Stack) -> Iterator[list[int]]:
    """The stack's own supervision loop (what `herd up` runs) on a thread; on exit it stops the stack.

    Yields the list that receives the loop's exit status once it ends (0: it stopped when asked, not
    because it gave up on a process).
    """
    outcome: list[int] = []
    thread = threading.Thread(
        target=lambda: outcome.append(stack.run_forever(install_signal_handlers=False)),
        name="supervisor",
        daemon=True,
    )
    thread.start()
    try:
        yield outcome
    finally:
        stack.request_stop()
        thread.join(timeout=180)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def wait_heartbeats(stack: Stack, count: int, worker_id: str = "w0", timeout: float = 15) -> WorkerState:
    """Wait until the worker has heartbeated ``count`` more times; return its state then.

    A worker whose heartbeat thread died fails this (its state stops changing, then expires), as fixed
    sleeps of several heartbeats checked before, without waiting longer than the heartbeats take.
    """
    seen: set[float] = set()
    state: WorkerState | None = None
    with redis.Redis.from_url(stack.settings.stack_redis_url, decode_responses=True) as r:

        def beat() -> bool:
            nonlocal state
            doc = r.get(worker_state_key(worker_id))
            if doc:
                state = WorkerState.model_validate_json(doc)
                seen.add(state.heartbeat_at)
            return len(seen) > count  # the first value read is the heartbeat before the wait

        wait_for(beat, timeout, f"{count} more heartbeats of worker {worker_id}")
    assert state is not None
    return state


_JOB_STARTED = re.compile(r'msg="job started" request_id=(\S+) job=(\S+)')


def job_starts(stack: Stack) -> Counter[str]:
    """How many times each request id was started by any worker, read from the workers' log files."""
    starts: Counter[str] = Counter()
    for log in logs_dir(stack.settings).glob("worker-*.log"):
        for match in _JOB_STARTED.finditer(log.read_text(errors="replace")):
            starts[match.group(1).strip('"')] += 1
    return starts


def rss_kib(pid: int) -> int:
    """A process's resident set size (VmRSS) in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS line for pid {pid} (a kernel thread, or not running)")


def children(pid: int) -> list[int]:
    """The direct children of a process (gunicorn's master forks its uvicorn workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]
