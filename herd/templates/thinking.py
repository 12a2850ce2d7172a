"""Thinking models: which templates think, the `think` value, and the `<think>…</think>` output parser.

Ported from Ollama: the tags come from the template as `thinking.InferTags` finds them (the text around
`{{ .Thinking }}` inside the range over `.Messages`); a GGUF's Jinja template thinks when it writes both
`<think>` and `</think>` (server/images.go chatTemplateHasThinkingSupport); gpt-oss's harmony format
thinks through its own parser (herd/templates/harmony.py). The parser (thinking/parser.go) splits a
streamed output into thinking and content, holding back text that may be the start of a tag.
"""

from __future__ import annotations

import functools
from typing import Literal

from herd.contracts import ChatMessage
from herd.templates.builtin import ChatTemplate
from herd.templates.gotemplate import GoTemplateError, parse
from herd.templates.gotemplate.nodes import _Action, _Branch, _Command, _Expr, _Field, _Node, _Pipe, _Text
from herd.templates.ollama_execute import ThinkValue

THINK_LEVELS = ("high", "medium", "low", "max")
JINJA_TAGS = ("<think>", "</think>")


class InvalidThink(ValueError):
    """A `think` value Ollama's api.ThinkValue refuses."""


def check_think(value: object) -> ThinkValue:
    """The request's `think` as Ollama's ThinkValue.UnmarshalJSON accepts it; InvalidThink names a bad one."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise InvalidThink(
                f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)'
            )
        return value
    raise InvalidThink('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def think_enabled(value: ThinkValue) -> bool:
    """api.ThinkValue.Bool(): true for true and for every level."""
    return value is True or (isinstance(value, str) and value in THINK_LEVELS)


# --- which templates think ------------------------------------------------------------------------


def _fields(expr: _Expr) -> list[tuple[str, ...]]:
    # Go's templateVisit reaches field nodes in a pipe's commands (and nested pipes), not in chains.
    if isinstance(expr, _Field):
        return [expr.names]
    if isinstance(expr, _Pipe):
        return [f for cmd in expr.cmds for a in cmd.args for f in _fields(a)]
    if isinstance(expr, _Command):
        return [f for a in expr.args for f in _fields(a)]
    return []


def _infer(nodes: list[_Node], ranges: list[_Branch], found: list[tuple[str, str]]) -> None:
    """InferTags' walk: at each `.Thinking` field under a range over `.Messages`, the first and last text
    nodes of the list that holds it; the last such list wins, as in Ollama."""

    def hit(pipe: _Pipe) -> None:
        if not any(f and f[0] == "Thinking" for f in _fields(pipe)):
            return
        if not ranges or not any(f and f[0] == "Messages" for f in _fields(ranges[-1].pipe)):
            return
        first, last = nodes[0], nodes[-1]
        found.append(
            (
                first.text.strip() if isinstance(first, _Text) else "",
                last.text.strip() if isinstance(last, _Text) else "",
            )
        )

    for node in nodes:
        if isinstance(node, _Action):
            hit(node.pipe)
        elif isinstance(node, _Branch):
            hit(node.pipe)
            inner = [*ranges, node] if node.kind == "range" else ranges
            for body in (node.body, node.else_body):
                if body:
                    _infer(body, inner, found)


@functools.lru_cache(maxsize=64)
def infer_tags(source: str) -> tuple[str, str]:
    """Ollama's thinking.InferTags for a Go template: (opening, closing), each "" when none is found.

    Cached by source: a worker asks at every job's start, and a large template takes milliseconds to parse.
    """
    try:
        template = parse(source)
    except GoTemplateError:
        return "", ""
    found: list[tuple[str, str]] = []
    _infer(template.nodes, [], found)
    return found[-1] if found else ("", "")


def uses_harmony(template: ChatTemplate, architecture: str) -> bool:
    """Whether the output is gpt-oss's harmony format. Ollama asks for the gpt-oss family and a template
    with `<|start|>` and `<|end|>`; Herd also takes any template that writes harmony's `<|channel|>`
    header, so that a model of another architecture in that format (the scripted test models) parses."""
    source = template.source
    if "<|start|>" not in source or "<|end|>" not in source:
        return False
    return architecture in ("gptoss", "gpt-oss") or "<|channel|>" in source


def thinking_tags(template: ChatTemplate) -> tuple[str, str]:
    """The tags the model wraps its thinking in, ("", "") for none."""
    if template.kind == "go":
        return infer_tags(template.source)
    source = template.source
    if JINJA_TAGS[0] in source and JINJA_TAGS[1] in source:
        return JINJA_TAGS
    return "", ""


def supports_thinking(template: ChatTemplate, architecture: str) -> bool:
    """Ollama's `thinking` capability: tags found in the template, or a thinking parser (harmony)."""
    opening, closing = thinking_tags(template)
    return bool(opening and closing) or uses_harmony(template, architecture)


