"""Anthropic's Messages API (POST /v1/messages): its request body, the chat job it becomes, and its answers.

Ported from Ollama's anthropic package: `system` and the content blocks become the same chat messages
/api/chat takes, `max_tokens` becomes num_predict, `thinking` becomes think, and the worker's events come
back as a `message` object or as Anthropic's event stream. Errors are Anthropic's
`{"type": "error", "error": {"type", "message"}}` (app/anthropic_errors.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any, Literal

from pydantic import Field, StrictBool

from app.anthropic_errors import AnthropicError, anthropic_error_body
from app.schemas import MAX_NUM_PREDICT, VendorBody
from app.shaped_generation import THINKING, Answer, sse
from herd.contracts import ChatMessage, ToolCall, ToolCallFunction
from herd.json_schema import SchemaError, check_schema

# Anthropic's effort levels, as think levels (Ollama reads "xhigh" as "high").
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "max"}


class _Body(VendorBody):
    """Unknown fields ignored (Anthropic adds them often), JSON null read as absent."""


class MessageParam(_Body):
    role: str
    content: str | list[Any]


class ThinkingConfig(_Body):
    type: Literal["enabled", "disabled", "adaptive"]
    # Read but not enforced: thinking ends when the model ends it (max_tokens still bounds everything).
    budget_tokens: int | None = Field(default=None, ge=0)


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: StrictBool | None = None


class OutputConfig(_Body):
    effort: str | None = None
    format: dict[str, Any] | None = None


class MessagesRequest(_Body):
    """POST /v1/messages."""

    model: str = Field(description="Model name, e.g. gemma3:270m.")
    max_tokens: int = Field(ge=1, le=MAX_NUM_PREDICT, description="The most tokens to generate.")
    messages: list[MessageParam]
    system: str | list[Any] | None = None
    stream: StrictBool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1 << 31)
    stop_sequences: list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    metadata: dict[str, Any] | None = None


# --- Translation ------------------------------------------------------------------------------------


def _bad(message: str) -> AnthropicError:
    return AnthropicError(message)


def system_text(system: str | list[Any] | None) -> str:
    """`system` as one text: a string, or its text blocks joined (Ollama joins them as they are)."""
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise _bad(f"system.{i}: each system block must be a text block with a 'text' string")
        texts.append(block["text"])
    return "".join(texts)


def _image(where: str, source: Any) -> str:
    """A base64 image source as the job's image (base64 text); other sources are refused as Ollama does."""
    if not isinstance(source, dict):
        raise _bad(f"{where}.source: an image block needs a 'source' object")
    if source.get("type") != "base64":
        raise _bad(
            f"{where}.source: invalid image source type: {source.get('type')}. Only base64 images are supported."
        )
    data = source.get("data")
    try:
        raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{where}.source.data: invalid base64 image data: {exc}") from exc
    if not raw:
        raise _bad(f"{where}.source.data: the image is empty")
    return base64.b64encode(raw).decode("ascii")


