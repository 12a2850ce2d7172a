"""Herd workers: RQ job functions, the model cache and the llama.cpp batching engine."""
