"""Ollama's Template.Execute (template/template.go): which data a Go template gets, and how often it runs.

Three paths, as in Ollama: a prompt with a suffix (fill-in-the-middle) runs once with .Prompt and .Suffix;
a template that names .Messages runs once with the collated conversation; any other ("legacy") template
runs once per user turn with .System, .Prompt and .Response, the last turn cut after its .Response.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from herd.contracts import ChatMessage
from herd.templates.gotemplate import GoMap, Template, parse
from herd.templates.gotemplate.ollama import cut_at_response, template_vars, with_response

ThinkValue = bool | str | None


@dataclass(frozen=True)
class _Parsed:
    template: Template  # with the `{{ .Response }}` Ollama's Parse appends where needed
    last_turn: Template  # cut after the first .Response: the legacy path's final turn
    uses_messages: bool


@lru_cache(maxsize=64)
def _parsed(source: str) -> _Parsed:
    template = with_response(parse(source))
    return _Parsed(template, cut_at_response(template), "messages" in template_vars(template))


def check_template(source: str) -> None:
    """Parse a Go template as Ollama's /api/create does; GoTemplateError names what is wrong and where."""
    _parsed(source)


def _think_fields(think: ThinkValue) -> dict[str, Any]:
    # api.ThinkValue: Bool() is true for true and the levels; String() is the level, "medium" for true.
    levels = ("high", "medium", "low", "max")
    enabled = think is True or (isinstance(think, str) and think in levels)
    level = think if isinstance(think, str) else ("medium" if think is True else "")
    return {"Think": enabled, "ThinkLevel": level, "IsThinkSet": think is not None}


def collate(messages: list[ChatMessage]) -> tuple[str, list[ChatMessage]]:
    """Every system message's content joined by blank lines, and the messages with consecutive turns of
    one role merged into the first (tool messages excepted)."""
    system = [m.content for m in messages if m.role == "system"]
    collated: list[ChatMessage] = []
    for m in messages:
        if collated and collated[-1].role == m.role and m.role != "tool":
            collated[-1] = collated[-1].model_copy(
                update={"content": f"{collated[-1].content}\n\n{m.content}"}
            )
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def _go_sorted(v: Any) -> Any:
    """A JSON value as Go's json.Marshal writes a map[string]any: keys sorted, at every depth."""
    if isinstance(v, dict):
        return {k: _go_sorted(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_go_sorted(x) for x in v]
    return v


def _go_property(p: Any) -> dict[str, Any]:
    """api.ToolProperty as json.Marshal writes it: its known fields in struct order, empty ones omitted."""
    if not isinstance(p, dict):
        return {}
    out: dict[str, Any] = {}
    if p.get("anyOf"):
        out["anyOf"] = [_go_property(x) for x in p["anyOf"]]
    kind = p.get("type")
    if kind:
        out["type"] = kind[0] if isinstance(kind, list) and len(kind) == 1 else kind
    if p.get("items") is not None:
        out["items"] = _go_sorted(p["items"])
    if p.get("description"):
        out["description"] = p["description"]
    if p.get("enum"):
        out["enum"] = _go_sorted(p["enum"])
    if isinstance(p.get("properties"), dict):
        out["properties"] = {k: _go_property(v) for k, v in p["properties"].items()}
    if p.get("required"):
        out["required"] = p["required"]
    return out


def _go_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """template.go's templateTool: the tool as Ollama decodes it (unknown fields dropped), its
    parameters' properties a Go map (ranged and marshalled in key order)."""
    function: dict[str, Any] = tool["function"] if isinstance(tool.get("function"), dict) else {}
    params: dict[str, Any] = function["parameters"] if isinstance(function.get("parameters"), dict) else {}
    parameters: dict[str, Any] = {"type": params.get("type", "")}
    if params.get("$defs") is not None:
        parameters["$defs"] = _go_sorted(params["$defs"])
    if params.get("items") is not None:
        parameters["items"] = _go_sorted(params["items"])
    if params.get("required"):
        parameters["required"] = params["required"]
    props = params.get("properties")
    parameters["properties"] = (
        {k: _go_property(props[k]) for k in sorted(props)} if isinstance(props, dict) else None
    )
    out: dict[str, Any] = {"type": tool.get("type", "")}
    if tool.get("items") is not None:
        out["items"] = _go_sorted(tool["items"])
    out["function"] = {
        "name": function.get("name", ""),
        "description": function.get("description", ""),
        "parameters": parameters,
    }
    return out


def _go_message(m: ChatMessage) -> dict[str, Any]:
    """template.go's templateMessage: every field present, at its zero value when unset."""
    calls = [
        {
            "ID": getattr(c, "id", None) or "",
            "Function": {
                "Index": getattr(c.function, "index", None) or 0,
                "Name": c.function.name,
                "Arguments": _go_sorted(c.function.arguments),
            },
        }
        for c in m.tool_calls or []
    ]
    return {
        "Role": m.role,
        "Content": m.content,
        "Thinking": m.thinking or "",
        "Images": m.images or None,
        "ToolCalls": calls or None,
        "ToolName": m.tool_name or "",
        "ToolCallID": m.tool_call_id or "",
    }


def execute(
    source: str,
    messages: list[ChatMessage],
    *,
    tools: list[dict[str, Any]] | None = None,
    prompt: str = "",
    suffix: str = "",
    think: ThinkValue = None,
) -> str:
    """Ollama's Template.Execute; GoTemplateError names a parse or execution error and where."""
    parsed = _parsed(source)
    think_fields = _think_fields(think)
    if prompt and suffix:
        data = GoMap(Prompt=prompt, Suffix=suffix, Response="", **think_fields)
        return parsed.template.render(data)
    system, collated = collate(messages)
    if parsed.uses_messages:
        data = GoMap(
            System=system,
            Messages=[_go_message(m) for m in collated],
            Tools=[_go_tool(t) for t in tools] if tools is not None else None,
            Response="",
            **think_fields,
        )
        return parsed.template.render(data)
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def run() -> None:
        out.append(parsed.template.render(GoMap(**turn, **think_fields)))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        if m.role == "system":
            if turn["Prompt"] or turn["Response"]:
                run()
            turn["System"] = m.content
        elif m.role == "user":
            if turn["Response"]:
                run()
            turn["Prompt"] = m.content
        elif m.role == "assistant":
            turn["Response"] = m.content
    out.append(parsed.last_turn.render(GoMap(**turn, **think_fields)))
    return "".join(out)
