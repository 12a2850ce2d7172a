"""Ollama's Modelfile: parse it, and turn it into the JSON body of ``POST /api/create``.

The parser follows ``parser/parser.go`` in ollama/ollama rune for rune (the same states, the same
quoting rules, the same error texts and line numbers), because people bring Modelfiles written for
Ollama and expect the same verdict on them. The request builder follows ``Modelfile.CreateRequest``:
a ``FROM`` or ``ADAPTER`` that names an existing local file becomes a ``files``/``adapters`` entry
(its sha256, to be uploaded as a blob by the caller); any other ``FROM`` names a model.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

COMMANDS = ("from", "license", "template", "system", "adapter", "parameter", "message")
ERR_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "parameter", or "message"'
)
ERR_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
ERR_MISSING_FROM = "no FROM line"
ERR_UNEXPECTED_EOF = "unexpected EOF"

_GO_INT = re.compile(r"[+-]?[0-9]+")

ParamType = Literal["int", "float", "bool", "string", "list"]

# The typed fields of Ollama's api.Options (with its Runner): PARAMETER values are converted to these.
PARAMETER_TYPES: dict[str, ParamType] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "list",
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    # Herd's own: sequences decoded together for this model (overrides OLLAMA_NUM_PARALLEL).
    "num_parallel": "int",
}

# Accepted with a warning and dropped, as Ollama does for parameters it no longer honours.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)


class ModelfileError(ValueError):
    """A Modelfile Ollama would refuse; the message is Ollama's (with ``(line N): `` where it has one)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"(line {line}): {message}" if line > 0 else message)
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class Command:
    """One Modelfile instruction: ``name`` is ``model`` for FROM, the parameter's name for PARAMETER."""

    name: str
    args: str


@dataclass(frozen=True)
class Modelfile:
    """The parsed instructions, in file order."""

    commands: tuple[Command, ...]


class _State(Enum):
    NIL = 0
    NAME = 1
    VALUE = 2
    PARAMETER = 3
    MESSAGE = 4
    COMMENT = 5


class _Unexpected(Exception):
    """Ollama's io.ErrUnexpectedEOF inside the state machine (reported with the buffer, no line)."""


def _is_alpha(r: str) -> bool:
    return "a" <= r <= "z" or "A" <= r <= "Z"


def _is_space(r: str) -> bool:
    return r in (" ", "\t")


def _is_newline(r: str) -> bool:
    return r in ("\r", "\n")


def _next_state(r: str, state: _State) -> tuple[_State, str]:
    """Ollama's parseRuneForState: the next state and the rune to keep ("" for none)."""
    if state is _State.NIL:
        if r == "#":
            return _State.COMMENT, ""
        if _is_space(r) or _is_newline(r):
            return _State.NIL, ""
        return _State.NAME, r
    if state is _State.NAME:
        if _is_alpha(r):
            return _State.NAME, r
        if _is_space(r):
            return _State.VALUE, ""
        raise ModelfileError(ERR_INVALID_COMMAND)
    if state is _State.VALUE:
        if _is_newline(r) or _is_space(r):
            return _State.NIL, r
        return _State.VALUE, r
    if state is _State.PARAMETER:
        if _is_alpha(r) or (r.isascii() and r.isdigit()) or r == "_":
            return _State.PARAMETER, r
        if _is_space(r):
            return _State.VALUE, ""
        raise _Unexpected
    if state is _State.MESSAGE:
        if _is_alpha(r):
            return _State.MESSAGE, r
        if _is_space(r):
            return _State.VALUE, ""
        raise _Unexpected
    # COMMENT: everything up to the end of the line is dropped.
    return (_State.NIL, "") if _is_newline(r) else (_State.COMMENT, "")


def _unquote(s: str) -> tuple[str, bool]:
    """A value without its quotes; False while a quote is still open (the value goes on)."""
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _is_print(r: str) -> bool:
    # Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space.
    return r == " " or r.isprintable()


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    # Ollama reads through unicode.BOMOverride: a UTF-16 BOM switches encoding, a UTF-8 BOM is dropped.
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return data.decode("utf-8-sig", errors="replace")


