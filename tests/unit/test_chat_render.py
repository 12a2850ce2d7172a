"""Prompt parity with Ollama: its real templates rendered through herd.templates as Ollama's Execute does.

Expectations come from Ollama itself (template/testdata at commit fb30760, vendored under data/, and the
cases of its template_test.go) or were derived by reading template.go against the template text; each
derived one says so.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from herd.contracts import ChatMessage, ToolCall, ToolCallFunction
from herd.templates.builtin import ChatTemplate
from herd.templates.chat import TemplateError, chat_messages, generate_messages, render_chat, render_insert
from herd.templates.gotemplate import GoTemplateError
from herd.templates.ollama_execute import check_template, collate

DATA = Path(__file__).parent / "data" / "ollama_templates"


def _go(source: str) -> ChatTemplate:
    return ChatTemplate("go", source, "layer")


def _msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in pairs]


def _render(source: str, messages: list[ChatMessage], **kw: Any) -> str:
    return render_chat(_go(source), messages, **kw)


# --- Ollama's TestTemplate: every template in template/ against its testdata -------------------------

_CASES = {
    "user": _msgs(("user", "Hello, how are you?")),
    "user-assistant-user": _msgs(
        ("user", "Hello, how are you?"),
        ("assistant", "I'm doing great. How can I help you today?"),
        ("user", "I'd like to show off how chat templating works!"),
    ),
    "system-user-assistant-user": _msgs(
        ("system", "You are a helpful assistant."),
        ("user", "Hello, how are you?"),
        ("assistant", "I'm doing great. How can I help you today?"),
        ("user", "I'd like to show off how chat templating works!"),
    ),
}
# Ollama's test trims one trailing space from these templates' output before comparing.
_TRIM = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}


@pytest.mark.parametrize("case", sorted(_CASES))
@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.gotmpl")))
def test_ollama_templates_render_as_ollama_testdata(name: str, case: str) -> None:
    source = (DATA / f"{name}.gotmpl").read_text()
    got = _render(source, _CASES[case])
    if name in _TRIM and got.endswith(" "):
        got = got[:-1]
    assert got == (DATA / "testdata" / f"{name}.gotmpl" / case).read_text()


# --- Ollama's TestExecuteWithMessages: legacy (.Prompt/.Response) and messages forms agree --------------

_MISTRAL_NO_RESPONSE = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
_MISTRAL_RESPONSE = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}"
_MISTRAL_MESSAGES = """[INST] {{ if .System }}{{ .System }}

{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}
{{- end }}"""
_CHATML_LEGACY = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
_CHATML_MESSAGES = """
{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
_CHAT = (("user", "Hello friend!"), ("assistant", "Hello human!"), ("user", "What is your name?"))


@pytest.mark.parametrize(
    ("templates", "messages", "expected"),
    [
        pytest.param(
            [_MISTRAL_NO_RESPONSE, _MISTRAL_RESPONSE, _MISTRAL_MESSAGES],
            _msgs(*_CHAT),
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] ",
            id="mistral",
        ),
        pytest.param(
            [_MISTRAL_NO_RESPONSE, _MISTRAL_RESPONSE, _MISTRAL_MESSAGES],
            _msgs(("system", "You are a helpful assistant!"), *_CHAT),
            "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] ",
            id="mistral-system",
        ),
        pytest.param(
            [
                "[INST] {{ .Prompt }}[/INST] ",
                "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
                '{{- range $i, $m := .Messages }}{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
                '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}{{- end }}',
            ],
            _msgs(*_CHAT, ("assistant", "My name is Ollama and I")),
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I",
            id="mistral-assistant-prefill",
        ),
        pytest.param(
            [_CHATML_LEGACY, _CHATML_MESSAGES],
            _msgs(("system", "You are a helpful assistant!"), *_CHAT),
            "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
            "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
            "<|im_start|>assistant\n",
            id="chatml",
        ),
    ],
)
def test_legacy_and_messages_templates_render_alike(
    templates: list[str], messages: list[ChatMessage], expected: str
) -> None:
    for source in templates:
        assert _render(source, messages) == expected, source


