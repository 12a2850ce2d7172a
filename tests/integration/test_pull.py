"""pull_model against a real HTTPS registry reachable only through a real squid proxy."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from herd.names import ModelName
from herd.store import ModelStore
from tests.integration.conftest import REGISTRY_HOST
from tests.support.proxy import Squid, running_squid
from tests.support.registry import OciRegistry, digest_of
from workers.store.registry import RegistryCancelled, RegistryError, RegistrySettings, pull_model


def _pull(
    store: ModelStore, name: str, settings: RegistrySettings, *, insecure: bool = False
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    pull_model(store, ModelName.parse(name), insecure=insecure, settings=settings, progress=events.append)
    return events


def _model_digest(reg: OciRegistry, repo: str, tag: str) -> tuple[str, int]:
    layers = json.loads(reg.manifests[(repo, tag)])["layers"]
    return layers[0]["digest"], layers[0]["size"]


def _blob_files(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir()) if store.blobs_dir.exists() else []


def test_pull_through_proxy_with_corporate_ca(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = registry.add_model("library/tiny", "v1", gguf, template="{{ .Prompt }}")
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    events = _pull(store, f"{registry.host}/library/tiny:v1", settings)

    model = store.get(ModelName.parse(f"{registry.host}/library/tiny:v1"))
    assert model.model_path.read_bytes() == gguf.read_bytes()
    assert model.template == "{{ .Prompt }}"
    assert model.manifest_path is not None and model.manifest_path.read_bytes() == raw  # byte for byte
    assert not [n for n in _blob_files(store) if "partial" in n]

    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    doc = json.loads(raw)
    for layer in [*doc["layers"], doc["config"]]:
        mine = [e for e in events if e.get("digest") == layer["digest"]]
        assert mine and all(e["status"] == f"pulling {layer['digest'][7:19]}" for e in mine)
        assert all(e["total"] == layer["size"] for e in mine)
        assert mine[-1]["completed"] == layer["size"]
        assert [e["completed"] for e in mine] == sorted(e["completed"] for e in mine)

    # The model blob came in parallel 64 KiB ranges, each exactly once.
    digest, size = _model_digest(registry, "library/tiny", "v1")
    ranges = sorted(h.range or "" for h in registry.blob_hits(digest))
    assert len(ranges) == -(-size // (64 * 1024))
    assert registry.served[digest] == size
    squid.wait_for_log(f"CONNECT {REGISTRY_HOST}:{registry.port}")


def test_without_the_proxy_the_host_does_not_resolve(
    registry: OciRegistry, store: ModelStore, settings: RegistrySettings, gguf: Path
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{registry.host}/library/tiny", settings)
    assert "cannot resolve host name" in str(err.value)
    assert registry.host in str(err.value)
    assert err.value.status == 502
    assert not store.root.exists() or not store.list()


def test_without_the_ca_the_certificate_is_not_trusted(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{registry.host}/library/tiny", RegistrySettings())
    message = str(err.value)
    assert "certificate not trusted" in message and registry.host in message
    assert squid.bare_url in message  # the proxy it went through
    assert "HERD_CA_BUNDLE" in message


def test_insecure_pulls_without_trusting_the_certificate(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    _pull(store, f"{registry.host}/library/tiny", RegistrySettings(), insecure=True)
    assert (
        store.get(ModelName.parse(f"{registry.host}/library/tiny")).model_path.read_bytes()
        == gguf.read_bytes()
    )


def test_no_proxy_sends_the_host_direct(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    monkeypatch.setenv("NO_PROXY", "example.com,.herd.test")
    with pytest.raises(RegistryError, match="cannot resolve host name"):
        _pull(store, f"{registry.host}/library/tiny", settings)
    assert f"{REGISTRY_HOST}:{registry.port}" not in squid.log()


def test_wrong_digest_is_refused_and_nothing_stays(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    digest, _ = _model_digest(registry, "library/tiny", "latest")
    registry.corrupt.add(digest)
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    events: list[dict[str, Any]] = []
    with pytest.raises(RegistryError) as err:
        pull_model(
            store,
            ModelName.parse(f"{registry.host}/library/tiny"),
            insecure=False,
            settings=settings,
            progress=events.append,
        )
    assert err.value.status == 400
    assert digest in str(err.value) and "failed verification" in str(err.value)
    assert "writing manifest" not in [e["status"] for e in events]
    assert store.list() == []
    files = _blob_files(store)
    assert not [f for f in files if digest[7:] in f], files  # no blob, no partial, no state file
    assert not [f for f in files if "partial" not in f], files  # no good blob published either

    registry.corrupt.clear()
    _pull(store, f"{registry.host}/library/tiny", settings)
    assert (
        store.get(ModelName.parse(f"{registry.host}/library/tiny")).model_path.read_bytes()
        == gguf.read_bytes()
    )


def test_an_interrupted_pull_resumes_from_its_partial_file(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    test_ca: Any,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    digest, size = _model_digest(registry, "library/tiny", "latest")
    cut = 200_000
    registry.cut_at[digest] = cut
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    one_part = RegistrySettings(ca_bundle=test_ca.pem, part_size=16 * 1024 * 1024, retries=0)
    name = f"{registry.host}/library/tiny"
    with pytest.raises(RegistryError) as err:
        _pull(store, name, one_part)
    assert registry.host in str(err.value)
    assert store.list() == []
    assert store.resumable_partial_path(digest).exists()
    assert registry.served[digest] == cut

    # The next pull (a new "process": new client, new settings object) asks only for the rest.
    del registry.cut_at[digest]
    events = _pull(store, name, one_part)
    hits = registry.blob_hits(digest)
    assert [h.range for h in hits] == [f"bytes=0-{size - 1}", f"bytes={cut}-{size - 1}"]
    assert registry.served[digest] == size  # nothing downloaded twice
    first = next(e for e in events if e.get("digest") == digest)
    assert first["completed"] == cut
    assert store.get(ModelName.parse(name)).model_path.read_bytes() == gguf.read_bytes()
    assert not store.resumable_partial_path(digest).exists()


def test_a_broken_connection_is_resumed_within_the_pull(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    test_ca: Any,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    digest, size = _model_digest(registry, "library/tiny", "latest")
    registry.cut_at[digest] = 123_457
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    retrying = RegistrySettings(ca_bundle=test_ca.pem, part_size=16 * 1024 * 1024, retries=2)
    _pull(store, f"{registry.host}/library/tiny", retrying)
    assert [h.range for h in registry.blob_hits(digest)] == [
        f"bytes=0-{size - 1}",
        f"bytes=123457-{size - 1}",
    ]
    assert registry.served[digest] == size


def test_two_pulls_of_one_blob_download_it_once(
    registry: OciRegistry,
    squid: Squid,
    settings: RegistrySettings,
    tmp_path: Path,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "a", gguf)
    registry.add_model("library/tiny", "b", gguf)  # same blobs under another tag
    registry.slow_s = 0.02
    digest, size = _model_digest(registry, "library/tiny", "a")
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    root = tmp_path / "shared"
    errors: list[BaseException] = []

    def pull(tag: str) -> None:
        try:
            _pull(ModelStore(root), f"{registry.host}/library/tiny:{tag}", settings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert registry.served[digest] == size
    store = ModelStore(root)
    assert {m.name.tag for m in store.list()} == {"a", "b"}


def test_missing_manifest_names_model_and_host(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{registry.host}/library/nothing:v9", settings)
    assert err.value.status == 404
    assert "manifest" in str(err.value) and "not found" in str(err.value)
    assert f"{registry.host}/library/nothing:v9" in str(err.value)


def test_token_auth(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.require_token = True
    registry.add_model("someone/tiny", "latest", gguf)
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    _pull(store, f"{registry.host}/someone/tiny", settings)
    assert (
        store.get(ModelName.parse(f"{registry.host}/someone/tiny")).model_path.read_bytes()
        == gguf.read_bytes()
    )
    assert registry.token_requests == [
        {"service": [REGISTRY_HOST], "scope": ["repository:someone/tiny:pull"]}
    ]
    # Only the first request of the session went without a token.
    assert sum(1 for h in registry.hits if h.status == 401) == 1


def test_a_denying_proxy_gives_a_clear_error(
    registry: OciRegistry,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    with running_squid({REGISTRY_HOST: "127.0.0.1"}, mode="deny") as strict:
        monkeypatch.setenv("HTTPS_PROXY", strict.url)
        with pytest.raises(RegistryError) as err:
            _pull(store, f"{registry.host}/library/tiny", settings)
        strict.wait_for_log(f"CONNECT {REGISTRY_HOST}:{registry.port}")
    message = str(err.value)
    assert "proxy refused" in message and "403" in message
    assert strict.bare_url in message and registry.host in message
    assert registry.hits == []


def test_a_proxy_that_wants_credentials(
    registry: OciRegistry,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    name = f"{registry.host}/library/tiny"
    with running_squid({REGISTRY_HOST: "127.0.0.1"}, mode="auth") as guarded:
        monkeypatch.setenv("HTTPS_PROXY", guarded.bare_url)
        with pytest.raises(RegistryError) as err:
            _pull(store, name, settings)
        assert "proxy authentication required" in str(err.value)
        assert registry.host in str(err.value)

        monkeypatch.setenv("HTTPS_PROXY", guarded.url)  # http://user:password@host:port
        _pull(store, name, settings)
        log = guarded.wait_for_log(f"CONNECT {REGISTRY_HOST}:{registry.port} {guarded.user}")
    assert store.get(ModelName.parse(name)).model_path.read_bytes() == gguf.read_bytes()
    assert guarded.password not in str(err.value)
    assert "TCP_TUNNEL" in log or "CONNECT" in log


def test_plain_http_registry_needs_insecure(
    squid: Squid, store: ModelStore, settings: RegistrySettings, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.registry import running_registry

    with running_registry(REGISTRY_HOST, None) as plain:
        plain.add_model("library/tiny", "latest", gguf)
        monkeypatch.setenv("HTTPS_PROXY", squid.url)
        monkeypatch.setenv("HTTP_PROXY", squid.url)
        name = f"{plain.host}/library/tiny"
        with pytest.raises(RegistryError) as err:
            _pull(store, name, settings)
        assert plain.host in str(err.value) and "TLS handshake failed" in str(err.value)
        assert "insecure" in str(err.value)
        _pull(store, name, settings, insecure=True)
        assert store.get(ModelName.parse(name)).model_path.read_bytes() == gguf.read_bytes()
        assert digest_of(gguf.read_bytes()) in plain.blobs
        squid.wait_for_log(f"GET http://{REGISTRY_HOST}:{plain.port}/v2/library/tiny/manifests/latest")


def test_a_cancelled_pull_stops_and_keeps_its_partial_for_the_next(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    test_ca: Any,
    gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.add_model("library/tiny", "latest", gguf)
    registry.slow_s = 0.1  # per 64 KiB: the blob takes about half a second in one part
    settings = RegistrySettings(ca_bundle=test_ca.pem, part_size=16 * 1024 * 1024)
    digest, size = _model_digest(registry, "library/tiny", "latest")
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    name = ModelName.parse(f"{registry.host}/library/tiny")
    seen: list[dict[str, Any]] = []

    def cancelled() -> bool:
        # The client goes away once some bytes of the model blob have arrived.
        return any(e.get("digest") == digest and e["completed"] > 0 for e in seen)

    with pytest.raises(RegistryCancelled) as err:
        pull_model(store, name, insecure=False, settings=settings, progress=seen.append, cancelled=cancelled)
    assert err.value.status == 499
    assert store.list() == []
    assert store.resumable_partial_path(digest).exists()
    got_first = registry.served[digest]
    assert 0 < got_first < size

    registry.slow_s = 0
    events = _pull(store, f"{registry.host}/library/tiny", settings)
    first = next(e for e in events if e.get("digest") == digest)
    assert first["completed"] > 0  # resumed, not restarted
    assert registry.served[digest] < size + got_first
    assert store.get(name).model_path.read_bytes() == gguf.read_bytes()


def test_an_unreachable_proxy_is_named(
    registry: OciRegistry, store: ModelStore, settings: RegistrySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTPS_PROXY", dead)
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{registry.host}/library/tiny", settings)
    assert str(err.value) == f"{registry.host}: proxy {dead} refused the connection"
