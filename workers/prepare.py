"""What turns a job into what an engine runs: its model, context size, prompt tokens, sampling, output parsers.

Plain functions, run on the job thread; a request they cannot serve raises JobError with its HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

from herd.contracts import ChatMessage, GenerateJob
from herd.gguf_meta import GGUFError
from herd.memory import cap_num_ctx
from herd.names import InvalidModelName, ModelName
from herd.store import ModelNotFound, ModelStore, StoredModel
from herd.templates.builtin import choose_template
from herd.templates.chat import (
    TemplateError,
    chat_messages,
    generate_messages,
    render_chat,
    render_insert,
)
from herd.templates.harmony import HarmonyParser
from herd.templates.output_split import OutputSplitter
from herd.templates.thinking import (
    ThinkingParser,
    filter_think_tags,
    think_enabled,
    thinking_tags,
    uses_harmony,
)
from herd.templates.tool_calls import ToolCallParser, tool_call_tag
from workers.cache import LoadedModel
from workers.llama import LlamaModel, TokenOutOfRange
from workers.sampling import SamplingParams
from workers.vision import ImageError, MediaPrompt

# Ollama's truncation counts each image of a kept message as this many tokens (server/prompt.go's
# imageNumTokens, "CLIP images are represented as 768 tokens"), whatever the projector makes of it.
IMAGE_NUM_TOKENS = 768

log = logging.getLogger(__name__)

_SAMPLING_KEYS = {f for f in SamplingParams.__dataclass_fields__ if f != "grammar"}


class JobError(Exception):
    """A job that cannot run, with the HTTP status the API should answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def resolve(store: ModelStore, raw: str) -> StoredModel:
    """The stored model a job names: 400 for a bad name, 404 for one not pulled."""
    try:
        return store.get(ModelName.parse(raw), raw=raw)
    except InvalidModelName as exc:
        raise JobError(400, str(exc)) from exc
    except ModelNotFound as exc:
        raise JobError(404, str(exc)) from exc


def num_ctx(stored: StoredModel, options: dict[str, Any], default: int) -> int:
    """The job's num_ctx (request, Modelfile or OLLAMA_CONTEXT_LENGTH), capped at the trained context."""
    asked = options.get("num_ctx")
    wanted = int(asked or default)
    try:
        info = stored.gguf_info()
    except (OSError, GGUFError):
        return wanted  # the cache's estimate reads the same header and reports why it cannot
    n_ctx = cap_num_ctx(info, wanted)
    if n_ctx < wanted:
        # Ollama's line (llm/server.go). The server's own default beyond a small model's context is
        # routine, so only a request's or a Modelfile's num_ctx is worth a warning.
        log.log(
            logging.WARNING if asked else logging.DEBUG,
            "requested context size too large for model",
            extra={"model": stored.name.display, "num_ctx": wanted, "n_ctx_train": n_ctx},
        )
    return n_ctx


def check_context(context: list[int], model: LlamaModel) -> None:
    """A client's `context` may hold only the model's own token ids: a 400 names the first that is not."""
    try:
        model.check_tokens(context, "context")
    except TokenOutOfRange as exc:
        raise JobError(400, str(exc)) from exc


def truncated_messages(
    messages: list[ChatMessage], n_ctx: int, count: Callable[[list[ChatMessage]], int]
) -> list[ChatMessage]:
    """Ollama's chatPrompt: drop messages from the front until the prompt fits num_ctx, keeping every
    system message and always the last message. Herd stops one token short of Ollama's limit (`< n_ctx`,
    Ollama's `<=`): a prompt that fills the window leaves no room to generate."""
    for i in range(len(messages)):
        kept = [m for m in messages[:i] if m.role == "system"] + messages[i:]
        if i == len(messages) - 1 or count(kept) < n_ctx:
            if i:
                log.debug("truncating input messages which exceed context length", extra={"dropped": i})
            return kept
    return messages


def prompt_tokens(job: GenerateJob, loaded: LoadedModel) -> list[int]:
    """The job's prompt tokens (prompt_input's, without its images)."""
    return prompt_input(job, loaded)[0]