def test_legacy_template_merges_consecutive_user_turns_and_keeps_assistant_turns() -> None:
    # Derived: collate merges the two user turns; the legacy loop runs once per user turn.
    messages = _msgs(("user", "a"), ("user", "b"), ("assistant", "c"), ("user", "d"))
    assert _render(_MISTRAL_RESPONSE, messages) == "[INST] a\n\nb[/INST] c[INST] d[/INST] "


def test_legacy_template_without_response_gets_it_appended() -> None:
    # Ollama's Parse appends {{ .Response }} to a template that names neither messages nor response,
    # so earlier turns keep their replies.
    assert _render("<{{ .Prompt }}>", _msgs(*_CHAT)) == "<Hello friend!>Hello human!<What is your name?>"


def test_legacy_cut_keeps_what_precedes_the_response_inside_a_branch() -> None:
    # Derived from deleteNode: branch conditions are not walked; everything after the first .Response goes.
    source = "{{ if .Prompt }}U:{{ .Prompt }} A:{{ .Response }}|{{ end }}END"
    assert _render(source, _msgs(*_CHAT)) == "U:Hello friend! A:Hello human!|ENDU:What is your name? A:"


# --- The messages path: .System, collation, tools -----------------------------------------------------
# The vendored files end in a newline, which Ollama keeps: hence the "\n" after each rendering's end.

GEMMA3 = (DATA / "gemma3-instruct.gotmpl").read_text()
COMMAND_R = (DATA / "command-r.gotmpl").read_text()


def test_gemma3_keeps_the_system_prompt() -> None:
    got = _render(GEMMA3, _msgs(("system", "Be brief."), ("user", "Hi")))
    assert got == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n\n"


def test_gemma3_joins_system_messages_and_merges_consecutive_user_turns() -> None:
    got = _render(GEMMA3, _msgs(("system", "One."), ("system", "Two."), ("user", "a"), ("user", "b")))
    assert got == "<start_of_turn>user\nOne.\n\nTwo.\n\na\n\nb<end_of_turn>\n<start_of_turn>model\n\n"


def test_gemma3_without_system() -> None:
    got = _render(GEMMA3, _msgs(("user", "Hi")))
    assert got == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n\n"


def test_command_r_system_without_tools() -> None:
    got = _render(COMMAND_R, _msgs(("system", "Be brief."), ("user", "Hi")))
    assert got == (
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>"
        "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n"
    )


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "required": ["city"],
            # Not in key order, with a field Ollama's ToolProperty does not have: Go drops it and sorts.
            "properties": {
                "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                "city": {"description": "City name", "type": "string"},
            },
        },
    },
}


def test_command_r_with_tools_lists_them_in_go_map_order() -> None:
    got = _render(COMMAND_R, _msgs(("system", "Be brief."), ("user", "Hi")), tools=[WEATHER_TOOL])
    assert "# User Preamble\nBe brief.\n\n## Available Tools" in got
    assert "def get_weather(city: string, unit: string, ) -> List[Dict]:\n    '''Get the weather" in got
    assert "\n        city (string): City name\n        unit (string): \n    '''" in got
    assert (
        "```<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Write"
        in got
    )
    assert got.endswith(
        "]```<|END_OF_TURN_TOKEN|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n"
    )


def test_tools_and_tool_calls_marshal_as_ollama_structs() -> None:
    source = "{{ json .Tools }}|{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}{{ end }}{{ end }}"
    call = ToolCall(function=ToolCallFunction(name="get_weather", arguments={"unit": "c", "city": "Paris"}))
    messages = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
    ]
    got = _render(source, messages, tools=[WEATHER_TOOL])
    tools_json, args = got.split("|")
    assert tools_json == (
        '[{"type":"function","function":{"name":"get_weather","description":"Get the weather",'
        '"parameters":{"type":"object","required":["city"],"properties":{'
        '"city":{"type":"string","description":"City name"},'
        '"unit":{"type":"string","enum":["c","f"]}}}}}]'
    )
    assert args == '{"city":"Paris","unit":"c"}'


