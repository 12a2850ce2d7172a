"""Graceful shutdown: SIGTERM on a worker, on the API, on the whole stack and on the store worker.

A worker stops taking jobs, lets its running sequences finish for HERD_DRAIN_SECONDS, fails the rest with
a clear error, hands the jobs waiting in its own queue to the shared queue, and leaves Redis as a dead
worker would (no state, not in the worker set). The API and nginx let a stream that is open when they get
their stop signal finish. The store worker stops a pull at once, leaving a partial blob and no manifest.
Each test starts its own stack, since it stops part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from herd.contracts import (
    SHARED_QUEUE,
    WORKERS_SET,
    model_queue_name,
    rq_queue_key,
    worker_queue_name,
    worker_state_key,
)
from herd.settings import SettingsError, load_settings
from stack.processes import ManagedProcess
from stack.settings import StackSettings
from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA, start_stack
from tests.reliability.conftest import job_starts, supervised, wait_for
from tests.support.prompts import endless_stream
from tests.support.registry import running_registry
from tests.support.tiny_gguf import write_tiny_llama
from workers.settings import WorkerSettings

# The mid stream's last few tokens fit in it many times over (well under a second on two cores); the long
# stream waits all of it before it fails, so every second here is a second of test time.
DRAIN_S = 6.0
# Long enough to outlast any drain here; short enough to finish while a stream is being drained.
LONG = endless_stream(GEMMA)
MID_TOKENS = 24
MID = {"model": GEMMA, "prompt": "Count to fifty.", "options": {"temperature": 0, "num_predict": MID_TOKENS}}
STREAM_TOKENS = 40
STREAM = {
    "model": GEMMA,
    "prompt": "Describe the sea.",
    "options": {"temperature": 0, "num_predict": STREAM_TOKENS},
}
WAITING = {"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}


@pytest.mark.parametrize("value", ["-1", "soon", "3601"])
def test_a_bad_drain_setting_stops_the_worker_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HERD_DRAIN_SECONDS", value)
    with pytest.raises(SettingsError, match=f"invalid value '{value}' for HERD_DRAIN_SECONDS"):
        load_settings(WorkerSettings)


def test_the_supervisor_gives_a_worker_its_drain_before_sigkill(tmp_path: Path) -> None:
    settings = StackSettings(HERD_RUN_DIR=tmp_path, OLLAMA_MODELS=tmp_path)
    assert load_settings(WorkerSettings).drain_s == 30
    assert Stack(settings, env={}).worker_stop_timeout() == 40
    assert Stack(settings, env={"HERD_DRAIN_SECONDS": "5"}).worker_stop_timeout() == 15


@dataclass
class StreamRecord:
    """One streamed request read on its own thread: each event with the time it arrived."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    status: int | None = None
    failure: BaseException | None = None
    ended_at: float | None = None

    @property
    def tokens(self) -> int:
        return sum(1 for _, e in self.events if not e.get("done") and "error" not in e)

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1][1] if self.events else {}


def stream_in_thread(base_url: str, body: dict[str, Any]) -> tuple[threading.Thread, StreamRecord]:
    record = StreamRecord()

    def read() -> None:
        try:
            with (
                httpx.Client(base_url=base_url, timeout=120) as client,
                client.stream("POST", "/api/generate", json=body) as response,
            ):
                record.status = response.status_code
                for line in response.iter_lines():
                    if line:
                        record.events.append((time.monotonic(), json.loads(line)))
        except BaseException as exc:  # reported by the test, not lost in the thread
            record.failure = exc
        record.ended_at = time.monotonic()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, record


def wait_exit(proc: ManagedProcess, timeout: float) -> int:
    wait_for(lambda: not proc.alive, timeout, f"{proc.name} to exit")
    code = proc.returncode
    assert code is not None
    return code


