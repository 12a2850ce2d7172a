"""Which chat template a model uses: the request's, its TEMPLATE layer, its GGUF's, or a built-in one.

Both the API (/api/show) and the workers (rendering) decide it here, so they always agree. The
precedence: the request's own `template` (generate only), else the model's TEMPLATE layer (a Go
template, as Ollama stores it: the explicit choice of whoever built the model, and what Ollama itself
uses), else the GGUF's `tokenizer.chat_template` (Jinja), else a built-in default for the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Ollama's template for Gemma 3 (the bundled model's GGUF carries none): a system turn becomes a user turn.
GEMMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

# The generic default: ChatML is what most instruction-tuned GGUFs without a template expect.
CHATML_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

BUILTIN_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}

GEMMA_STOPS = ["<end_of_turn>"]
CHATML_STOPS = ["<|im_end|>"]


@dataclass(frozen=True)
class ChatTemplate:
    kind: Literal["go", "jinja"]
    source: str
    origin: Literal["request", "layer", "gguf", "builtin"]

    @property
    def supports_suffix(self) -> bool:
        return "Suffix" in self.source or "suffix" in self.source

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders tool definitions (Go: `.Tools`; Jinja: `tools`)."""
        return ".Tools" in self.source if self.kind == "go" else "tools" in self.source

    @property
    def default_stops(self) -> list[str]:
        """Stops a built-in template needs when the model's parameters name none."""
        if self.origin != "builtin":
            return []
        return GEMMA_STOPS if self.source == GEMMA_TEMPLATE else CHATML_STOPS


def builtin_template(architecture: str) -> str:
    """The built-in Go template for an architecture."""
    return BUILTIN_TEMPLATES.get(architecture, CHATML_TEMPLATE)


def choose_template(
    *, request_template: str | None, layer: str | None, gguf_template: str | None, architecture: str
) -> ChatTemplate:
    """Apply the precedence in this module's docstring."""
    if request_template:
        return ChatTemplate("go", request_template, "request")
    if layer:
        return ChatTemplate("go", layer, "layer")
    if gguf_template:
        return ChatTemplate("jinja", gguf_template, "gguf")
    return ChatTemplate("go", builtin_template(architecture), "builtin")
