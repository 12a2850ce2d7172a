"""Herd: a self-hosted LLM server that speaks Ollama's API."""

__version__ = "0.1.0"