# --- the output parser ----------------------------------------------------------------------------

_State = Literal["looking", "started", "thinking", "done_eating", "done"]


def _overlap(text: str, tag: str) -> int:
    """How many characters at the end of `text` are the start of `tag`."""
    for n in range(min(len(tag), len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkingParser:
    """Splits a streamed output into (thinking, content) at the model's tags (Ollama's thinking.Parser).

    Leading whitespace before the opening tag, and whitespace right after either tag, is dropped. A
    model whose prompt already ends with the opening tag starts inside the thinking (`opened=True`).
    """

    def __init__(self, opening: str, closing: str, *, opened: bool = False):
        self.opening = opening
        self.closing = closing
        self._state: _State = "started" if opened else "looking"
        self._acc = ""

    def feed(self, text: str) -> tuple[str, str]:
        """The thinking and content that `text` (appended to what is held) completes."""
        self._acc += text
        thinking: list[str] = []
        content: list[str] = []
        more = True
        while more:
            t, c, more = self._eat()
            thinking.append(t)
            content.append(c)
        return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """What is still held when the output ends: a partial closing tag is thinking, else content."""
        held, self._acc = self._acc, ""
        if self._state in ("thinking", "started"):
            return held, ""
        return "", held.lstrip() if self._state == "looking" else held

    def _eat(self) -> tuple[str, str, bool]:
        acc = self._acc
        if self._state == "looking":
            trimmed = acc.lstrip()
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening) :].lstrip()
                self._acc = after
                self._state = "thinking" if after else "started"
                return "", "", True
            if not trimmed or self.opening.startswith(trimmed):
                return "", "", False
            self._state, self._acc = "done", ""
            return "", acc, False
        if self._state == "started":
            trimmed = acc.lstrip()
            self._acc = trimmed
            if not trimmed:
                return "", "", False
            self._state = "thinking"
            return "", "", True
        if self._state == "thinking":
            at = acc.find(self.closing)
            if at >= 0:
                remaining = acc[at + len(self.closing) :].lstrip()
                self._acc = ""
                self._state = "done" if remaining else "done_eating"
                return acc[:at], remaining, False
            keep = _overlap(acc, self.closing)
            self._acc = acc[len(acc) - keep :] if keep else ""
            return acc[: len(acc) - keep], "", False
        if self._state == "done_eating":
            trimmed = acc.lstrip()
            self._acc = ""
            if trimmed:
                self._state = "done"
            return "", trimmed, False
        self._acc = ""
        return "", acc, False


def filter_think_tags(messages: list[ChatMessage], family: str, model: str) -> list[ChatMessage]:
    """Ollama's filterThinkTags: for qwen3 and deepseek-r1, an assistant turn before the last user turn
    loses a leading `<think>…</think>` block from its content (old thinking only costs context)."""
    if family != "qwen3" and model != "deepseek-r1":
        return messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    out = list(messages)
    for i, m in enumerate(messages[:last_user]):
        if m.role == "assistant":
            parser = ThinkingParser(*JINJA_TAGS)
            _, content = parser.feed(m.content)
            # Ollama keeps only what AddContent releases; a block never closed leaves nothing.
            out[i] = m.model_copy(update={"content": content})
    return out
