"""Ollama's CLI commands for ``herd``: run, pull, push, list/ls, ps, rm, cp, show, create, stop.

:func:`register` adds them to the ``herd`` parser. Only argparse is imported here; httpx and the rest load
when a command runs, so ``herd --version`` and ``herd serve`` stay quick.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cli.api import HerdClient
    from cli.progress import Progress

Command = Callable[[argparse.Namespace], int]
AddCommand = Callable[..., argparse.ArgumentParser]


def connect() -> HerdClient:
    """A client for the API at OLLAMA_HOST, authenticating with HERD_API_KEY when it is set."""
    from cli.api import HerdClient
    from cli.host import base_url

    return HerdClient(base_url(), api_key=os.environ.get("HERD_API_KEY") or None)


def _reports_errors(func: Command) -> Command:
    """Print an expected failure as Ollama does (``Error: <message>``) and exit 1, without a traceback."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from cli.api import ClientError
        from herd.store.modelfile import ModelfileError

        try:
            return func(args)
        except BrokenPipeError:
            # The reader went away (`herd list | head -1`): stop quietly with SIGPIPE's status, as Go's
            # runtime does, and keep Python from complaining again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except (ClientError, ModelfileError, OSError) as exc:
            print(f"Error: {_os_error_text(exc) if isinstance(exc, OSError) else exc}", file=sys.stderr)
            return 1

    return wrapper


def _os_error_text(exc: OSError) -> str:
    # Go's wording for a missing file ("open Modelfile: no such file or directory"), which users search for.
    reason = (exc.strerror or str(exc)).lower()
    return f"open {exc.filename}: {reason}" if exc.filename else str(exc)


def _progress() -> Progress:
    from cli.progress import Progress

    return Progress(sys.stderr)


def _stream_progress(client: HerdClient, path: str, body: dict[str, Any], progress: Progress) -> None:
    with client.stream(path, body) as events:
        for event in events:
            progress.update(event)
    progress.close()


@_reports_errors
def cmd_pull(args: argparse.Namespace) -> int:
    """Pull a model from a registry."""
    with connect() as client:
        pull(client, args.model, insecure=args.insecure)
    return 0


def pull(client: HerdClient, model: str, *, insecure: bool) -> None:
    """Stream /api/pull with progress bars on stderr."""
    _stream_progress(client, "/api/pull", {"model": model, "insecure": insecure, "stream": True}, _progress())


@_reports_errors
def cmd_push(args: argparse.Namespace) -> int:
    """Push a model to a registry."""
    with connect() as client:
        body = {"model": args.model, "insecure": args.insecure, "stream": True}
        _stream_progress(client, "/api/push", body, _progress())
    return 0


@_reports_errors
def cmd_list(args: argparse.Namespace) -> int:
    """List the models in the store: NAME, ID, SIZE, MODIFIED."""
    from cli.format import human_bytes, human_time, parse_time, table

    with connect() as client:
        models = (client.call("GET", "/api/tags") or {}).get("models") or []
    rows = [
        [
            str(m.get("name") or m.get("model", "")),
            _short_id(str(m.get("digest", ""))),
            human_bytes(int(m.get("size") or 0)),
            human_time(parse_time(str(m.get("modified_at", ""))), "Never"),
        ]
        for m in models
    ]
    sys.stdout.write(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def _short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


@_reports_errors
def cmd_ps(args: argparse.Namespace) -> int:
    """List the models in memory: NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL."""
    from datetime import datetime

    from cli.format import human_bytes, human_time, parse_time, processor, table

    with connect() as client:
        models = (client.call("GET", "/api/ps") or {}).get("models") or []
    now = datetime.now(UTC)
    rows = []
    for m in models:
        size, size_vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
        expires = parse_time(str(m.get("expires_at", "")))
        until = "Stopping..." if expires is not None and expires < now else human_time(expires, "Never", now)
        rows.append(
            [
                str(m.get("name") or m.get("model", "")),
                _short_id(str(m.get("digest", ""))),
                human_bytes(size),
                processor(size, size_vram),
                str(m.get("context_length") or ""),
                until,
            ]
        )
    sys.stdout.write(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))
    return 0


@_reports_errors
def cmd_rm(args: argparse.Namespace) -> int:
    """Remove one or more models."""
    from cli.api import ClientError

    with connect() as client:
        for name in args.models:
            # As Ollama does: unload the model first so its memory is freed; a model not loaded is fine.
            with contextlib.suppress(ClientError):
                _unload(client, name)
            client.call("DELETE", "/api/delete", {"model": name})
            print(f"deleted '{name}'")
    return 0


