"""The OpenAI-compatible API's request bodies, their translation to Herd jobs, and its response objects.

Requests are validated here and turned into the same `GenerateJob`/`EmbedJob` the native routes build;
fields Herd cannot honour are refused with a 400 naming them rather than silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import time
import uuid
from typing import Any, Literal

from pydantic import Field, StrictBool

from app.openai_errors import OpenAIError, unsupported
from app.schemas import MAX_NUM_PREDICT, MAX_TOP_LOGPROBS, VendorBody
from herd.contracts import ChatMessage, ToolCall, ToolCallFunction
from herd.json_schema import SchemaError, check_schema

SYSTEM_FINGERPRINT = "fp_herd"
_LEGACY_FUNCTIONS = "is not supported: use 'tools' (the legacy function-calling fields are deprecated)"
# The legacy completions API caps logprobs at 5.
MAX_COMPLETION_LOGPROBS = 5

# --- Request bodies ---------------------------------------------------------------------------------


class _Body(VendorBody):
    """A request object: unknown fields ignored, JSON null the same as absent (OpenAI's optional fields
    are all nullable), and bools strict: "yes" or 1 is refused, as OpenAI refuses them."""


class StreamOptions(_Body):
    include_usage: StrictBool = False


class ResponseFormat(_Body):
    """`{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _Request(_Body):
    """Fields shared by chat and text completions. Unknown fields are ignored, as OpenAI's clients add new
    ones often; the known ones Herd cannot honour are refused in `refuse_unsupported`."""

    model: str = Field(description="Model name, e.g. gemma3:270m.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NUM_PREDICT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    # Refused unless neutral: see refuse_unsupported.
    n: int | None = Field(default=None, ge=1)
    logit_bias: dict[str, float] | None = None


class ChatMessageIn(_Body):
    """One message of a chat completion request."""

    role: str
    content: str | list[Any] | None = None
    reasoning: str | None = None  # an earlier answer's thinking, as Ollama's /v1 returns and takes it
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class Reasoning(_Body):
    effort: str | None = None


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageIn]
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None  # `reasoning.effort` wins over `reasoning_effort`, as in Ollama
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NUM_PREDICT)
    response_format: ResponseFormat | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    # Any value is taken, as Ollama takes it: "auto", "required" and a named function leave the choice
    # to the model; "none" offers no tools (see tools()).
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None


class CompletionRequest(_Request):
    """POST /v1/completions (the legacy text completion)."""

    prompt: str | list[Any]
    suffix: str | None = None
    echo: StrictBool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = None


class EmbeddingRequest(_Body):
    """POST /v1/embeddings."""

    model: str = Field(description="Model name, e.g. gemma3:270m.")
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1 << 16)
    user: str | None = None


# --- Translation ------------------------------------------------------------------------------------


def refuse_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    """A 400 naming the first field whose value Herd cannot honour."""
    if body.n not in (None, 1):
        raise unsupported("n", "must be 1: this server returns one choice per request")
    if body.logit_bias:
        raise unsupported("logit_bias")
    if isinstance(body, CompletionRequest):
        if body.echo:
            raise unsupported("echo", "is not supported: the prompt is not returned with the completion")
        if body.best_of not in (None, 1):
            raise unsupported("best_of", "must be 1: this server returns one choice per request")
        return
    if body.top_logprobs is not None and not body.logprobs:
        raise OpenAIError(
            "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs", code="invalid_value"
        )
    # tool_choice is never refused: Ollama's openai layer does not read it (see tools() for "none").
    if body.functions:
        raise unsupported("functions", _LEGACY_FUNCTIONS)
    if body.function_call not in (None, "none"):
        raise unsupported("function_call", _LEGACY_FUNCTIONS)
    if body.audio is not None:
        raise unsupported("audio", "is not supported: this server generates text only")
    if body.modalities not in (None, ["text"]):
        raise unsupported("modalities", "is not supported: this server generates text only")


# OpenAI's own defaults, which Ollama's openai layer sends when a request leaves these out; as request
# options they override a Modelfile's PARAMETER (Ollama's FromChatRequest/FromCompleteRequest).
V1_TEMPERATURE = 1.0
V1_TOP_P = 1.0


def options(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The worker options of a /v1 request, with the defaults Ollama's openai layer fills in."""
    max_tokens = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    completion = isinstance(body, CompletionRequest)
    out: dict[str, Any] = {
        "num_predict": max_tokens,
        "temperature": V1_TEMPERATURE if body.temperature is None else body.temperature,
        # Ollama's completions read top_p 0 as unset too (a plain float there, a pointer for chat).
        "top_p": V1_TOP_P if body.top_p is None or (completion and body.top_p == 0) else body.top_p,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        # Completions always send both penalties (0 when unset); chat only those the request set.
        "frequency_penalty": 0.0 if completion and body.frequency_penalty is None else body.frequency_penalty,
        "presence_penalty": 0.0 if completion and body.presence_penalty is None else body.presence_penalty,
    }
    return {k: v for k, v in out.items() if v is not None}


def logprobs_top(body: ChatCompletionRequest | CompletionRequest) -> int | None:
    """The job's `logprobs`: None when not asked for, else how many alternatives to list."""
    if isinstance(body, CompletionRequest):
        return body.logprobs
    return (body.top_logprobs or 0) if body.logprobs else None


def tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The request's function tools for the template, or None (also for tool_choice "none")."""
    if not body.tools or body.tool_choice == "none":
        return None
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(body.tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise OpenAIError(
                f"'tools[{i}]' must be an object with type 'function' and a 'function' object",
                param=f"tools[{i}]",
                code="invalid_value",
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise OpenAIError(
                f"'tools[{i}].function.name' must be a non-empty string",
                param=f"tools[{i}].function.name",
                code="invalid_value",
            )
        out.append({"type": "function", "function": function})
    return out


def response_format(body: ChatCompletionRequest) -> str | dict[str, Any] | None:
    """`format` for the worker: "json" for json_object, the schema for json_schema."""
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return "json"
    schema = (rf.json_schema or {}).get("schema")
    if schema is None:
        return "json"
    if not isinstance(schema, dict):
        raise OpenAIError(
            "'response_format.json_schema.schema' must be a JSON schema object",
            param="response_format.json_schema.schema",
            code="invalid_value",
        )
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise OpenAIError(
            f"'response_format.json_schema.schema': {exc}",
            param="response_format.json_schema.schema",
            code="invalid_value",
        ) from exc
    return schema


def _content(i: int, content: str | list[Any] | None) -> tuple[str, list[str]]:
    """A message's content as text and base64 images: a string, or an array's `text` parts joined by
    newlines and its `image_url` parts (data URLs) as images."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise OpenAIError(f"'{param}' must be an object with a 'type'", param=param)
        if part["type"] == "image_url":
            images.append(_image_url(part.get("image_url"), f"{param}.image_url"))
            continue
        if part["type"] != "text":
            raise OpenAIError(
                f"content part type '{part['type']}' in '{param}' is not supported; only 'text' and "
                "'image_url' parts are",
                param=f"{param}.type",
                code="unsupported_content_type",
            )
        if not isinstance(part.get("text"), str):
            raise OpenAIError(f"'{param}.text' must be a string", param=f"{param}.text")
        texts.append(part["text"])
    return "\n".join(texts), images


# The data URL media types Ollama's decodeImageURL takes (and "data:;base64," for bare base64).
_IMAGE_URL_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))


def _image_url(value: Any, param: str) -> str:
    """An `image_url` part's base64 image, as Ollama decodes it: a data URL, never a web address."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise OpenAIError(f"'{param}' must be a data URL or an object with a 'url'", param=param)
    if url.startswith(("http://", "https://")):
        raise OpenAIError(
            "image URLs are not currently supported, please use base64 encoded data instead", param=param
        )
    data = next((url.removeprefix(p) for p in _IMAGE_URL_PREFIXES if url.startswith(p)), None)
    if data is None:
        raise OpenAIError(f"invalid image input in '{param}': expected a base64 data URL", param=param)
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise OpenAIError(f"invalid image input in '{param}': {exc}", param=param) from exc
    return data


def _tool_calls_in(i: int, calls: list[Any]) -> list[tuple[str, ToolCall]]:
    """An assistant message's tool calls as (id, call), their JSON-string arguments parsed."""
    out: list[tuple[str, ToolCall]] = []
    for j, call in enumerate(calls):
        param = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise OpenAIError(f"'{param}' must have a 'function' with a 'name'", param=param)
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise OpenAIError(
                f"'{param}.function.arguments' is not valid JSON: {exc}", param=f"{param}.function.arguments"
            ) from exc
        if not isinstance(arguments, dict):
            raise OpenAIError(
                f"'{param}.function.arguments' must be a JSON object", param=f"{param}.function.arguments"
            )
        call_id = str(call.get("id") or "")
        out.append((call_id, ToolCall(function=ToolCallFunction(name=function["name"], arguments=arguments))))
    return out


def chat_messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    """OpenAI messages as the chat template takes them (`developer` is a system turn).

    A `tool` message often names its call only by id; the template wants the tool's name too, which
    the assistant message that made the call holds.
    """
    if not body.messages:
        raise OpenAIError("'messages' must contain at least one message", param="messages")
    out: list[ChatMessage] = []
    names_by_id: dict[str, str] = {}
    for i, message in enumerate(body.messages):
        if message.role not in ("system", "developer", "user", "assistant", "tool"):
            raise OpenAIError(
                f"invalid role '{message.role}' in 'messages[{i}].role': expected system, developer, "
                "user, assistant or tool",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        role = "system" if message.role == "developer" else message.role
        text, images = _content(i, message.content)
        turn = ChatMessage(role=role, content=text, images=images or None, thinking=message.reasoning or None)
        if message.tool_calls and role == "assistant":
            calls = _tool_calls_in(i, message.tool_calls)
            names_by_id.update((call_id, call.function.name) for call_id, call in calls if call_id)
            turn.tool_calls = [call for _, call in calls]
        if role == "tool":
            # As Ollama's FromChatRequest: the message's own name first, else the call its id answers;
            # a tool message without an id is taken too.
            turn.tool_call_id = message.tool_call_id
            turn.tool_name = message.name or names_by_id.get(message.tool_call_id or "")
        out.append(turn)
    return out


def completion_prompt(body: CompletionRequest) -> str:
    """The one prompt of a text completion (a string, or a list holding one string)."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise OpenAIError(
                "'prompt' must be a string or a list of one string: this server completes one prompt "
                "per request",
                param="prompt",
                code="unsupported_parameter",
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError("'prompt' must be text: token arrays are not supported", param="prompt")
    return prompt


def embedding_inputs(body: EmbeddingRequest) -> list[str]:
    """The texts to embed; empty input and token arrays are refused."""
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise OpenAIError("'input' must not be empty", param="input")
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise OpenAIError(
                f"'input[{i}]' must be a string: token arrays are not supported", param=f"input[{i}]"
            )
        if not text:
            raise OpenAIError(f"'input[{i}]' must not be an empty string", param=f"input[{i}]")
    return inputs


# --- Response objects -------------------------------------------------------------------------------


def finish_reason(done_reason: str | None, called: bool = False) -> str:
    """Ollama's done_reason as OpenAI's finish_reason ("tool_calls" when the answer called tools)."""
    if called:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A chat choice's `logprobs` object."""
    if entries is None:
        return None
    return {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int) -> dict[str, Any] | None:
    """The legacy completions `logprobs` object: parallel lists, top alternatives as dicts."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in entries],
        "text_offset": offsets,
    }


def usage(done: dict[str, Any]) -> dict[str, int]:
    prompt = int(done.get("prompt_eval_count") or 0)
    completion = int(done.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    """A parsed call as Ollama's /v1 writes it: the call's id and index, type "function", the arguments
    as a JSON string."""
    function = call["function"]
    return {
        "index": function.get("index", index),
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": function["name"],
            "arguments": json.dumps(function.get("arguments") or {}, ensure_ascii=False),
        },
    }


class ChatShape:
    """Builds the `chat.completion` object and the `chat.completion.chunk`s of one request."""

    def __init__(self, model: str, include_usage: bool = False, logprobs: bool = False):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.logprobs = logprobs
        self.calls = 0  # tool calls sent so far: their stream indexes, and the finish reason
        self.text_offset = 0  # characters sent so far (the legacy logprobs' text_offset)

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def complete(
        self,
        text: str,
        done: dict[str, Any],
        tool_calls: list[dict[str, Any]],
        logprobs: list[dict[str, Any]],
        thinking: str = "",
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if thinking:
            message["reasoning"] = thinking
        if tool_calls:
            # Ollama's message keeps each call's index (OpenAI's only in stream deltas); clients ignore it.
            message["tool_calls"] = [openai_tool_call(c, i) for i, c in enumerate(tool_calls)]
            message["content"] = text or None
        choice = {
            "index": 0,
            "message": message,
            "logprobs": chat_logprobs(logprobs if self.logprobs else None),
            "finish_reason": finish_reason(done.get("done_reason"), bool(tool_calls)),
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(done)}

    # The object of a streamed chunk, and the key its choice carries the new output under.
    CHUNK_OBJECT = "chat.completion.chunk"
    CHUNK_FIELD = "delta"

    def _chunk(
        self, output: Any, reason: str | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = self._head(self.CHUNK_OBJECT)
        choice = {"index": 0, self.CHUNK_FIELD: output, "logprobs": logprobs, "finish_reason": reason}
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None
        return body

    def opening(self) -> dict[str, Any] | None:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return self._chunk({"content": text}, None, chat_logprobs(logprobs if self.logprobs else None))

    def reasoning(self, text: str) -> dict[str, Any] | None:
        """Thinking, in a chunk of its own (`delta.reasoning`), as Ollama streams it."""
        return self._chunk({"reasoning": text}, None)

    def tool_call(self, call: dict[str, Any]) -> dict[str, Any] | None:
        """A whole tool call in one delta."""
        self.calls += 1
        return self._chunk({"tool_calls": [openai_tool_call(call, self.calls - 1)]}, None)

    def finish(self, done: dict[str, Any]) -> dict[str, Any]:
        return self._chunk({}, finish_reason(done.get("done_reason"), self.calls > 0))

    def usage_chunk(self, done: dict[str, Any]) -> dict[str, Any]:
        return {**self._head(self.CHUNK_OBJECT), "choices": [], "usage": usage(done)}


class CompletionShape(ChatShape):
    """The `text_completion` object and its stream chunks."""

    CHUNK_OBJECT = "text_completion"
    CHUNK_FIELD = "text"

    def __init__(self, model: str, include_usage: bool = False, logprobs: bool = False):
        super().__init__(model, include_usage, logprobs)
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"

    def complete(
        self,
        text: str,
        done: dict[str, Any],
        tool_calls: list[dict[str, Any]],
        logprobs: list[dict[str, Any]],
        thinking: str = "",
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": completion_logprobs(logprobs if self.logprobs else None, 0),
            "finish_reason": finish_reason(done.get("done_reason")),
        }
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(done)}

    def opening(self) -> dict[str, Any] | None:
        return None

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        entries = completion_logprobs(logprobs if self.logprobs else None, self.text_offset)
        self.text_offset += len(text)
        return self._chunk(text, None, entries)

    def reasoning(self, text: str) -> dict[str, Any] | None:
        return None  # a text completion carries only the answer, as Ollama's ToCompletion writes it

    def tool_call(self, call: dict[str, Any]) -> dict[str, Any] | None:
        return None  # text completions offer no tools

    def finish(self, done: dict[str, Any]) -> dict[str, Any]:
        return self._chunk("", finish_reason(done.get("done_reason")))


def embedding_list(
    model: str, vectors: list[list[float]], prompt_tokens: int, encoding: str
) -> dict[str, Any]:
    """The `list` of `embedding` objects; base64 is the little-endian float32 bytes of each vector."""

    def encode(vector: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        return vector

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# OpenAI's reasoning efforts as Ollama maps them onto `think` (openai.go thinkFromReasoningEffort): its
# scale runs past Ollama's at both ends, so the outer tiers clamp to the nearest of Ollama's.
_EFFORT_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_from_reasoning(body: ChatCompletionRequest) -> bool | str | None:
    """The job's `think` from `reasoning.effort` (else `reasoning_effort`); None leaves the model's default."""
    effort = body.reasoning.effort if body.reasoning is not None else body.reasoning_effort
    return think_from_effort(effort, "reasoning_effort")


def think_from_effort(effort: str | None, param: str) -> bool | str | None:
    """An OpenAI reasoning effort as the job's `think` (None when unset); an unknown one is a 400 on `param`."""
    if not effort:
        return None
    if effort not in _EFFORT_THINK:
        raise OpenAIError(
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", "xhigh", '
            '"ultra", "max", or "none")',
            param=param,
            code="invalid_value",
        )
    return _EFFORT_THINK[effort]
