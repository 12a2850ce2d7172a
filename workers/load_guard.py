"""No crash loop on a model that kills the worker while llama.cpp loads it.

A segfault inside llama_model_load_from_file takes the whole worker with it; the supervisor restarts
the worker, the next request for the model loads it again, and the worker dies again. So each load
leaves a marker naming the model and the worker's pid, removed when the load returns (loaded or
refused). A marker whose process is gone is a load that crashed: it is counted, and further loads of
that model fail at once with an error that says so, for a back-off that doubles with each crash
(30 s, 60 s, ... up to an hour). After the back-off one more load is tried; a load that succeeds
clears the count.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from workers.repack_probe import model_digest

BACKOFF_S = 30.0
BACKOFF_MAX_S = 3600.0
_CRASHES = "crashes.json"


class LoadCrashedBefore(RuntimeError):
    """Loading this model crashed a worker recently; the message says when and until when."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def backoff_s(crashes: int) -> float:
    """Seconds to refuse a model after its ``crashes``-th crash."""
    return min(BACKOFF_S * 2 ** max(crashes - 1, 0), BACKOFF_MAX_S)


class LoadGuard:
    """Markers and crash counts under ``directory`` (one per store or run, shared by its workers)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def _crashes(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads((self.directory / _CRASHES).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_crashes(self, data: dict[str, dict[str, float]]) -> None:
        tmp = self.directory / f"{_CRASHES}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.directory / _CRASHES)

    def _collect(self, digest: str) -> None:
        """Turn markers of dead processes into crash records."""
        data = self._crashes()
        changed = False
        for marker in self.directory.glob(f"loading-{digest}-*"):
            try:
                pid = int(marker.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if pid == os.getpid() or _alive(pid):
                continue
            entry = data.setdefault(digest, {"crashes": 0, "last": 0.0})
            entry["crashes"] += 1
            entry["last"] = max(entry["last"], marker.stat().st_mtime)
            marker.unlink(missing_ok=True)
            changed = True
        if changed:
            self._write_crashes(data)

    @contextlib.contextmanager
    def loading(self, model_path: Path) -> Iterator[None]:
        """Around one llama.cpp load of ``model_path``; raises LoadCrashedBefore while backing off."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            digest = model_digest(model_path)
            self._collect(digest)
        except OSError:
            yield  # nowhere to keep markers (a read-only store): load unguarded
            return
        entry = self._crashes().get(digest)
        if entry and entry.get("crashes", 0) > 0:
            until = entry["last"] + backoff_s(int(entry["crashes"]))
            if time.time() < until:
                raise LoadCrashedBefore(
                    f"loading {model_path.name} crashed a worker {int(entry['crashes'])} time(s), last at "
                    f"{time.strftime('%H:%M:%S', time.localtime(entry['last']))}; it is not loaded again "
                    f"before {time.strftime('%H:%M:%S', time.localtime(until))}"
                )
        marker = self.directory / f"loading-{digest}-{os.getpid()}"
        marker.touch()
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)
        if entry:  # loaded: the model is fine again
            data = self._crashes()
            data.pop(digest, None)
            with contextlib.suppress(OSError):
                self._write_crashes(data)