def prompt_input(job: GenerateJob, loaded: LoadedModel) -> tuple[list[int], MediaPrompt | None]:
    """The job's prompt, rendered through its template (unless raw) and tokenized, after any `context`.

    The conversation is built as Ollama builds it (the Modelfile's SYSTEM and MESSAGE turns around the
    request's), and a chat over num_ctx loses its oldest turns unless the job says `truncate: false`.
    With images, the tokens hold a placeholder for each image position and the MediaPrompt the images.
    """
    model = loaded.llama
    stored = loaded.stored
    has_images = bool(job.images) or any(m.images for m in job.messages or ())
    if has_images and loaded.projector is None:
        raise JobError(400, f"{stored.name.display} does not support vision")
    if job.kind == "generate" and job.context:
        check_context(job.context, model)
    if job.kind == "generate" and job.raw:
        if job.images:
            # Raw prompts place their images themselves, with "[img-N]" tags.
            return _with_images(job.prompt or "", decode_images(job.images, "images"), job, loaded)
        return [*(job.context or []), *model.tokenize(job.prompt or "", add_special=not job.context)], None
    template = loaded.template
    if job.kind == "generate" and job.template:
        template = choose_template(
            request_template=job.template, layer=None, gguf_template=None, architecture=""
        )
    bos = model.piece(model.bos).decode("utf-8", errors="replace") if model.bos >= 0 else ""

    think = job.think
    if think == "max" and uses_harmony(template, str(stored.details().get("family", ""))):
        think = "high"  # harmony's reasoning levels stop at high; Ollama maps max onto it

    def render(messages: list[ChatMessage]) -> str:
        return render_chat(template, messages, tools=job.tools, think=think, bos_token=bos)

    images: list[bytes] = []

    def render_tagged(messages: list[ChatMessage]) -> str:
        tagged, found = image_tagged_messages(messages)
        images.extend(found)
        return render(tagged)

    try:
        if job.suffix:
            if not template.supports_suffix:
                raise JobError(400, f"{stored.name.display} does not support insert")
            text = render_insert(template, job.prompt or "", job.suffix, think=think)
            # An insert has no conversation to tag: its images need "[img-N]" in the prompt (else a 400).
            images.extend(decode_images(job.images or [], "images"))
        elif job.kind == "generate":
            messages = generate_messages(
                job.prompt or "",
                job.system,
                stored_system=stored.system,
                stored_messages=None if job.context else stored.messages,
            )
            if job.images:
                messages[-1] = messages[-1].model_copy(update={"images": job.images})
            # Ollama truncates a generate's conversation too, but not under a request's own template.
            truncate = job.truncate and not job.template
            text = _render_within(messages, render, render_tagged, model, loaded.n_ctx, truncate)
        else:
            messages = chat_messages(
                list(job.messages or []), system=stored.system, stored_messages=stored.messages
            )
            messages = filter_think_tags(messages, str(stored.details().get("family", "")), stored.name.model)
            text = _render_within(messages, render, render_tagged, model, loaded.n_ctx, job.truncate)
    except TemplateError as exc:
        raise JobError(400, str(exc)) from exc
    if images:
        return _with_images(text, images, job, loaded)
    return _text_tokens(text, job, model), None


def _text_tokens(text: str, job: GenerateJob, model: LlamaModel) -> list[int]:
    if job.kind == "generate" and job.context:
        return [*job.context, *model.tokenize(text, add_special=False)]
    return model.tokenize(text, add_special=True)


def _render_within(
    messages: list[ChatMessage],
    render: Callable[[list[ChatMessage]], str],
    render_tagged: Callable[[list[ChatMessage]], str],
    model: LlamaModel,
    n_ctx: int,
    truncate: bool,
) -> str:
    if any(m.images for m in messages):
        # As Ollama: truncation counts the untagged text plus IMAGE_NUM_TOKENS per image, and only the
        # messages kept are rendered with their "[img-N]" tags (and only their images are sent).
        def count_with_images(kept: list[ChatMessage]) -> int:
            n_images = sum(len(m.images or ()) for m in kept)
            return len(model.tokenize(render(kept), add_special=True)) + IMAGE_NUM_TOKENS * n_images

        kept = truncated_messages(messages, n_ctx, count_with_images) if truncate else messages
        return render_tagged(kept)
    if not truncate or len(messages) < 2:
        return render(messages)
    last: dict[int, str] = {}  # the text of the messages last counted, which are usually those kept

    def count(kept: list[ChatMessage]) -> int:
        last.clear()
        last[id(kept)] = text = render(kept)
        return len(model.tokenize(text, add_special=True))

    kept = truncated_messages(messages, n_ctx, count)
    return last.get(id(kept)) or render(kept)


