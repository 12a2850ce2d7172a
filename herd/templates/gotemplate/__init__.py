"""Pure-Python interpreter for the subset of Go's text/template used by Ollama TEMPLATE layers."""

from herd.templates.gotemplate.errors import GoTemplateError
from herd.templates.gotemplate.executor import Template, parse, render
from herd.templates.gotemplate.values import GoMap

__all__ = ["GoMap", "GoTemplateError", "Template", "parse", "render"]
