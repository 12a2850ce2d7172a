"""Prompt rendering: a request's messages through the model's chat template, into text to tokenize."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herd.contracts import ChatMessage
from herd.templates.builtin import ChatTemplate
from herd.templates.gotemplate import GoTemplateError
from herd.templates.ollama_execute import ThinkValue, execute
from herd.templates.thinking import think_enabled


class TemplateError(ValueError):
    """The template could not be rendered for this request."""


_jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())


def _raise(message: str) -> None:
    raise TemplateError(message)


def _render_jinja(
    template: ChatTemplate,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None,
    bos_token: str,
    eos_token: str,
    think: ThinkValue,
) -> str:
    compiled = _jinja.from_string(template.source)
    payload = [m.model_dump(exclude_none=True) for m in messages]
    for m in payload:
        # HF templates expect tool-call arguments as objects and ids under "id".
        for call in m.get("tool_calls", []):
            call.setdefault("type", "function")
        if "thinking" in m:
            m.setdefault("reasoning_content", m["thinking"])  # what Qwen3's and DeepSeek's templates read
    # `think` as HF templates take it (llama.cpp's chat_template_kwargs): Qwen3's enable_thinking,
    # gpt-oss's reasoning_effort; left undefined when the request sets none.
    thinking: dict[str, Any] = {}
    if think is not None:
        thinking["enable_thinking"] = think_enabled(think)
        if isinstance(think, str):
            thinking["reasoning_effort"] = think
    return compiled.render(
        **thinking,
        messages=payload,
        tools=tools or None,
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
        raise_exception=_raise,
        strftime_now=lambda fmt: date.today().strftime(fmt),
        tojson=json.dumps,
    )


def render_chat(
    template: ChatTemplate,
    messages: list[ChatMessage],
    *,
    tools: list[dict[str, Any]] | None = None,
    think: ThinkValue = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for a conversation, ending where the assistant's reply begins."""
    try:
        if template.kind == "jinja":
            return _render_jinja(template, messages, tools, bos_token, eos_token, think)
        return execute(template.source, messages, tools=tools, think=think)
    except TemplateError:
        raise
    except (GoTemplateError, jinja2.TemplateError) as exc:
        raise TemplateError(f"template error: {exc}") from exc


def render_insert(template: ChatTemplate, prompt: str, suffix: str, *, think: ThinkValue = None) -> str:
    """Fill-in-the-middle: /api/generate's prompt and suffix through the template's .Prompt and .Suffix."""
    try:
        return execute(template.source, [], prompt=prompt, suffix=suffix, think=think)
    except GoTemplateError as exc:
        raise TemplateError(f"template error: {exc}") from exc


def _stored_messages(stored_messages: list[dict[str, Any]]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in stored_messages]


def chat_messages(
    messages: list[ChatMessage], *, system: str | None, stored_messages: list[dict[str, Any]]
) -> list[ChatMessage]:
    """/api/chat's conversation as Ollama builds it: the Modelfile's MESSAGE turns, then the request's,
    after the Modelfile's SYSTEM unless the request's first message is a system message."""
    out = [*_stored_messages(stored_messages), *messages]
    if messages and messages[0].role != "system" and system:
        out.insert(0, ChatMessage(role="system", content=system))
    return out


def generate_messages(
    prompt: str,
    system: str | None,
    *,
    stored_system: str | None = None,
    stored_messages: list[dict[str, Any]] | None = None,
) -> list[ChatMessage]:
    """/api/generate's conversation as Ollama builds it: the request's system (else the Modelfile's), the
    Modelfile's MESSAGE turns (pass None without them, as when the request carries a context), the prompt."""
    messages = []
    if system or stored_system:
        messages.append(ChatMessage(role="system", content=system or stored_system or ""))
    messages += _stored_messages(stored_messages or [])
    messages.append(ChatMessage(role="user", content=prompt))
    return messages
