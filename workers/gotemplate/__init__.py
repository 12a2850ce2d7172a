"""Pure-Python interpreter for the subset of Go's text/template used by Ollama TEMPLATE layers."""

from workers.gotemplate.errors import GoTemplateError
from workers.gotemplate.executor import Template, parse, render

__all__ = ["GoTemplateError", "Template", "parse", "render"]
