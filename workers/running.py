"""The sequences a worker runs, by job id: shared by the job thread, the decode thread and the drain."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from herd.contracts import GenerateJob
from herd.templates.output_split import OutputSplitter
from workers.cache import LoadedModel


@dataclass
class Running:
    """One generation handed to an engine: its job, the model it holds, and how long the load took."""

    job: GenerateJob
    loaded: LoadedModel
    load_ns: int
    output: OutputSplitter | None = None  # set when the output splits (thinking, tool calls)


class RunningJobs:
    """The running sequences under one lock, and the error the drain ends any of them with."""

    def __init__(self) -> None:
        self._jobs: dict[str, Running] = {}
        self._lock = threading.Lock()
        # Jobs the drain ran out of time for, with their error: the decode loop ends them with it.
        self._shutdown_errors: dict[str, str] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def count_unlocked(self) -> int:
        """len() without the lock, for a signal handler (which must not wait on it); len() is atomic."""
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def add(self, job_id: str, running: Running) -> None:
        with self._lock:
            self._jobs[job_id] = running

    def get(self, job_id: str) -> Running | None:
        with self._lock:
            return self._jobs.get(job_id)

    def pop(self, job_id: str) -> Running | None:
        with self._lock:
            return self._jobs.pop(job_id, None)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def fail_all(self, message: str) -> dict[str, Running]:
        """Mark every running job to end with `message` when cancelled; returns them, in one locked step."""
        with self._lock:
            left = dict(self._jobs)
            self._shutdown_errors.update(dict.fromkeys(left, message))
        return left

    def take_all(self) -> list[Running]:
        """Empty the table; returns what was still in it."""
        with self._lock:
            stuck, self._jobs = list(self._jobs.values()), {}
        return stuck

    def has_shutdown_error(self, job_id: str) -> bool:
        return job_id in self._shutdown_errors

    def pop_shutdown_error(self, job_id: str) -> str | None:
        """The error the drain set for this job, if any, removed."""
        return self._shutdown_errors.pop(job_id, None)
