"""Pure parts of the registry client: Bearer challenges, names to URLs, settings, part planning, the guard."""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path

import pytest

from herd.names import ModelName
from herd.settings import SettingsError, load_settings
from workers.store.registry import RegistrySettings
from workers.store.registry.client import parse_bearer_challenge, redact, structured_error
from workers.store.registry.guard import AllowList, RegistryGuard, RegistryRefused, refused_kind
from workers.store.registry.reference import Reference, normalise_digest
from workers.store.registry.transfer import plan_parts


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
    assert redact("http://user:pw@proxy:3128") == "http://user:***@proxy:3128"
    assert redact("http://proxy:3128") == "http://proxy:3128"


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
        parts = plan_parts(size, part)
        assert parts[0].offset == 0
        assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(parts))
        assert parts[-1].offset + parts[-1].length == size
        assert all(0 < p.length <= part for p in parts)
    assert [(p.offset, p.length) for p in plan_parts(0, 64)] == [(0, 0)]


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


# --- the SSRF guard: addresses judged without any connection ------------------------------------------

REFUSED = {
    "127.0.0.1": "a loopback address",
    "127.45.6.7": "a loopback address",
    "::1": "a loopback address",
    "::ffff:127.0.0.1": "a loopback address",  # IPv4-mapped: judged by the IPv4 inside
    "169.254.169.254": "a cloud metadata address",
    "::ffff:169.254.169.254": "a cloud metadata address",
    "64:ff9b::a9fe:a9fe": "a cloud metadata address",  # NAT64 of 169.254.169.254
    "fd00:ec2::254": "a cloud metadata address",
    "100.100.100.200": "a cloud metadata address",
    "169.254.10.20": "a link-local address",
    "fe80::1": "a link-local address",
    "0.0.0.0": "an unspecified address",
    "0.1.2.3": "an unspecified address",
    "::": "an unspecified address",
}
ALLOWED = [
    "10.0.0.5",
    "10.255.255.53",
    "192.168.1.20",
    "172.16.0.9",
    "172.31.255.1",
    "fd12:3456::1",
    "8.8.8.8",
]


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_refused_addresses(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refused_kind(ip) == REFUSED[address]
    with pytest.raises(RegistryRefused) as err:
        RegistryGuard().check(address, ip, 443)
    assert err.value.status == 403
    assert address in str(err.value) and "HERD_REGISTRY_ALLOW" in str(err.value)


@pytest.mark.parametrize("address", ALLOWED)
def test_lan_and_public_addresses_are_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refused_kind(ip) is None
    RegistryGuard().check("registry.corp", ip, 5000)


def test_the_allow_list_unlocks_what_it_names() -> None:
    loopback, metadata = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("169.254.169.254")
    allow = AllowList.parse(" 127.0.0.0/8 , registry.local:5000, [::1]:8080, fe80::/10,Localhost,")
    guard = RegistryGuard(allow)
    guard.check("127.0.0.1", loopback, 1)  # the range
    guard.check("localhost", loopback, 1)  # the name, any port
    guard.check("registry.local", loopback, 5000)
    with pytest.raises(RegistryRefused):
        RegistryGuard(AllowList.parse("registry.local:5000")).check("registry.local", loopback, 5001)
    guard.check("::1", ipaddress.ip_address("::1"), 8080)
    with pytest.raises(RegistryRefused):
        guard.check("::1", ipaddress.ip_address("::1"), 8081)
    # A range never unlocks a metadata address; naming it does.
    with pytest.raises(RegistryRefused):
        RegistryGuard(AllowList.parse("169.254.0.0/16")).check("169.254.169.254", metadata, 80)
    RegistryGuard(AllowList.parse("169.254.0.0/16")).check(
        "169.254.1.1", ipaddress.ip_address("169.254.1.1"), 80
    )
    RegistryGuard(AllowList.parse("169.254.169.254")).check("169.254.169.254", metadata, 80)


def test_localhost_names_are_refused_before_a_proxy_resolves_them() -> None:
    with pytest.raises(RegistryRefused, match=r"models\.localhost is a loopback name"):
        RegistryGuard().check_before_proxy("models.localhost", 443)
    RegistryGuard(AllowList.parse("models.localhost")).check_before_proxy("models.localhost", 443)


@pytest.mark.parametrize(
    "value", ["not a host", "10.0.0.0/33", "host:0", "host:99999", "[::1", "[::1]x", "a_b:c:d/x"]
)
def test_a_bad_allow_entry_stops_the_process_naming_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERD_REGISTRY_ALLOW", value)
    with pytest.raises(SettingsError, match="HERD_REGISTRY_ALLOW") as err:
        load_settings(RegistrySettings)
    assert repr(value.strip().lower()) in str(err.value) or value in str(err.value)


def test_the_allow_setting_is_read() -> None:
    assert load_settings(RegistrySettings, HERD_REGISTRY_ALLOW="127.0.0.1:5000").allow_list.hosts == {
        ("127.0.0.1", 5000)
    }
    assert load_settings(RegistrySettings).allow_list == AllowList()


def test_only_the_structured_error_of_an_error_body_is_reported() -> None:
    body = json.dumps(
        {"errors": [{"code": "DENIED", "message": "no\nway " + "x" * 500, "detail": {"secret": "s3cr3t"}}]}
    ).encode()
    text = structured_error(body)
    assert text.startswith("DENIED: no way xxx") and len(text) <= 200 and "s3cr3t" not in text
    assert structured_error(b"<html>s3cr3t</html>") == ""
    assert structured_error(b'{"error": "s3cr3t"}') == ""
    assert structured_error(json.dumps({"errors": [{"code": "<b>s3cr3t</b>"}]}).encode()) == ""