def _tool_result(where: str, content: Any) -> tuple[str, list[str]]:
    """A tool_result's content: a string, or text and image blocks."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise _bad(f"{where}.content: must be a string or a list of content blocks")
    texts, images = [], []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image":
            images.append(_image(f"{where}.content.{j}", block.get("source")))
        else:
            raise _bad(f"{where}.content.{j}: a tool_result holds text and image blocks only")
    return "".join(texts), images


def _message(i: int, message: MessageParam, names: dict[str, str]) -> list[ChatMessage]:
    """One Anthropic message as chat turns: its tool results become tool turns (before a user's text)."""
    role = message.role
    if role not in ("user", "assistant"):
        raise _bad(f"messages.{i}.role: must be 'user' or 'assistant', not {role!r}")
    blocks = (
        [{"type": "text", "text": message.content}] if isinstance(message.content, str) else message.content
    )
    text, thinking = "", ""
    images: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(blocks):
        where = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _bad(f"{where}.text: a text block needs a 'text' string")
            text += block["text"]
        elif kind == "image":
            images.append(_image(where, block.get("source")))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{where}: tool_use block missing required 'id' field")
            if not isinstance(name, str) or not name:
                raise _bad(f"{where}: tool_use block missing required 'name' field")
            if not isinstance(arguments, dict):
                raise _bad(f"{where}.input: must be an object")
            names[call_id] = name
            calls.append(ToolCall(id=call_id, function=ToolCallFunction(name=name, arguments=arguments)))
        elif kind == "tool_result":
            use_id = block.get("tool_use_id")
            content, result_images = _tool_result(where, block.get("content"))
            results.append(
                ChatMessage(
                    role="tool",
                    content=content,
                    images=result_images or None,
                    tool_call_id=use_id if isinstance(use_id, str) else None,
                    tool_name=names.get(use_id) if isinstance(use_id, str) else None,
                )
            )
        elif kind == "thinking":
            thinking = block.get("thinking") if isinstance(block.get("thinking"), str) else ""
        elif kind == "redacted_thinking":
            continue  # encrypted by another server: nothing a local model can read
        else:
            raise _bad(f"{where}: content block type {kind!r} is not supported")
    out = results if role == "user" else []
    if text or images or calls or thinking:
        out.append(
            ChatMessage(
                role=role,
                content=text,
                images=images or None,
                tool_calls=calls or None,
                thinking=thinking or None,
            )
        )
    return out if role == "user" else out + results


def chat_messages(body: MessagesRequest) -> list[ChatMessage]:
    """The system text and the messages as the chat template takes them."""
    if not body.messages:
        raise _bad("messages: at least one message is required")
    out: list[ChatMessage] = []
    system = system_text(body.system)
    if system:
        out.append(ChatMessage(role="system", content=system))
    names: dict[str, str] = {}  # tool_use id -> tool name, for the tool turns that answer them
    for i, message in enumerate(body.messages):
        out.extend(_message(i, message, names))
    return out


def tools(body: MessagesRequest) -> list[dict[str, Any]] | None:
    """The client tools as function tools for the template; None without any (or tool_choice none)."""
    if not body.tools or (body.tool_choice is not None and body.tool_choice.type == "none"):
        return None
    out = []
    for i, tool in enumerate(body.tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools.{i}: must be an object")
        kind = tool.get("type") or "custom"
        if kind != "custom":
            raise _bad(
                f"tools.{i}.type: tool type {kind!r} is not supported: this server runs no server tools; "
                "describe the tool with 'name', 'description' and 'input_schema'"
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise _bad(f"tools.{i}.name: a tool needs a non-empty 'name'")
        if schema is not None and not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema: invalid input_schema for tool {name!r}: must be an object")
        function: dict[str, Any] = {"name": name, "description": tool.get("description") or ""}
        function["parameters"] = schema or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def think(body: MessagesRequest) -> bool | str | None:
    """`thinking` as the job's think: enabled, disabled, or the output_config effort level; adaptive and
    absent leave it to the model."""
    if body.thinking is not None:
        return {"enabled": True, "disabled": False, "adaptive": None}[body.thinking.type]
    effort = (body.output_config.effort or "").strip().lower() if body.output_config else ""
    return _EFFORTS.get(effort)


def output_format(body: MessagesRequest) -> dict[str, Any] | None:
    """`output_config.format` (Anthropic's structured outputs) as the job's JSON schema."""
    fmt = body.output_config.format if body.output_config else None
    if fmt is None:
        return None
    schema = fmt.get("schema")
    if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
        raise _bad("output_config.format: must be {'type': 'json_schema', 'schema': {...}}")
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise _bad(f"output_config.format.schema: {exc}") from exc
    return schema


def options(body: MessagesRequest) -> dict[str, Any]:
    """The worker options: only what the request sets (Ollama fills in no OpenAI-style defaults here)."""
    out = {
        "num_predict": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "stop": body.stop_sequences or None,
    }
    return {k: v for k, v in out.items() if v is not None}


def estimate_input_tokens(body: MessagesRequest) -> int:
    """A rough prompt size for message_start, which is sent before the prompt is counted (Ollama's
    estimate: a token per four characters of the request's text)."""
    size = len(json.dumps(body.system or "")) + len(json.dumps(body.tools or []))
    size += sum(len(m.role) + len(json.dumps(m.content)) for m in body.messages)
    return max(size // 4, 1)


# --- Answers ----------------------------------------------------------------------------------------


def stop_reason(done_reason: str | None, called: bool) -> str:
    """Ollama's done_reason as Anthropic's stop_reason."""
    if called:
        return "tool_use"
    return "max_tokens" if done_reason == "length" else "end_turn"


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    return {
        "type": "tool_use",
        "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
        "name": function["name"],
        "input": function.get("arguments") or {},
    }


class MessagesShape:
    """Builds the `message` object and the event stream of one request."""

    def __init__(self, model: str, estimated_input_tokens: int):
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = model
        self.estimated_input_tokens = estimated_input_tokens
        self.index = 0  # the open (or next) content block's index
        self.open: str | None = None  # the kind of the open content block: "text" or "thinking"
        self.called = False

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return anthropic_error_body(status, message)

    def _message(
        self, content: list[dict[str, Any]], reason: str | None, usage: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": usage,
        }

    @staticmethod
    def _usage(done: dict[str, Any]) -> dict[str, int]:
        return {
            "input_tokens": int(done.get("prompt_eval_count") or 0),
            "output_tokens": int(done.get("eval_count") or 0),
        }

    def complete(self, answer: Answer, done: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append({"type": "thinking", "thinking": answer.thinking, "signature": ""})
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        content.extend(_tool_use(call) for call in answer.tool_calls)
        reason = stop_reason(done.get("done_reason"), bool(answer.tool_calls))
        return self._message(content, reason, self._usage(done))

    def opening(self) -> list[bytes]:
        usage = {"input_tokens": self.estimated_input_tokens, "output_tokens": 0}
        start = {"type": "message_start", "message": self._message([], None, usage)}
        return [sse("message_start", start), sse("ping", {"type": "ping"})]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        self.index += 1
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index - 1})]

    def _start(self, block: dict[str, Any]) -> bytes:
        return sse(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse(
            "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
        )

    def _piece(self, kind: str, text: str) -> list[bytes]:
        """Text or thinking, in its own block: a change of kind closes the open block and starts one."""
        out: list[bytes] = []
        if self.open != kind:
            out += self._close()
            empty = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            out.append(self._start(empty))
            self.open = kind
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        return [*out, self._delta(delta)]

    def render(self, event: dict[str, Any]) -> list[bytes]:
        kind = event["type"]
        if kind == "token":
            return self._piece("text", event["text"]) if event["text"] else []
        if kind == THINKING:
            return self._piece("thinking", event["text"]) if event["text"] else []
        if kind == "tool_call":
            # A whole call: its block starts with empty input, and the arguments come as one JSON delta.
            self.called = True
            block = {**_tool_use(event["call"]), "input": {}}
            arguments = json.dumps(event["call"]["function"].get("arguments") or {}, ensure_ascii=False)
            out = [
                *self._close(),
                self._start(block),
                self._delta({"type": "input_json_delta", "partial_json": arguments}),
            ]
            self.open = "tool_use"
            return out + self._close()
        if kind == "done":
            delta = {"stop_reason": stop_reason(event.get("done_reason"), self.called), "stop_sequence": None}
            end = {"type": "message_delta", "delta": delta, "usage": self._usage(event)}
            return [*self._close(), sse("message_delta", end), sse("message_stop", {"type": "message_stop"})]
        status = int(event.get("status", 500))
        return [sse("error", anthropic_error_body(status, str(event.get("error", "generation failed"))))]
