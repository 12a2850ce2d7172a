"""A generation's output split into thinking, content and tool calls, as it streams.

The worker feeds each decoded piece through one splitter per job. gpt-oss's harmony format yields all
three from its channels; otherwise thinking tags (when the model thinks) come off first, and the
content that remains goes through the tool-call parser, so a call after a thinking block is still found
and a call written inside the thinking stays thinking, as with Ollama's generic parsers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.contracts import ToolCall
from herd.templates.harmony import HarmonyParser
from herd.templates.thinking import ThinkingParser
from herd.templates.tool_calls import ToolCallParser


@dataclass
class Split:
    """One piece of output, split."""

    thinking: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


class OutputSplitter:
    """Feeds one generation's text through its parsers (harmony, or thinking tags then tool calls)."""

    def __init__(
        self,
        *,
        harmony: HarmonyParser | None = None,
        thinking: ThinkingParser | None = None,
        tools: ToolCallParser | None = None,
    ):
        self.harmony = harmony
        self.thinking = thinking
        self.tools = tools

    def feed(self, text: str) -> Split:
        """What `text`, appended to what is held back, completes."""
        if self.harmony is not None:
            return Split(*self.harmony.feed(text))
        thought = ""
        if self.thinking is not None:
            thought, text = self.thinking.feed(text)
        return self._content(thought, text, final=False)

    def finish(self) -> Split:
        """The output ended: everything still held back."""
        if self.harmony is not None:
            return Split(*self.harmony.finish())
        thought, text = self.thinking.finish() if self.thinking is not None else ("", "")
        return self._content(thought, text, final=True)

    def _content(self, thought: str, text: str, *, final: bool) -> Split:
        if self.tools is None:
            return Split(thought, text)
        content, calls = self.tools.feed(text) if text else ("", [])
        if final:
            rest, more = self.tools.finish()
            content, calls = content + rest, [*calls, *more]
        return Split(thought, content, calls)
