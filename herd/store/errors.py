"""The store's exceptions: a model that is not there, and a store that holds something unusable."""

from __future__ import annotations


class ModelNotFound(LookupError):
    """No manifest exists for the requested model name."""

    def __init__(self, name: str) -> None:
        # Ollama's message quotes the name exactly as the client sent it.
        super().__init__(f"model '{name}' not found")
        self.name = name


class StoreError(RuntimeError):
    """The store holds something unusable (a broken manifest, a missing blob) or a write failed."""


class MissingBlob(StoreError):
    """A manifest was about to name a blob that is not (or no longer) in the store."""
