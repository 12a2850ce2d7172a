"""The watchdog of a worker's vital threads: a thread that dies ends the process with EXIT_THREAD_DIED."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from workers.watchdog import EXIT_THREAD_DIED, VitalThreads

# A process whose "decode" thread raises, as a worker's would on an unexpected error; its main thread
# would otherwise sleep on (as a worker's main thread goes on taking jobs).
DYING_PROCESS = textwrap.dedent(
    """
    import logging, sys, threading, time
    from workers.watchdog import VitalThreads

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")

    def decode() -> None:
        time.sleep(0.2)
        raise OverflowError("timestamp out of range for platform time_t")

    VitalThreads(threading.Event()).start(decode, "decode")
    time.sleep(60)
    print("still running")
    """
)


def test_a_thread_that_raises_ends_the_process_with_its_traceback_logged() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", DYING_PROCESS], capture_output=True, text=True, timeout=30, check=False
    )
    took = time.monotonic() - started
    assert done.returncode == EXIT_THREAD_DIED, (done.returncode, done.stderr)
    assert "still running" not in done.stdout
    assert took < 10, took  # at once, not after the main thread's sleep
    assert "CRITICAL the decode thread died" in done.stderr
    assert "OverflowError: timestamp out of range for platform time_t" in done.stderr  # the traceback
    assert "exiting so that the worker is restarted" in done.stderr


def _watch(target: object, stopping: threading.Event) -> list[str]:
    deaths: list[str] = []
    vital = VitalThreads(stopping, on_death=deaths.append)
    thread = vital.start(target, "heartbeat")  # type: ignore[arg-type]
    thread.join(timeout=5)
    assert not thread.is_alive()
    return deaths


def test_a_thread_that_returns_while_the_worker_runs_is_a_death() -> None:
    assert _watch(lambda: None, threading.Event()) == ["the heartbeat thread returned while the worker runs"]


def test_a_thread_that_returns_because_the_worker_stops_is_not() -> None:
    stopping = threading.Event()
    stopping.set()
    assert _watch(lambda: None, stopping) == []


def test_the_main_loops_check_ends_the_process_for_a_thread_that_is_gone() -> None:
    deaths: list[str] = []
    stopping = threading.Event()
    vital = VitalThreads(stopping, on_death=deaths.append)
    release = threading.Event()
    vital.start(release.wait, "decode")
    vital.check()
    assert deaths == []  # alive
    release.set()
    vital.threads[0].join(timeout=5)
    deaths.clear()  # the wrapper's own report of the early return
    vital.check()
    assert deaths == ["the decode thread is gone"]
    stopping.set()
    deaths.clear()
    vital.check()
    assert deaths == []  # stopping: threads end by design
