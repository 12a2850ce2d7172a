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
from herd.templates.gotemplate import render as render_go


class TemplateError(ValueError):
    """The template could not be rendered for this request."""


def _go_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"Role": message.role, "Content": message.content}
    if message.tool_calls:
        out["ToolCalls"] = [
            {"Function": {"Name": c.function.name, "Arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_name:
        out["ToolName"] = message.tool_name
    if message.tool_call_id:
        out["ToolCallID"] = message.tool_call_id
    return out


_RESPONSE_MARK = "\x00herd-response\x00"


def _render_go(
    template: ChatTemplate, messages: list[ChatMessage], tools: list[dict[str, Any]] | None, suffix: str
) -> str:
    if ".Messages" in template.source:
        data = {
            "Messages": [_go_message(m) for m in messages],
            "Tools": tools or [],
            "System": "",
            "Prompt": "",
            "Response": "",
            "Suffix": suffix,
        }
        return render_go(template.source, data)
    # A prompt-style template (.System/.Prompt/.Response) is rendered once per turn, as Ollama does; the
    # last turn stops where the model's response would begin.
    out: list[str] = []
    system, prompt = "", ""
    turns: list[tuple[str, str, str | None]] = []
    for m in messages:
        if m.role == "system":
            system = m.content if not system else f"{system}\n\n{m.content}"
        elif m.role == "assistant":
            turns.append((system, prompt, m.content))
            system, prompt = "", ""
        else:
            prompt = m.content if not prompt else f"{prompt}\n\n{m.content}"
    if prompt or system or not turns:
        turns.append((system, prompt, None))
    for i, (sys_text, user_text, response) in enumerate(turns):
        last = i == len(turns) - 1 and response is None
        data = {
            "System": sys_text,
            "Prompt": user_text,
            "Response": _RESPONSE_MARK if last else (response or ""),
            "Suffix": suffix,
            "Messages": [],
            "Tools": tools or [],
        }
        text = render_go(template.source, data)
        if last:
            text = text.split(_RESPONSE_MARK, 1)[0]
        out.append(text)
    return "".join(out)


_jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())


def _raise(message: str) -> None:
    raise TemplateError(message)


def _render_jinja(
    template: ChatTemplate,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None,
    bos_token: str,
    eos_token: str,
) -> str:
    compiled = _jinja.from_string(template.source)
    payload = [m.model_dump(exclude_none=True) for m in messages]
    for m in payload:
        # HF templates expect tool-call arguments as objects and ids under "id".
        for call in m.get("tool_calls", []):
            call.setdefault("type", "function")
    return compiled.render(
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
    suffix: str = "",
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for a conversation, ending where the assistant's reply begins."""
    try:
        if template.kind == "jinja":
            return _render_jinja(template, messages, tools, bos_token, eos_token)
        return _render_go(template, messages, tools, suffix)
    except TemplateError:
        raise
    except (GoTemplateError, jinja2.TemplateError) as exc:
        raise TemplateError(f"template error: {exc}") from exc


def generate_messages(prompt: str, system: str | None) -> list[ChatMessage]:
    """/api/generate's prompt and system as the conversation a template renders."""
    messages = []
    if system:
        messages.append(ChatMessage(role="system", content=system))
    messages.append(ChatMessage(role="user", content=prompt))
    return messages
