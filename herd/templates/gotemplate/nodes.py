"""The parse tree: expression and node types produced by the parser and walked by the executor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from herd.templates.gotemplate.values import _go_quote, _to_text


@dataclass
class _Field:
    names: tuple[str, ...]
    pos: int


@dataclass
class _Var:
    name: str
    pos: int


@dataclass
class _Chain:
    """Field access on the result of a non-field term: `$x.A`, `(index .M 0).Role`."""

    node: _Expr
    names: tuple[str, ...]
    pos: int


@dataclass
class _Literal:
    value: Any
    pos: int


@dataclass
class _Dot:
    pos: int


@dataclass
class _Nil:
    pos: int


@dataclass
class _Ident:
    name: str
    pos: int


@dataclass
class _Command:
    args: list[_Expr]
    pos: int


@dataclass
class _Pipe:
    decl: list[str]
    is_assign: bool
    cmds: list[_Command]
    pos: int


_Expr = _Field | _Var | _Chain | _Literal | _Dot | _Nil | _Ident | _Pipe


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Branch:
    kind: str  # "if", "with" or "range"
    pipe: _Pipe
    body: list[_Node]
    else_body: list[_Node] | None
    pos: int


@dataclass
class _Jump:
    kind: str  # "break" or "continue"
    pos: int


_Node = _Text | _Action | _Branch | _Jump


def _show(e: _Expr) -> str:
    """Render an expression back to template syntax for error messages."""
    if isinstance(e, _Field):
        return "." + ".".join(e.names)
    if isinstance(e, _Var):
        return e.name
    if isinstance(e, _Chain):
        return _show(e.node) + "." + ".".join(e.names)
    if isinstance(e, _Literal):
        return _go_quote(e.value) if isinstance(e.value, str) else _to_text(e.value)
    if isinstance(e, _Dot):
        return "."
    if isinstance(e, _Nil):
        return "nil"
    if isinstance(e, _Ident):
        return e.name
    return "(" + " | ".join(" ".join(_show(a) for a in c.args) for c in e.cmds) + ")"
