"""Lets the decode loop's first step after an idle spell wait a moment for jobs that arrived together.

Several requests that arrive at once (a team's clients, a batch script) are popped one by one by the
worker's main thread, each after RQ's bookkeeping of the last. If the decode thread started prefilling
the first prompt at once, that step's threads would take every core from the main thread while it prepares
the others (so each start takes several times longer), and the others' prompts would be prefilled a
whole step later. llama-server takes every request that came in before a step into that step; this is
the same for a worker fed from a queue.

The main thread says, as it hands a job over, whether more jobs are waiting in the queues it reads. If
so, the step after an idle spell waits until the main thread has handed those over too (each renewal
gives it `SETTLE_S`), at most `MAX_WAIT_S` in all. A lone request (nothing else queued) is never held,
and a step that already decodes running sequences never waits.
"""

from __future__ import annotations

import threading
import time

# How long the decode loop waits for the next job of a burst after the main thread said one is queued:
# enough for RQ's bookkeeping, a pop and a prompt's preparation on an uncontended core.
SETTLE_S = 0.03
# The longest a first step is held, however many jobs keep coming.
MAX_WAIT_S = 0.25
# How often a held step looks at the stop flag.
_STOP_POLL_S = 0.05


class StartGate:
    """Shared by the main thread (`handed_over`) and the decode thread (`wait`)."""

    def __init__(self, settle_s: float = SETTLE_S, max_wait_s: float = MAX_WAIT_S):
        self._settle_s = settle_s
        self._max_wait_s = max_wait_s
        self._changed = threading.Condition()
        self._hold_until = 0.0  # monotonic; 0 when nothing is expected

    def handed_over(self, more_waiting: bool) -> None:
        """The main thread handed a job to the decode loop; `more_waiting` if jobs wait behind it that it
        will take next (queued, with a slot free for them)."""
        with self._changed:
            self._hold_until = time.monotonic() + self._settle_s if more_waiting else 0.0
            self._changed.notify_all()

    def wait(self, stop: threading.Event) -> float:
        """Before a step that starts from idle: wait while the main thread expects to hand over more jobs.

        Returns the seconds waited.
        """
        start = time.monotonic()
        deadline = start + self._max_wait_s
        with self._changed:
            while not stop.is_set():
                now = time.monotonic()
                until = min(self._hold_until, deadline)
                if now >= until:
                    break
                self._changed.wait(min(until - now, _STOP_POLL_S))
            self._hold_until = 0.0
        return time.monotonic() - start
