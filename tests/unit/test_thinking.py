"""Thinking: the `think` value, which templates think, and the output parsers (tags, harmony, splitter)."""

from __future__ import annotations

from typing import Any

import pytest

from app.openai_compat import ChatCompletionRequest, think_from_reasoning
from app.openai_errors import OpenAIError
from herd.contracts import ChatMessage
from herd.templates.builtin import CHATML_TEMPLATE, ChatTemplate
from herd.templates.chat import render_chat
from herd.templates.harmony import HarmonyParser, parse_header
from herd.templates.output_split import OutputSplitter, Split
from herd.templates.thinking import (
    InvalidThink,
    ThinkingParser,
    check_think,
    filter_think_tags,
    infer_tags,
    supports_thinking,
    think_enabled,
    thinking_tags,
    uses_harmony,
)
from herd.templates.tool_calls import ToolCallParser
from tests.support.scripted_gguf import GO_TEMPLATES, JINJA_TEMPLATES, script_pieces

GO = {name: ChatTemplate("go", source, "layer") for name, source in GO_TEMPLATES.items()}
JINJA = {name: ChatTemplate("jinja", source, "gguf") for name, source in JINJA_TEMPLATES.items()}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


# --- the think value --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, "low", "medium", "high", "max"])
def test_think_values_ollama_takes(value: Any) -> None:
    assert check_think(value) == value


@pytest.mark.parametrize("value", ["", "none", "HIGH", "extreme", 1, 0.5, ["low"]])
def test_think_values_ollama_refuses(value: Any) -> None:
    with pytest.raises(InvalidThink, match="think"):
        check_think(value)


def test_think_enabled_is_ollamas_bool() -> None:
    assert [think_enabled(v) for v in (None, False, True, "low", "max")] == [False, False, True, True, True]


@pytest.mark.parametrize(
    ("effort", "think"),
    [(None, None), ("none", False), ("minimal", "low"), ("low", "low"), ("high", "high"), ("xhigh", "max")],
)
def test_reasoning_effort_maps_as_ollama_maps_it(effort: str | None, think: Any) -> None:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": [], "reasoning_effort": effort})
    assert think_from_reasoning(body) == think


def test_reasoning_object_wins_and_bad_efforts_are_refused() -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [], "reasoning_effort": "high", "reasoning": {"effort": "none"}}
    )
    assert think_from_reasoning(body) is False
    with pytest.raises(OpenAIError, match='invalid reasoning value: "huge"'):
        think_from_reasoning(
            ChatCompletionRequest.model_validate({"model": "m", "messages": [], "reasoning_effort": "huge"})
        )


# --- which templates think ------------------------------------------------------------------------


def test_tags_are_inferred_from_the_thinking_inside_the_messages_range() -> None:
    assert infer_tags(GO_TEMPLATES["qwen3"]) == ("<think>", "</think>")
    assert infer_tags(CHATML_TEMPLATE) == ("", "")
    # .Thinking outside a range over .Messages is no thinking format.
    assert infer_tags("{{ .Thinking }}<think>{{ .Prompt }}</think>") == ("", "")
    assert infer_tags("{{ range .Messages }}<x>{{ .Thinking }}</x>{{ end }}") == ("<x>", "</x>")
    assert infer_tags("{{ if") == ("", "")  # a template that does not parse has none


def test_capability_per_template() -> None:
    assert [supports_thinking(GO[n], "llama") for n in ("chatml", "qwen3", "open", "harmony")] == [
        False,
        True,
        True,
        True,
    ]
    assert [supports_thinking(JINJA[n], "llama") for n in ("chatml", "qwen3", "open", "harmony")] == [
        False,
        True,
        True,
        True,
    ]
    assert thinking_tags(JINJA["qwen3"]) == ("<think>", "</think>")
    gpt_oss = ChatTemplate("go", "<|start|>user<|message|>{{ .Prompt }}<|end|>", "layer")
    assert uses_harmony(gpt_oss, "gpt-oss") and not uses_harmony(gpt_oss, "llama")
    assert uses_harmony(GO["harmony"], "llama") and not uses_harmony(GO["qwen3"], "gpt-oss")


def test_think_reaches_go_and_jinja_templates() -> None:
    ask = [ChatMessage(role="user", content="hi")]
    assert render_chat(GO["qwen3"], ask, think=False).endswith("<think>\n\n</think>\n\n")
    assert render_chat(GO["qwen3"], ask, think=True).endswith("assistant\n")
    assert render_chat(GO["qwen3"], ask, think=None).endswith("assistant\n")  # .IsThinkSet false
    assert "Reasoning: high" in render_chat(GO["harmony"], ask, think="high")
    assert "Reasoning: medium" in render_chat(GO["harmony"], ask, think=True)
    assert render_chat(JINJA["qwen3"], ask, think=False).endswith("<think>\n\n</think>\n\n")
    assert render_chat(JINJA["open"], ask, think=True).endswith("<think>\n")
    assert "Reasoning: low" in render_chat(JINJA["harmony"], ask, think="low")


