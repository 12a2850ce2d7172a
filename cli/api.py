"""The HTTP client the CLI uses: JSON calls, NDJSON streams and blob uploads, errors as one message."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

_CHUNK = 1 << 20


class ClientError(Exception):
    """A failed call, worded for the user (the CLI prints it after ``Error: ``)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _error_text(response: httpx.Response) -> str:
    """The API's ``{"error": ...}`` message, else the status line (a proxy's HTML page says nothing useful)."""
    try:
        body = json.loads(response.read() or b"null")
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return f"{response.status_code} {response.reason_phrase}".strip()


class HerdClient:
    """One connection pool to the API at ``base_url``; ``api_key`` is sent as a Bearer token."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float | None = None) -> None:
        headers = {"User-Agent": "herd-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url
        # No read timeout by default: a pull or a long generation may stay silent for minutes.
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> HerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise ClientError(f"could not connect to herd at {self.base_url}: is it running?") from None
        except httpx.TransportError as exc:
            raise ClientError(f"{type(exc).__name__} talking to herd at {self.base_url}: {exc}") from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request with a JSON answer (None for an empty one); a non-2xx status raises ClientError."""
        with self._transport_errors():
            response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise ClientError(_error_text(response), response.status_code)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, path: str, body: dict[str, Any]) -> Iterator[Iterator[dict[str, Any]]]:
        """POST and yield each NDJSON object; leaving the block closes the response (cancels on the server)."""
        with self._transport_errors(), self._http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                raise ClientError(_error_text(response), response.status_code)

            def objects() -> Iterator[dict[str, Any]]:
                with self._transport_errors():
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        obj = json.loads(line)
                        if isinstance(obj, dict) and obj.get("error"):
                            raise ClientError(str(obj["error"]), response.status_code)
                        yield obj

            yield objects()

    def has_blob(self, digest: str) -> bool:
        """Whether the server already holds the blob (HEAD /api/blobs/<digest>)."""
        with self._transport_errors():
            response = self._http.head(f"/api/blobs/{digest}")
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise ClientError(f"checking blob {digest}: {response.status_code} {response.reason_phrase}")
        return True

    def upload_blob(self, digest: str, path: Path, progress: Callable[[int], None]) -> None:
        """POST a local file as the blob ``digest``, reporting bytes sent."""

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    progress(len(chunk))
                    yield chunk

        headers = {"Content-Length": str(path.stat().st_size)}
        with self._transport_errors():
            response = self._http.post(f"/api/blobs/{digest}", content=chunks(), headers=headers)
        if response.status_code >= 400:
            raise ClientError(_error_text(response), response.status_code)
