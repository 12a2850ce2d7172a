"""Tool calls: the tag a template puts before a call, and the streaming parser that splits output."""

from __future__ import annotations

import re

import pytest

from herd.contracts import ChatMessage, ToolCall
from herd.templates.builtin import ChatTemplate
from herd.templates.chat import render_chat
from herd.templates.tool_calls import ToolCallParser, parameter_value, tool_call_tag
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
    calls: list[ToolCall] = []
    for i in range(0, len(text), step):
        out, found = parser.feed(text[i : i + step])
        content.append(out)
        calls.extend(found)
    out, found = parser.finish()
    content.append(out)
    calls.extend(found)
    return "".join(content), _dumped(calls)


def _dumped(calls: list[ToolCall]) -> list[dict[str, object]]:
    """The calls as dicts without their ids, once each id is checked: Ollama's shape, all different."""
    ids = [call.id or "" for call in calls]
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    return [call.model_dump(exclude={"id"}) for call in calls]


def _call(name: str, index: int = 0, **arguments: object) -> dict[str, object]:
    return {"function": {"index": index, "name": name, "arguments": arguments}}


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_tagged_calls_are_split_off_whole_however_the_text_arrives(step: int) -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    )
    content, calls = _feed_all(ToolCallParser("<tool_call>", NAMES), text, step)
    assert content == "Let me check."
    assert calls == [_call("get_weather", city="Paris"), _call("get_time", 1, zone="CET")]


def test_a_call_is_released_as_soon_as_its_json_is_complete() -> None:
    parser = ToolCallParser("<tool_call>", NAMES)
    assert parser.feed('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa') == ("", [])
    content, calls = parser.feed('ris"}}')
    assert content == ""
    assert _dumped(calls) == [_call("get_weather", city="Paris")]


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
    assert calls == [_call("get_weather", city="Rome"), _call("get_time", 1)]


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


# --- XML-style calls (Qwen3-Coder, Qwen3.5) ------------------------------------------------------------

# Qwen3-Coder's Jinja chat template, abridged to the tool-call parts.
QWEN3_CODER_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.tool_calls %}{{ message.content }}{% for tool_call in message.tool_calls %}"
    "{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}"
    "{{ '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}"
    "{% for args_name, args_value in tool_call.arguments|items %}"
    "{{ '<parameter=' + args_name + '>\\n' }}"
    "{% set args_value = args_value | tojson if args_value is mapping or (args_value is sequence and args_value"
    " is not string) else args_value | string %}{{ args_value }}{{ '\\n</parameter>\\n' }}"
    "{% endfor %}{{ '</function>\\n</tool_call>' }}{% endfor %}"
    "{% else %}{{ message.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The same calls written by a Go template, with a system prompt that shows an example call (as
