"""What a stored model can do (completion, embedding, tools, insert, thinking, vision) and which template it uses.

/api/show reports these, and the generation routes refuse a request the model cannot serve (tools for a
model whose template never renders them) before it is queued, as Ollama does.
"""

from __future__ import annotations

from herd.gguf_meta import GGUFError
from herd.store import StoredModel
from herd.templates.builtin import ChatTemplate, choose_template
from herd.templates.thinking import supports_thinking as template_thinks

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
    if template_thinks(template, architecture):
        found.append("thinking")
    if model.projectors:
        found.append("vision")
    return found


def supports_tools(model: StoredModel) -> bool:
    """Whether the model's template renders tool definitions at all."""
    template, _ = model_template(model)
    return template.supports_tools


# Whether a model thinks, by (model blob, TEMPLATE layer): every generation asks (thinking is on by default
# for a model that thinks), and blobs are content-addressed, so the answer never changes for a key.
_THINKS: dict[tuple[str, str | None], bool] = {}


def supports_thinking(model: StoredModel) -> bool:
    """Whether the model has Ollama's `thinking` capability (see herd/templates/thinking.py)."""
    key = (str(model.model_path), model.template)
    found = _THINKS.get(key)
    if found is None:
        if len(_THINKS) > 1024:
            _THINKS.clear()
        template, architecture = model_template(model)
        found = _THINKS[key] = template_thinks(template, architecture)
    return found
