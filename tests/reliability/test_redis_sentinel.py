"""Redis is not a silent single point of failure: with a Sentinel URL, Herd follows a failover by itself.

A real primary, replica and Sentinel (tests/support/redis_sentinel.py); the whole stack runs on them through
HERD_REDIS_URL=redis+sentinel://... (HERD_REDIS_EXTERNAL). The primary is SIGKILLed while requests run; once
the Sentinel has promoted the replica, new requests succeed, with no process of Herd restarted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from stack.redis_auth import WORKER_USER, user_password
from tests.e2e.conftest import start_stack
from tests.reliability.conftest import wait_for
from tests.support.redis_sentinel import MASTER, replicated_redis

MODEL = "tiny-a:latest"
# How long the Sentinel waits before it calls the primary down (production: seconds; here short).
DOWN_AFTER_MS = 500
ADMIN = "sentinel-test-admin-password"


def _generate(client: httpx.Client) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2, "temperature": 0}}
    return client.post("/api/generate", json=body)


def test_new_requests_succeed_after_a_failover_mid_traffic(models_dir: Path, tmp_path: Path) -> None:
    with replicated_redis(tmp_path / "redis", ADMIN, down_after_ms=DOWN_AFTER_MS) as replicated:
        url = (
            f"redis+sentinel://{WORKER_USER}:{user_password(ADMIN, WORKER_USER)}"
            f"@127.0.0.1:{replicated.sentinel_port}/{MASTER}/0"
        )
        with (
            start_stack(
                models_dir,
                tmp_path / "run",
                env={"HERD_WORKER_TIMEOUT": "5"},
                HERD_REDIS_EXTERNAL=True,
                HERD_REDIS_URL=url,
            ) as stack,
            httpx.Client(base_url=stack.url, timeout=60) as client,
        ):
            pids = {p.name: p.pid for p in [stack.api, *stack.workers, stack.store_worker] if p is not None}
            assert _generate(client).status_code == 200  # loads the model before the traffic starts

            outcomes: list[tuple[float, int]] = []
            stop = threading.Event()

            def traffic() -> None:
                with httpx.Client(base_url=stack.url, timeout=60) as own:
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            status = _generate(own).status_code
                        except httpx.HTTPError:
                            status = -1
                        outcomes.append((started, status))
                        if status != 200:
                            stop.wait(0.1)  # a failure comes back at once while Redis is away: no busy loop

            thread = threading.Thread(target=traffic, daemon=True)
            thread.start()
            wait_for(lambda: len(outcomes) >= 3, 30, "traffic before the failover")
            assert {s for _, s in outcomes} == {200}, outcomes

            killed_at = time.monotonic()
            assert replicated.primary.pid is not None
            os.kill(replicated.primary.pid, signal.SIGKILL)
            wait_for(
                lambda: replicated.master_address() == ("127.0.0.1", replicated.replica_port),
                30,
                "the Sentinel to promote the replica",
            )
            promoted_after = time.monotonic() - killed_at

            # New requests: the first may still meet a connection to the dead primary; within a few
            # seconds of the promotion every one succeeds.
            deadline = time.monotonic() + 30
            while _generate(client).status_code != 200:
                assert time.monotonic() < deadline, "no request succeeded within 30 s of the failover"
            recovered_after = time.monotonic() - killed_at
            for _ in range(3):
                response = _generate(client)
                assert response.status_code == 200, response.text
                assert response.json()["done"] is True

            # The traffic goes on past the recovery (a request caught in the failover may take a few
            # seconds to be told it was lost): its requests after the recovery must all succeed.
            wait_for(
                lambda: len([t for t, _ in outcomes if t > killed_at + recovered_after]) >= 3,
                30,
                "traffic after the recovery",
            )
            stop.set()
            thread.join(timeout=60)
            assert not thread.is_alive(), "a request in flight across the failover never ended"
            after = [s for t, s in outcomes if t > killed_at + recovered_after]
            assert after and set(after) == {200}, outcomes
            # Nothing was restarted: the same processes serve on the new primary.
            now = {p.name: p.pid for p in [stack.api, *stack.workers, stack.store_worker] if p is not None}
            assert now == pids
            failed = sorted(s for _, s in outcomes if s != 200)
            # A request that failed did so with a status (503 while Redis is away), never a dropped connection.
            assert -1 not in failed, outcomes
            print(
                f"\nsentinel failover: promoted {promoted_after:.1f}s after the kill, requests succeed again "
                f"{recovered_after:.1f}s after it; {len(failed)} of {len(outcomes)} traffic requests failed "
                f"(statuses {sorted(set(failed))})"
            )
