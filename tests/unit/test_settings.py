"""A bad environment value stops a process at start with a message naming the variable."""

from __future__ import annotations

import pytest

from app.settings import ApiSettings, SettingsError, load_settings
from workers.settings import WorkerSettings


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (ApiSettings, "OLLAMA_MAX_QUEUE", "lots"),
        (ApiSettings, "OLLAMA_MAX_QUEUE", "0"),
        (ApiSettings, "HERD_WORKER_TIMEOUT", "-1"),
        (WorkerSettings, "OLLAMA_NUM_PARALLEL", "0"),
        (WorkerSettings, "OLLAMA_MAX_LOADED_MODELS", "many"),
        (WorkerSettings, "OLLAMA_KEEP_ALIVE", "forever"),
        (WorkerSettings, "OLLAMA_CONTEXT_LENGTH", "8"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, cls: type[ApiSettings | WorkerSettings], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(cls)
    assert name in str(info.value.code) and repr(value) in str(info.value.code)


def test_ollama_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLLAMA_MAX_QUEUE", "OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS"):
        monkeypatch.delenv(name, raising=False)
    api = load_settings(ApiSettings)
    worker = load_settings(WorkerSettings)
    assert api.max_queue == 512
    assert worker.keep_alive_default == "5m" and worker.max_loaded_models == 3
    assert worker.context_length == 4096


def test_debug_flag_reads_like_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_DEBUG", "1")
    assert load_settings(ApiSettings).debug is True
    monkeypatch.setenv("OLLAMA_DEBUG", "false")
    assert load_settings(ApiSettings).debug is False
