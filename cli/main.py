"""The ``herd`` command: ``herd up`` runs the whole stack; later commands (run, pull, list...) join here.

Each subcommand is a ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`. Nothing heavy is
imported at module level: ``herd --version`` and the API-side commands must never load llama_cpp.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from herd import __version__
from herd.logs import configure_logging
from herd.settings import CommonSettings, SettingsError, load_settings

logger = logging.getLogger("herd")

Command = Callable[[argparse.Namespace], int]


def _configure_logging(debug: bool) -> None:
    """One logfmt line per event on stderr; stdout stays for the command's own output."""
    configure_logging("stack", debug=debug)


def _cmd_setup(args: argparse.Namespace) -> int:
    """Place the bundled default model in the store."""
    from herd.store import ModelStore
    from stack.setup import ensure_default_model

    settings = load_settings(CommonSettings)
    _configure_logging(settings.debug)
    model = ensure_default_model(ModelStore(settings.models_dir))
    print(f"{model.name.display} is ready in {settings.models_dir}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the whole stack in the foreground until Ctrl-C."""
    from herd.store import ModelStore
    from stack.settings import StackSettings
    from stack.setup import ensure_default_model
    from stack.supervisor import Stack

    settings = load_settings(StackSettings)
    _configure_logging(settings.debug)
    ensure_default_model(ModelStore(settings.models_dir))
    stack = Stack(settings)
    stack.start()
    url = stack.url
    lan_redis = not settings.redis_external and settings.redis_bind != "127.0.0.1"
    redis_line = (
        f"  redis:  rediss://{settings.redis_bind}:{settings.redis_port} (`herd join`: a worker host's settings)\n"
        if lan_redis
        else ""
    )
    print(
        f"\nHerd {__version__} is serving Ollama's API at {url}\n"
        f"  models: {settings.models_dir}\n"
        f"  logs:   {settings.run_dir / 'logs'}\n"
        f"{redis_line}"
        "Try it:\n"
        f'  curl {url}/api/generate -d \'{{"model":"gemma3:270m","prompt":"Why is the sky blue?"}}\'\n'
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    return stack.run_forever()


def _cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker process (the stack starts these itself)."""
    # Imported here so that no other command pulls in llama_cpp.
    import workers.main

    entry: Callable[[], object] = workers.main.main
    result = entry()
    return result if isinstance(result, int) else 0


def _cmd_store_worker(args: argparse.Namespace) -> int:
    """Run the store worker (the stack starts one itself)."""
    import workers.store.worker

    workers.store.worker.main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="herd",
        description="A self-hosted LLM server that speaks Ollama's API.",
    )
    parser.add_argument(
        "-v",
        "--version",
        action="version",
        version=f"herd version is {__version__}",
        help="show the version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Command, help_text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
        command.set_defaults(func=func)
        return command

    add("serve", _cmd_serve, "Start the stack (redis, API, workers, nginx) and supervise it", aliases=["up"])
    add("setup", _cmd_setup, "Place the bundled default model (gemma3:270m) in the store")
    add("worker", _cmd_worker, "Run one worker process")
    add("store-worker", _cmd_store_worker, "Run the store worker (pull, push and create jobs)")
    # Ollama's client commands (run, pull, list, ...); the module imports only argparse until one runs.
    from cli.commands import register

    register(add)
    from cli.render import register as register_render

    register_render(add)
    from cli.join import register as register_join

    register_join(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``herd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except SettingsError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except _expected_errors() as exc:
        # Expected failures (a port in use, nginx rejecting its config, a process dying at start) end
        # with their message, not a traceback; OLLAMA_DEBUG=1 logging still shows the traceback.
        logger.debug("command failed", exc_info=True)
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _expected_errors() -> tuple[type[Exception], ...]:
    """The failures a command reports as a one-line message (imported late, like the commands)."""
    from cli.join import JoinError
    from herd.store import StoreError
    from stack.nginx import NginxError
    from stack.processes import ProcessError
    from stack.redis_conf import RedisServerMissing
    from stack.setup import DefaultModelMissing
    from stack.supervisor import StackError

    return (
        StackError,
        ProcessError,
        NginxError,
        RedisServerMissing,
        DefaultModelMissing,
        StoreError,
        JoinError,
    )


if __name__ == "__main__":
    sys.exit(main())
