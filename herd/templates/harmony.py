"""gpt-oss's harmony output format: channels split into thinking, content and tool calls.

Ported from Ollama's harmony/harmonyparser.go. A harmony reply is a run of messages, each
`<|start|>ROLE<|channel|>CHANNEL [to=RECIPIENT] [<|constrain|>json]<|message|>TEXT<|end|>`; the prompt
ends with `<|start|>assistant`, so the first message's start is implicit. The `analysis` channel is
thinking, `final` is content, and a message with a recipient (`to=functions.NAME`, on `commentary` or
`analysis`) is a tool call whose text is the JSON arguments.

llama.cpp renders `<|start|>`, `<|channel|>`, `<|message|>` and `<|constrain|>` as text but `<|end|>`
as nothing (it is a control token) and stops at `<|return|>` and `<|call|>`, so a message also ends
where the next `<|start|>` begins, and at the end of the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from herd.contracts import ToolCall, ToolCallFunction
from herd.templates.tool_calls import new_call_id

START = "<|start|>"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
CONSTRAIN = "<|constrain|>"
# Where a message's text ends: its own end markers, or the start of the next message.
_ENDS = ("<|end|>", "<|return|>", "<|call|>", START)


@dataclass
class Header:
    role: str = ""
    channel: str = ""
    recipient: str = ""


def parse_header(raw: str) -> Header:
    """A message header (between `<|start|>` and `<|message|>`) as harmonyparser.go's parseHeader reads it."""
    header = Header()
    if CONSTRAIN in raw:
        raw = raw.replace(CONSTRAIN, " " + CONSTRAIN, 1).strip()
    at = raw.find(CHANNEL)
    if at >= 0:
        before, after = raw[:at], raw[at + len(CHANNEL) :]
        cut = next((i for i, ch in enumerate(after) if ch.isspace()), len(after))
        header.channel = after[:cut]
        raw = (before + after[cut:]).strip()
    words = raw.split()
    if not words:
        return header
    role, rest = words[0], words[1:]
    if role.startswith("to="):
        header.recipient, header.role = role[3:], "tool"
    else:
        header.role = role
    if not header.recipient and rest and rest[0].startswith("to="):
        header.recipient = rest[0][3:]
    return header


def _overlap(text: str, tags: tuple[str, ...]) -> int:
    """The longest tail of `text` that is the start of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag), len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


_Mode = Literal["content", "thinking", "tool"]


class HarmonyParser:
    """Splits a streamed harmony output into (thinking, content, tool calls).

    Text is released as soon as it cannot be a marker; a tool call is delivered whole when its message
    ends. A call whose arguments are not a JSON object is dropped, as Ollama fails such a call.
    """

    def __init__(self, *, implicit_start: bool = True):
        self._acc = START + "assistant" if implicit_start else ""
        self._state: Literal["looking", "header", "content"] = "looking"
        self._mode: _Mode = "content"
        self._recipient = ""
        self._tool_text = ""
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, str, list[ToolCall]]:
        """The thinking, content and whole calls that `text` (appended to what is held) completes."""
        self._acc += text
        out: dict[_Mode, list[str]] = {"thinking": [], "content": [], "tool": []}
        found: list[ToolCall] = []
        while self._eat(out, found):
            pass
        return "".join(out["thinking"]), "".join(out["content"]), found

    def finish(self) -> tuple[str, str, list[ToolCall]]:
        """The output ended: what is held belongs to the open message, which ends here."""
        out: dict[_Mode, list[str]] = {"thinking": [], "content": [], "tool": []}
        found: list[ToolCall] = []
        if self._state == "content":
            self._emit(self._acc, out)
            self._end_message(found)
        self._acc = ""
        return "".join(out["thinking"]), "".join(out["content"]), found

    def _emit(self, text: str, out: dict[_Mode, list[str]]) -> None:
        if not text:
            return
        if self._mode == "tool":
            self._tool_text += text
        else:
            out[self._mode].append(text)

    def _end_message(self, found: list[ToolCall]) -> None:
        if self._mode == "tool":
            call = self._call()
            if call is not None:
                self.calls.append(call)
                found.append(call)
        self._mode, self._recipient, self._tool_text = "content", "", ""

    def _call(self) -> ToolCall | None:
        name = self._recipient.removeprefix("functions.")
        try:
            arguments = json.loads(self._tool_text) if self._tool_text.strip() else {}
        except ValueError:
            return None
        if not name or not isinstance(arguments, dict):
            return None
        function = ToolCallFunction(index=len(self.calls), name=name, arguments=arguments)
        return ToolCall(id=new_call_id(), function=function)

    def _eat(self, out: dict[_Mode, list[str]], found: list[ToolCall]) -> bool:
        acc = self._acc
        if self._state == "looking":
            at = acc.find(START)
            # Text outside any message (Ollama warns and drops it); a bare `<|channel|>` opens one too.
            channel = acc.find(CHANNEL)
            if at < 0 and channel < 0:
                return False
            if at >= 0 and (channel < 0 or at < channel):
                self._acc = acc[at + len(START) :]
            else:
                self._acc = acc[channel:]
            self._state = "header"
            return True
        if self._state == "header":
            at = acc.find(MESSAGE)
            if at < 0:
                return False
            header = parse_header(acc[:at])
            self._acc = acc[at + len(MESSAGE) :]
            self._state = "content"
            if header.recipient:
                self._mode, self._recipient = "tool", header.recipient
            elif header.channel == "analysis":
                self._mode = "thinking"
            else:
                self._mode = "content"
            return True
        ends = [(acc.find(tag), tag) for tag in _ENDS if tag in acc]
        if ends:
            at, tag = min(ends)
            self._emit(acc[:at], out)
            self._end_message(found)
            # A `<|start|>` ends this message and begins the next; the other markers are consumed.
            self._acc = acc[at:] if tag == START else acc[at + len(tag) :]
            self._state = "looking"
            return True
        keep = _overlap(acc, _ENDS)
        self._emit(acc[: len(acc) - keep], out)
        self._acc = acc[len(acc) - keep :]
        return False
