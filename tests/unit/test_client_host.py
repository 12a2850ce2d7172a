"""OLLAMA_HOST as the herd CLI reads it (Ollama's client rules, with Herd's port for http://host)."""

from __future__ import annotations

import pytest

from cli.host import base_url


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("   ", "http://127.0.0.1:11434"),
        ("example.com", "http://example.com:11434"),
        ("example.com:8080", "http://example.com:8080"),
        (":9000", "http://127.0.0.1:9000"),
        ("http://10.0.0.5:7000", "http://10.0.0.5:7000"),
        ("http://10.0.0.5", "http://10.0.0.5:11434"),
        ("https://herd.lan", "https://herd.lan:443"),
        ("https://herd.lan:8443", "https://herd.lan:8443"),
        ('"localhost:1234"', "http://localhost:1234"),
        # A wildcard bind is reached through loopback.
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:5000", "http://127.0.0.1:5000"),
        ("[::]:5000", "http://[::1]:5000"),
        ("[::1]:5000", "http://[::1]:5000"),
        ("::1", "http://[::1]:11434"),
        # A port that is not one falls back to the default, as Ollama does.
        ("host:99999", "http://host:11434"),
        ("host:abc", "http://host:11434"),
        ("http://proxy.lan:80/herd", "http://proxy.lan:80/herd"),
    ],
)
def test_ollama_host_to_base_url(value: str, url: str) -> None:
    assert base_url({"OLLAMA_HOST": value}) == url


def test_unset_means_loopback_default_port() -> None:
    assert base_url({}) == "http://127.0.0.1:11434"
