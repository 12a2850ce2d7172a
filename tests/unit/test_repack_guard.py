"""The crash guards with real crashes of real child processes: a repack probe that segfaults leaves the
model on plain weights (and it still generates), and a load that killed its process makes the next
load of that model fail with a clear error instead of crashing again, until the back-off passes."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import llama_cpp as llama
import numpy as np
import pytest

from herd.names import ModelName
from herd.store import ModelStore
from tests.support.tiny_gguf import write_tiny_llama
from workers import load_guard, repack_probe
from workers.llama import LlamaModel, ModelLoadError


@pytest.fixture
def blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny model imported into a fresh store, as workers load models: a blob under blobs/."""
    monkeypatch.delenv(repack_probe.PROBE_FILE_ENV, raising=False)
    monkeypatch.setattr(repack_probe, "_memo", {})  # verdicts this process already read
    store = ModelStore(tmp_path / "models")
    store.import_gguf(ModelName.parse("tiny-guard"), write_tiny_llama(tmp_path / "g.gguf", seed=11))
    path = store.get(ModelName.parse("tiny-guard")).model_path
    assert path.parent.name == "blobs"
    return path


def _greedy(model: LlamaModel, n: int) -> list[int]:
    """A few greedy tokens, decoded on the model as loaded: the request the worker would serve."""
    params = llama.llama_context_default_params()
    params.n_ctx = 64
    ctx = llama.llama_init_from_model(model.handle, params)
    assert ctx
    batch = llama.llama_batch_init(16, 0, 1)
    try:
        tokens = model.tokenize("hello there", add_special=True)
        out: list[int] = []
        pos = 0
        for _ in range(n):
            feed = tokens if not out else out[-1:]
            for i, token in enumerate(feed):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(feed) - 1
            batch.n_tokens = len(feed)
            assert llama.llama_decode(ctx, batch) == 0
            pos += len(feed)
            logits = llama.llama_get_logits_ith(ctx, -1)
            row = np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), (model.n_vocab,))
            out.append(int(row.argmax()))
        return out
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)


def test_a_probe_that_segfaults_leaves_plain_weights_and_the_model_still_generates(
    blob: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(repack_probe.FAULT_ENV, "segv")  # the probe child kills itself after loading
    model = LlamaModel(blob, repack=True)
    try:
        assert model.repacked is False
        assert len(_greedy(model, 3)) == 3
    finally:
        model.close()
    (verdict,) = json.loads((blob.parent.parent / repack_probe.PROBE_NAME).read_text()).values()
    assert verdict["ok"] is False and verdict["use"] is False
    assert "SIGSEGV" in verdict["detail"]
    # Recorded: the next load reads the verdict, even with the fault gone, and probes nothing.
    monkeypatch.delenv(repack_probe.FAULT_ENV)
    monkeypatch.setattr(repack_probe, "_memo", {})
    monkeypatch.setattr(repack_probe, "_probe", lambda *a: pytest.fail("probed twice"))
    assert LlamaModel(blob, repack=True).repacked is False


def test_a_probe_that_survives_records_its_timings_and_decides(blob: Path) -> None:
    model = LlamaModel(blob, repack=True)
    try:
        (verdict,) = json.loads((blob.parent.parent / repack_probe.PROBE_NAME).read_text()).values()
        assert verdict["ok"] is True
        assert set(verdict["repack_ms"]) == set(verdict["plain_ms"]) == {"1", "8"}
        faster = verdict["plain_ms"]["8"] >= verdict["repack_ms"]["8"] * repack_probe.MIN_SPEEDUP
        assert verdict["use"] is faster is model.repacked
        assert len(_greedy(model, 2)) == 2
    finally:
        model.close()


def test_a_load_that_crashed_its_process_is_refused_then_retried_after_the_back_off(
    blob: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real crash in the middle of a guarded load, in a child process (as a worker dies).
    crash = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom workers.load_guard import LoadGuard\n"
        "with LoadGuard(Path(sys.argv[1])).loading(Path(sys.argv[2])):\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    guard_dir = blob.parent.parent / "load-guard"
    proc = subprocess.run([sys.executable, "-c", crash, str(guard_dir), str(blob)], check=False)
    assert proc.returncode == -11
    with pytest.raises(ModelLoadError, match=r"crashed a worker 1 time\(s\).*not loaded again before"):
        LlamaModel(blob)
    monkeypatch.setattr(load_guard, "BACKOFF_S", 0.0)  # the back-off has passed
    model = LlamaModel(blob)
    model.close()
    assert json.loads((guard_dir / "crashes.json").read_text()) == {}  # loaded: the count is cleared
    assert not list(guard_dir.glob("loading-*"))
