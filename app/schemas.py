"""Request bodies of Ollama's native API, validated with the limits a clear 400 names."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from herd.contracts import ChatMessage, optional_fields_take_null

log = logging.getLogger(__name__)

MAX_NUM_CTX = 1 << 20  # over a million tokens of context is never a real request on one server
MAX_NUM_PREDICT = 1 << 20
# OpenAI caps top_logprobs at 20; so does Ollama.
MAX_TOP_LOGPROBS = 20
# llama.cpp takes counts and token ids as C ints; a larger Python int overflows on the way in.
MAX_C_INT = (1 << 31) - 1
# A token id of a `context` a previous answer returned.
TokenId = Annotated[int, Field(ge=0, le=MAX_C_INT)]
# A think level: any string reaches the route, which answers Ollama's own 400 for one it does not know
# (app/thinking.py); the published schema names the levels.
ThinkLevel = Annotated[str, WithJsonSchema({"type": "string", "enum": ["high", "medium", "low", "max"]})]


def absent_nulls(data: Any) -> Any:
    """A body's fields without those that are JSON null, which Go's decoder treats as absent."""
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None}
    return data


class VendorBody(BaseModel):
    """A request object of a vendor API (OpenAI, Anthropic): unknown fields ignored, as those APIs grow
    often, and JSON null the same as absent (their optional fields are all nullable)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=optional_fields_take_null)

    @model_validator(mode="before")
    @classmethod
    def _skip_nulls(cls, data: Any) -> Any:
        return absent_nulls(data)


def absent_message_nulls(messages: Any) -> Any:
    """Chat messages without their null fields, nor those of their tool calls and functions.

    Go's decoder leaves a field at its zero value for a JSON null, so Ollama reads an assistant turn's
    `"content": null` beside its `tool_calls` as empty content. A tool call's `arguments` keep their
    nulls: those are the arguments' own values.
    """
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        message = absent_nulls(message)
        if isinstance(message, dict) and isinstance(message.get("tool_calls"), list):
            calls = []
            for call in message["tool_calls"]:
                call = absent_nulls(call)
                if isinstance(call, dict) and "function" in call:
                    call = {**call, "function": absent_nulls(call["function"])}
                calls.append(call)
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out