def restart_worker(stack: Stack, worker: ManagedProcess, old_pid: int) -> None:
    """Run the supervisor's passes until it has restarted the worker that exited."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (worker.alive and worker.pid != old_pid):
        stack.check_once()
        time.sleep(0.2)
    assert worker.alive and worker.pid != old_pid, worker.log_tail()


@pytest.fixture
def drain_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "OLLAMA_NUM_PARALLEL": "2",
        "OLLAMA_MAX_QUEUE": "8",
        "HERD_DRAIN_SECONDS": str(DRAIN_S),
        "HERD_WORKER_TIMEOUT": "2",
    }
    with start_stack(models_dir, tmp_path_factory.mktemp("run-drain"), env=env) as stack:
        yield stack


def test_sigterm_on_a_worker_finishes_what_fits_the_drain_fails_the_rest_and_requeues_the_waiting(
    drain_stack: Stack,
) -> None:
    base = drain_stack.settings.base_url
    worker = drain_stack.workers[0]
    r = redis.Redis.from_url(drain_stack.settings.stack_redis_url, decode_responses=True)
    private = rq_queue_key(worker_queue_name("w0"))
    gemma_queue = rq_queue_key(model_queue_name(GEMMA))
    shared = rq_queue_key(SHARED_QUEUE)
    with httpx.Client(base_url=base, timeout=120) as c:
        assert c.post("/api/generate", json=WAITING).status_code == 200  # Gemma is now held by w0
    long_thread, long = stream_in_thread(base, LONG)
    mid_thread, mid = stream_in_thread(base, MID)
    wait_for(lambda: long.tokens > 0 and mid.tokens > 0, 60, "both slots to stream")
    waiting: list[httpx.Response] = []

    def send_waiting() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            waiting.append(client.post("/api/generate", json=WAITING))

    waiting_thread = threading.Thread(target=send_waiting, daemon=True)
    waiting_thread.start()
    # Placement sends it to the worker that holds Gemma; both of that worker's slots are busy.
    wait_for(lambda: r.llen(gemma_queue) == 1, 10, "the third request to wait in Gemma's queue")
    # Signal when the mid stream is a few tokens short of its end, so it can finish within the drain
    # however slowly this machine decodes, and is surely still running when the signal comes.
    wait_for(lambda: mid.tokens >= MID_TOKENS - 4, 120, "the mid stream to near its end")
    assert not mid.last.get("done")

    pid = worker.pid
    assert pid is not None
    signalled = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    # While it drains, the worker is out of placement but its heartbeat says it is alive (not dead).
    wait_for(
        lambda: r.llen(gemma_queue) == 0 and r.llen(shared) == 1,
        5,
        "the waiting job to move to the shared queue",
    )
    assert not r.sismember(WORKERS_SET, "w0") and r.exists(worker_state_key("w0"))
    code = wait_exit(worker, DRAIN_S + 15)
    exited = time.monotonic() - signalled
    long_thread.join(timeout=10)
    mid_thread.join(timeout=10)

    assert code == 0, worker.log_tail()
    assert mid.failure is None and mid.status == 200
    assert mid.last.get("done") is True and mid.last["eval_count"] == MID_TOKENS, mid.last
    assert any(t > signalled for t, _ in mid.events[:-1])  # it streamed on after the signal
    assert long.failure is None and long.status == 200
    assert "worker shutting down" in str(long.last.get("error")), long.last
    assert long.ended_at is not None and mid.ended_at is not None
    long_failed_after = long.ended_at - signalled
    assert DRAIN_S - 0.5 <= long_failed_after <= DRAIN_S + 8, long_failed_after
    # Gone from Redis like a dead worker; the waiting job is intact in the shared queue, not started.
    assert not r.exists(worker_state_key("w0")) and not r.sismember(WORKERS_SET, "w0")
    assert r.llen(private) == 0 and r.llen(shared) == 1 and not waiting
    log = worker.log_tail(200)
    # The waiting job was in Gemma's queue, not w0's own: the API's sweeper moved it once nobody read it.
    assert "msg=drained" in log and "failed=1" in log and "finished=1" in log, log
    assert 'msg="model unloaded"' in log and "reason=worker_shutdown" in log, log

    # The restarted worker (same id) takes the requeued job from the shared queue and answers it.
    restart_worker(drain_stack, worker, pid)
    waiting_thread.join(timeout=60)
    assert len(waiting) == 1 and waiting[0].status_code == 200, waiting
    assert waiting[0].json()["done"] is True
    assert r.llen(shared) == 0
    r.close()
    print(
        f"\nworker SIGTERM: mid stream finished {mid.ended_at - signalled:.2f}s after it ({MID_TOKENS} tokens), "
        f"long stream failed after {long_failed_after:.2f}s (HERD_DRAIN_SECONDS={DRAIN_S:g}), "
        f"worker exited 0 after {exited:.2f}s, 1 waiting job requeued and served after restart"
    )


def test_sigterm_on_an_idle_worker_that_never_ran_a_job_exits_at_once(drain_stack: Stack) -> None:
    # RQ's teardown joined its command listener, which sleeps up to 60 s: a worker that had never run a
    # job (nothing else woke it) was SIGKILLed after its 40 s grace.
    worker = drain_stack.workers[0]
    with supervised(drain_stack):
        time.sleep(2)  # well into its idle polling
        assert not job_starts(drain_stack), "the worker ran a job"
        pid = worker.pid
        assert pid is not None
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        code = wait_exit(worker, 45)
        took = time.monotonic() - signalled
        assert code == 0, worker.log_tail()
        # The blocking pop is cut into one-second polls; no running sequence means no drain to wait for.
        assert took <= 5, took
        # And the supervisor brings it back, as it would after any exit.
        wait_for(lambda: worker.alive and worker.pid != pid, 30, "the supervisor to restart the worker")
    print(f"\nidle worker (never ran a job) SIGTERM under the supervisor: exited 0 after {took:.2f}s")


@pytest.fixture
def api_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        models_dir, tmp_path_factory.mktemp("run-api-stop"), env={"OLLAMA_NUM_PARALLEL": "1"}
    ) as s:
        yield s


def _stream_completed(record: StreamRecord) -> None:
    assert record.failure is None and record.status == 200, record.failure
    assert record.last.get("done") is True and record.last["eval_count"] == STREAM_TOKENS, record.last
    assert record.tokens > 0


def test_a_stream_open_when_the_api_gets_sigterm_completes(api_stack: Stack) -> None:
    api = api_stack.api
    assert api is not None and api.pid is not None
    thread, record = stream_in_thread(api_stack.settings.base_url, STREAM)
    # Half-way, so the rest fits gunicorn's graceful timeout however slowly this machine decodes.
    wait_for(lambda: record.tokens >= STREAM_TOKENS // 2, 120, "the stream to be half-way")
    signalled = time.monotonic()
    # As `docker compose stop` does: SIGTERM to gunicorn's master only, which stops its workers gracefully.
    os.kill(api.pid, signal.SIGTERM)
    thread.join(timeout=60)
    _stream_completed(record)
    assert record.ended_at is not None
    code = wait_exit(api, 10)
    assert code == 0, api.log_tail()
    tokens_after = sum(1 for t, e in record.events if t > signalled and not e.get("done"))
    assert tokens_after > 0  # the stream really was in flight when the signal came
    print(
        f"\nAPI SIGTERM: the open stream got {tokens_after} more tokens and its final chunk "
        f"{record.ended_at - signalled:.2f}s after the signal; gunicorn exited 0"
    )


def test_stopping_the_stack_lets_an_open_stream_finish_then_stops_everything(api_stack: Stack) -> None:
    thread, record = stream_in_thread(api_stack.settings.base_url, STREAM)
    # Half-way, so the rest fits gunicorn's graceful timeout however slowly this machine decodes.
    wait_for(lambda: record.tokens >= STREAM_TOKENS // 2, 120, "the stream to be half-way")
    procs = [api_stack.nginx, api_stack.api, *api_stack.workers, api_stack.store_worker, api_stack.redis]
    signalled = time.monotonic()
    stopper = threading.Thread(target=api_stack.stop, daemon=True)
    stopper.start()
    thread.join(timeout=60)
    stopper.join(timeout=60)
    took = time.monotonic() - signalled
    _stream_completed(record)
    assert not stopper.is_alive()
    assert all(p is not None and not p.alive for p in procs)
    # Every process stopped on its own graceful signal, none needed SIGKILL.
    codes = {p.name: p.returncode for p in procs if p is not None}
    assert all(code == 0 for code in codes.values()), codes
    print(
        f"\nstack stop with a stream open: the stream completed, every process exited 0, {took:.2f}s in all"
    )


@pytest.fixture
def store_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(models_dir, tmp_path_factory.mktemp("run-store-stop")) as s:
        yield s


def test_sigterm_on_the_store_worker_mid_pull_fails_it_clearly_and_leaves_the_store_whole(
    store_stack: Stack, models_dir: Path, tmp_path: Path
) -> None:
    store_worker = store_stack.store_worker
    assert store_worker is not None and store_worker.pid is not None
    gguf = write_tiny_llama(tmp_path / "pulled.gguf", seed=211)
    digest = "sha256-" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    blob = models_dir / "blobs" / digest
    partial = blob.with_name(blob.name + "-partial")
    with running_registry("127.0.0.1", None) as registry:
        registry.add_model("library/shutdown-pull", "v1", gguf)
        name = f"{registry.host}/library/shutdown-pull:v1"
        manifest = models_dir / "manifests" / registry.host / "library" / "shutdown-pull" / "v1"
        registry.slow_s = 0.5  # about 2 s for the tiny model's blob
        base = store_stack.settings.base_url
        with httpx.Client(base_url=base, timeout=60) as c:
            with c.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as response:
                assert response.status_code == 200
                lines = (json.loads(line) for line in response.iter_lines() if line)
                for progress in lines:
                    if progress.get("digest") == digest.replace("-", ":") and progress.get("completed"):
                        break  # the model's bytes are arriving
                pid = store_worker.pid
                signalled = time.monotonic()
                os.kill(pid, signal.SIGTERM)
                rest = list(lines)
            errored = time.monotonic() - signalled
            assert rest and "store worker shutting down" in str(rest[-1].get("error")), rest
            code = wait_exit(store_worker, 15)
            exited = time.monotonic() - signalled
            assert code == 0, store_worker.log_tail()
            # Nothing in the store points at a blob that is not there; what arrived stays for a resume.
            assert not manifest.exists()
            assert not blob.exists() and partial.exists()
            restart_worker(store_stack, store_worker, pid)
            registry.slow_s = 0
            again = c.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
            assert again.status_code == 200, again.text
            assert manifest.is_file() and blob.is_file() and not partial.exists()
            resumed = [h for h in registry.hits if h.range and h.path.endswith(digest.replace("-", ":"))]
            assert resumed, "the second pull downloaded the blob from the start"
            c.request("DELETE", "/api/delete", json={"model": name})
    print(
        f"\nstore worker SIGTERM mid-pull: the client got its error after {errored:.3f}s, "
        f"the worker exited 0 after {exited:.2f}s; no manifest, partial kept and resumed"
    )


def test_sigterm_on_the_store_worker_while_redis_hangs_exits_within_5s(store_stack: Stack) -> None:
    # The audit's store worker ignored SIGTERM for 40 s with Redis down. Redis is frozen here (SIGSTOP)
    # rather than killed: the supervisor would restart a dead one, and a frozen one is the harder case
    # (every call waits on it, where a dead one refuses at once).
    store_worker = store_stack.store_worker
    redis_proc = store_stack.redis
    assert store_worker is not None and redis_proc is not None and redis_proc.pid is not None
    with supervised(store_stack):
        pid = store_worker.pid
        assert pid is not None
        os.kill(redis_proc.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: "Redis unreachable" in store_worker.log_tail(50),
                30,
                "the store worker to find Redis unreachable",
            )
            signalled = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            code = wait_exit(store_worker, 45)
            took = time.monotonic() - signalled
        finally:
            os.kill(redis_proc.pid, signal.SIGCONT)
        assert code == 0, store_worker.log_tail()
        assert took <= 5, took
        # With Redis back, the supervisor's restart serves again.
        wait_for(lambda: store_worker.alive and store_worker.pid != pid, 30, "the store worker's restart")
        r = redis.Redis.from_url(store_stack.settings.stack_redis_url)
        state = worker_state_key(f"store-{socket.gethostname()}-{store_worker.pid}")
        wait_for(lambda: bool(r.exists(state)), 30, "the restarted store worker's heartbeat")
        r.close()
    print(f"\nstore worker SIGTERM with Redis frozen: exited 0 after {took:.2f}s")