def test_tool_messages_are_not_merged() -> None:
    system, collated = collate(
        _msgs(
            ("system", "S"), ("user", "w?"), ("tool", "sunny"), ("tool", "72F"), ("user", "x"), ("user", "y")
        )
    )
    assert system == "S"
    assert [(m.role, m.content) for m in collated] == [
        ("system", "S"),
        ("user", "w?"),
        ("tool", "sunny"),
        ("tool", "72F"),
        ("user", "x\n\ny"),
    ]


def test_messages_path_values() -> None:
    # .Prompt is absent from Ollama's map on this path: Go prints "<no value>" (missingkey=zero does not
    # apply to interface-valued maps).
    source = "{{ range .Messages }}{{ end }}[{{ .Response }}][{{ .Tools }}][{{ .Prompt }}]"
    assert _render(source, _msgs(("user", "x"))) == "[][][<no value>]"


@pytest.mark.parametrize(
    ("think", "expected"),
    [(None, "false||false"), (True, "true|medium|true"), (False, "false||true"), ("low", "true|low|true")],
)
def test_think_values(think: bool | str | None, expected: str) -> None:
    source = "{{ range .Messages }}{{ end }}{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    assert _render(source, _msgs(("user", "x")), think=think) == expected
    legacy = "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}{{ .Prompt }}"
    assert _render(legacy, _msgs(("user", "")), think=think) == expected


# --- Fill-in-the-middle, functions, errors -------------------------------------------------------------

_FIM = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"


def test_suffix_uses_prompt_and_suffix() -> None:
    assert render_insert(_go(_FIM), "def add(", "return x") == "<PRE> def add( <SUF>return x <MID>"
    assert _render(_FIM, _msgs(("user", "hello"))) == "hello"


def test_template_functions() -> None:
    today = dt.date.today()
    source = "{{ range .Messages }}{{ end }}{{ currentDate }} {{ yesterdayDate }} {{ json .System }}"
    got = _render(source, _msgs(("system", "a<b"), ("user", "x")))
    assert got == f'{today.isoformat()} {(today - dt.timedelta(days=1)).isoformat()} "a\\u003cb"'
    ts = "{{ range .Tools }}{{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}: {{ toTypeScriptType $v }};{{ end }}{{ end }}{{ range .Messages }}{{ end }}"
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": ["string", "null"]},
                    "b": {"anyOf": [{"type": "integer"}, {"type": "array"}]},
                    "c": {"type": "object"},
                    "d": {},
                },
            },
        },
    }
    got = _render(ts, _msgs(("user", "x")), tools=[tool])
    assert got == "a: string | null;b: number | any[];c: Record<string, any>;d: any;"


def test_parse_errors_name_line_and_column() -> None:
    with pytest.raises(GoTemplateError, match=r"line 2, col \d+"):
        check_template("ok\n{{ if .X }}")
    with pytest.raises(GoTemplateError, match='function "toJson" not defined'):
        check_template("{{ toJson .X }}")


def test_execution_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"template error: line 1, col \d+: .*index"):
        _render("{{ range .Messages }}{{ end }}{{ index .Messages 5 }}", _msgs(("user", "x")))


# --- The conversation around the template (server/routes.go) -------------------------------------------


def test_chat_messages_modelfile_system_and_message_turns() -> None:
    stored = [{"role": "user", "content": "m1"}, {"role": "assistant", "content": "m2"}]
    got = chat_messages(_msgs(("user", "q")), system="S", stored_messages=stored)
    assert [(m.role, m.content) for m in got] == [
        ("system", "S"),
        ("user", "m1"),
        ("assistant", "m2"),
        ("user", "q"),
    ]
    # A request whose first message is a system message replaces the Modelfile's SYSTEM.
    got = chat_messages(_msgs(("system", "R"), ("user", "q")), system="S", stored_messages=stored)
    assert [m.content for m in got] == ["m1", "m2", "R", "q"]
    # Ollama only looks at the first message: a later system message does not stop SYSTEM.
    got = chat_messages(_msgs(("user", "q"), ("system", "R")), system="S", stored_messages=[])
    assert [m.content for m in got] == ["S", "q", "R"]