def test_history_thinking_reaches_the_template() -> None:
    turns = [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="4", thinking="easy"),
        ChatMessage(role="user", content="sure?"),
    ]
    assert "<think>easy</think>\n4" in render_chat(GO["qwen3"], turns, think=True)
    assert "<think>\neasy\n</think>" in render_chat(JINJA["qwen3"], turns, think=True)
    assert "<|channel|>analysis<|message|>easy<|end|>" in render_chat(GO["harmony"], turns, think=True)


# --- the <think> parser ---------------------------------------------------------------------------


def _feed_all(parser: ThinkingParser, pieces: list[str]) -> tuple[str, str]:
    thinking, content = [], []
    for piece in pieces:
        t, c = parser.feed(piece)
        thinking.append(t)
        content.append(c)
    t, c = parser.finish()
    return "".join(thinking) + t, "".join(content) + c


@pytest.mark.parametrize(
    ("output", "opened", "expected"),
    [
        ("<think>hmm</think>answer", False, ("hmm", "answer")),
        ("  \n<think>\n hmm \n</think>\n\n answer", False, ("hmm \n", "answer")),
        ("no thinking here", False, ("", "no thinking here")),
        ("  plain", False, ("", "  plain")),
        ("hmm</think>answer", True, ("hmm", "answer")),
        ("\nhmm\n</think>\nanswer", True, ("hmm\n", "answer")),
        ("<think>unfinished", False, ("unfinished", "")),
        ("<think>a</think>b</think>c", False, ("a", "b</think>c")),
        ("<think></think>", False, ("", "")),
        ("<thinking is not the tag", False, ("", "<thinking is not the tag")),
        ("<thi", False, ("", "<thi")),
    ],
)
def test_think_tags_split_whole_and_piece_by_piece(
    output: str, opened: bool, expected: tuple[str, str]
) -> None:
    assert _feed_all(ThinkingParser("<think>", "</think>", opened=opened), [output]) == expected
    pieces = list(output)  # every split point, one character at a time
    assert _feed_all(ThinkingParser("<think>", "</think>", opened=opened), pieces) == expected


def test_think_parser_holds_only_a_possible_closing_tag() -> None:
    parser = ThinkingParser("<think>", "</think>")
    assert parser.feed("<think>abc</th") == ("abc", "")
    assert parser.feed("ink>ok") == ("", "ok")
    assert parser.feed(" more") == ("", " more")


# --- harmony --------------------------------------------------------------------------------------

HARMONY_ANSWER = (
    "<|channel|>analysis<|message|>Sum.<|end|><|start|>assistant<|channel|>final<|message|>It is 4."
)
HARMONY_CALL = (
    "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
)


def _harmony(pieces: list[str]) -> tuple[str, str, list[dict[str, Any]]]:
    parser = HarmonyParser()
    thinking, content, calls = [], [], []
    for piece in [*pieces, None]:
        t, c, found = parser.finish() if piece is None else parser.feed(piece)
        thinking.append(t)
        content.append(c)
        calls += [call.function.model_dump() for call in found]
    return "".join(thinking), "".join(content), calls


@pytest.mark.parametrize("by_char", [False, True])
def test_harmony_channels(by_char: bool) -> None:
    pieces = list(HARMONY_ANSWER) if by_char else [HARMONY_ANSWER]
    assert _harmony(pieces) == ("Sum.", "It is 4.", [])
    # llama.cpp renders <|end|> as nothing: the next <|start|> ends the message all the same.
    hidden = HARMONY_ANSWER.replace("<|end|>", "")
    assert _harmony(list(hidden) if by_char else [hidden]) == ("Sum.", "It is 4.", [])


