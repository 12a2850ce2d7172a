"""Tool calls in a model's output: how the template marks them, and a streaming parser that finds them.

Models announce a call in the shape their chat template renders one: Qwen-style templates wrap a JSON
object in `<tool_call>...</tool_call>`, Llama-3.1-style ones write the bare JSON object, and
Qwen3-Coder-style ones (qwen3-coder, qwen3.5) write XML-like elements inside the tag:
`<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>`. Herd learns the
shape from the template itself: it renders a conversation whose last assistant turn holds a probe call
and reads what precedes the probe's JSON or its `<function=` (the "tag", or nothing for bare JSON).
(Ollama picks a parser by the model's `parser` name, e.g. "qwen3-coder"; Herd has no such name for
models from GGUFs or Modelfiles, and the template says the same thing.)

The parser is fed the generated text piece by piece. Text that cannot be (the start of) a tool call is
released at once as content; text that may be is held back until it is known. A call is delivered
whole, once its JSON object or its `</function>` is complete, so a client never sees raw tool markup in
`content`. Each call gets an `id` ("call_" and 8 random characters) and its `index` among the
response's calls, as Ollama gives them.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable
from typing import Any

from herd.contracts import ChatMessage, ToolCall, ToolCallFunction

_PROBE = "herd_probe_tool"
_decoder = json.JSONDecoder()


def tool_call_tag(render: Callable[[list[ChatMessage]], str]) -> str | None:
    """The text a template puts before a tool call's JSON ("" for bare JSON); None if it renders none.

    `render` renders a conversation with the model's template (generation prompt included).
    """
    user = ChatMessage(role="user", content="x")
    call = ToolCall(function=ToolCallFunction(name=_PROBE, arguments={"a": 1}))
    asking = render([user])
    answered = render([user, ChatMessage(role="assistant", content="", tool_calls=[call])])
    at = answered.find(_PROBE)
    if at < 0:
        return None
    common = next((i for i, (a, b) in enumerate(zip(asking, answered, strict=False)) if a != b), len(asking))
    xml = answered.rfind(_FUNCTION, 0, at)
    if xml >= 0 and xml + len(_FUNCTION) == at:  # Qwen3-Coder style: <function=NAME>
        return answered[min(common, xml) : xml].strip()
    brace = answered.rfind("{", 0, at)
    if brace < 0:
        return None
    # Calls may come as a list: `[{"name": ...}]` belongs to the JSON, not to the tag.
    start = brace
    while start > 0 and answered[start - 1] in "[ \t\n":
        start -= 1
    if start < brace and answered[start] != "[":
        start = brace
    return answered[min(common, start) : start].strip()


def _arguments(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):  # some models write the arguments as a JSON string
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _calls_in(value: Any, names: set[str]) -> list[ToolCall] | None:
    """The calls a decoded JSON value holds, or None when it is not a call of a known tool."""
    if isinstance(value, list):
        calls: list[ToolCall] = []
        for item in value:
            found = _calls_in(item, names)
            if found is None:
                return None
            calls.extend(found)
        return calls or None
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's {"type": "function", "function": {...}}
        return _calls_in(value["function"], names)
    name = value.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments = _arguments(value.get("arguments", value.get("parameters", {})))
    if arguments is None:
        return None
    return [ToolCall(function=ToolCallFunction(name=name, arguments=arguments))]


_FUNCTION = "<function="
_FUNCTION_END = "</function>"
_PARAMETER = re.compile(r"<parameter=([^>]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
_ID_CHARS = string.ascii_lowercase + string.digits


def new_call_id() -> str:
    """A call id as Ollama makes one: "call_" and 8 random lowercase letters or digits."""
    return "call_" + "".join(random.choices(_ID_CHARS, k=8))


def parameter_types(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, list[str]]]:
    """Each tool's parameters' declared JSON types (those of an anyOf's members too), by tool name."""
    out: dict[str, dict[str, list[str]]] = {}
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        types: dict[str, list[str]] = {}
        for name, prop in (properties or {}).items() if isinstance(properties, dict) else ():
            if not isinstance(prop, dict):
                continue
            members = prop["anyOf"] if isinstance(prop.get("anyOf"), list) else [prop]
            types[name] = [t for m in members if isinstance(m, dict) for t in _type_list(m.get("type"))]
        out[function["name"]] = types
    return out


def _type_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


def parameter_value(raw: str, types: list[str]) -> Any:
    """An XML-style parameter's text as the value its declared types make of it, as Ollama reads it.

    One leading and one trailing newline go; "null" (any case) is None; then boolean, integer,
    number, array, object are tried in that order among the declared types; text stays a string.
    A value that fits no declared type is the text, except for a lone boolean type, where it is false.
    """
    raw = raw.removeprefix("\n").removesuffix("\n")
    if raw.lower() == "null":
        return None
    if not types:
        return raw
    declared = set(types)
    if "boolean" in declared:
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if len(types) == 1:
            return False
    if "integer" in declared and re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    if "number" in declared:
        try:
            number = float(raw)
        except ValueError:
            pass
        else:
            return int(number) if number.is_integer() else number
    for kind, shape in (("array", list), ("object", dict)):
        if kind in declared:
            try:
                parsed = json.loads(raw)
            except ValueError:
                continue
            if isinstance(parsed, shape):
                return parsed
    return raw


def _xml_call(block: str, names: set[str], types: dict[str, dict[str, list[str]]]) -> ToolCall | None:
    """The call a `<function=NAME>...` block holds, or None when it names no known tool."""
    head = re.match(r"<function=([^>]+)>", block)
    if head is None or head.group(1).strip() not in names:
        return None
    name = head.group(1).strip()
    arguments = {
        match.group(1).strip(): parameter_value(
            match.group(2), types.get(name, {}).get(match.group(1).strip(), [])
        )
        for match in _PARAMETER.finditer(block, head.end())
    }
    return ToolCall(function=ToolCallFunction(name=name, arguments=arguments))


def _closing_tag(tag: str) -> str:
    match = re.fullmatch(r"<([\w|:.-]+)>", tag)
    return f"</{match.group(1)}>" if match else ""


class ToolCallParser:
    """Splits generated text into content and whole tool calls, as it streams."""

    def __init__(self, tag: str, names: set[str], tools: list[dict[str, Any]] | None = None):
        self.tag = tag  # "" when the model writes bare JSON
        self.names = names
        self.types = parameter_types(tools)  # for XML-style parameters, which are text
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._in_calls = False
        self._tag_pending = False  # a tag was taken off the buffer and no call has followed it yet
        self._gap = ""  # the white space after a pending tag, given back with it
        self._plain = False  # decided: the rest of the output is content

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content that is certainly not part of a call, and the calls completed by this text."""
        self._buffer += text
        content: list[str] = []
        found: list[ToolCall] = []
        while True:
            if self._plain:
                content.append(self._buffer)
                self._buffer = ""
                break
            if not self._in_calls:
                if not self._scan_content(content):
                    break
            elif not self._scan_calls(content, found):
                break
        return "".join(content), found

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end of the output: whatever was held back is content (nothing the model wrote is lost)."""
        content, calls = self.feed("")
        rest = self._buffer
        if self._tag_pending:
            rest = self.tag + self._gap + rest
        self._buffer, self._tag_pending, self._gap = "", False, ""
        return content + rest, calls

    def _scan_content(self, content: list[str]) -> bool:
        """Release what cannot start a call; True when a call may begin at the buffer's front."""
        if self.tag == "":
            # Bare JSON: only output that opens with `{` or `[` may be a call.
            stripped = self._buffer.lstrip()
            if not stripped:
                return False
            if stripped[0] not in "{[" or self.calls:
                self._plain = True
                return True
            self._buffer = stripped
            self._in_calls = True
            return True
        at = self._buffer.find(self.tag)
        if at < 0:
            keep = _prefix_tail(self._buffer, self.tag)
            content.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        content.append(self._buffer[:at])
        self._buffer = self._buffer[at + len(self.tag) :]
        self._in_calls = True
        self._tag_pending = True
        return True

    def _scan_calls(self, content: list[str], found: list[ToolCall]) -> bool:
        """Take one call off the buffer's front; True when scanning should go on."""
        closing = _closing_tag(self.tag)
        rest = self._buffer.lstrip()
        if self._tag_pending:
            self._gap += self._buffer[: len(self._buffer) - len(rest)]
        # Between calls: the closing tag, a repeated opening tag, a list separator.
        progressed = True
        while progressed:
            progressed = False
            for marker in (closing, self.tag, ","):
                if marker and rest.startswith(marker):
                    rest = rest[len(marker) :].lstrip()
                    progressed = True
        markers = (closing, self.tag, _FUNCTION if self.tag else "")
        if not rest or any(m and len(rest) < len(m) and m.startswith(rest) for m in markers):
            self._buffer = rest  # nothing yet, or the start of a marker: wait for more text
            return False
        if self.tag and rest.startswith(_FUNCTION):
            ends = [at for at in (rest.find(_FUNCTION_END), rest.find(closing) if closing else -1) if at >= 0]
            if not ends:
                self._buffer = rest  # an unfinished call: wait for more text
                return False
            end = min(ends)
            call = _xml_call(rest[:end], self.names, self.types)
            if rest.startswith(_FUNCTION_END, end):
                end += len(_FUNCTION_END)
            if call is not None:
                self._take([call], found)
                self._buffer = rest[end:]
                self._tag_pending, self._gap = False, ""
                return True
            # A function naming no known tool: the model's own text, tag and all.
            content.append((self.tag + self._gap if self._tag_pending else "") + rest[:end])
            rest = rest[end:]
        elif rest[0] in "{[":
            try:
                value, end = _decoder.raw_decode(rest)
            except ValueError:
                self._buffer = rest  # an unfinished object: wait for more text
                return False
            calls = _calls_in(value, self.names)
            if calls is not None:
                self._take(calls, found)
                self._buffer = rest[end:]
                self._tag_pending, self._gap = False, ""
                return True
            # JSON naming no known tool: the model's own text, tag and all.
            content.append((self.tag + self._gap if self._tag_pending else "") + rest[:end])
            rest = rest[end:]
        elif self._tag_pending:
            content.append(self.tag + self._gap)  # the tag followed by prose: not a call either
        self._tag_pending, self._gap = False, ""
        self._buffer = rest
        self._in_calls = False
        if self.tag == "":
            self._plain = True
        return True

    def _take(self, calls: list[ToolCall], found: list[ToolCall]) -> None:
        """Number the calls after those found before, give each an id, and deliver them."""
        for call in calls:
            call.id = new_call_id()
            call.function.index = len(self.calls)
            self.calls.append(call)
            found.append(call)


def _prefix_tail(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
