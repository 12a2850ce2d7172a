"""hf.co/<user>/<repo>[:<quant>] pulls, with the test registry playing Hugging Face behind squid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.names import ModelName
from herd.store import ModelStore
from tests.integration.conftest import HF_HOST
from tests.support.proxy import Squid
from tests.support.registry import OciRegistry, TestCA, running_registry
from tests.support.tiny_gguf import write_tiny_llama
from workers.store.registry import RegistryError, RegistrySettings, pull_model


@pytest.fixture
def hf(test_ca: TestCA, tmp_path: Path) -> Iterator[tuple[OciRegistry, Path, Path]]:
    """hf.co serving one repository with a Q4_K_M and a Q8_0 file (two distinct tiny GGUFs)."""
    q4 = write_tiny_llama(tmp_path / "q4.gguf", seed=21)
    q8 = write_tiny_llama(tmp_path / "q8.gguf", seed=22)
    with running_registry(HF_HOST, test_ca) as reg:
        reg.hf_style = True
        reg.add_model("someone/Tiny-GGUF", "Q4_K_M", q4)
        reg.add_model("someone/Tiny-GGUF", "Q8_0", q8)
        yield reg, q4, q8


def _model_blob(store: ModelStore, name: str) -> bytes:
    return store.get(ModelName.parse(name)).model_path.read_bytes()


def test_hf_default_is_q4_k_m_and_quant_tags_pick_the_file(
    hf: tuple[OciRegistry, Path, Path],
    squid: Squid,
    store: ModelStore,
    settings: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg, q4, q8 = hf
    monkeypatch.setenv("HTTPS_PROXY", squid.url)
    repo = f"{reg.host}/someone/Tiny-GGUF"

    pull_model(store, ModelName.parse(repo), insecure=False, settings=settings, progress=lambda e: None)
    # Asked as `latest`, the way Ollama asks; stored under the name as typed.
    assert [h.path for h in reg.hits if "/manifests/" in h.path] == ["/v2/someone/Tiny-GGUF/manifests/latest"]
    assert _model_blob(store, repo) == q4.read_bytes()
    assert store.get(ModelName.parse(repo)).name.tag == "latest"

    pull_model(
        store, ModelName.parse(f"{repo}:q8_0"), insecure=False, settings=settings, progress=lambda e: None
    )
    assert _model_blob(store, f"{repo}:q8_0") == q8.read_bytes()
    squid.wait_for_log(f"CONNECT {HF_HOST}:{reg.port}")

    with pytest.raises(RegistryError) as err:
        pull_model(
            store, ModelName.parse(f"{repo}:Q2_K"), insecure=False, settings=settings, progress=lambda e: None
        )
    assert err.value.status == 404 and HF_HOST in str(err.value)
    assert len(json.loads(reg.manifests[("someone/Tiny-GGUF", "Q8_0")])["layers"]) == 1
