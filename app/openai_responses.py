"""OpenAI's Responses API (POST /v1/responses): its request body, the chat job it becomes, its answers.

Ported from Ollama's openai/responses.go: `instructions` and the input items (messages, function calls and
their outputs, reasoning passed back) become the chat messages /api/chat takes; `reasoning.effort`
becomes think; the worker's events come back as a `response` object or as the Responses event stream.
Nothing is stored: a request carries its whole conversation, as with Ollama.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any, Literal

from pydantic import Field, StrictBool

from app.openai_compat import think_from_effort
from app.openai_errors import OpenAIError, error_type, unsupported
from app.schemas import MAX_NUM_PREDICT, VendorBody
from app.shaped_generation import THINKING, Answer, sse
from herd.contracts import ChatMessage, ToolCall, ToolCallFunction
from herd.json_schema import SchemaError, check_schema

# OpenAI's default temperature, which Ollama sends when a request leaves it out.
DEFAULT_TEMPERATURE = 1.0
_IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))


class _Body(VendorBody):
    """Unknown fields ignored, JSON null read as absent."""


class Reasoning(_Body):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextConfig(_Body):
    format: TextFormat | None = None


class ResponsesRequest(_Body):
    """POST /v1/responses."""

    model: str = Field(description="Model name, e.g. gemma3:270m.")
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_NUM_PREDICT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    stream: StrictBool = False
    truncation: Literal["auto", "disabled"] | None = None
    store: StrictBool | None = None
    metadata: dict[str, Any] | None = None
    # Refused when set: see refuse_unsupported.
    background: StrictBool | None = None
    previous_response_id: str | None = None
    conversation: Any = None


# --- Translation ------------------------------------------------------------------------------------


def _bad(param: str, message: str) -> OpenAIError:
    return OpenAIError(f"'{param}': {message}", param=param, code="invalid_value")


def refuse_unsupported(body: ResponsesRequest) -> None:
    """A 400 naming the first field Herd cannot honour: it stores no responses and runs no background."""
    if body.background:
        raise unsupported("background", "is not supported: a response is answered within its request")
    for field in ("previous_response_id", "conversation"):
        if getattr(body, field) is not None:
            raise unsupported(
                field,
                "is not supported: this server stores no responses; send the whole conversation in 'input'",
            )


def think(body: ResponsesRequest) -> bool | str | None:
    """`reasoning.effort` as the job's think (None when unset), mapped as on /v1/chat/completions."""
    return think_from_effort(body.reasoning.effort if body.reasoning else None, "reasoning.effort")


