"""Ollama's operations on a parsed template's tree (template/template.go): Vars, the appended
`{{ .Response }}`, and the copy cut after the first `.Response` that renders a conversation's last turn."""

from __future__ import annotations

from dataclasses import replace

from herd.templates.gotemplate.executor import Template
from herd.templates.gotemplate.nodes import (
    _Action,
    _Branch,
    _Chain,
    _Command,
    _Expr,
    _Field,
    _Node,
    _Pipe,
    _Var,
)

_RESPONSE = _Action(_Pipe([], False, [_Command([_Field(("Response",), 0)], 0)], 0))


def _expr_idents(e: _Expr) -> list[str]:
    # Go's Identifiers: field and variable nodes (`$.Messages` is one variable node), parenthesized pipes;
    # a chain on anything else (`(index .M 0).Role`) is not looked into.
    if isinstance(e, _Field):
        return list(e.names)
    if isinstance(e, _Var):
        return [e.name]
    if isinstance(e, _Chain) and isinstance(e.node, _Var):
        return [e.node.name, *e.names]
    if isinstance(e, _Pipe):
        return [name for cmd in e.cmds for a in cmd.args for name in _expr_idents(a)]
    return []


def _node_idents(nodes: list[_Node]) -> list[str]:
    out: list[str] = []
    for n in nodes:
        if isinstance(n, _Action):
            out += _expr_idents(n.pipe)
        elif isinstance(n, _Branch):
            out += _expr_idents(n.pipe) + _node_idents(n.body) + _node_idents(n.else_body or [])
    return out


def template_vars(template: Template) -> set[str]:
    """Every field and variable name the template mentions, lower-cased (Ollama's Template.Vars)."""
    return {name.lower() for name in _node_idents(template.nodes)}


def with_response(template: Template) -> Template:
    """Ollama's Parse: a template that names neither messages nor response gets `{{ .Response }}` appended."""
    names = template_vars(template)
    if "messages" in names or "response" in names:
        return template
    return Template(template.source, [*template.nodes, _RESPONSE])


class _Cutter:
    """Ollama's deleteNode with its predicate: keep the first `.Response` field, drop all that follows it.

    The walk visits nodes in Go's order: a branch's body and else, never its condition; an action's
    commands and their arguments. An action left without a command is dropped, as a pipe is whose
    command lost all its arguments.
    """

    def __init__(self) -> None:
        self.cut = False

    def nodes(self, nodes: list[_Node]) -> list[_Node]:
        out: list[_Node] = []
        for n in nodes:
            kept = self.node(n)
            if kept is not None:
                out.append(kept)
        return out

    def node(self, n: _Node) -> _Node | None:
        if self.cut:
            return None
        if isinstance(n, _Branch):
            body = self.nodes(n.body)
            # Go would panic on an else after the cut (a nil list); an empty else is the sane reading.
            else_body = None if n.else_body is None else self.nodes(n.else_body)
            return replace(n, body=body, else_body=else_body)
        if isinstance(n, _Action):
            pipe = self.pipe(n.pipe)
            return None if pipe is None else _Action(pipe)
        return n

    def pipe(self, p: _Pipe) -> _Pipe | None:
        cmds: list[_Command] = []
        for cmd in p.cmds:
            args: list[_Expr] = []
            for a in cmd.args:
                kept = self.arg(a)
                if kept is not None:
                    args.append(kept)
            if not args:
                return None
            cmds.append(_Command(args, cmd.pos))
        return replace(p, cmds=cmds) if cmds else None

    def arg(self, a: _Expr) -> _Expr | None:
        if self.cut:
            return None
        if isinstance(a, _Field) and "Response" in a.names:
            self.cut = True
            return a
        if isinstance(a, _Pipe):
            return self.pipe(a)
        return a


def cut_at_response(template: Template) -> Template:
    """The template up to and including its first `.Response`, for the turn whose reply is being generated."""
    return Template(template.source, _Cutter().nodes(template.nodes))
