"""Building models from create requests (herd/store/create.py) and running them as store jobs, in-process.

Real store on disk, real tiny GGUFs, llama.cpp's real quantizer, and a real redis-server for the job
tests (events and cancel flags go through Redis Streams exactly as in the stack).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from herd.contracts import CreateSpec, ModelJob, cancel_key, decode_event, events_key
from herd.names import ModelName
from herd.store import MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM, MEDIA_TEMPLATE, ModelStore
from herd.store.create import CreateCancelled, CreateError, ModelBuilder, normalize_quantize
from herd.store.temps import remove_leftovers
from tests.support.redis_server import running_redis
from tests.support.tiny_gguf import write_tiny_llama
from workers.store import jobs as store_jobs
from workers.store.jobs import check_go_template
from workers.store.quantize import quantize_gguf


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def gguf_digest(store: ModelStore, tmp_path: Path) -> str:
    """A tiny F16 GGUF uploaded as a blob (what POST /api/blobs leaves behind)."""
    digest, _ = store.write_blob_from_file(write_tiny_llama(tmp_path / "t.gguf", seed=7), link=False)
    return digest


def _builder(store: ModelStore, statuses: list[dict[str, Any]], **kw: Any) -> ModelBuilder:
    return ModelBuilder(
        store, progress=statuses.append, quantizer=quantize_gguf, check_template=check_go_template, **kw
    )


def _name(raw: str) -> ModelName:
    return ModelName.parse(raw)


def test_create_from_a_gguf_blob_reports_ollamas_statuses(store: ModelStore, gguf_digest: str) -> None:
    statuses: list[dict[str, Any]] = []
    spec = CreateSpec(
        files={"t.gguf": gguf_digest}, template="{{ .Prompt }}", system="Be brief.", parameters={"top_k": 5}
    )
    model = _builder(store, statuses).build(_name("made:v1"), spec)

    text = [s["status"] for s in statuses]
    assert text[0] == "parsing GGUF"
    assert text[1] == f"using existing layer {gguf_digest}"  # the uploaded blob is reused, not copied
    assert [t.split(" sha256:")[0] for t in text[2:5]] == ["creating new layer"] * 3
    assert text[-2:] == ["writing manifest", "success"]
    assert [m for m, _, _ in model.layers] == [MEDIA_MODEL, MEDIA_TEMPLATE, MEDIA_SYSTEM, MEDIA_PARAMS]
    again = store.get(_name("made:v1"))
    assert (again.template, again.system, again.params) == ("{{ .Prompt }}", "Be brief.", {"top_k": 5})
    assert again.details()["quantization_level"] == "F16"
    assert again.details()["family"] == "llama"


def test_create_from_a_model_reuses_its_layers_and_merges_parameters(
    store: ModelStore, gguf_digest: str
) -> None:
    base = CreateSpec(
        files={"t.gguf": gguf_digest}, template="T {{ .Prompt }}", parameters={"top_k": 5, "seed": 1}
    )
    _builder(store, []).build(_name("base:v1"), base)
    statuses: list[dict[str, Any]] = []
    derived = CreateSpec(
        from_model=_name("base:v1").canonical, system="Pirate.", parameters={"seed": 9, "stop": ["x"]}
    )
    model = _builder(store, statuses).build(_name("derived:v1"), derived)

    assert model.template == "T {{ .Prompt }}"  # kept from the base
    assert model.system == "Pirate."
    assert model.params == {"top_k": 5, "seed": 9, "stop": ["x"]}  # the request wins, the rest is kept
    layer_status = [s["status"] for s in statuses if "layer" in s["status"]]
    assert f"using existing layer {gguf_digest}" in layer_status
    assert sum(s.startswith("creating new layer") for s in layer_status) == 2  # system and params


def test_quantize_f16_to_q8_0_through_llama_cpp(store: ModelStore, gguf_digest: str) -> None:
    statuses: list[dict[str, Any]] = []
    spec = CreateSpec(files={"t.gguf": gguf_digest}, quantize=normalize_quantize("q8_0"))
    model = _builder(store, statuses).build(_name("q8:v1"), spec)

    quantizing = [s for s in statuses if s["status"] == "quantizing F16 model to Q8_0"]
    assert quantizing and quantizing[-1]["completed"] == quantizing[-1]["total"]
    assert model.details()["quantization_level"] == "Q8_0"
    model_digest = next(d for m, d, _ in model.layers if m == MEDIA_MODEL)
    assert model_digest != gguf_digest
    assert f"creating new layer {model_digest}" in [s["status"] for s in statuses]
    assert not list(store.blobs_dir.glob("quantize-*"))  # the quantizer's output was moved into place

    # A quantized model is not quantized again.
    with pytest.raises(CreateError, match="only supported for F16 and F32 models, this one is Q8_0"):
        _builder(store, []).build(
            _name("q4:v1"), CreateSpec(from_model=_name("q8:v1").canonical, quantize="Q4_K_M")
        )


def test_unknown_quantize_type_names_the_value() -> None:
    with pytest.raises(CreateError, match="'q3_z'"):
        normalize_quantize("q3_z")
    assert normalize_quantize("q4_k_m") == "Q4_K_M"


def test_replacing_a_model_removes_only_the_layers_nobody_else_uses(
    store: ModelStore, gguf_digest: str
) -> None:
    _builder(store, []).build(_name("m:v1"), CreateSpec(files={"t.gguf": gguf_digest}, system="old system"))
    old_system = next(d for m, d, _ in store.get(_name("m:v1")).layers if m == MEDIA_SYSTEM)
    _builder(store, []).build(_name("m:v1"), CreateSpec(files={"t.gguf": gguf_digest}, system="new system"))

    assert not store.has_blob(old_system)
    assert store.has_blob(gguf_digest)
    assert store.get(_name("m:v1")).system == "new system"


def test_errors_name_the_bad_value(store: ModelStore, gguf_digest: str) -> None:
    missing = "sha256:" + "0" * 64
    with pytest.raises(CreateError, match=f"blob {missing} for file 'x.gguf' is not in the store"):
        _builder(store, []).build(_name("e:v1"), CreateSpec(files={"x.gguf": missing}))
    with pytest.raises(CreateError, match="template error") as bad:
        _builder(store, []).build(
            _name("e:v1"), CreateSpec(files={"t.gguf": gguf_digest}, template="{{ .Prompt ")
        )
    assert bad.value.status == 400
    with pytest.raises(CreateError, match="base model 'nope:latest' not found") as nf:
        _builder(store, []).build(_name("e:v1"), CreateSpec(from_model=_name("nope").canonical))
    assert nf.value.status == 404
    text_digest, _ = store.write_blob_bytes(b"not a gguf at all")
    with pytest.raises(CreateError, match=r"'x.txt'.*is not a GGUF model"):
        _builder(store, []).build(_name("e:v1"), CreateSpec(files={"x.txt": text_digest}))
    assert not store.manifests_dir.exists() or not any(store.manifests_dir.rglob("v1"))


def test_a_cancelled_create_writes_no_manifest(store: ModelStore, gguf_digest: str) -> None:
    statuses: list[dict[str, Any]] = []
    # The client leaves while the GGUF is being parsed.
    builder = _builder(store, statuses, cancelled=lambda: bool(statuses))
    with pytest.raises(CreateCancelled):
        builder.build(_name("gone:v1"), CreateSpec(files={"t.gguf": gguf_digest}, quantize="Q8_0"))
    assert [s["status"] for s in statuses] == ["parsing GGUF"]
    assert not store.manifests_dir.exists() or not any(p.is_file() for p in store.manifests_dir.rglob("*"))


# --- the job functions, with events through a real Redis ------------------------------------------


@pytest.fixture
def redis_client(store: ModelStore) -> Iterator[redis.Redis]:
    with running_redis() as url:
        client = redis.Redis.from_url(url)
        store_jobs.bind_context(
            store_jobs.StoreContext(store=store, client=client, worker_id="store-test", incarnation="start-1")
        )
        try:
            yield client
        finally:
            store_jobs.bind_context(None)
            client.close()


def _events(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(events_key(job_id))  # type: ignore[assignment]
    return [decode_event(fields) for _, fields in entries]


def _job(job_id: str, model: str, spec: CreateSpec) -> dict[str, Any]:
    job = ModelJob(job_id=job_id, request_id="r", kind="create", model=_name(model).canonical, create=spec)
    return job.model_dump(mode="json")


def test_create_job_publishes_progress_then_done(redis_client: redis.Redis, gguf_digest: str) -> None:
    store_jobs.run_create(_job("j1", "job:v1", CreateSpec(files={"t.gguf": gguf_digest}, system="S")))
    events = _events(redis_client, "j1")
    assert events[0] == {"type": "started", "worker": "store-test", "incarnation": "start-1"}
    assert events[-1] == {"type": "done"}
    progress = [e["data"]["status"] for e in events if e["type"] == "progress"]
    assert progress[0] == "parsing GGUF" and progress[-1] == "success"


def test_create_job_error_carries_the_status(redis_client: redis.Redis, store: ModelStore) -> None:
    digest, _ = store.write_blob_bytes(b"plain text, not a model")
    store_jobs.run_create(_job("j2", "job:v2", CreateSpec(files={"x.gguf": digest})))
    events = _events(redis_client, "j2")
    assert [e["type"] for e in events] == ["started", "progress", "error"]
    assert events[-1]["status"] == 400
    assert "'x.gguf'" in events[-1]["error"]


def test_a_job_whose_client_left_before_it_started_never_runs(
    redis_client: redis.Redis, gguf_digest: str, store: ModelStore
) -> None:
    redis_client.set(cancel_key("j3"), "1")
    store_jobs.run_create(_job("j3", "never:v1", CreateSpec(files={"t.gguf": gguf_digest})))
    assert _events(redis_client, "j3") == []
    with pytest.raises(LookupError):
        store.get(_name("never:v1"))


def test_a_failed_quantize_removes_its_partial(store: ModelStore, gguf_digest: str) -> None:
    # The tensor data cut short: the GGUF header still parses, llama.cpp's loader then refuses the file.
    blob = store.blob_path(gguf_digest)
    os.truncate(blob, blob.stat().st_size - 64 * 1024)
    during: list[tuple[list[str], list[Path]]] = []
    real = store_jobs._quantizer(1)

    def quantizer(source: Path, out: Path, want: str) -> None:
        # While it runs: its partial exists, locked, so a store worker starting now leaves it alone.
        during.append(([p.name for p in store.blobs_dir.glob("quantize-*.partial")], remove_leftovers(store)))
        real(source, out, want)

    builder = ModelBuilder(
        store, progress=lambda _: None, quantizer=quantizer, check_template=check_go_template
    )
    with pytest.raises(CreateError, match="could not quantize") as err:
        builder.build(_name("broken:v1"), CreateSpec(files={"t.gguf": gguf_digest}, quantize="Q8_0"))
    assert err.value.status == 500
    assert len(during) == 1 and len(during[0][0]) == 1 and during[0][1] == []
    assert not list(store.blobs_dir.glob("quantize-*"))


def test_a_create_cancelled_while_quantizing_removes_the_quantizers_output(
    store: ModelStore, gguf_digest: str
) -> None:
    statuses: list[dict[str, Any]] = []
    # The client leaves while llama.cpp quantizes: the output is complete, and must not stay behind.
    builder = _builder(store, statuses, cancelled=lambda: any("quantizing" in s["status"] for s in statuses))
    with pytest.raises(CreateCancelled):
        builder.build(_name("left:v1"), CreateSpec(files={"t.gguf": gguf_digest}, quantize="Q8_0"))
    assert statuses[-1]["status"] == "quantizing F16 model to Q8_0" and statuses[-1]["completed"] == 0
    assert not list(store.blobs_dir.glob("quantize-*"))
    assert {p.name for p in store.blobs_dir.iterdir()} == {store.blob_path(gguf_digest).name}