def _image(param: str, part: dict[str, Any]) -> str:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise unsupported(
            f"{param}.file_id", "is not supported: send the image as 'image_url', a base64 data URL"
        )
    if url.startswith(("http://", "https://")):
        raise _bad(param, "image URLs are not currently supported, please use base64 encoded data instead")
    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise _bad(param, "invalid image input")
    try:
        raw = base64.b64decode(url[len(prefix) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(param, "invalid image input") from exc
    return base64.b64encode(raw).decode("ascii")


def _content(param: str, content: Any) -> tuple[str, list[str]]:
    """Input content (a string, or input_text/output_text/input_image parts) as text and images."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(param, "must be a string or a list of content parts")
    text, images = "", []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text", "must be a string")
            text += part["text"]
        elif kind == "input_image":
            images.append(_image(where, part))
        elif kind == "input_file":
            raise unsupported(where, "is not supported: file inputs are not currently supported")
        else:
            raise _bad(f"{where}.type", f"unknown content type: {kind}")
    return text, images


def _arguments(param: str, raw: Any) -> dict[str, Any]:
    try:
        arguments = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError as exc:
        raise _bad(param, f"failed to parse function call arguments: {exc}") from exc
    if not isinstance(arguments, dict):
        raise _bad(param, "function call arguments must be a JSON object")
    return arguments


def chat_messages(body: ResponsesRequest) -> list[ChatMessage]:
    """`instructions` and `input` as chat turns (Ollama's FromResponsesRequest)."""
    out: list[ChatMessage] = []
    if body.instructions:
        out.append(ChatMessage(role="system", content=body.instructions))
    if isinstance(body.input, str):
        if body.input:
            out.append(ChatMessage(role="user", content=body.input))
        return _nonempty(out)
    names: dict[str, str] = {}  # call_id -> function name, for the outputs that answer them
    thinking = ""  # a reasoning item's text, for the assistant turn that follows it
    for i, item in enumerate(body.input):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(param, "each input item must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _bad(
                    f"{param}.role", f"invalid role {role!r}: expected user, system, developer or assistant"
                )
            text, images = _content(f"{param}.content", item.get("content", ""))
            turn = ChatMessage(
                role="system" if role == "developer" else role, content=text, images=images or None
            )
            if role == "assistant" and thinking:
                turn.thinking, thinking = thinking, ""
            out.append(turn)
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not name:
                raise _bad(f"{param}.name", "a function_call needs its function's name")
            call = ToolCall(
                id=call_id if isinstance(call_id, str) else None,
                function=ToolCallFunction(
                    name=name, arguments=_arguments(f"{param}.arguments", item.get("arguments"))
                ),
            )
            if isinstance(call_id, str):
                names[call_id] = name
            # Calls made in one turn follow its message (or each other): they join that assistant turn.
            if not out or out[-1].role != "assistant":
                out.append(ChatMessage(role="assistant", content=""))
            out[-1].tool_calls = [*(out[-1].tool_calls or []), call]
            if thinking:
                out[-1].thinking, thinking = thinking, ""
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            output = item.get("output", "")
            text, images = _content(f"{param}.output", output)
            out.append(
                ChatMessage(
                    role="tool",
                    content=text,
                    images=images or None,
                    tool_call_id=call_id if isinstance(call_id, str) else None,
                    tool_name=names.get(call_id) if isinstance(call_id, str) else None,
                )
            )
        elif kind == "reasoning":
            # Ollama hands its reasoning out as plain text in encrypted_content (and the summary).
            summary = item.get("summary")
            encrypted = item.get("encrypted_content")
            parts = summary if isinstance(summary, list) else []
            texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
            thinking = encrypted if isinstance(encrypted, str) and encrypted else "".join(texts)
        else:
            raise _bad(
                f"{param}.type",
                f"unknown input item type: {kind!r}" if kind else "input item missing required 'type' field",
            )
    if thinking:
        out.append(ChatMessage(role="assistant", content="", thinking=thinking))
    return _nonempty(out)


def _nonempty(messages: list[ChatMessage]) -> list[ChatMessage]:
    if not messages:
        raise _bad("input", "must not be empty")
    return messages


def _function(param: str, tool: Any, prefix: str = "") -> list[dict[str, Any]]:
    """One tool as function tools: a function, or a namespace's member functions named `ns.name`."""
    if not isinstance(tool, dict):
        raise _bad(param, "each tool must be an object")
    kind = tool.get("type")
    name = tool.get("name")
    if kind == "namespace":
        members = tool.get("tools") or []
        if not isinstance(members, list):
            raise _bad(f"{param}.tools", "a namespace's tools must be a list")
        inner = f"{prefix}{name}." if isinstance(name, str) and name else prefix
        return [
            f for j, member in enumerate(members) for f in _function(f"{param}.tools[{j}]", member, inner)
        ]
    if kind != "function":
        raise unsupported(
            f"{param}.type",
            f"'{kind}' is not supported: this server runs no built-in tools; offer function tools",
        )
    if not isinstance(name, str) or not name:
        raise _bad(f"{param}.name", "a function tool needs a non-empty 'name'")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _bad(f"{param}.parameters", "must be a JSON schema object")
    full = name if not prefix or name.startswith(prefix) else prefix + name
    function = {"name": full, "description": tool.get("description") or "", "parameters": parameters or {}}
    return [{"type": "function", "function": function}]


def tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    """The function tools for the template; None without any, or with tool_choice "none"."""
    if not body.tools or body.tool_choice == "none":
        return None
    return [f for i, tool in enumerate(body.tools) for f in _function(f"tools[{i}]", tool)]


def text_format(body: ResponsesRequest) -> str | dict[str, Any] | None:
    """`text.format` as the job's format: the schema of json_schema, "json" for json_object."""
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object" or fmt.schema_ is None:
        return "json"
    try:
        check_schema(fmt.schema_)
    except SchemaError as exc:
        raise _bad("text.format.schema", str(exc)) from exc
    return fmt.schema_


def options(body: ResponsesRequest) -> dict[str, Any]:
    out = {
        "num_predict": body.max_output_tokens,
        "temperature": DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        "top_p": body.top_p,
    }
    return {k: v for k, v in out.items() if v is not None}


# --- Answers ----------------------------------------------------------------------------------------


def _hex() -> str:
    return uuid.uuid4().hex[:24]


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    # Ollama hands the thinking back as plain text in encrypted_content too, so a client that passes the
    # item back (as Codex-style clients do) returns it to the next turn's template.
    summary = [{"type": "summary_text", "text": thinking}]
    return {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": thinking}


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call["function"]
    arguments = json.dumps(function.get("arguments") or {}, ensure_ascii=False)
    return {
        "id": f"fc_{_hex()}",
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or f"call_{_hex()}",
        "name": function["name"],
        "arguments": arguments,
    }


def _usage(done: dict[str, Any]) -> dict[str, Any]:
    prompt, output = int(done.get("prompt_eval_count") or 0), int(done.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }


class ResponsesShape:
    """Builds the `response` object and the event stream of one request."""

    def __init__(self, body: ResponsesRequest):
        self.body = body
        self.id = f"resp_{_hex()}"
        self.created = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished output items, in order
        self.open: dict[str, Any] | None = None  # the message or reasoning item being streamed
        self.open_text = ""

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": error_type(status), "param": None, "code": None}}

    def response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The `response` object (Ollama's fields; nothing is stored, so `store` is false)."""
        body = self.body
        fmt: dict[str, Any] = {"type": "text"}
        if body.text and body.text.format:
            fmt = body.text.format.model_dump(by_alias=True, exclude_none=True)
        reasoning = None
        if body.reasoning and (body.reasoning.effort or body.reasoning.summary):
            reasoning = {"effort": body.reasoning.effort, "summary": body.reasoning.summary}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None,
            "model": body.model,
            "output": output,
            "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": reasoning,
            "store": False,
            "temperature": DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
            "text": {"format": fmt},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage,
            "metadata": body.metadata or {},
            "background": False,
            "service_tier": "default",
        }

    def complete(self, answer: Answer, done: dict[str, Any]) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if answer.thinking:
            output.append(_reasoning_item(f"rs_{_hex()}", answer.thinking))
        if answer.text or not answer.tool_calls:
            output.append(_message_item(f"msg_{_hex()}", answer.text))
        output.extend(_call_item(call) for call in answer.tool_calls)
        return self.response("completed", output, _usage(done))

    # --- the stream -----------------------------------------------------------------------------

    def _event(self, name: str, **data: Any) -> bytes:
        payload = {"type": name, **data, "sequence_number": self.sequence}
        self.sequence += 1
        return sse(name, payload)

    def opening(self) -> list[bytes]:
        return [
            self._event("response.created", response=self.response("in_progress", [], None)),
            self._event("response.in_progress", response=self.response("in_progress", [], None)),
        ]

    def _added(self, item: dict[str, Any]) -> bytes:
        return self._event("response.output_item.added", output_index=len(self.output), item=item)

    def _finish_open(self) -> list[bytes]:
        """Close the message or reasoning item being streamed, with its `done` events."""
        item, text = self.open, self.open_text
        if item is None:
            return []
        self.open, self.open_text = None, ""
        index = len(self.output)
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            done = _reasoning_item(item["id"], text)
            out = [self._event("response.reasoning_summary_text.done", **ids, summary_index=0, text=text)]
        else:
            done = _message_item(item["id"], text)
            part = ids | {"content_index": 0}
            out = [
                self._event("response.output_text.done", **part, text=text, logprobs=[]),
                self._event("response.content_part.done", **part, part=_text_part(text)),
            ]
        self.output.append(done)
        return [*out, self._event("response.output_item.done", output_index=index, item=done)]

    def _piece(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != kind:
            out += self._finish_open()
            if kind == "reasoning":
                self.open = {"id": f"rs_{_hex()}", "type": "reasoning", "summary": []}
                out.append(self._added(self.open))
            else:
                self.open = _message_item(f"msg_{_hex()}", "", status="in_progress")
                out.append(self._added(self.open))
                ids = {"item_id": self.open["id"], "output_index": len(self.output), "content_index": 0}
                out.append(self._event("response.content_part.added", **ids, part=_text_part("")))
        self.open_text += text
        ids = {"item_id": self.open["id"], "output_index": len(self.output)}
        if kind == "reasoning":
            return [
                *out,
                self._event("response.reasoning_summary_text.delta", **ids, summary_index=0, delta=text),
            ]
        return [
            *out,
            self._event("response.output_text.delta", **ids, content_index=0, delta=text, logprobs=[]),
        ]

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        out = self._finish_open()
        item = _call_item(call)
        index = len(self.output)
        ids = {"item_id": item["id"], "output_index": index}
        out += [
            self._added({**item, "status": "in_progress", "arguments": ""}),
            self._event("response.function_call_arguments.delta", **ids, delta=item["arguments"]),
            self._event("response.function_call_arguments.done", **ids, arguments=item["arguments"]),
        ]
        self.output.append(item)
        return [*out, self._event("response.output_item.done", output_index=index, item=item)]

    def render(self, event: dict[str, Any]) -> list[bytes]:
        kind = event["type"]
        if kind == "token":
            return self._piece("message", event["text"]) if event["text"] else []
        if kind == THINKING:
            return self._piece("reasoning", event["text"]) if event["text"] else []
        if kind == "tool_call":
            return self._call(event["call"])
        if kind == "done":
            out = self._finish_open()
            return [
                *out,
                self._event(
                    "response.completed", response=self.response("completed", self.output, _usage(event))
                ),
            ]
        # A failure after the stream began: the response fails, as Ollama's stream reports it.
        status = int(event.get("status", 500))
        failed = self.response("failed", self.output, None)
        failed["error"] = {
            "code": error_type(status),
            "message": str(event.get("error", "generation failed")),
        }
        return [*self._finish_open(), self._event("response.failed", response=failed)]
