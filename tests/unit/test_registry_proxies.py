"""Proxy selection from HTTPS_PROXY / HTTP_PROXY / NO_PROXY with Go's (and so Ollama's) semantics."""

from __future__ import annotations

import pytest

from workers.store.registry.proxies import ProxyConfig

PROXY = "http://proxy.corp:3128"


def _config(no_proxy: str = "", **extra: str) -> ProxyConfig:
    return ProxyConfig.from_env(
        {"HTTPS_PROXY": PROXY, "HTTP_PROXY": "http://plain.corp:8080", "NO_PROXY": no_proxy, **extra}
    )


def test_scheme_picks_the_variable() -> None:
    cfg = _config()
    assert cfg.proxy_for("https", "registry.ollama.ai", 443) == PROXY
    assert cfg.proxy_for("http", "registry.ollama.ai", 80) == "http://plain.corp:8080"


def test_upper_case_wins_and_a_bare_host_means_http() -> None:
    cfg = ProxyConfig.from_env({"HTTPS_PROXY": "upper.corp:1", "https_proxy": "http://lower.corp:2"})
    assert cfg.proxy_for("https", "hf.co", 443) == "http://upper.corp:1"
    only_lower = ProxyConfig.from_env({"https_proxy": "http://lower.corp:2"})
    assert only_lower.proxy_for("https", "hf.co", 443) == "http://lower.corp:2"
    assert ProxyConfig.from_env({}).proxy_for("https", "hf.co", 443) is None


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("corp.example", "corp.example", 443, True),
        ("corp.example", "registry.corp.example", 443, True),
        ("corp.example", "notcorp.example", 443, False),
        (".corp.example", "corp.example", 443, False),
        (".corp.example", "a.corp.example", 443, True),
        ("*.corp.example", "a.corp.example", 443, True),
        ("corp.example:8443", "corp.example", 443, False),
        ("corp.example:8443", "corp.example", 8443, True),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("192.168.1.5", "192.168.1.5", 443, True),
        ("*", "anything.example", 443, True),
        (" Corp.Example , other", "REGISTRY.corp.example", 443, True),
        ("", "localhost", 443, True),
        ("", "127.0.0.1", 443, True),
        ("", "::1", 443, True),
        ("", "registry.ollama.ai", 443, False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert (_config(no_proxy).proxy_for("https", host, port) is None) is direct
