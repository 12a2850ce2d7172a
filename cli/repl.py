"""``herd run``: one answer for a prompt, or Ollama's interactive chat (``>>> `` prompt, slash commands,
``\"\"\"`` multi-line input, Ctrl-C stopping a generation without leaving)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from cli.api import ClientError, HerdClient
from herd.store.modelfile import ModelfileError, parameter_value

PROMPT = ">>> "
CONTINUATION = "... "

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


def go_duration(ns: int) -> str:
    """A duration in nanoseconds as Go prints one ("1.5s", "250ms", "12.5µs"), for the --verbose stats."""
    if ns >= 60 * 10**9:
        minutes, rest = divmod(ns, 60 * 10**9)
        return f"{minutes}m{rest / 10**9:g}s"
    for scale, unit in ((10**9, "s"), (10**6, "ms"), (10**3, "µs")):
        if ns >= scale:
            return f"{ns / scale:.6g}{unit}"
    return f"{ns}ns"


def stats_text(final: dict[str, Any]) -> str:
    """Ollama's Metrics.Summary for the last object of a generation."""

    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "0.00 tokens/s"

    lines = [
        f"total duration:       {go_duration(int(final.get('total_duration') or 0))}",
        f"load duration:        {go_duration(int(final.get('load_duration') or 0))}",
    ]
    pc, pd = int(final.get("prompt_eval_count") or 0), int(final.get("prompt_eval_duration") or 0)
    ec, ed = int(final.get("eval_count") or 0), int(final.get("eval_duration") or 0)
    lines += [
        f"prompt eval count:    {pc} token(s)",
        f"prompt eval duration: {go_duration(pd)}",
        f"prompt eval rate:     {rate(pc, pd)}",
        f"eval count:           {ec} token(s)",
        f"eval duration:        {go_duration(ed)}",
        f"eval rate:            {rate(ec, ed)}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Session:
    """One model's conversation: history, user parameters, system message, format and keep_alive."""

    client: HerdClient
    model: str
    info: dict[str, Any]
    keep_alive: str | None = None
    format: str | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    messages: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    verbose: bool = False

    def _common(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True}
        if self.options:
            body["options"] = self.options
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.format:
            body["format"] = self.format
        return body

    def generate(self, prompt: str) -> dict[str, Any]:
        """Stream /api/generate for one prompt to ``out``; returns the final object."""
        body = self._common() | {"prompt": prompt}
        final: dict[str, Any] = {}
        with self.client.stream("/api/generate", body) as events:
            for event in events:
                self.out.write(str(event.get("response", "")))
                self.out.flush()
                if event.get("done"):
                    final = event
        return final

    def chat(self) -> tuple[str, dict[str, Any]]:
        """Stream /api/chat for the history to ``out``; returns the answer and the final object."""
        body = self._common() | {"messages": self.messages}
        parts: list[str] = []
        final: dict[str, Any] = {}
        with self.client.stream("/api/chat", body) as events:
            for event in events:
                piece = str((event.get("message") or {}).get("content", ""))
                parts.append(piece)
                self.out.write(piece)
                self.out.flush()
                if event.get("done"):
                    final = event
        return "".join(parts), final

    def preload(self) -> None:
        """Load the model before the first prompt (an empty chat), so the wait comes before typing."""
        body = {"model": self.model, "messages": [], "stream": False}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        self.client.call("POST", "/api/chat", body)

    # --- the interactive loop ------------------------------------------------------------------------

    def interact(self, verbose: bool = False) -> int:
        """Read prompts until /bye or Ctrl-D; returns the exit status."""
        # Loading readline gives input() line editing and history; some Pythons are built without it.
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401
        self.verbose = verbose
        self.preload()
        while True:
            try:
                text, quoted = self._read_input()
            except EOFError:
                self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                self.out.write("\nUse Ctrl + d or /bye to exit.\n")
                continue
            if not text.strip():
                continue
            # A message in """ quotes is a message even when it starts with "/".
            if not quoted and text.lstrip().startswith("/"):
                if self._command(text.strip()) == "exit":
                    return 0
                continue
            self._converse(text)

    def _read_input(self) -> tuple[str, bool]:
        """One input and whether it was a quoted message; a line opening with \"\"\" goes on (``... ``)
        until a line ending with \"\"\" (after ``/set system `` too, for a multi-line system message)."""
        line = input(PROMPT)
        prefix = ""
        body = line
        if line.startswith("/set system "):
            prefix, body = "/set system ", line[len("/set system ") :].lstrip()
        if not body.startswith('"""'):
            return line, False
        body = body[3:]
        quoted = not prefix
        if body.endswith('"""') and len(body) >= 3:
            return prefix + body[:-3], quoted
        lines = [body]
        while True:
            more = input(CONTINUATION)
            if more.endswith('"""'):
                lines.append(more[:-3])
                return prefix + "\n".join(lines), quoted
            lines.append(more)

    def _converse(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        try:
            answer, final = self.chat()
        except KeyboardInterrupt:
            # Leaving the stream closed the response, which cancels the job; the prompt comes back.
            self.messages.pop()
            self.out.write("\n\n")
            return
        except ClientError as exc:
            self.messages.pop()
            print(f"Error: {exc}", file=sys.stderr)
            return
        self.messages.append({"role": "assistant", "content": answer})
        self.out.write("\n\n")
        if self.verbose and final:
            sys.stderr.write(stats_text(final))

    def _command(self, line: str) -> str | None:
        words = line.split()
        head = words[0]
        if head in ("/bye", "/exit"):
            return "exit"
        if head in ("/?", "/help"):
            topic = words[1] if len(words) > 1 else ""
            self.out.write({"/set": SET_HELP, "/show": SHOW_HELP}.get(topic, HELP))
        elif head == "/clear":
            self.messages = [{"role": "system", "content": self.system}] if self.system else []
            self.out.write("Cleared session context\n")
        elif head == "/set":
            self._set(line, words)
        elif head == "/show":
            self._show(words)
        else:
            self.out.write(f"Unknown command '{head}'. Type /? for help\n")
        return None

    def _set(self, line: str, words: list[str]) -> None:
        sub = words[1] if len(words) > 1 else ""
        if sub == "parameter":
            if len(words) < 4:
                self.out.write("Usage:\n  /set parameter <name> <value>\n")
                return
            name, raw = words[2], words[3:]
            try:
                values = [parameter_value(name, r) for r in raw]
            except ModelfileError as exc:
                self.out.write(f"Couldn't set parameter: {str(exc)!r}\n\n")
                return
            if name == "stop":
                self.options[name] = [v for vs in values if isinstance(vs, list) for v in vs]
            else:
                self.options[name] = values[0]
            self.out.write(f"Set parameter '{name}' to '{', '.join(raw)}'\n")
        elif sub == "system":
            self.system = line.split(None, 2)[2] if len(words) > 2 else ""
            message = {"role": "system", "content": self.system}
            if self.messages and self.messages[-1]["role"] == "system":
                self.messages[-1] = message
            else:
                self.messages.append(message)
            self.out.write("Set system message.\n")
        elif sub == "verbose":
            self.verbose = True
            self.out.write("Set 'verbose' mode.\n")
        elif sub == "quiet":
            self.verbose = False
            self.out.write("Set 'quiet' mode.\n")
        elif sub == "format" and len(words) > 2:
            self.format = words[2]
            self.out.write(f"Set format to '{self.format}' mode.\n")
        elif sub == "noformat":
            self.format = None
            self.out.write("Disabled format.\n")
        else:
            self.out.write(SET_HELP)

    def _show(self, words: list[str]) -> None:
        from cli.show import render_info

        what = words[1] if len(words) > 1 else ""
        info = self.info
        if what == "info":
            self.out.write(render_info(info))
        elif what == "modelfile":
            self.out.write(str(info.get("modelfile", "")) + "\n")
        elif what == "parameters":
            if not info.get("parameters") and not self.options:
                self.out.write("No parameters were specified for this model.\n")
                return
            if info.get("parameters"):
                self.out.write(f"Model defined parameters:\n{info['parameters']}\n")
            if self.options:
                self.out.write("User defined parameters:\n")
                for key, value in self.options.items():
                    self.out.write(f"{key:<30} {value}\n")
        elif what in ("system", "template", "license"):
            text = self.system if what == "system" and self.system else info.get(what)
            missing = {
                "system": "No system message was specified for this model.",
                "template": "No prompt template was specified for this model.",
                "license": "No license was specified for this model.",
            }[what]
            self.out.write(f"{text}\n" if text else f"{missing}\n")
        else:
            self.out.write(SHOW_HELP)


def one_shot(session: Session, prompt: str, verbose: bool = False) -> int:
    """Answer one prompt on stdout and return the exit status."""
    final = session.generate(prompt)
    session.out.write("\n")
    session.out.flush()
    if verbose and final:
        sys.stderr.write(stats_text(final))
    return 0
