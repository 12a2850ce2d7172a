"""Herd's core, shared by every process kind: contracts, names, settings, the store, GGUF and templates.

It imports nothing from the packages beside it (app, workers, stack, cli); tests/unit/test_layers.py
holds it to that.
"""

__version__ = "0.1.0"
