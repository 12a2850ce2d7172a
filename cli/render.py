"""``herd render``: the exact prompt a chat request becomes, printed instead of evaluated.

With a MODEL, the stored model's vocabulary is loaded from the store (no stack needed) and the request
goes through the worker's own preparation (``workers.prepare.prompt_tokens``: template, system, Modelfile
turns and whatever trimming the worker does at num_ctx); the tokens it yields are printed back as text,
special tokens spelled out. With ``--template FILE`` there is no model and no tokenizer: the request's
messages are rendered through that Go template by the same chat renderer, and printed as is.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from app.schemas import ChatRequest
    from cli.commands import AddCommand
    from herd.contracts import GenerateJob
    from workers.llama import LlamaModel


class RenderError(Exception):
    """A request or template that cannot be rendered, with the message to print."""


def read_request(text: str) -> ChatRequest:
    """An /api/chat body, parsed exactly as the API parses it."""
    from pydantic import ValidationError

    from app.schemas import ChatRequest

    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise RenderError(f"the request on stdin is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RenderError("the request on stdin must be a JSON object (an /api/chat body)")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RenderError(f"invalid request: {where}: {first['msg']}") from exc


def _job(request: ChatRequest, model: str) -> GenerateJob:
    from app.schemas import options_payload
    from herd.contracts import GenerateJob

    # The job /api/chat enqueues, less what only the queue reads.
    return GenerateJob(
        job_id="render",
        request_id="render",
        kind="chat",
        model=model,
        messages=request.messages,
        tools=request.tools,
        format=request.format,
        options=options_payload(request.options),
        admitted_ns=0,
    )


def render_template_file(path: Path, request: ChatRequest) -> str:
    """The prompt text a Go template file makes of the request (no model: no BOS, no Modelfile)."""
    from herd.templates.builtin import choose_template
    from herd.templates.chat import TemplateError, render_chat

    try:
        text = path.read_text()
    except OSError as exc:
        raise RenderError(f"cannot read the template: {exc}") from exc
    template = choose_template(request_template=text, layer=None, gguf_template=None, architecture="")
    try:
        return render_chat(template, list(request.messages), tools=request.tools)
    except TemplateError as exc:
        raise RenderError(str(exc)) from exc


def _spelled_out(model: LlamaModel, tokens: list[int]) -> str:
    """Tokens as text with their special tokens written out (<bos>, <start_of_turn>...)."""
    import llama_cpp

    out = bytearray()
    buf = ctypes.create_string_buffer(256)
    for token in tokens:
        n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, True)
        out += buf.raw[:n]
    return out.decode("utf-8", errors="replace")


def render_stored_model(name: str, request: ChatRequest) -> str:
    """The prompt the worker would evaluate for this request on the stored model."""
    from herd.settings import CommonSettings, load_settings
    from herd.store import ModelStore
    from herd.templates.chat import TemplateError
    from workers import prepare
    from workers.cache import LoadedModel, model_template
    from workers.engine import BatchEngine
    from workers.llama import LlamaModel, ModelLoadError
    from workers.settings import WorkerSettings

    store = ModelStore(load_settings(CommonSettings).models_dir)
    try:
        stored = prepare.resolve(store, name)
    except prepare.JobError as exc:
        raise RenderError(exc.message) from exc
    job = _job(request, stored.name.canonical)
    options: dict[str, Any] = {**stored.params, **job.options}
    n_ctx = prepare.num_ctx(stored, options, load_settings(WorkerSettings).context_length)
    try:
        # Weights are mapped, never offloaded nor repacked: only the vocabulary is read.
        llama_model = LlamaModel(stored.model_path, n_gpu_layers=0, repack=False)
    except ModelLoadError as exc:
        raise RenderError(str(exc)) from exc
    try:
        # The model as the worker's cache holds it, less the engine that preparing a prompt never uses.
        loaded = LoadedModel(
            stored=stored,
            llama=llama_model,
            engine=cast(BatchEngine, None),
            template=model_template(stored, llama_model),
            n_ctx=n_ctx,
            keep_alive=0,
        )
        try:
            tokens = prepare.prompt_tokens(job, loaded)
        except prepare.JobError as exc:
            raise RenderError(exc.message) from exc
        except TemplateError as exc:
            raise RenderError(str(exc)) from exc
        return _spelled_out(llama_model, tokens)
    finally:
        llama_model.close()


def cmd_render(args: argparse.Namespace) -> int:
    """Print the prompt an /api/chat body (on stdin) becomes."""
    if bool(args.model) == bool(args.template):
        print("Error: name a MODEL or give --template FILE (one of the two)", file=sys.stderr)
        return 2
    try:
        request = read_request(sys.stdin.read())
        if args.template:
            text = render_template_file(Path(args.template), request)
        else:
            text = render_stored_model(args.model, request)
    except RenderError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def register(add: AddCommand) -> None:
    """Add ``herd render`` to the ``herd`` parser."""
    render = add(
        "render",
        cmd_render,
        "Print the prompt text an /api/chat request body (on stdin) becomes, without evaluating it",
    )
    render.add_argument("model", metavar="MODEL", nargs="?", help="a model in the store")
    render.add_argument("--template", metavar="FILE", help="a Go template file instead of a stored model")
