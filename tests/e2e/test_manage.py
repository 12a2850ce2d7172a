"""Blobs, create, copy and delete through the real stack (nginx, the API, the store worker, a worker).

Every model made here has a `c-` name of its own and is deleted before the test ends, since the session
stack is shared with the other tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import redis

from stack.supervisor import Stack
from tests.support.registry import OciRegistry, running_registry
from tests.support.tiny_gguf import write_tiny_llama

CHATML = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _blob_file(models_dir: Path, digest: str) -> Path:
    return models_dir / "blobs" / digest.replace(":", "-")


def _manifest_digests(models_dir: Path, name: str, tag: str) -> set[str]:
    doc = json.loads((models_dir / "manifests/registry.ollama.ai/library" / name / tag).read_bytes())
    return {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}


def _upload(client: httpx.Client, data: bytes) -> str:
    digest = _digest(data)
    response = client.post(f"/api/blobs/{digest}", content=data)
    assert response.status_code in (200, 201), response.text
    return digest


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line]


def _create(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/api/create", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson"
        return _lines(response)


@pytest.fixture
def gguf(tmp_path: Path) -> Iterator[Any]:
    """Writes a distinct tiny F16 GGUF per seed and returns its bytes."""

    def make(seed: int) -> bytes:
        return write_tiny_llama(tmp_path / f"m{seed}.gguf", seed=seed).read_bytes()

    yield make


def test_blob_upload_checks_the_digest_and_leaves_nothing_behind(
    client: httpx.Client, models_dir: Path, gguf: Any
) -> None:
    data = gguf(101)
    digest = _digest(data)
    assert client.head(f"/api/blobs/{digest}").status_code == 404

    wrong = client.post(f"/api/blobs/{_digest(b'something else')}", content=data)
    assert wrong.status_code == 400
    assert (
        wrong.json()["error"] == f'digest mismatch, expected "{_digest(b"something else")}", got "{digest}"'
    )
    assert not list((models_dir / "blobs").glob("*partial*"))
    assert client.head(f"/api/blobs/{_digest(b'something else')}").status_code == 404

    # Chunked upload through nginx (no Content-Length), as a client streaming a large file sends it.
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    assert client.post(f"/api/blobs/{digest}", content=chunks).status_code == 201
    assert client.head(f"/api/blobs/{digest}").status_code == 200
    assert _blob_file(models_dir, digest).read_bytes() == data
    assert client.post(f"/api/blobs/{digest}", content=data).status_code == 200  # already there

    assert client.head("/api/blobs/sha256:xyz").status_code == 400
    bad = client.post("/api/blobs/md5:abc", content=b"x")
    assert bad.status_code == 400 and "invalid digest format" in bad.json()["error"]
    _blob_file(models_dir, digest).unlink()  # unreferenced; nobody else uses it


def test_create_from_an_uploaded_gguf_then_generate(client: httpx.Client, gguf: Any) -> None:
    digest = _upload(client, gguf(102))
    lines = _create(
        client,
        {
            "model": "c-files:v1",
            "files": {"model.gguf": digest},
            "template": CHATML,
            "parameters": {"num_predict": 6, "temperature": 0, "stop": "<|im_end|>"},
        },
    )
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "parsing GGUF"
    assert f"using existing layer {digest}" in statuses
    assert sum(s.startswith("creating new layer sha256:") for s in statuses) == 2  # template, params
    assert statuses[-2:] == ["writing manifest", "success"]
    try:
        assert "c-files:v1" in [m["name"] for m in client.get("/api/tags").json()["models"]]
        show = client.post("/api/show", json={"model": "c-files:v1"}).json()
        assert show["template"] == CHATML
        assert "stop" in show["parameters"] and show["details"]["quantization_level"] == "F16"
        out = client.post("/api/generate", json={"model": "c-files:v1", "prompt": "hi", "stream": False})
        assert out.status_code == 200, out.text
        assert out.json()["eval_count"] == 6  # the model's own num_predict applies
    finally:
        assert client.request("DELETE", "/api/delete", json={"model": "c-files:v1"}).status_code == 200


def test_create_from_a_model_without_streaming_answers_the_last_status(client: httpx.Client) -> None:
    response = client.post(
        "/api/create",
        json={
            "model": "c-derived",
            "from": "tiny-a",
            "system": "You are a pirate.",
            "parameters": {"top_k": 7},
            "messages": [{"role": "user", "content": "ahoy"}, {"role": "assistant", "content": "arr"}],
            "license": "MIT",
            "stream": False,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success"}
    try:
        show = client.post("/api/show", json={"model": "c-derived"}).json()
        assert show["system"] == "You are a pirate."
        assert show["license"] == "MIT"
        assert "top_k" in show["parameters"]
        assert show["messages"] == [
            {"role": "user", "content": "ahoy"},
            {"role": "assistant", "content": "arr"},
        ]
        tiny = client.post("/api/show", json={"model": "tiny-a"}).json()
        assert show["model_info"] == tiny["model_info"]  # same weights
    finally:
        client.request("DELETE", "/api/delete", json={"model": "c-derived"})


def test_copy_and_delete_count_blob_references(client: httpx.Client, models_dir: Path, gguf: Any) -> None:
    digest = _upload(client, gguf(103))
    _create(client, {"model": "c-orig:v1", "files": {"m.gguf": digest}, "system": "only mine"})
    blobs = _manifest_digests(models_dir, "c-orig", "v1")
    assert digest in blobs

    assert (
        client.post("/api/copy", json={"source": "c-orig:v1", "destination": "c-copy:v2"}).status_code == 200
    )
    assert _manifest_digests(models_dir, "c-copy", "v2") == blobs
    a = client.post("/api/show", json={"model": "c-orig:v1"}).json()
    b = client.post("/api/show", json={"model": "c-copy:v2"}).json()
    assert a["system"] == b["system"] == "only mine"

    # The copy still needs every blob: deleting the original removes none.
    assert client.request("DELETE", "/api/delete", json={"model": "c-orig:v1"}).status_code == 200
    assert all(_blob_file(models_dir, d).is_file() for d in blobs)
    assert client.post("/api/show", json={"model": "c-orig:v1"}).status_code == 404

    # The last reference gone, the blobs go too; tiny-a's blobs are untouched.
    tiny_blobs = _manifest_digests(models_dir, "tiny-a", "latest")
    assert client.request("DELETE", "/api/delete", json={"model": "c-copy:v2"}).status_code == 200
    assert not any(_blob_file(models_dir, d).exists() for d in blobs)
    assert all(_blob_file(models_dir, d).is_file() for d in tiny_blobs)

    gone = client.request("DELETE", "/api/delete", json={"model": "c-copy:v2"})
    assert gone.status_code == 404 and gone.json() == {"error": "model 'c-copy:v2' not found"}
    missing = client.post("/api/copy", json={"source": "c-nothing", "destination": "c-x"})
    assert missing.status_code == 404 and missing.json() == {"error": 'model "c-nothing" not found'}
    bad = client.post("/api/copy", json={"source": "tiny-a", "destination": "bad name!"})
    assert bad.status_code == 400 and bad.json() == {"error": 'destination "bad name!" is invalid'}


def test_quantize_an_f16_upload_to_q8_0_and_generate_with_it(client: httpx.Client, gguf: Any) -> None:
    digest = _upload(client, gguf(104))
    lines = _create(client, {"model": "c-q8", "files": {"m.gguf": digest}, "quantize": "q8_0"})
    quantizing = [line for line in lines if line["status"] == "quantizing F16 model to Q8_0"]
    assert (
        quantizing
        and quantizing[0]["completed"] == 0
        and quantizing[-1]["completed"] == quantizing[-1]["total"]
    )
    assert lines[-1] == {"status": "success"}
    try:
        show = client.post("/api/show", json={"model": "c-q8"}).json()
        assert show["details"]["quantization_level"] == "Q8_0"
        out = client.post(
            "/api/generate",
            json={"model": "c-q8", "prompt": "hello", "stream": False, "options": {"num_predict": 8}},
        )
        assert out.status_code == 200, out.text
        assert out.json()["eval_count"] == 8 and out.json()["response"]

        # An already quantized model is refused before any progress: a plain 400.
        again = client.post("/api/create", json={"model": "c-q4", "from": "c-q8", "quantize": "q4_K_M"})
        assert again.status_code == 400
        assert again.json() == {
            "error": "quantization is only supported for F16 and F32 models, this one is Q8_0"
        }
    finally:
        client.request("DELETE", "/api/delete", json={"model": "c-q8"})


def test_deleting_a_loaded_model_unloads_it(client: httpx.Client) -> None:
    assert client.post("/api/copy", json={"source": "tiny-a", "destination": "c-loaded"}).status_code == 200
    loaded = client.post("/api/generate", json={"model": "c-loaded", "keep_alive": "10m"})
    assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"

    def in_memory() -> list[str]:
        return [m["name"] for m in client.get("/api/ps").json()["models"]]

    deadline = time.monotonic() + 10
    while "c-loaded:latest" not in in_memory() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "c-loaded:latest" in in_memory()
    assert client.request("DELETE", "/api/delete", json={"model": "c-loaded"}).status_code == 200
    deadline = time.monotonic() + 10
    while "c-loaded:latest" in in_memory() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "c-loaded:latest" not in in_memory()
    assert client.post("/api/generate", json={"model": "c-loaded"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"files": {}}, "model is required"),
        ({"model": "c-v"}, "neither 'from' or 'files' was specified"),
        ({"model": "c-v", "from": "tiny-a", "quantize": "q9_k"}, "unsupported quantization type 'q9_k'"),
        # An ADAPTER may be a projector (a vision model's), so its blob is checked like a file's.
        (
            {"model": "c-v", "from": "tiny-a", "adapters": {"a.gguf": "sha256:" + "1" * 64}},
            "for file 'a.gguf' not found",
        ),
        ({"model": "c-v", "from": "tiny-a", "parameters": {"top_k": "many"}}, "parameter 'top_k'"),
        ({"model": "c-v", "files": {"m.gguf": "sha256:" + "2" * 64}}, "not found; upload it"),
        ({"model": "c-v", "files": {"../m.gguf": "sha256:" + "2" * 64}}, "invalid file name '../m.gguf'"),
        ({"model": "c-v", "from": "tiny-a", "template": "{{ .Prompt "}, "template error"),
    ],
)
def test_create_refusals_name_the_bad_value(client: httpx.Client, body: dict[str, Any], message: str) -> None:
    response = client.post("/api/create", json=body)
    assert 400 <= response.status_code < 600 and response.status_code != 200
    assert message in response.json()["error"]
    assert client.post("/api/show", json={"model": "c-v"}).status_code == 404


def test_a_client_that_leaves_before_its_create_starts_never_gets_the_model_made(
    stack: Stack, base_url: str, redis_client: redis.Redis, gguf: Any, client: httpx.Client
) -> None:
    digest = _upload(client, gguf(105))
    assert stack.store_worker is not None and stack.store_worker.pid is not None
    pid = stack.store_worker.pid
    # A frozen store worker: the job waits (RQ may already have moved it to its intermediate list).
    os.kill(pid, signal.SIGSTOP)
    try:
        with (
            httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=1.5)) as impatient,
            pytest.raises(httpx.ReadTimeout),
        ):
            impatient.post("/api/create", json={"model": "c-left", "files": {"m.gguf": digest}})
        # RQ may have moved the job to its intermediate list already (the frozen worker was in BLMOVE).
        waiting = [
            *redis_client.lrange("rq:queue:herd-models", 0, -1),
            *redis_client.lrange("rq:queue:herd-models:intermediate", 0, -1),
        ]
        assert len(waiting) == 1
        job_id = str(waiting[0])  # the fixture decodes responses

        def settled() -> bool:
            # The API noticed the client left: it withdrew the job (its record is gone) or flagged it.
            return bool(redis_client.exists(f"herd:cancel:{job_id}")) or not redis_client.exists(
                f"rq:job:{job_id}"
            )

        deadline = time.monotonic() + 10
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert settled()
    finally:
        os.kill(pid, signal.SIGCONT)
    # The store worker runs on (jobs in order): once the next create is served, the abandoned one is settled.
    assert _create(client, {"model": "c-after", "from": "tiny-a"})[-1] == {"status": "success"}
    assert client.post("/api/show", json={"model": "c-left"}).status_code == 404
    client.request("DELETE", "/api/delete", json={"model": "c-after"})


# --- pull and push through a real registry (plain HTTP, hence "insecure") --------------------------


@pytest.fixture
def registry() -> Iterator[OciRegistry]:
    with running_registry("127.0.0.1", None) as reg:
        yield reg


def _manifest_bytes(models_dir: Path, host: str, repo: str, tag: str) -> bytes:
    return (models_dir / "manifests" / host / repo / tag).read_bytes()


def test_pull_then_push_round_trip(
    client: httpx.Client, models_dir: Path, registry: OciRegistry, tmp_path: Path
) -> None:
    raw = registry.add_model("library/c-remote", "v1", write_tiny_llama(tmp_path / "r.gguf", seed=106))
    name = f"{registry.host}/library/c-remote:v1"
    with client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as response:
        assert response.status_code == 200
        lines = _lines(response)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    assert any(line.get("completed") == line.get("total") and "digest" in line for line in lines)
    pushed = f"{registry.host}/library/c-pushed:v2"
    try:
        assert _manifest_bytes(models_dir, registry.host, "library/c-remote", "v1") == raw
        out = client.post(
            "/api/generate",
            json={"model": name, "prompt": "a", "stream": False, "options": {"num_predict": 4}},
        )
        assert out.status_code == 200, out.text

        assert client.post("/api/copy", json={"source": name, "destination": pushed}).status_code == 200
        response = client.post("/api/push", json={"model": pushed, "insecure": True, "stream": False})
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "success"}
        assert registry.manifests[("library/c-pushed", "v2")] == raw  # the same bytes, under a new name
    finally:
        client.request("DELETE", "/api/delete", json={"model": name})
        client.request("DELETE", "/api/delete", json={"model": pushed})


def test_pull_and_push_errors_carry_the_registrys_status(client: httpx.Client, registry: OciRegistry) -> None:
    name = f"{registry.host}/library/c-absent:v1"
    answer = client.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]
    # Streamed, the status line is already out: the error ends the stream.
    with client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as response:
        assert response.status_code == 200
        lines = _lines(response)
    assert lines[0] == {"status": "pulling manifest"} and "error" in lines[-1]
    assert client.post("/api/push", json={"model": "c-not-here"}).status_code == 404
    assert client.post("/api/pull", json={"model": "bad name!"}).status_code == 400


def test_a_client_that_leaves_mid_pull_stops_it_and_a_new_pull_finishes(
    client: httpx.Client, base_url: str, models_dir: Path, registry: OciRegistry, stack: Stack, tmp_path: Path
) -> None:
    gguf_path = write_tiny_llama(tmp_path / "s.gguf", seed=107)
    registry.add_model("library/c-slow", "v1", gguf_path)
    model_blob = _blob_file(models_dir, _digest(gguf_path.read_bytes()))
    name = f"{registry.host}/library/c-slow:v1"
    registry.slow_s = 0.5  # about 2 s per blob of the tiny model
    with (
        httpx.Client(base_url=base_url, timeout=30) as leaving,
        leaving.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as response,
    ):
        for line in response.iter_lines():
            progress = json.loads(line)
            if progress.get("digest") == f"sha256:{model_blob.name[7:]}" and progress.get("completed"):
                break  # the model's bytes are arriving: leave now
    assert stack.store_worker is not None
    deadline = time.monotonic() + 15
    while "model job cancelled" not in stack.store_worker.log_tail(50) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "model job cancelled" in stack.store_worker.log_tail(50)
    assert not (models_dir / "manifests" / registry.host).exists() or not any(
        (models_dir / "manifests" / registry.host).rglob("v1")
    )
    # Ollama's behaviour: the download stops, and what arrived stays as a partial for the next pull.
    assert not model_blob.exists()
    assert model_blob.with_name(model_blob.name + "-partial").exists()
    registry.slow_s = 0
    try:
        again = client.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert again.status_code == 200, again.text
        assert client.post("/api/show", json={"model": name}).status_code == 200
        assert model_blob.is_file() and not model_blob.with_name(model_blob.name + "-partial").exists()
    finally:
        client.request("DELETE", "/api/delete", json={"model": name})


def test_a_killed_store_worker_ends_its_jobs_stream_and_is_restarted(
    client: httpx.Client, models_dir: Path, registry: OciRegistry, stack: Stack, tmp_path: Path
) -> None:
    registry.add_model("library/c-killed", "v1", write_tiny_llama(tmp_path / "k.gguf", seed=108))
    registry.slow_s = 1.0
    store_worker = stack.store_worker
    assert store_worker is not None and store_worker.pid is not None
    old_pid = store_worker.pid
    name = f"{registry.host}/library/c-killed:v1"
    started = time.monotonic()
    with client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"status": "pulling manifest"}
        os.kill(old_pid, signal.SIGKILL)
        rest = [json.loads(line) for line in lines]
    # The store worker's heartbeat stops, so the API ends the stream instead of waiting for ever.
    assert rest[-1] == {"error": "the worker running this request stopped"}
    assert time.monotonic() - started < 15
    registry.slow_s = 0
    deadline = time.monotonic() + 15
    while not (store_worker.alive and store_worker.pid != old_pid) and time.monotonic() < deadline:
        stack.check_once()  # the supervisor's pass, as run_forever makes it
        time.sleep(0.2)
    assert store_worker.alive and store_worker.pid != old_pid
    try:
        again = client.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert again.status_code == 200, again.text
    finally:
        client.request("DELETE", "/api/delete", json={"model": name})


def test_the_official_ollama_client_creates_copies_and_deletes(base_url: str, tmp_path: Path) -> None:
    client = ollama.Client(host=base_url)
    path = write_tiny_llama(tmp_path / "o.gguf", seed=109)
    digest = client.create_blob(path)
    assert digest == _digest(path.read_bytes())

    parts = list(
        client.create(
            model="c-client:v1",
            files={"o.gguf": digest},
            quantize="q8_0",
            system="Be short.",
            parameters={"num_predict": 3, "stop": ["\n"]},
            stream=True,
        )
    )
    assert parts[-1].status == "success"
    try:
        client.copy("c-client:v1", "c-client:v2")
        names = [m.model for m in client.list().models]
        assert "c-client:v1" in names and "c-client:v2" in names
        shown = client.show("c-client:v2")
        assert 'SYSTEM """Be short."""' in (shown.modelfile or "")
        assert shown.details is not None and shown.details.quantization_level == "Q8_0"
        assert client.generate(model="c-client:v2", prompt="x").eval_count == 3
        client.delete("c-client:v2")
        with pytest.raises(ollama.ResponseError) as missing:
            client.delete("c-client:v2")
        assert missing.value.status_code == 404
    finally:
        client.delete("c-client:v1")
