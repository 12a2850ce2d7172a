"""Container healthchecks of Herd's images (compose.yaml): exit 0 when healthy, 1 with the reason otherwise.

healthcheck.py http URL   the URL answers 200 (the API's /health/live)
healthcheck.py worker     this worker's state key in Redis is fresh (its heartbeat runs)
healthcheck.py redis      Redis answers a PING with this service's HERD_REDIS_URL (the store worker)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import redis

from herd.contracts import worker_state_key
from herd.redis_connect import sync_client
from herd.settings import CommonSettings, load_settings

TIMEOUT_S = 3.0


def check_http(url: str) -> str | None:
    """None when ``url`` answers 200, else why not."""
    # HTTP_PROXY is set in the containers: a check of our own port must never go through it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: status {status}"


def _client() -> redis.Redis:
    if not os.environ.get("HERD_REDIS_URL"):
        raise SystemExit("unhealthy: HERD_REDIS_URL is not set")
    # The processes' own client builder: rediss:// with HERD_REDIS_CA, and Sentinel URLs, as they connect.
    settings = load_settings(CommonSettings)
    return sync_client(settings, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


def check_redis() -> str | None:
    """None when Redis answers PING, else why not."""
    client = _client()
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    return None


def check_worker() -> str | None:
    """None when this worker's state key (refreshed every heartbeat, expiring after three) exists."""
    worker_id = os.environ.get("HERD_WORKER_ID")
    if not worker_id:
        return "HERD_WORKER_ID is not set"
    client = _client()
    try:
        present = bool(client.exists(worker_state_key(worker_id)))
    except redis.RedisError as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    return None if present else f"worker {worker_id!r} has no fresh heartbeat in Redis"


def main(argv: list[str]) -> int:
    """Run the check ``argv`` names."""
    if argv[:1] == ["http"] and len(argv) == 2:
        problem = check_http(argv[1])
    elif argv == ["worker"]:
        problem = check_worker()
    elif argv == ["redis"]:
        problem = check_redis()
    else:
        print(f"usage: healthcheck.py http URL | worker | redis (got {argv!r})", file=sys.stderr)
        return 2
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
