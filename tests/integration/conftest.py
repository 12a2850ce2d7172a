"""Fixtures for registry tests: a test CA, an HTTPS registry under a made-up name, and squid proxies.

``registry.herd.test`` and ``hf.co`` resolve only inside squid (its hosts_file), so the registries
are reachable through the proxy and not otherwise, as in a corporate network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.store import ModelStore
from tests.support.proxy import Squid, running_squid
from tests.support.registry import OciRegistry, TestCA, make_ca, running_registry
from tests.support.tiny_gguf import write_tiny_llama
from workers.store.registry import RegistrySettings

REGISTRY_HOST = "registry.herd.test"
HF_HOST = "hf.co"
PROXY_HOSTS = {REGISTRY_HOST: "127.0.0.1", HF_HOST: "127.0.0.1"}
_PROXY_VARS = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the proxy variables it means; the machine's own must not leak in."""
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HERD_CA_BUNDLE", raising=False)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def squid() -> Iterator[Squid]:
    with running_squid(PROXY_HOSTS) as proxy:
        yield proxy


@pytest.fixture
def registry(test_ca: TestCA) -> Iterator[OciRegistry]:
    with running_registry(REGISTRY_HOST, test_ca) as reg:
        yield reg


@pytest.fixture(scope="session")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny GGUF (about 0.5 MB: several 64 KiB parts)."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=11)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def settings(test_ca: TestCA) -> RegistrySettings:
    """The corporate CA trusted; small parts so a tiny model still downloads in parallel ranges."""
    return RegistrySettings(ca_bundle=test_ca.pem, part_size=64 * 1024, concurrency=4, retries=0)
