"""Tool calls: the tag a template puts before a call, and the streaming parser that splits output."""

from __future__ import annotations

import pytest

from herd.contracts import ChatMessage
from herd.templates.builtin import ChatTemplate
from herd.templates.chat import render_chat
from herd.templates.tool_calls import ToolCallParser, tool_call_tag
from tests.support.tiny_gguf import TOOLS_TEMPLATE

# Ollama's Go template for Qwen 2.5 (abridged to the tool-call parts).
QWEN_GO = """{{- if .Tools }}<|im_start|>system
# Tools
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools><|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# A Hermes/Qwen-style Jinja template.
QWEN_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n'
    "</tool_call>{% endfor %}{% else %}{{ message.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
NAMES = {"get_weather", "get_time"}


def _tag(template: ChatTemplate) -> str | None:
    return tool_call_tag(lambda messages: render_chat(template, messages, tools=TOOLS))


@pytest.mark.parametrize(
    ("template", "tag"),
    [
        (ChatTemplate("go", QWEN_GO, "layer"), "<tool_call>"),
        (ChatTemplate("jinja", QWEN_JINJA, "gguf"), "<tool_call>"),
        (ChatTemplate("jinja", TOOLS_TEMPLATE, "gguf"), ""),
    ],
    ids=["qwen-go", "qwen-jinja", "bare-json"],
)
def test_the_tag_is_learned_from_the_template(template: ChatTemplate, tag: str) -> None:
    assert _tag(template) == tag


def test_a_template_without_tool_calls_has_no_tag() -> None:
    plain = ChatTemplate("jinja", "{% for m in messages %}{{ m.content }}{% endfor %}", "gguf")
    assert _tag(plain) is None


def _feed_all(parser: ToolCallParser, text: str, step: int = 1) -> tuple[str, list[dict[str, object]]]:
    """Feed the text in pieces of `step` characters, as tokens arrive."""
    content: list[str] = []
    calls: list[dict[str, object]] = []
    for i in range(0, len(text), step):
        out, found = parser.feed(text[i : i + step])
        content.append(out)
        calls.extend(c.model_dump() for c in found)
    out, found = parser.finish()
    content.append(out)
    calls.extend(c.model_dump() for c in found)
    return "".join(content), calls


def _call(name: str, **arguments: object) -> dict[str, object]:
    return {"function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_tagged_calls_are_split_off_whole_however_the_text_arrives(step: int) -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    )
    content, calls = _feed_all(ToolCallParser("<tool_call>", NAMES), text, step)
    assert content == "Let me check."
    assert calls == [_call("get_weather", city="Paris"), _call("get_time", zone="CET")]


def test_a_call_is_released_as_soon_as_its_json_is_complete() -> None:
    parser = ToolCallParser("<tool_call>", NAMES)
    assert parser.feed('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa') == ("", [])
    content, calls = parser.feed('ris"}}')
    assert content == ""
    assert [c.model_dump() for c in calls] == [_call("get_weather", city="Paris")]


def test_text_that_only_looks_like_the_tag_start_is_held_then_released() -> None:
    parser = ToolCallParser("<tool_call>", NAMES)
    assert parser.feed("a <tool") == ("a ", [])
    assert parser.feed("bar> b") == ("<toolbar> b", [])


def test_an_unknown_tool_name_stays_content() -> None:
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    content, calls = _feed_all(ToolCallParser("<tool_call>", NAMES), text)
    assert calls == []
    assert content == text


def test_an_unfinished_call_is_given_back_as_content() -> None:
    text = '<tool_call>{"name": "get_weather", "argu'
    content, calls = _feed_all(ToolCallParser("<tool_call>", NAMES), text)
    assert (content, calls) == (text, [])


def test_arguments_written_as_a_json_string_are_parsed() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>'
    _, calls = _feed_all(ToolCallParser("<tool_call>", NAMES), text)
    assert calls == [_call("get_weather", city="Oslo")]


@pytest.mark.parametrize("step", [1, 1000])
def test_bare_json_calls_and_lists(step: int) -> None:
    text = (
        ' [{"name": "get_weather", "parameters": {"city": "Rome"}}, {"name": "get_time", "parameters": {}}]'
    )
    content, calls = _feed_all(ToolCallParser("", NAMES), text, step)
    assert content == ""
    assert calls == [_call("get_weather", city="Rome"), _call("get_time")]


def test_bare_mode_prose_streams_through_at_once() -> None:
    parser = ToolCallParser("", NAMES)
    assert parser.feed("Hello") == ("Hello", [])
    assert parser.feed(' {"name": "get_weather"}') == (' {"name": "get_weather"}', [])


def test_bare_json_that_is_not_a_call_is_content() -> None:
    text = '{"answer": 42} and more'
    content, calls = _feed_all(ToolCallParser("", NAMES), text)
    assert (content, calls) == (text, [])


def test_openai_shaped_call_objects_are_understood() -> None:
    text = '{"type": "function", "function": {"name": "get_time", "arguments": {"zone": "UTC"}}}'
    _, calls = _feed_all(ToolCallParser("", NAMES), text)
    assert calls == [_call("get_time", zone="UTC")]


def test_tool_results_reach_the_prompt() -> None:
    template = ChatTemplate("go", QWEN_GO, "layer")
    messages = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage.model_validate({"role": "assistant", "tool_calls": [_call("get_weather", city="Paris")]}),
        ChatMessage(role="tool", content="18 degrees and sunny", tool_name="get_weather"),
    ]
    prompt = render_chat(template, messages, tools=TOOLS)
    assert '{"name": "get_weather", "arguments": {"city":"Paris"}}' in prompt
    assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
