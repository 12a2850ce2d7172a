"""POST /api/pull through the whole stack, with the store worker behind a corporate proxy and CA.

The registry is HTTPS under a name only squid resolves, signed by a CA only HERD_CA_BUNDLE names: the
pull succeeds only because the stack's processes got HTTPS_PROXY and HERD_CA_BUNDLE.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.e2e.conftest import start_stack
from tests.support.proxy import running_squid
from tests.support.registry import make_ca, running_registry
from tests.support.tiny_gguf import write_tiny_llama

HOST = "registry.herd.test"


def test_pull_through_proxy_and_ca_via_the_api(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    gguf = write_tiny_llama(tmp_path / "tiny.gguf", seed=31)
    models = tmp_path / "models"
    models.mkdir()
    with (
        running_squid({HOST: "127.0.0.1"}) as squid,
        running_registry(HOST, ca) as registry,
        start_stack(
            models, tmp_path / "run", env={"HTTPS_PROXY": squid.url, "HERD_CA_BUNDLE": str(ca.pem)}
        ) as stack,
        httpx.Client(base_url=stack.settings.base_url, timeout=120, trust_env=False) as client,
    ):
        raw = registry.add_model("library/tiny", "v1", gguf)
        name = f"{registry.host}/library/tiny:v1"
        with client.stream("POST", "/api/pull", json={"model": name}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in response.iter_lines() if line]
        statuses = [line["status"] for line in lines]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"], lines
        model_digest = json.loads(raw)["layers"][0]["digest"]
        done = [line for line in lines if line.get("digest") == model_digest]
        assert done[-1]["completed"] == done[-1]["total"] == gguf.stat().st_size
        squid.wait_for_log(f"CONNECT {HOST}:{registry.port}")
        assert (models / "manifests" / registry.host / "library" / "tiny" / "v1").read_bytes() == raw

        # Listed and readable like any local model (generating with a pulled model is test_manage's).
        tags = client.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == [name]
        shown = client.post("/api/show", json={"model": name})
        assert shown.status_code == 200, shown.text
        assert shown.json()["details"]["format"] == "gguf"

        missing = client.post("/api/pull", json={"model": f"{registry.host}/library/absent", "stream": False})
        assert missing.status_code == 404
        assert registry.host in missing.json()["error"] and "not found" in missing.json()["error"]