def test_generate_messages() -> None:
    stored = [{"role": "user", "content": "m1"}]
    got = generate_messages("p", None, stored_system="S", stored_messages=stored)
    assert [(m.role, m.content) for m in got] == [("system", "S"), ("user", "m1"), ("user", "p")]
    got = generate_messages("p", "R", stored_system="S", stored_messages=None)
    assert [m.content for m in got] == ["R", "p"]


# --- Truncation as chatPrompt (server/prompt.go) --------------------------------------------------------


def test_truncation_drops_the_oldest_turns_and_keeps_system_and_last() -> None:
    from workers.prepare import truncated_messages

    messages = _msgs(
        ("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")
    )
    messages.append(ChatMessage(role="user", content="last"))
    # 13 characters in all; S + a1.. is 11, not under 11; S + u2 + a2 + last is 9. The loop stops at the
    # first drop that fits (a shorter prompt further on is not looked for).
    kept = truncated_messages(messages, 11, lambda ms: sum(len(m.content) for m in ms))
    assert [m.content for m in kept] == ["S", "u2", "a2", "last"]
    # Nothing fits: the system messages and the last message remain.
    kept = truncated_messages(messages, 1, lambda ms: sum(len(m.content) for m in ms))
    assert [m.content for m in kept] == ["S", "last"]
    # Everything fits: nothing is dropped.
    assert truncated_messages(messages, 100, lambda ms: 1) == messages


# --- llama3.1 (Ollama's registry template, as `ollama show --template` prints it) with tools -------------

LLAMA31 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""
_LLAMA31_TOOLS_SYSTEM = (
    "\n\nCutting Knowledge Date: December 2023\n\nWhen you receive a tool call response, use the output to "
    "format an answer to the orginal user question.\n\nYou are a helpful assistant with tool calling capabilities."
)
_WEATHER_JSON = (
    '{"type":"function","function":{"name":"get_weather","description":"Get the weather",'
    '"parameters":{"type":"object","required":["city"],"properties":{'
    '"city":{"type":"string","description":"City name"},"unit":{"type":"string","enum":["c","f"]}}}}}'
)


def test_llama31_without_and_with_system() -> None:
    # Derived by hand from the template above.
    assert _render(LLAMA31, _msgs(("user", "a"), ("user", "b"))) == (
        "<|start_header_id|>user<|end_header_id|>\n\na\n\nb<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert _render(LLAMA31, _msgs(("system", "S"), ("user", "a"))) == (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\na<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_with_tools_puts_them_in_the_last_user_turn() -> None:
    # Derived by hand: each tool prints through templateTool.String(), json.Marshal of Ollama's struct.
    got = _render(LLAMA31, _msgs(("user", "Weather in Paris?")), tools=[WEATHER_TOOL])
    assert got == (
        "<|start_header_id|>system<|end_header_id|>" + _LLAMA31_TOOLS_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON "
        "for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the "
        'format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use '
        "variables.\n\n" + _WEATHER_JSON + "\n\nQuestion: Weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_tool_call_round_trip() -> None:
    call = ToolCall(function=ToolCallFunction(name="get_weather", arguments={"unit": "c", "city": "Paris"}))
    messages = [
        ChatMessage(role="system", content="S"),
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="18C", tool_name="get_weather"),
    ]
    got = _render(LLAMA31, messages, tools=[WEATHER_TOOL])
    assert got == (
        "<|start_header_id|>system<|end_header_id|>\n\nS" + _LLAMA31_TOOLS_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city":"Paris","unit":"c"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n18C<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize(
    "name", ["chatml", "phi-3", "llama3-instruct", "gemma3-instruct", "command-r", "zephyr"]
)
def test_consecutive_user_turns_render_as_one(name: str) -> None:
    # Two user messages render as Ollama's single-user testdata with the two contents joined by a blank line.
    source = (DATA / f"{name}.gotmpl").read_text()
    got = _render(source, _msgs(("user", "Hello,"), ("user", "how are you?")))
    expected = (DATA / "testdata" / f"{name}.gotmpl" / "user").read_text()
    assert got == expected.replace("Hello, how are you?", "Hello,\n\nhow are you?")
