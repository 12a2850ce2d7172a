"""Eight plain-text openings the bundled Gemma continues for dozens of tokens: the greedy-determinism
tests run them alone and together, in the engine and through the whole stack."""

from __future__ import annotations

OPENINGS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "In 1969, the first humans",
    "Water boils at",
    "A haiku about the sea:",
    "The quick brown fox",
]