@_reports_errors
def cmd_cp(args: argparse.Namespace) -> int:
    """Copy a model to a new name."""
    with connect() as client:
        client.call("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def _unload(client: HerdClient, name: str) -> None:
    client.call("POST", "/api/generate", {"model": name, "prompt": "", "keep_alive": 0, "stream": False})


@_reports_errors
def cmd_stop(args: argparse.Namespace) -> int:
    """Unload a running model (a generate with keep_alive 0 and no prompt)."""
    from cli.api import ClientError

    with connect() as client:
        try:
            _unload(client, args.model)
        except ClientError as exc:
            if "not found" in str(exc):
                raise ClientError(f'couldn\'t find model "{args.model}" to stop', exc.status) from None
            raise
    return 0


_SHOW_FIELDS = ("license", "modelfile", "parameters", "system", "template")


@_reports_errors
def cmd_show(args: argparse.Namespace) -> int:
    """Show a model's details, or one of its Modelfile, parameters, template, system or license."""
    from cli.api import ClientError
    from cli.show import render_info

    chosen = [f for f in _SHOW_FIELDS if getattr(args, f)]
    if len(chosen) > 1:
        raise ClientError(
            "only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified"
        )
    with connect() as client:
        info = client.call("POST", "/api/show", {"model": args.model, "verbose": args.verbose})
    if chosen:
        print(info.get(chosen[0]) or "")
    else:
        sys.stdout.write(render_info(info))
    return 0


@_reports_errors
def cmd_create(args: argparse.Namespace) -> int:
    """Create a model from a Modelfile (its local GGUFs are uploaded as blobs first)."""
    from herd.store.modelfile import create_request, file_digest, parse

    path = Path(args.file)
    modelfile = parse(path.read_bytes())
    progress = _progress()
    progress.message("gathering model components")
    plan = create_request(modelfile, args.model, path.parent, digest=file_digest)
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    with connect() as client:
        for local, digest in plan.uploads.items():
            if client.has_blob(digest):
                continue
            total = local.stat().st_size
            sent = 0
            status = f"copying file {digest}"

            def report(n: int, status: str = status, total: int = total, digest: str = digest) -> None:
                nonlocal sent
                sent += n
                progress.update({"status": status, "digest": digest, "total": total, "completed": sent})

            report(0)
            client.upload_blob(digest, local, report)
        body = dict(plan.body, stream=True)
        if args.quantize:
            body["quantize"] = args.quantize
        _stream_progress(client, "/api/create", body, progress)
    return 0


@_reports_errors
def cmd_run(args: argparse.Namespace) -> int:
    """Run a model: one answer for a prompt argument or piped stdin, else an interactive chat."""
    from cli.api import ClientError
    from cli.repl import Session, one_shot

    prompts: list[str] = list(args.prompt)
    if not sys.stdin.isatty():
        # Piped text comes first, then the arguments (Ollama's order); an empty pipe adds nothing.
        piped = sys.stdin.read()
        if piped:
            prompts.insert(0, piped)
    with connect() as client:
        try:
            info = client.call("POST", "/api/show", {"model": args.model})
        except ClientError as exc:
            if exc.status != 404:
                raise
            # As Ollama does: a model not in the store is pulled first.
            pull(client, args.model, insecure=args.insecure)
            info = client.call("POST", "/api/show", {"model": args.model})
        session = Session(client, args.model, info, keep_alive=args.keepalive, format=args.format)
        if prompts:
            return one_shot(session, " ".join(prompts), verbose=args.verbose)
        return session.interact(verbose=args.verbose)


def register(add: AddCommand) -> None:
    """Add the client commands to the ``herd`` parser through its ``add(name, func, help, aliases)``."""
    run = add("run", cmd_run, "Run a model")
    run.add_argument("model", metavar="MODEL")
    run.add_argument("prompt", metavar="PROMPT", nargs="*", help="answer this and exit (else chat)")
    run.add_argument("--format", help='response format (e.g. "json")')
    run.add_argument("--keepalive", help='how long the model stays loaded (e.g. "5m", "-1")')
    run.add_argument("--verbose", action="store_true", help="show timings for the response")
    run.add_argument("--insecure", action="store_true", help="use an insecure registry when pulling")

    for name, func, help_text in (
        ("pull", cmd_pull, "Pull a model from a registry"),
        ("push", cmd_push, "Push a model to a registry"),
    ):
        command = add(name, func, help_text)
        command.add_argument("model", metavar="MODEL")
        command.add_argument("--insecure", action="store_true", help="use an insecure registry")

    add("list", cmd_list, "List models", aliases=["ls"])
    add("ps", cmd_ps, "List running models")

    rm = add("rm", cmd_rm, "Remove a model")
    rm.add_argument("models", metavar="MODEL", nargs="+")

    cp = add("cp", cmd_cp, "Copy a model")
    cp.add_argument("source", metavar="SOURCE")
    cp.add_argument("destination", metavar="DESTINATION")

    show = add("show", cmd_show, "Show information for a model")
    show.add_argument("model", metavar="MODEL")
    for flag in _SHOW_FIELDS:
        show.add_argument(f"--{flag}", action="store_true", help=f"show the model's {flag}")
    show.add_argument("-v", "--verbose", action="store_true", help="show the full metadata arrays")

    create = add("create", cmd_create, "Create a model from a Modelfile")
    create.add_argument("model", metavar="MODEL")
    create.add_argument("-f", "--file", default="Modelfile", help='the Modelfile (default "Modelfile")')
    create.add_argument("-q", "--quantize", help="quantize the model to this level (e.g. q4_K_M)")

    stop = add("stop", cmd_stop, "Stop a running model")
    stop.add_argument("model", metavar="MODEL")


__all__: Sequence[str] = ("connect", "register")