class Options(BaseModel):
    """Runtime options Herd honours; the rest of Ollama's runner options are accepted and ignored."""

    model_config = ConfigDict(extra="allow", json_schema_extra=optional_fields_take_null)

    num_ctx: int | None = Field(default=None, ge=1, le=MAX_NUM_CTX)
    # -1 generates until a stop or the context is full, -2 fills the context (Ollama's two specials).
    num_predict: int | None = Field(default=None, ge=-2, le=MAX_NUM_PREDICT)
    num_keep: int | None = Field(default=None, ge=-1)
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_k: int | None = Field(default=None, ge=0)  # capped, see _cap_counts
    top_p: float | None = Field(default=None, ge=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    typical_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=-(1 << 63), le=(1 << 64) - 1)
    # A bare string is taken too (see _stop_string), and the published schema says so.
    stop: Annotated[
        list[str] | None,
        WithJsonSchema(
            {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}, {"type": "null"}]}
        ),
    ] = None
    repeat_penalty: float | None = Field(default=None, ge=0, le=100)
    repeat_last_n: int | None = Field(default=None, ge=-1, le=MAX_NUM_CTX)
    presence_penalty: float | None = Field(default=None, ge=-100, le=100)
    frequency_penalty: float | None = Field(default=None, ge=-100, le=100)
    num_batch: int | None = Field(default=None, ge=1, le=1 << 16)
    num_thread: int | None = Field(default=None, ge=0, le=1024)
    # Herd's own: sequences decoded together for this model, applied when the model (re)loads.
    num_parallel: int | None = Field(default=None, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _skip_nulls(cls, data: Any) -> Any:
        # Null options are skipped, as Ollama's Options.FromMap skips them.
        return absent_nulls(data)

    @field_validator(
        "num_ctx",
        "num_predict",
        "num_keep",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "seed",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "num_batch",
        "num_thread",
        "num_parallel",
        mode="before",
    )
    @classmethod
    def _no_bools(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON true/false is no number to Ollama (Options.FromMap: "option %q must be of type ..."),
        # though pydantic would read it as 1/0.
        if isinstance(value, bool):
            raise ValueError(f"option {info.field_name!r} must be a number, not {str(value).lower()}")
        return value

    @field_validator("top_k", "num_keep")
    @classmethod
    def _cap_counts(cls, value: int | None) -> int | None:
        # Past the vocabulary (top_k) or the context (num_keep) these mean "all": capped, never refused
        # (Ollama takes any), so that the C int llama.cpp reads them into cannot overflow.
        return min(value, MAX_NUM_CTX) if value is not None else None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_string(cls, value: Any) -> Any:
        # Ollama's clients send a list; a bare string is the obvious intent, so take it too.
        return [value] if isinstance(value, str) else value

    @field_validator("num_predict")
    @classmethod
    def _num_predict(cls, value: int | None) -> int | None:
        if value is not None and value < -2:
            raise ValueError("must be -1 (no limit), -2 (fill the context) or a count ≥ 0")
        return value

    @model_validator(mode="after")
    def _log_ignored(self) -> Options:
        extra = self.model_extra or {}
        # Ollama logs and ignores options it does not know; its runner knobs are ignored here too.
        for key in extra:
            if key not in _ACCEPTED_IGNORED:
                log.warning("invalid option provided", extra={"option": key})
        return self

    def as_payload(self) -> dict[str, Any]:
        """Only the options the client set, for the worker to lay over the model's defaults."""
        known = self.model_dump(exclude_none=True, exclude=set(self.model_extra or {}))
        return known


def options_payload(options: Options | None) -> dict[str, Any]:
    """A request's options for the job payload ({} when it sent none)."""
    return options.as_payload() if options is not None else {}


_ACCEPTED_IGNORED = frozenset(
    {
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "numa",
        "logits_all",
        "embedding_only",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "tfs_z",
    }
)


class _Named(BaseModel):
    """A body that names a model; older clients send "name" instead of "model"."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=optional_fields_take_null)

    model: str = Field(default="", description="Model name, e.g. gemma3:270m.")

    @model_validator(mode="before")
    @classmethod
    def _legacy_name(cls, data: Any) -> Any:
        data = absent_nulls(data)
        if isinstance(data, dict) and not data.get("model") and isinstance(data.get("name"), str):
            data = {**data, "model": data["name"]}
        return data


class _Request(_Named):
    # Strict: pydantic's lax mode would read `true` as 1 second (found by the fuzzer); Ollama refuses it.
    keep_alive: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None, description='How long to keep the model loaded: "5m", seconds, negative for ever, 0.'
    )
    options: Options | None = None


class _Generating(_Request):
    logprobs: StrictBool = Field(default=False, description="Return each generated token's log probability.")
    top_logprobs: int = Field(
        default=0, ge=0, le=MAX_TOP_LOGPROBS, description="With logprobs: this many likeliest alternatives."
    )
    shift: StrictBool = Field(
        default=True,
        description="When generation fills num_ctx, shift the context (keeping num_keep tokens); "
        'false: stop with done_reason "length".',
    )

    def logprobs_top(self) -> int | None:
        """The job's `logprobs`: None when not asked for, else how many alternatives to list."""
        return self.top_logprobs if self.logprobs else None


class GenerateRequest(_Generating):
    """POST /api/generate."""

    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[TokenId] | None = None
    # Strict like every bool here: Go's decoder refuses "yes" or 1 for a bool, and so does Ollama.
    stream: StrictBool = True
    raw: StrictBool = False
    format: str | dict[str, Any] | None = None
    images: list[str] | None = None
    think: StrictBool | ThinkLevel | None = None
    truncate: StrictBool = Field(default=True, description="False: a prompt over num_ctx is a 400.")


class ChatRequest(_Generating):
    """POST /api/chat."""

    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    stream: StrictBool = True
    format: str | dict[str, Any] | None = None
    think: StrictBool | ThinkLevel | None = None
    truncate: StrictBool = Field(
        default=True, description="False: a chat over num_ctx is a 400, not its oldest messages dropped."
    )

    @field_validator("messages", mode="before")
    @classmethod
    def _message_nulls(cls, value: Any) -> Any:
        return absent_message_nulls(value)


class EmbedRequest(_Request):
    """POST /api/embed."""

    input: str | list[str] = ""
    truncate: StrictBool = True
    dimensions: int | None = Field(default=None, ge=1, le=1 << 16)


class EmbeddingsRequest(_Request):
    """POST /api/embeddings (legacy: one prompt, one unnormalised vector)."""

    prompt: str = ""


class ShowRequest(_Named):
    """POST /api/show."""

    verbose: StrictBool = False


class PullRequest(_Named):
    """POST /api/pull and POST /api/push."""

    insecure: StrictBool = False
    stream: StrictBool = True


class CreateRequest(_Named):
    """POST /api/create, the JSON form of Ollama's current API (a Modelfile is parsed by the client)."""

    from_: str | None = Field(default=None, alias="from", description="An existing model to build on.")
    files: dict[str, str] | None = Field(default=None, description="GGUF file name -> uploaded blob digest.")
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[ChatMessage] | None = None
    license: str | list[str] | None = None
    quantize: str | None = Field(default=None, description="q4_K_M, q8_0, ... for an F16 or F32 source.")
    # Older clients say "quantization".
    quantization: str | None = None
    stream: StrictBool = True

    @field_validator("messages", mode="before")
    @classmethod
    def _message_nulls(cls, value: Any) -> Any:
        return absent_message_nulls(value)


class CopyRequest(BaseModel):
    """POST /api/copy."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=optional_fields_take_null)

    source: str = ""
    destination: str = ""

    @model_validator(mode="before")
    @classmethod
    def _skip_nulls(cls, data: Any) -> Any:
        return absent_nulls(data)


class DeleteRequest(_Named):
    """DELETE /api/delete."""
