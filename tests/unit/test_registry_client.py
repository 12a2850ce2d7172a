"""Pure parts of the registry client: Bearer challenges, names to URLs, settings, part planning."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app.names import ModelName
from app.registry import RegistrySettings
from app.registry.client import _redact, parse_bearer_challenge
from app.registry.reference import Reference, normalise_digest
from app.registry.transfer import _plan
from app.settings import SettingsError, load_settings


def test_bearer_challenge() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    assert parse_bearer_challenge(header) == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_bearer_challenge('Basic realm="x"') is None
    assert parse_bearer_challenge("Bearer service=x") is None  # no realm: nowhere to ask


def test_proxy_password_is_redacted() -> None:
    assert _redact("http://user:pw@proxy:3128") == "http://user:***@proxy:3128"
    assert _redact("http://proxy:3128") == "http://proxy:3128"


def test_reference_urls() -> None:
    ref = Reference.for_name(ModelName.parse("gemma3"))
    assert ref.manifest_url() == "https://registry.ollama.ai/v2/library/gemma3/manifests/latest"
    assert ref.blob_url("sha256:" + "a" * 64).endswith("/v2/library/gemma3/blobs/sha256:" + "a" * 64)
    hf = Reference.for_name(ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0"))
    assert hf.is_hugging_face and hf.manifest_url() == (
        "https://hf.co/v2/bartowski/Llama-3.2-1B-Instruct-GGUF/manifests/Q8_0"
    )
    assert Reference.for_name(ModelName.parse("huggingface.co/u/r")).is_hugging_face
    local = Reference.for_name(ModelName.parse("registry.corp:5000/team/model:v1"))
    assert local.hostname == "registry.corp" and not local.is_hugging_face
    assert local.uploads_url() == "https://registry.corp:5000/v2/team/model/blobs/uploads/"


def test_normalise_digest() -> None:
    assert normalise_digest("sha256:" + "AB" * 32) == "sha256:" + "ab" * 32
    assert normalise_digest("sha256-" + "ab" * 32) is None
    assert normalise_digest("sha256:../../etc") is None
    assert normalise_digest(None) is None


def test_parts_cover_the_blob_exactly() -> None:
    for size, part in [(1, 64), (64, 64), (65, 64), (1000, 64), (10**9 + 7, 64 * 2**20)]:
        parts = _plan(size, part)
        assert parts[0].offset == 0
        assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(parts))
        assert parts[-1].offset + parts[-1].length == size
        assert all(0 < p.length <= part for p in parts)
    assert [(p.offset, p.length) for p in _plan(0, 64)] == [(0, 0)]


def test_ca_bundle_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="HERD_CA_BUNDLE"):
        load_settings(RegistrySettings)
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("HERD_CA_BUNDLE", str(pem))
    assert load_settings(RegistrySettings).ca_bundle == pem
    monkeypatch.setenv("HERD_PULL_CONCURRENCY", "0")
    with pytest.raises(SettingsError, match="HERD_PULL_CONCURRENCY"):
        load_settings(RegistrySettings)