@pytest.mark.parametrize("by_char", [False, True])
def test_harmony_commentary_to_a_function_is_a_call(by_char: bool) -> None:
    pieces = list(HARMONY_CALL) if by_char else [HARMONY_CALL]
    call = {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert _harmony(pieces) == ("Need weather.", "", [call])
    # Generation stops at <|call|> (an end token), so the call may end with the output instead.
    assert _harmony([HARMONY_CALL.removesuffix("<|call|>")]) == ("Need weather.", "", [call])


def test_harmony_bad_call_is_dropped_and_content_without_channel_is_content() -> None:
    bad = "<|channel|>commentary to=functions.f <|message|>{not json<|call|>"
    assert _harmony([bad]) == ("", "", [])
    assert _harmony(["<|channel|>final<|message|>hi<|return|>"]) == ("", "hi", [])
    assert _harmony(["<|channel|>commentary<|message|>preamble<|end|>"]) == ("", "preamble", [])


def test_harmony_headers() -> None:
    h = parse_header("assistant<|channel|>commentary to=functions.get_weather <|constrain|>json")
    assert (h.role, h.channel, h.recipient) == ("assistant", "commentary", "functions.get_weather")
    h = parse_header("to=functions.x<|channel|>analysis")
    assert (h.role, h.channel, h.recipient) == ("tool", "analysis", "functions.x")


# --- the splitter: thinking first, then tool calls in what remains ----------------------------------


def test_tool_call_after_thinking_is_found_and_one_inside_stays_thinking() -> None:
    output = '<think>maybe <tool_call>{"name": "get_weather"}</tool_call></think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    for pieces in ([output], list(output)):
        splitter = OutputSplitter(
            thinking=ThinkingParser("<think>", "</think>"),
            tools=ToolCallParser("<tool_call>", {"get_weather"}, TOOLS),
        )
        parts = [splitter.feed(p) for p in pieces] + [splitter.finish()]
        assert "".join(p.thinking for p in parts) == 'maybe <tool_call>{"name": "get_weather"}</tool_call>'
        assert "".join(p.content for p in parts).strip() == ""
        calls = [c.function.model_dump() for p in parts for c in p.calls]
        assert calls == [{"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}]


def test_splitter_without_tools_and_with_harmony() -> None:
    splitter = OutputSplitter(thinking=ThinkingParser("<think>", "</think>"))
    assert splitter.feed("<think>a</think>b") == Split("a", "b")
    harmony = OutputSplitter(harmony=HarmonyParser())
    assert harmony.feed(HARMONY_ANSWER + "<|") == Split("Sum.", "It is 4.", [])  # "<|" may be a marker
    assert harmony.finish() == Split("", "<|", [])


# --- the scripted GGUF's pieces --------------------------------------------------------------------


@pytest.mark.parametrize(
    "script", ["<think>ab ab ab ab</think>ab ab", "xxxxxxxxxxxxxxxxxxx", "abc", HARMONY_CALL]
)
@pytest.mark.parametrize("size", [3, 6])
def test_script_pieces_are_distinct_long_and_whole(script: str, size: int) -> None:
    taken = {"<s>", "abc"[:1]}
    pieces = script_pieces(script, taken, size)
    assert "".join(pieces).replace("\u2581", " ") == script
    assert len(set(pieces)) == len(pieces) and not set(pieces) & taken
    assert all(len(p) >= 3 for p in pieces)


def test_script_too_short_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter"):
        script_pieces("ab", set())


def test_old_thinking_is_filtered_from_qwen3_and_deepseek_history() -> None:
    turns = [
        ChatMessage(role="user", content="a"),
        ChatMessage(role="assistant", content="<think>old</think>\n\nkept"),
        ChatMessage(role="user", content="b"),
        ChatMessage(role="assistant", content="<think>prefill</think>"),
    ]
    filtered = filter_think_tags(turns, "qwen3", "qwen3")
    assert [m.content for m in filtered] == ["a", "kept", "b", "<think>prefill</think>"]
    assert filter_think_tags(turns, "llama", "deepseek-r1")[1].content == "kept"
    assert filter_think_tags(turns, "llama", "llama3") == turns


# Ollama's deepseek-r1 template: .Thinking in an `if` pipe, in an `else if`, with trim markers.
DEEPSEEK_R1 = """{{- if .System }}{{ .System }}{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1}}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>
  {{- if and $.IsThinkSet (and $last .Thinking) -}}
<think>
{{ .Thinking }}
</think>
{{- end }}{{ .Content }}{{- if not $last }}<｜end▁of▁sentence｜>{{- end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<｜Assistant｜>
{{- if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end }}
{{- end -}}
{{- end }}"""


def test_tags_of_ollamas_deepseek_r1_template() -> None:
    assert infer_tags(DEEPSEEK_R1) == ("<think>", "</think>")
    ask = [ChatMessage(role="user", content="hi")]
    template = ChatTemplate("go", DEEPSEEK_R1, "layer")
    assert render_chat(template, ask, think=False).endswith("<think>\n\n</think>\n\n")
    assert render_chat(template, ask, think=True).endswith("<｜Assistant｜>")
