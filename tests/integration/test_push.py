"""push_model to a real HTTPS registry through squid, with token auth; the pushed model pulls back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from herd.names import ModelName
from herd.store import ModelStore
from tests.integration.conftest import REGISTRY_HOST
from tests.support.proxy import Squid
from tests.support.registry import OciRegistry
from workers.store.registry import RegistryError, RegistrySettings, pull_model, push_model


def test_push_then_pull_back(
    registry: OciRegistry,
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    gguf: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.require_token = True
    name = ModelName.parse(f"{registry.host}/team/pushed:v1")
    local = store.import_gguf(name, gguf, template="{{ .Prompt }}", params={"temperature": 0})
    assert local.manifest_path is not None
    raw = local.manifest_path.read_bytes()
    monkeypatch.setenv("HTTPS_PROXY", squid.url)

    events: list[dict[str, Any]] = []
    push_model(store, name, insecure=False, settings=settings, progress=events.append)

    assert registry.manifests[("team/pushed", "v1")] == raw
    doc = json.loads(raw)
    for item in [*doc["layers"], doc["config"]]:
        assert registry.blobs[item["digest"]] == store.blob_path(item["digest"]).read_bytes()
        mine = [e for e in events if e.get("digest") == item["digest"]]
        assert mine[-1] == {
            "status": f"pushing {item['digest'][7:19]}",
            "digest": item["digest"],
            "total": item["size"],
            "completed": item["size"],
        }
    statuses = [e["status"] for e in events]
    assert statuses[0] == "retrieving manifest"
    assert statuses[-2:] == ["pushing manifest", "success"]
    # One token, asked with the push scope from the start (the first challenge names pull only).
    assert len(registry.token_requests) == 1
    assert "repository:team/pushed:push,pull" in registry.token_requests[0]["scope"]
    squid.wait_for_log(f"CONNECT {REGISTRY_HOST}:{registry.port}")

    # A second push finds every blob there and uploads nothing.
    uploads_before = sum(1 for h in registry.hits if h.method == "PATCH")
    push_model(store, name, insecure=False, settings=settings, progress=lambda e: None)
    assert sum(1 for h in registry.hits if h.method == "PATCH") == uploads_before

    elsewhere = ModelStore(tmp_path / "elsewhere")
    pull_model(elsewhere, name, insecure=False, settings=settings, progress=lambda e: None)
    pulled = elsewhere.get(name)
    assert pulled.manifest_path is not None and pulled.manifest_path.read_bytes() == raw
    assert pulled.template == "{{ .Prompt }}" and pulled.params == {"temperature": 0}


def test_push_of_an_unknown_model_is_404(store: ModelStore, settings: RegistrySettings) -> None:
    with pytest.raises(RegistryError) as err:
        push_model(
            store,
            ModelName.parse(f"{REGISTRY_HOST}/team/absent:v1"),
            insecure=False,
            settings=settings,
            progress=lambda e: None,
        )
    assert err.value.status == 404 and "team/absent:v1" in str(err.value)