def decode_images(images: list[str], field: str) -> list[bytes]:
    """A request's base64 images as bytes; the API checked them, a job enqueued otherwise may not be."""
    out = []
    for i, image in enumerate(images):
        try:
            out.append(base64.b64decode(image.replace("\r", "").replace("\n", ""), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise JobError(400, f"invalid base64 data in {field}[{i}]: {exc}") from exc
    return out


def image_tagged_messages(messages: list[ChatMessage]) -> tuple[list[ChatMessage], list[bytes]]:
    """Ollama's imageTaggedMessages: each image of a message becomes an "[img-N]" tag, numbered across
    the conversation, at the message's first "[img]" if it has one, else before its text."""
    tagged: list[ChatMessage] = []
    images: list[bytes] = []
    for i, message in enumerate(messages):
        if not message.images:
            tagged.append(message)
            continue
        prefix, content = "", message.content
        for data in decode_images(message.images, f"messages[{i}].images"):
            tag = f"[img-{len(images)}]"
            images.append(data)
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        tagged.append(message.model_copy(update={"content": prefix + content, "images": None}))
    return tagged, images


def _with_images(
    text: str, images: list[bytes], job: GenerateJob, loaded: LoadedModel
) -> tuple[list[int], MediaPrompt]:
    """Tokenize with libmtmd: text tokens, and placeholders where each "[img-N]" tag's image goes."""
    assert loaded.projector is not None  # prompt_input refused images without one
    context = job.context if job.kind == "generate" and job.context else []
    try:
        media = loaded.projector.tokenize(text, images, add_special=not context)
    except ImageError as exc:
        raise JobError(400, str(exc)) from exc
    media.prepend(context)
    return media.tokens, media


def check_fits(tokens: list[int], n_ctx: int) -> None:
    """A prompt must leave room in the context window for at least one generated token."""
    if len(tokens) >= n_ctx:
        raise JobError(
            400,
            f"prompt is too long: {len(tokens)} tokens do not fit the context window "
            f"(num_ctx {n_ctx}); shorten the prompt or raise num_ctx",
        )


def num_keep(options: dict[str, Any]) -> int:
    """The tokens a context shift keeps at the start (-1: the whole prompt); Ollama's default is 4."""
    value = options.get("num_keep")
    return 4 if value is None else int(value)


def sampling_params(options: dict[str, Any], grammar: str | None) -> SamplingParams:
    """The sampler's settings from the job's options (those set), with the format's grammar."""
    return SamplingParams(
        **{k: options[k] for k in _SAMPLING_KEYS if options.get(k) is not None}, grammar=grammar
    )


def tool_call_parser(job: GenerateJob, loaded: LoadedModel) -> ToolCallParser | None:
    """A parser for the calls a chat with tools may produce, in the shape the template renders them."""
    if job.kind != "chat" or not job.tools:
        return None
    names = {
        str(tool["function"]["name"])
        for tool in job.tools
        if isinstance(tool.get("function"), dict) and tool["function"].get("name")
    }
    if loaded.tool_call_tag is None:
        bos = loaded.llama.piece(loaded.llama.bos).decode(errors="replace") if loaded.llama.bos >= 0 else ""
        try:
            tag = tool_call_tag(
                lambda msgs: render_chat(
                    loaded.template, msgs, tools=job.tools, think=job.think, bos_token=bos
                )
            )
        except TemplateError:
            tag = None
        # A template that renders tools but no calls: the model answers with bare JSON at best.
        loaded.tool_call_tag = tag if tag is not None else ""
    return ToolCallParser(loaded.tool_call_tag, names, job.tools)


def output_splitter(job: GenerateJob, loaded: LoadedModel, prompt: list[int]) -> OutputSplitter | None:
    """How the job's output splits into thinking, content and tool calls; None when it is all content.

    As Ollama, from the model's own template (not a request's): gpt-oss's harmony output is parsed unless
    the prompt is raw; tags are split off only when the job thinks (`think` on, as it is by default for a
    thinking model) and the template names them; a prompt that already ends with the opening tag starts
    the output inside the thinking.
    """
    template = loaded.template
    if not (job.kind == "generate" and job.raw) and uses_harmony(
        template, str(loaded.stored.details().get("family", ""))
    ):
        return OutputSplitter(harmony=HarmonyParser())
    thinking = None
    opening, closing = thinking_tags(template)
    if opening and closing and think_enabled(job.think):
        # The prompt's last tokens are enough to see the tag; llama.cpp renders a user-defined tag as text.
        opened = loaded.llama.detokenize(prompt[-16:]).strip().endswith(opening)
        thinking = ThinkingParser(opening, closing, opened=opened)
    tools = tool_call_parser(job, loaded)
    if thinking is None and tools is None:
        return None
    return OutputSplitter(thinking=thinking, tools=tools)
