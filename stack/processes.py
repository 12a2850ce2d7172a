"""A real child process that can be started, health-checked, stopped and restarted.

The stack supervisor runs redis-server, gunicorn, the workers and nginx through this class, and the test
fixtures start the same binaries with it. Each child gets its own process group, so that stopping it
also stops whatever it forked (gunicorn's and nginx's workers) and so that a Ctrl-C in the terminal
reaches only the supervisor, which then stops the children in order.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A managed process failed to start, died, or did not become ready."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        text = message if not log_tail else f"{message}\n--- last lines of the log ---\n{log_tail}"
        super().__init__(text)
        self.log_tail = log_tail


class ProcessDied(ProcessError):
    """The process exited while it was expected to run."""


class ProcessNotReady(ProcessError):
    """The process is running but its readiness check did not pass in time."""


def describe_exit(returncode: int) -> str:
    """'exited with code 3' or 'was killed by SIGKILL', from a Popen return code."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child when the supervisor dies, if supported.

    Without it a supervisor killed with SIGKILL would leave redis-server, gunicorn and nginx running
    (they are in their own process groups, so nothing else reaches them) and holding the ports.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever signal us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class ManagedProcess:
    """One child process: argv, environment, working directory and a log file that takes its output."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pid_path: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """``env`` is the child's whole environment (default: a copy of ours); stdout and stderr go to
        ``log_path``, appended to across restarts."""
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.pid_path = pid_path
        self.die_with_parent = die_with_parent
        self.restarts = 0
        self.started_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        # Set once stop() has swept the group: after that the pid may be reused by an unrelated
        # process, which must never be signalled.
        self._group_swept = False
        # The graceful stop signal terminate() already sent this process, which stop() must not send
        # again: a Herd worker reads a second SIGTERM as "cut the drain now" (Ctrl-C twice).
        self._stop_signal_sent: int | None = None

    # --- state -------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id), or None before the first start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """Whether the child has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    def uptime(self) -> float:
        """Seconds since the last start (0 before the first)."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines the child wrote since its last start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child in a new session (its own process group) with output going to the log."""
        if self.alive:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._log_offset = log.seek(0, os.SEEK_END)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"--- herd: starting {self.name} at {stamp}: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_parent_death_signal() if self.die_with_parent else None,
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        finally:
            log.close()  # the child holds its own copy of the descriptor
        self.started_at = time.monotonic()
        self._group_swept = False
        self._stop_signal_sent = None
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._proc.pid}\n")
        logger.info("started process=%s pid=%d log=%s", self.name, self._proc.pid, self.log_path)

    def check_running(self) -> None:
        """Raise ProcessDied, with the log's last lines, when the child is not running."""
        if self._proc is None:
            raise ProcessDied(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise ProcessDied(f"{self.name} {describe_exit(code)}", self.log_tail())

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
        """Poll ``check`` until it returns True; fail at once if the child exits meanwhile.

        ``check`` returns False while the service is not ready yet; an OSError from it (connection
        refused, reset) counts as not ready too. Any other exception propagates, which lets a caller's
        check fail fast on conditions of its own. The child is left running on failure: the caller
        decides whether to stop it.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            try:
                if check():
                    # It may have answered and died at once (a port already served by someone else).
                    self.check_running()
                    return
            except OSError as exc:
                logger.debug("process=%s not ready yet: %s", self.name, exc)
            if time.monotonic() >= deadline:
                raise ProcessNotReady(f"{self.name} was not ready after {timeout:g}s", self.log_tail())
            time.sleep(interval)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group; a group that is gone already is fine."""
        if self._proc is None or self._group_swept:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Ask the whole group to stop (SIGTERM, or ``sig``) without waiting; stop() then waits."""
        if self.alive:
            self.send_signal(sig)
            self._stop_signal_sent = sig

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM) to the group, wait up to ``timeout``, then SIGKILL it; returns the exit status.

        ``sig`` is the process's graceful stop: SIGTERM for gunicorn and the workers, SIGQUIT for nginx
        (whose SIGTERM drops open connections); it is sent once, not again after terminate() sent it. Safe
        to call again, and on a child that already exited: the group still gets a SIGKILL then, so nothing
        it forked outlives it.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            logger.info("stopping process=%s pid=%d", self.name, proc.pid)
            if self._stop_signal_sent != sig:
                self.send_signal(sig)
                self._stop_signal_sent = sig
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "process=%s pid=%d ignored %s for %gs; killing it",
                    self.name,
                    proc.pid,
                    signal.Signals(sig).name,
                    timeout,
                )
                self.send_signal(signal.SIGKILL)
                proc.wait()
        # Children of the leader that outlived it (or ignored SIGTERM) are still in its group.
        self.send_signal(signal.SIGKILL)
        self._group_swept = True
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)
        return proc.returncode

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the child (if it runs) and start it again with the same argv and environment."""
        self.stop(timeout)
        self.restarts += 1
        self.start()

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"
