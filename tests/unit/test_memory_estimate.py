"""The memory estimate of a vision model: its projector's weights count, and on a GPU the headroom Ollama
leaves for the image encoder's buffers; the API's placement and the worker's admission share it."""

from __future__ import annotations

from pathlib import Path

from herd.gguf_meta import read_gguf_info
from herd.memory import PROJECTOR_GPU_HEADROOM, estimate
from tests.support.tiny_gguf import write_tiny_llama
from tests.support.tiny_projector import write_tiny_projector


def test_a_projector_counts_its_weights_and_on_a_gpu_its_headroom(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "model.gguf")
    projector = write_tiny_projector(tmp_path / "projector.gguf")
    info = read_gguf_info(model)

    text = estimate(info, model, n_ctx=512, n_parallel=2)
    vision = estimate(info, model, n_ctx=512, n_parallel=2, projectors=[projector])
    on_gpu = estimate(info, model, n_ctx=512, n_parallel=2, projectors=[projector], on_gpu=True)

    assert vision.weights - text.weights == projector.stat().st_size
    assert vision.kv_cache == text.kv_cache and vision.buffers == text.buffers
    assert on_gpu.total - vision.total == PROJECTOR_GPU_HEADROOM
    # A text model on a GPU has no encoder to leave room for.
    assert estimate(info, model, n_ctx=512, n_parallel=2, on_gpu=True) == text
