"""The recursive-descent parser that turns tokens into a parse tree."""

from __future__ import annotations

from typing import NoReturn

from herd.templates.gotemplate.errors import GoTemplateError, _position
from herd.templates.gotemplate.funcs import _FUNCS
from herd.templates.gotemplate.lexer import _Lexer, _Token
from herd.templates.gotemplate.nodes import (
    _Action,
    _Branch,
    _Chain,
    _Command,
    _Dot,
    _Expr,
    _Field,
    _Ident,
    _Jump,
    _Literal,
    _Nil,
    _Node,
    _Pipe,
    _show,
    _Text,
    _Var,
)


class _Parser:
    """Recursive-descent parser mirroring text/template/parse, including its parse-time variable checks."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.toks = _Lexer(source).run()
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def error(self, pos: int, msg: str) -> NoReturn:
        raise GoTemplateError(f"{_position(self.src, pos)}: {msg}")

    def peek(self, ahead: int = 0) -> _Token:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> _Token:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, context: str) -> _Token:
        tok = self.next()
        if tok.kind != kind:
            self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: _Token, context: str) -> NoReturn:
        if tok.kind == "eof":
            self.error(tok.pos, f"unexpected EOF in {context}")
        what = {"}}": "}}", "{{": "{{", "text": "text"}.get(tok.kind, str(tok.value or tok.kind))
        self.error(tok.pos, f'unexpected "{what}" in {context}')

    def parse(self) -> list[_Node]:
        nodes, term = self.item_list()
        if term.kind != "eof":
            self.error(term.pos, f"unexpected {{{{{term.value}}}}}")
        return nodes

    def item_list(self) -> tuple[list[_Node], _Token]:
        """Parse nodes up to `{{end}}`, `{{else` or EOF, returning them and the terminating token."""
        nodes: list[_Node] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                return nodes, tok
            if tok.kind == "text":
                nodes.append(_Text(tok.value))
                continue
            word = self.peek()
            if word.kind == "kw":
                self.i += 1
                if word.value == "end":
                    self.expect("}}", "end")
                    return nodes, word
                if word.value == "else":
                    return nodes, word
                if word.value in ("if", "with", "range"):
                    nodes.append(self.control(word.value, tok.pos))
                elif word.value in ("break", "continue"):
                    if self.range_depth == 0:
                        self.error(word.pos, f"{{{{{word.value}}}}} outside {{{{range}}}}")
                    self.expect("}}", word.value)
                    nodes.append(_Jump(word.value, word.pos))
                else:
                    # define/template/block need named sub-templates, which no Ollama model template uses.
                    self.error(word.pos, f"{{{{{word.value}}}}} is not supported")
                continue
            nodes.append(_Action(self.pipeline("command")))
            self.expect("}}", "command")

    def control(self, kind: str, pos: int) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(kind)
        self.expect("}}", kind)
        self.range_depth += kind == "range"
        body, term = self.item_list()
        self.range_depth -= kind == "range"
        else_body: list[_Node] | None = None
        if term.kind == "kw" and term.value == "else":
            nxt = self.peek()
            if nxt.kind == "kw" and nxt.value == kind and kind in ("if", "with"):
                # Go reads `{{else if x}}...{{end}}` as `{{else}}{{if x}}...{{end}}{{end}}`: one shared end.
                self.i += 1
                else_body = [self.control(kind, nxt.pos)]
                term = nxt
            else:
                self.expect("}}", "else")
                else_body, term = self.item_list()
                if term.kind == "kw" and term.value == "else":
                    self.error(
                        term.pos, f"expected {{{{end}}}}; found a second {{{{else}}}} in {{{{{kind}}}}}"
                    )
        if term.kind == "eof":
            self.error(pos, f"unclosed {{{{{kind}}}}}: missing {{{{end}}}} before end of template")
        del self.vars[mark:]  # variables live until the {{end}} of the control structure declaring them
        return _Branch(kind, pipe, body, else_body, pos)

    def pipeline(self, context: str) -> _Pipe:
        pos = self.peek().pos
        decl: list[str] = []
        is_assign = False
        while self.peek().kind == "var" and self.peek(1).kind in (":=", "=", ","):
            var, op = self.next(), self.next()
            decl.append(var.value)
            if op.kind == ",":
                if context != "range" or len(decl) > 1:
                    self.error(op.pos, f"too many declarations in {context}")
                if self.peek().kind != "var":
                    self.error(op.pos, "range can only initialize variables")
                continue
            is_assign = op.kind == "="
            if is_assign and var.value not in self.vars:
                self.error(var.pos, f'undefined variable "{var.value}"')
            break
        else:
            if decl:
                self.error(pos, "range can only initialize variables")
        cmds: list[_Command] = []
        while True:
            cmds.append(self.command(context))
            if self.peek().kind != "|":
                break
            self.i += 1
            if self.peek().kind in ("}}", ")"):
                break  # Go quietly accepts a trailing pipe: `{{ .X | }}` is `{{ .X }}`
        for n, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], (_Literal, _Dot, _Nil)):
                self.error(cmd.pos, f"non executable command in pipeline stage {n}")
        self.vars.extend(decl)  # in scope until the {{end}} of the enclosing control structure
        return _Pipe(decl, is_assign, cmds, pos)

    def command(self, context: str) -> _Command:
        pos = self.peek().pos
        args: list[_Expr] = []
        while self.peek().kind not in ("}}", ")", "|", "eof"):
            if args and not self.peek().space:
                self.unexpected(self.peek(), "operand")
            args.append(self.operand())
        if not args:
            self.error(pos, f"missing value for {context}")
        return _Command(args, pos)

    def operand(self) -> _Expr:
        node = self.term()
        tok = self.peek()
        if tok.kind == "field" and not tok.space:
            self.i += 1
            if isinstance(node, _Field):
                return _Field(node.names + tok.value, node.pos)
            if isinstance(node, (_Literal, _Dot, _Nil)):
                self.error(tok.pos, f'unexpected . after term "{_show(node)}"')
            return _Chain(node, tok.value, node.pos)
        return node

    def term(self) -> _Expr:
        tok = self.next()
        if tok.kind == "field":
            return _Field(tok.value, tok.pos)
        if tok.kind == "dot":
            return _Dot(tok.pos)
        if tok.kind == "var":
            if tok.value not in self.vars:
                self.error(tok.pos, f'undefined variable "{tok.value}"')
            return _Var(tok.value, tok.pos)
        if tok.kind == "ident":
            if tok.value not in _FUNCS and tok.value not in ("and", "or"):
                self.error(tok.pos, f'function "{tok.value}" not defined')
            return _Ident(tok.value, tok.pos)
        if tok.kind in ("str", "num", "bool"):
            return _Literal(tok.value, tok.pos)
        if tok.kind == "nil":
            return _Nil(tok.pos)
        if tok.kind == "(":
            pipe = self.pipeline("parenthesized pipeline")
            close = self.next()
            if close.kind != ")":
                self.error(tok.pos, "unclosed left paren")
            return pipe
        if tok.kind == ")":
            self.error(tok.pos, "unexpected right paren")
        self.unexpected(tok, "operand")