def parse(source: bytes | str) -> Modelfile:
    """Parse a Modelfile's text; raises :class:`ModelfileError` with Ollama's message."""
    text = _decode(source)
    commands: list[Command] = []
    state = _State.NIL
    line = 1
    buf: list[str] = []
    name = ""
    role = ""

    for r in text:
        if _is_newline(r):
            line += 1
        try:
            nxt, keep = _next_state(r, state)
        except _Unexpected:
            raise ModelfileError(f"{ERR_UNEXPECTED_EOF}: {''.join(buf)}") from None
        except ModelfileError as exc:
            raise ModelfileError(exc.reason, line) from None

        if nxt is not state:
            if state is _State.NAME:
                word = "".join(buf)
                if word.lower() not in COMMANDS:
                    raise ModelfileError(ERR_INVALID_COMMAND, line)
                lowered = word.lower()
                if lowered == "from":
                    name = "model"
                elif lowered == "parameter":
                    nxt = _State.PARAMETER
                elif lowered == "message":
                    nxt = _State.MESSAGE
                    name = lowered
                else:
                    name = lowered
            elif state is _State.PARAMETER:
                name = "".join(buf)
            elif state is _State.MESSAGE:
                word = "".join(buf)
                if word not in ("system", "user", "assistant"):
                    raise ModelfileError(ERR_INVALID_ROLE, line)
                role = word
            elif state is _State.VALUE:
                value, closed = _unquote("".join(buf).strip())
                # A space never ends a value, nor does a newline inside an open quote.
                if not closed or _is_space(r):
                    buf.append(r)
                    continue
                if role:
                    value = f"{role}: {value}"
                    role = ""
                commands.append(Command(name, value))
            buf = []
            state = nxt

        if keep and _is_print(keep):
            buf.append(keep)

    if state is _State.VALUE:
        value, closed = _unquote("".join(buf).strip())
        if not closed:
            raise ModelfileError(ERR_UNEXPECTED_EOF)
        if role:
            value = f"{role}: {value}"
        commands.append(Command(name, value))
    elif state not in (_State.NIL, _State.COMMENT):
        raise ModelfileError(ERR_UNEXPECTED_EOF)

    if not any(c.name == "model" for c in commands):
        raise ModelfileError(ERR_MISSING_FROM)
    return Modelfile(tuple(commands))


def _go_parse_bool(raw: str) -> bool:
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(raw)


def parameter_value(name: str, raw: str) -> int | float | bool | str | list[str]:
    """One PARAMETER converted to its Options type, with Ollama's error for a bad name or value."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise ModelfileError(f"unknown parameter '{name}'")
    try:
        if kind == "int":
            # Go's ParseInt(base 10): digits with an optional sign; Python's int() would also take "1_0".
            if not _GO_INT.fullmatch(raw):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            if "_" in raw:
                raise ValueError(raw)
            return float(raw)
        if kind == "bool":
            return _go_parse_bool(raw)
    except ValueError:
        # Go formats the one-value slice with %s: "invalid float value [abc]".
        raise ModelfileError(f"invalid {kind} value [{raw}]") from None
    if kind == "list":
        return [raw]
    return raw


def _expand_path(path: str, relative_dir: Path) -> Path:
    """Ollama's expandPath: absolute as is, ``~``/``~user`` from a home, else relative to the Modelfile."""
    if path.startswith(("/", "\\")):
        return Path(os.path.abspath(path))
    if path.startswith("~"):
        return Path(os.path.abspath(os.path.expanduser(path)))
    return Path(os.path.abspath(relative_dir / path))


def file_digest(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """``sha256:<hex>`` of a file, read in chunks (GGUFs run to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return f"sha256:{digest.hexdigest()}"


@dataclass
class CreatePlan:
    """The /api/create body, plus the local files whose blobs must be uploaded before sending it."""

    body: dict[str, Any]
    # Local path → digest; the body's "files"/"adapters" name each by its base name.
    uploads: dict[Path, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def create_request(
    modelfile: Modelfile, model: str, relative_dir: Path, *, digest: Callable[[Path], str] = file_digest
) -> CreatePlan:
    """The /api/create body for ``model`` built from a parsed Modelfile (local paths hashed with ``digest``)."""
    body: dict[str, Any] = {"model": model}
    plan = CreatePlan(body)
    params: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    licenses: list[str] = []

    def local_files(raw: str) -> dict[str, str] | None:
        path = _expand_path(raw, relative_dir)
        if not path.exists():
            return None
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".gguf" and p.is_file())
            if not files:
                raise ModelfileError(f"no Modelfile or safetensors files found in {path}")
        else:
            files = [path]
        out: dict[str, str] = {}
        for f in files:
            plan.uploads[f] = digest(f)
            out[f.name] = plan.uploads[f]
        return out

    for cmd in modelfile.commands:
        if cmd.name == "model":
            files = local_files(cmd.args)
            if files is None:
                body["from"] = cmd.args
            else:
                body.setdefault("files", {}).update(files)
        elif cmd.name == "adapter":
            adapters = local_files(cmd.args)
            if adapters is None:
                raise ModelfileError(f"adapter file not found: {cmd.args}")
            body["adapters"] = adapters
        elif cmd.name in ("template", "system"):
            body[cmd.name] = cmd.args
        elif cmd.name == "license":
            licenses.append(cmd.args)
        elif cmd.name == "message":
            role, _, content = cmd.args.partition(": ")
            messages.append({"role": role, "content": content})
        elif cmd.name in DEPRECATED_PARAMETERS:
            plan.warnings.append(f"warning: parameter {cmd.name} is deprecated")
        else:
            value = parameter_value(cmd.name, cmd.args)
            if isinstance(value, list):
                params.setdefault(cmd.name, []).extend(value)
            else:
                params[cmd.name] = value

    if params:
        body["parameters"] = params
    if messages:
        body["messages"] = messages
    if licenses:
        body["license"] = licenses
    return plan
