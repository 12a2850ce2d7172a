"""The executor that walks a parse tree, and the public Template, parse and render."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

from herd.templates.gotemplate.errors import GoTemplateError, _position
from herd.templates.gotemplate.funcs import _FUNCS, _LAZY
from herd.templates.gotemplate.nodes import (
    _Action,
    _Branch,
    _Chain,
    _Command,
    _Dot,
    _Expr,
    _Field,
    _Ident,
    _Literal,
    _Nil,
    _Node,
    _Pipe,
    _show,
    _Text,
    _Var,
)
from herd.templates.gotemplate.parser import _Parser
from herd.templates.gotemplate.values import NO_VALUE, GoMap, _FuncError, _go_type, _to_text, _truth

_MISSING: Any = object()  # "no value piped in from a previous command", distinct from nil (None)


class _BreakLoop(Exception):
    """Unwinds to the innermost range for {{break}}."""


class _ContinueLoop(Exception):
    """Unwinds to the innermost range for {{continue}}."""


_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class _Exec:
    """Walks a parse tree with a variable stack, as text/template's exec.go state does."""

    def __init__(self, source: str, data: Any) -> None:
        self.src = source
        self.vars: list[list[Any]] = [["$", data]]  # [name, value] pairs; innermost last
        self.out: list[str] = []

    def error(self, pos: int, msg: str) -> NoReturn:
        raise GoTemplateError(f"{_position(self.src, pos)}: {msg}")

    def walk(self, nodes: list[_Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipeline(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append(_to_text(value))
            elif isinstance(node, _Branch):
                mark = len(self.vars)
                try:
                    self.branch(node, dot)
                finally:
                    del self.vars[mark:]
            else:
                raise _BreakLoop if node.kind == "break" else _ContinueLoop

    def branch(self, node: _Branch, dot: Any) -> None:
        value = self.pipeline(node.pipe, dot)
        if node.kind == "range":
            self.range(node, value, dot)
        elif _truth(value):
            self.walk(node.body, value if node.kind == "with" else dot)
        elif node.else_body is not None:
            self.walk(node.else_body, dot)

    def range(self, node: _Branch, value: Any, dot: Any) -> None:
        decl = node.pipe.decl
        if value is None or value is NO_VALUE:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, Mapping):
            try:
                keys = sorted(value)  # Go visits map entries in sorted key order
            except TypeError:
                keys = list(value)
            items = [(k, value[k]) for k in keys]
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(decl) > 1:
                self.error(node.pos, f"can't use {value} to iterate over more than one variable")
            items = [(i, i) for i in range(value)]  # Go 1.22+ ranges over integers
        else:
            self.error(node.pos, f"range can't iterate over {_to_text(value)}")
        if not items:
            if node.else_body is not None:
                self.walk(node.else_body, dot)
            return
        mark = len(self.vars)
        for key, elem in items:
            if node.pipe.is_assign:
                for name, v in zip(decl, (key, elem) if len(decl) > 1 else (elem,), strict=True):
                    self.assign(name, v, node.pos)
            elif decl:
                # The declared variables were pushed by pipeline(): the element is on top, the index below.
                self.vars[mark - 1][1] = elem
                if len(decl) > 1:
                    self.vars[mark - 2][1] = key
            try:
                self.walk(node.body, elem)
            except _ContinueLoop:
                pass
            except _BreakLoop:
                break
            finally:
                del self.vars[mark:]

    def pipeline(self, pipe: _Pipe, dot: Any) -> Any:
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.assign(name, value, pipe.pos)
            else:
                self.vars.append([name, value])
        return value

    def command(self, cmd: _Command, dot: Any, final: Any) -> Any:
        first, rest = cmd.args[0], cmd.args[1:]
        if isinstance(first, _Ident):
            return self.call(first, rest, dot, final)
        if isinstance(first, _Nil):
            self.error(first.pos, "nil is not a command")
        if rest or final is not _MISSING:
            if isinstance(first, (_Field, _Chain)):
                self.error(first.pos, f"{first.names[-1]} is not a method but has arguments")
            self.error(first.pos, f"can't give argument to non-function {_show(first)}")
        return self.arg(first, dot)

    def arg(self, e: _Expr, dot: Any) -> Any:
        if isinstance(e, _Field):
            return self.fields(dot, e.names, e.pos)
        if isinstance(e, _Var):
            return self.lookup(e.name, e.pos)
        if isinstance(e, _Chain):
            return self.fields(self.arg(e.node, dot), e.names, e.pos)
        if isinstance(e, _Ident):
            return self.call(e, [], dot, _MISSING)
        if isinstance(e, _Pipe):
            return self.pipeline(e, dot)
        if isinstance(e, _Literal):
            return e.value
        return dot if isinstance(e, _Dot) else None

    def call(self, ident: _Ident, args: list[_Expr], dot: Any, final: Any) -> Any:
        name = ident.name
        count = len(args) + (final is not _MISSING)
        if name in _LAZY:
            if count == 0:
                self.error(ident.pos, f"wrong number of args for {name}: want at least 1 got 0")
            # and/or short-circuit (Go 1.18+): return the first operand that decides, else the last one.
            value = None
            for a in args:
                value = self.arg(a, dot)
                if _truth(value) == (name == "or"):
                    return value
            return final if final is not _MISSING else value
        fn, lo, hi = _FUNCS[name]
        # A missing key reaches a function as nil, as Go's validateType makes an invalid value.
        values = [None if v is NO_VALUE else v for v in (self.arg(a, dot) for a in args)]
        if final is not _MISSING:
            values.append(None if final is NO_VALUE else final)
        if count < lo or (hi is not None and count > hi):
            want = f"at least {lo}" if hi is None else str(lo)
            self.error(ident.pos, f"wrong number of args for {name}: want {want} got {count}")
        try:
            return fn(*values)
        except _FuncError as exc:
            self.error(ident.pos, f"error calling {name}: {exc}")

    def lookup(self, name: str, pos: int) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        self.error(pos, f"undefined variable: {name}")

    def assign(self, name: str, value: Any, pos: int) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        self.error(pos, f"undefined variable: {name}")

    def fields(self, value: Any, names: tuple[str, ...], pos: int) -> Any:
        for name in names:
            if value is None or value is NO_VALUE:
                continue  # Ollama parses with missingkey=zero: a field of nothing is nothing, not an error
            if not isinstance(value, Mapping):
                self.error(pos, f"can't evaluate field {name} in type {_go_type(value)}")
            if isinstance(value, GoMap):
                value = value.get(name, NO_VALUE)
                continue
            # A missing key falls back to its JSON spelling (ToolCalls -> tool_calls, AnyOf -> anyOf) so
            # dicts shaped like Ollama's API JSON can be passed straight in, and `json` then emits the keys
            # Go's tags would.
            if name in value:
                value = value[name]
            else:
                camel = name[:1].lower() + name[1:]
                value = value[camel] if camel in value else value.get(_SNAKE.sub("_", name).lower())
        return value


class Template:
    """A parsed template that can be rendered any number of times."""

    def __init__(self, source: str, nodes: list[_Node]) -> None:
        self.source = source
        self._nodes = nodes

    @property
    def nodes(self) -> list[_Node]:
        """The parse tree's top-level nodes."""
        return self._nodes

    def render(self, data: dict[str, Any]) -> str:
        """Execute the template with data as both dot and `$`."""
        state = _Exec(self.source, data)
        state.walk(self._nodes, data)
        return "".join(state.out)


def parse(source: str) -> Template:
    """Parse Go template source, raising GoTemplateError on bad syntax."""
    return Template(source, _Parser(source).parse())


def render(source: str, data: dict[str, Any]) -> str:
    """Parse source and render it with data."""
    return parse(source).render(data)
