"""What a stored model can do (completion, embedding, tools, insert, vision) and which template it uses.

/api/show reports these, and the generation routes refuse a request the model cannot serve (tools for a
model whose template never renders them) before it is queued, as Ollama does.
"""

from __future__ import annotations

from herd.gguf_meta import GGUFError
from herd.store import StoredModel
from herd.templates.builtin import ChatTemplate, choose_template

# Architectures that only embed (no completion capability), as Ollama classifies them.
EMBEDDING_ONLY = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "xlm-roberta"}


def model_template(model: StoredModel) -> tuple[ChatTemplate, str]:
    """The chat template a worker will render for `model`, and the model's architecture."""
    gguf_template = None
    try:
        info = model.gguf_info()
        gguf_template = info.chat_template()
        architecture = info.architecture
    except (OSError, GGUFError):
        architecture = model.details().get("family", "")
    template = choose_template(
        request_template=None, layer=model.template, gguf_template=gguf_template, architecture=architecture
    )
    return template, architecture


def capabilities(model: StoredModel, template: ChatTemplate, architecture: str) -> list[str]:
    """Ollama's capability names for a model, in Ollama's order."""
    found = ["embedding"] if architecture in EMBEDDING_ONLY else ["completion"]
    if template.supports_tools:
        found.append("tools")
    if template.supports_suffix:
        found.append("insert")
    if model.projectors:
        found.append("vision")
    return found


def supports_tools(model: StoredModel) -> bool:
    """Whether the model's template renders tool definitions at all."""
    template, _ = model_template(model)
    return template.supports_tools
