"""Threads a worker cannot live without: one that dies takes the process down, so that it is restarted.

A worker whose decode or heartbeat thread is gone still answers RQ, so it would go on taking jobs it can
never run (no decode) or look dead to the API while alive (no heartbeat), and nothing would restart it.
Ending the process instead hands the problem to the supervisor (`herd up`, compose's restart policy),
and the API fails the jobs of the dead incarnation (app/relay.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# The process's exit status when a vital thread died (sysexits' EX_SOFTWARE: an internal error).
EXIT_THREAD_DIED = 70


def die(reason: str) -> None:
    """Log why, flush the logs, and end the process at once with EXIT_THREAD_DIED."""
    log.critical("%s; exiting so that the worker is restarted", reason)
    logging.shutdown()
    # Not sys.exit: from any thread but the main one it would end only that thread. The main thread may be
    # inside a job or a blocking Redis call, and nothing it would clean up survives a restart anyway.
    os._exit(EXIT_THREAD_DIED)


class VitalThreads:
    """Starts daemon threads whose death (an exception, or returning while not stopping) ends the process."""

    def __init__(self, stopping: threading.Event, on_death: Callable[[str], None] = die):
        self._stopping = stopping
        self._on_death = on_death
        self.threads: list[threading.Thread] = []

    def start(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Run `target` on a new daemon thread named `name`, watched."""
        thread = threading.Thread(target=self._run, args=(target, name), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def _run(self, target: Callable[[], None], name: str) -> None:
        try:
            target()
        except BaseException:
            log.critical("the %s thread died", name, exc_info=True)
            self._on_death(f"the {name} thread died")
            return
        if not self._stopping.is_set():
            self._on_death(f"the {name} thread returned while the worker runs")

    def check(self) -> None:
        """From the main loop: a watched thread no longer alive ends the process.

        `_run` reports a death as it happens; this catches one it could not report (its own logging failed).
        """
        if self._stopping.is_set():
            return
        for thread in self.threads:
            if not thread.is_alive():
                self._on_death(f"the {thread.name} thread is gone")
                return
