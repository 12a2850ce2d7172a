"""Where a worker publishes its steps' events: on the decode thread when llama.cpp's threads take every
core the process may use, else on a publishing thread of its own (workers/decode_loop.py)."""

from __future__ import annotations

import os

from workers.decode_loop import decode_threads_take_every_core


def test_decode_threads_at_the_core_count_publish_between_steps() -> None:
    cores = len(os.sched_getaffinity(0))
    assert decode_threads_take_every_core(cores, gpu_offload=False)
    assert decode_threads_take_every_core(cores + 4, gpu_offload=False)


def test_a_spare_core_or_a_gpu_gets_a_publishing_thread() -> None:
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        assert not decode_threads_take_every_core(cores - 1, gpu_offload=False)
    assert not decode_threads_take_every_core(cores, gpu_offload=True)