# Ollama's qwen3-coder renderer does): the example must not be taken for the tag.
QWEN3_CODER_GO = """{{- if .Tools }}<|im_start|>system
Call a function like this:
<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
</function>
</tool_call><|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>
<function={{ .Function.Name }}>
{{ range $k, $v := .Function.Arguments }}<parameter={{ $k }}>
{{ $v }}
</parameter>
{{ end }}</function>
</tool_call>{{ end }}{{ else }}{{ .Content }}{{ end }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

XML_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "radius": {"type": "number"},
                    "metric": {"type": "boolean"},
                    "hours": {"type": "array"},
                    "where": {"type": "object"},
                    "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    "code": {"type": "string"},
                },
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]

XML_TEXT = (
    "I will look.\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nSan Francisco\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n"
    "<parameter=radius>\n2.5\n</parameter>\n"
    "<parameter=metric>\nTrue\n</parameter>\n"
    "<parameter=hours>\n[6, 12]\n</parameter>\n"
    '<parameter=where>\n{"lat": 37.7, "lon": -122.4}\n</parameter>\n'
    "<parameter=limit>\nnull\n</parameter>\n"
    "<parameter=code>\n042\n</parameter>\n"
    "<parameter=note>\nline one\nline two\n</parameter>\n"
    "</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_time>\n<parameter=zone>\nCET\n</parameter>\n</function>\n</tool_call>"
)
XML_CALLS = [
    _call(
        "get_weather",
        city="San Francisco",
        days=3,
        radius=2.5,
        metric=True,
        hours=[6, 12],
        where={"lat": 37.7, "lon": -122.4},
        limit=None,
        code="042",  # declared a string: the digits stay text
        note="line one\nline two",  # undeclared: text, one newline taken off each end
    ),
    _call("get_time", 1, zone="CET"),
]


@pytest.mark.parametrize(
    "template",
    [ChatTemplate("jinja", QWEN3_CODER_JINJA, "gguf"), ChatTemplate("go", QWEN3_CODER_GO, "layer")],
    ids=["jinja", "go"],
)
def test_the_tag_of_xml_style_calls_is_learned_from_the_template(template: ChatTemplate) -> None:
    assert tool_call_tag(lambda messages: render_chat(template, messages, tools=XML_TOOLS)) == "<tool_call>"


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 11, 10_000])
def test_xml_calls_are_parsed_whole_and_typed_however_the_text_is_split(step: int) -> None:
    parser = ToolCallParser("<tool_call>", NAMES, XML_TOOLS)
    content, calls = _feed_all(parser, XML_TEXT, step)
    assert content == "I will look.\n"
    assert calls == XML_CALLS


def test_every_single_split_point_gives_the_same_calls() -> None:
    for cut in range(1, len(XML_TEXT)):
        parser = ToolCallParser("<tool_call>", NAMES, XML_TOOLS)
        first, found = parser.feed(XML_TEXT[:cut])
        second, more = parser.feed(XML_TEXT[cut:])
        last, rest = parser.finish()
        assert first + second + last == "I will look.\n", cut
        assert _dumped([*found, *more, *rest]) == XML_CALLS, cut


def test_an_xml_call_is_released_at_its_closing_function_tag() -> None:
    parser = ToolCallParser("<tool_call>", NAMES, XML_TOOLS)
    assert parser.feed("<tool_call>\n<function=get_time>\n<parameter=zone>\nUTC\n</parameter>\n") == ("", [])
    content, calls = parser.feed("</function>")
    assert content == "" and _dumped(calls) == [_call("get_time", zone="UTC")]


def test_an_xml_call_of_an_unknown_tool_stays_content() -> None:
    text = "<tool_call>\n<function=rm_rf>\n<parameter=path>\n/\n</parameter>\n</function>\n</tool_call>"
    content, calls = _feed_all(ToolCallParser("<tool_call>", NAMES, XML_TOOLS), text)
    assert calls == [] and content == text


def test_an_unfinished_xml_call_is_given_back_as_content() -> None:
    text = "<tool_call>\n<function=get_time>\n<parameter=zone>\nUT"
    content, calls = _feed_all(ToolCallParser("<tool_call>", NAMES, XML_TOOLS), text)
    assert (content, calls) == (text, [])


def test_a_parameter_left_open_ends_at_the_next_one() -> None:
    text = "<tool_call><function=get_weather><parameter=city>Oslo<parameter=days>2</function></tool_call>"
    _, calls = _feed_all(ToolCallParser("<tool_call>", NAMES, XML_TOOLS), text)
    assert calls == [_call("get_weather", city="Oslo", days=2)]


@pytest.mark.parametrize(
    ("raw", "types", "value"),
    [
        ("\n7\n", ["integer"], 7),
        ("7.0", ["number"], 7),
        ("7.5", ["number"], 7.5),
        ("seven", ["integer"], "seven"),
        ("NULL", ["string"], None),
        ("yes", ["boolean"], False),  # a lone boolean type: anything but true is false, as Ollama has it
        ("yes", ["boolean", "string"], "yes"),
        ("123", ["string", "number"], 123),
        ("[1, 2]", ["array"], [1, 2]),
        ("[1, 2", ["array"], "[1, 2"),
        ('{"a": 1}', ["object"], {"a": 1}),
        ("\n\nx\n\n", [], "\nx\n"),
    ],
)
def test_parameter_values_take_their_declared_types(raw: str, types: list[str], value: object) -> None:
    assert parameter_value(raw, types) == value
