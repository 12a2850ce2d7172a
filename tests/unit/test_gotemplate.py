"""Tests for herd.templates.gotemplate, the Go text/template interpreter for Ollama TEMPLATE layers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from herd.templates.gotemplate import GoTemplateError, Template, parse, render

# Expected outputs in this file were cross-checked against Go's text/template (parsed as Ollama does, with
# missingkey=zero and Ollama's json function) except where a test says it covers a deliberate difference.

LLAMA3 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- end }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""

GEMMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

CHATML_PROMPT = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>"""

MISTRAL = """{{- if .Tools }}[AVAILABLE_TOOLS] {{ json $.Tools }}[/AVAILABLE_TOOLS]{{ end }}
{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }}[INST] {{ if and $.System (eq $i 0) }}{{ $.System }}

{{ end }}{{ $m.Content }}[/INST]
{{- else if eq $m.Role "assistant" }}
{{- if $m.ToolCalls }}[TOOL_CALLS] [{{ range $j, $c := $m.ToolCalls }}{{ if $j }}, {{ end }}\
{"name": "{{ $c.Function.Name }}", "arguments": {{ json $c.Function.Arguments }}}{{ end }}]
{{- else }} {{ $m.Content }}
{{- end }}</s>
{{- else if eq $m.Role "tool" }}[TOOL_RESULTS] {"content": {{ $m.Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- with index .Messages (len (slice .Messages 1)) }}{{ if eq .Role "tool" }}[INST]{{ end }}{{ end }}"""

CONVERSATION: list[dict[str, Any]] = [
    {"Role": "user", "Content": "Hi"},
    {"Role": "assistant", "Content": "Hello!"},
    {"Role": "user", "Content": "How are you?"},
]

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"Role": "user", "Content": "Weather in Paris?"},
    {
        "Role": "assistant",
        "Content": "",
        "ToolCalls": [
            {"Function": {"Name": "get_weather", "Arguments": {"city": "Paris"}}},
            {"Function": {"Name": "get_time", "Arguments": {"tz": "CET", "utc": False}}},
        ],
    },
    {"Role": "tool", "Content": '"sunny"'},
]

# Keys are in sorted order so Go (which sorts map keys) and our insertion-order JSON agree byte for byte.
TOOLS: list[dict[str, Any]] = [
    {
        "function": {
            "description": "Get the weather",
            "name": "get_weather",
            "parameters": {
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "type": "object",
            },
        },
        "type": "function",
    }
]


def chat(
    system: str = "Be brief.", messages: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """Build the data Ollama passes to a messages-style template."""
    data: dict[str, Any] = {
        "System": system,
        "Messages": CONVERSATION if messages is None else messages,
        "Tools": [],
        "Response": "",
        "Think": False,
    }
    data.update(extra)
    return data


# --- real templates -------------------------------------------------------------------------------------


def test_llama3_system_and_two_turns() -> None:
    assert render(LLAMA3, chat()) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_without_system_keeps_leading_eot() -> None:
    assert render(LLAMA3, chat(system="", messages=CONVERSATION[:1])) == (
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_tool_call_prints_arguments_as_json() -> None:
    out = render(LLAMA3, chat(system="S", messages=TOOL_CONVERSATION[:2]))
    assert out == (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n"
        '{"name": "get_weather", "parameters": {"city":"Paris"}}'
        '{"name": "get_time", "parameters": {"tz":"CET","utc":false}}'
    )


def test_gemma3_system_and_two_turns() -> None:
    messages = [{"Role": "system", "Content": "Be brief."}, *CONVERSATION]
    assert render(GEMMA3, chat(messages=messages)) == (
        "<start_of_turn>user\nBe brief.<end_of_turn>\n"
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma3_ending_on_assistant_leaves_turn_open() -> None:
    assert render(GEMMA3, chat(messages=CONVERSATION[:2])) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!"
    )


def test_chatml_prompt_template_per_turn() -> None:
    tmpl = parse(CHATML_PROMPT)
    first = tmpl.render({"System": "Be brief.", "Prompt": "Hi", "Response": "Hello!"})
    second = tmpl.render({"System": "", "Prompt": "How are you?", "Response": ""})
    assert first == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>"
    )
    assert second == "<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n<|im_end|>"


def test_mistral_tools_json_and_inst() -> None:
    assert render(MISTRAL, chat(Tools=TOOLS)) == (
        '[AVAILABLE_TOOLS] [{"function":{"description":"Get the weather","name":"get_weather",'
        '"parameters":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"}},'
        '"type":"function"}][/AVAILABLE_TOOLS]'
        "[INST] Be brief.\n\nHi[/INST] Hello!</s>[INST] How are you?[/INST]"
    )


def test_mistral_tool_calls_and_results() -> None:
    assert render(MISTRAL, chat(system="", messages=TOOL_CONVERSATION)) == (
        "[INST] Weather in Paris?[/INST][TOOL_CALLS] "
        '[{"name": "get_weather", "arguments": {"city":"Paris"}}, '
        '{"name": "get_time", "arguments": {"tz":"CET","utc":false}}]</s>'
        '[TOOL_RESULTS] {"content": "sunny"} [/TOOL_RESULTS][INST]'
    )


def test_template_is_reusable() -> None:
    tmpl = parse("{{ $x := .A }}{{ $x }}")
    assert isinstance(tmpl, Template)
    assert [tmpl.render({"A": n}) for n in (1, 2)] == ["1", "2"]


# --- language features, each matching Go ----------------------------------------------------------------

DATA: dict[str, Any] = {
    "S": "str",
    "E": "",
    "N": 3,
    "Z": 0,
    "F": 1.5,
    "T": True,
    "B": False,
    "L": [1, 2, 3],
    "EL": [],
    "M": {"a": 1, "b": "x"},
    "EM": {},
    "Msgs": [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}],
    "U": "héllo<&>",
}

GO_CASES = [
    # text, trim markers (all of " \t\r\n") and comments
    ("a  {{- .S -}}  b", "astrb"),
    ("a \n\t{{- .S}}\n\n b", "astr\n\n b"),
    ("{{.S -}}\n\n  x", "strx"),
    ("x {{-3}} y", "x -3 y"),
    ("x {{- 3}} y", "x3 y"),
    ("a {{/* c */}} b", "a  b"),
    ("a {{- /* c */ -}} b", "ab"),
    ("a {{- /* multi\nline */}} b", "a b"),
    ("{{- .S -}}\n{{- .S -}}", "strstr"),
    # operands
    ("{{ $.S }}{{ .M.a }}{{ .M.b }}", "str1x"),
    ('{{ "a\\nb\\t\\"q\\" \\x41\\u00e9\\101" }}', 'a\nb\t"q" AéA'),
    ("{{ `raw\\n` }}", "raw\\n"),
    ("{{ 'a' }} {{ 1.5 }} {{ 0x10 }} {{ -7 }} {{ 1e3 }} {{ 1_000 }}", "97 1.5 16 -7 1000 1000"),
    ("{{ true }} {{ false }} {{ (.S) }}", "true false str"),
    ("{{ (index .Msgs 1).Role }}", "assistant"),
    ('{{ .S | printf "%s!" }}', "str!"),
    ('{{ "x" | printf "%s-%s" "y" }}', "y-x"),
    ('{{ .L | len | printf "%d" }}', "3"),
    ("{{ .S | }}{{ (.S |) }}", "strstr"),
    # variables and scoping
    ("{{ $x := .S }}{{ $x }}", "str"),
    ("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2"),
    ("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}", "21"),
    ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", "2"),
    ("{{ $x := 0 }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}", "3"),
    ("{{ $m := .M }}{{ $m.a }}{{ $m.b }}", "1x"),
    # if / else if / else and Go truthiness
    ("{{ if .S }}yes{{ end }}", "yes"),
    ("{{ if .E }}yes{{ else }}no{{ end }}", "no"),
    ("{{ if .Z }}a{{ else if .N }}b{{ else }}c{{ end }}", "b"),
    ("{{ if .Z }}a{{ else if .E }}b{{ else if .L }}c{{ end }}", "c"),
    ("{{ if .EL }}a{{ end }}{{ if .EM }}b{{ end }}{{ if .M }}c{{ end }}{{ if .F }}d{{ end }}", "cd"),
    ("{{ if .B }}a{{ else }}b{{ end }}{{ if .T }}c{{ end }}", "bc"),
    # range
    ("{{ range .L }}[{{ . }}]{{ end }}", "[1][2][3]"),
    ("{{ range $i, $v := .L }}{{ $i }}={{ $v }},{{ end }}", "0=1,1=2,2=3,"),
    ("{{ range $v := .L }}{{ $v }}{{ end }}", "123"),
    ("{{ range .EL }}x{{ else }}empty{{ end }}", "empty"),
    ("{{ range $k, $v := .M }}{{ $k }}:{{ $v }};{{ end }}", "a:1;b:x;"),
    ("{{ range .Msgs }}{{ .Role }}={{ .Content }} {{ end }}", "user=a assistant=b "),
    ("{{ range $i, $m := .Msgs }}{{ if $i }}, {{ end }}{{ $m.Role }}{{ end }}", "user, assistant"),
    ("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ . }}{{ end }}", "13"),
    ("{{ range .L }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}", "1"),
    # with
    ("{{ with .S }}{{ . }}{{ end }}", "str"),
    ("{{ with .E }}x{{ else }}none{{ end }}", "none"),
    ("{{ with $x := .M }}{{ $x.b }}{{ .a }}{{ end }}", "x1"),
    # comparison and logic
    ('{{ eq .S "str" }} {{ eq .S "a" "str" }} {{ eq .N 1 2 3 }} {{ ne .N 3 }}', "true true true false"),
    ('{{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1 2 }}', "true true true false"),
    (
        '{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" 3 }} {{ or 0 "" }} {{ not .E }} {{ not .S }}',
        "0 2 3  true false",
    ),
    ("{{ if and .S (eq .N 3) }}ok{{ end }}{{ if or .E (not .Z) }}ok{{ end }}", "okok"),
    # builtins
    ("{{ len .S }} {{ len .L }} {{ len .M }} {{ len .U }}", "3 3 2 9"),
    ('{{ index .L 1 }} {{ index .M "b" }} {{ index .Msgs 1 "Role" }} {{ index .S 0 }}', "2 x assistant 115"),
    ("{{ len (slice .L 1) }}{{ len (slice .L 1 2) }}{{ slice .S 1 3 }}", "21tr"),
    ('{{ print "a" "b" 1 2 "c" true false }}', "ab1 2ctrue false"),
    ('{{ println "a" 1 }}', "a 1\n"),
    (
        '{{ printf "%d|%5d|%-5d|%05d|%x|%X|%q|%v|%t|%s|%c" 42 42 42 42 255 255 "hi\\n" 1.5 true "s" 65 }}',
        '42|   42|42   |00042|ff|FF|"hi\\n"|1.5|true|s|A',
    ),
    ('{{ printf "%.2f %e %g %.3s %q" 3.14159 1000.0 0.5 "abcdef" 97 }}', "3.14 1.000000e+03 0.5 abc 'a'"),
    (
        '{{ printf "%s %d" "a" }}|{{ printf "%d" "a" }}|{{ printf "100%%" }}',
        "a %!d(MISSING)|%!d(string=a)|100%",
    ),
    ('{{ html "<a href=\'x\'>&\\"</a>" }}', "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"),
    ('{{ js "a\'b\\"c<d>&=\\n\\\\é" }}', "a\\'b\\\"c\\u003Cd\\u003E\\u0026\\u003D\\u000A\\\\é"),
    ('{{ urlquery "a b&c=d/é" }}', "a+b%26c%3Dd%2F%C3%A9"),
    (
        "{{ json .M }} {{ json .L }} {{ json .S }} {{ json .N }} {{ json .T }} {{ json .EL }}",
        '{"a":1,"b":"x"} [1,2,3] "str" 3 true []',
    ),
    ("{{ json .U }} {{ json .F }}", '"héllo\\u003c\\u0026\\u003e" 1.5'),
    ("{{ .F }} {{ 1000000.0 }} {{ 0.00001 }} {{ 123456.0 }} {{ 0.0001 }}", "1.5 1e+06 1e-05 123456 0.0001"),
    ("{{ json 1000000.0 }} {{ json 0.00001 }} {{ json 0.0000001 }}", "1000000 0.00001 1e-7"),
]


@pytest.mark.parametrize(("source", "expected"), GO_CASES)
def test_matches_go(source: str, expected: str) -> None:
    assert render(source, DATA) == expected


def test_current_date() -> None:
    before = dt.date.today().isoformat()
    out = render("{{ currentDate }}", {})
    assert out in {before, dt.date.today().isoformat()}  # tolerate the test straddling midnight
    assert render('{{ currentDate "ignored" | len }}', {}) == "10"


# --- deliberate differences from Go, documented in the module -------------------------------------------


def test_missing_keys_render_empty_and_are_falsy() -> None:
    # Go prints "<no value>" for an absent map key; Ollama's struct fields are never absent, so we print "".
    assert render("[{{ .Nope }}][{{ .Nope.Deeper }}][{{ if .Nope }}x{{ else }}y{{ end }}]", {}) == "[][][y]"
    assert render("{{ len .Nope }}{{ range .Nope }}x{{ else }}none{{ end }}", {}) == "0none"
    assert render('{{ eq .Nope "" }} {{ eq .Nope nil }}', {}) == "false true"


def test_dicts_and_lists_print_as_compact_json() -> None:
    # Mirrors the String() methods on Ollama's tool types; insertion order is kept.
    data = {"A": {"z": 1, "a": [1, "two", None]}, "L": [{"k": "v"}]}
    assert render("{{ .A }} {{ .L }}", data) == '{"z":1,"a":[1,"two",null]} [{"k":"v"}]'


def test_field_falls_back_to_json_key_spelling() -> None:
    data = {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]}
    out = render(
        "{{ range .Messages }}{{ .Role }}:{{ range .ToolCalls }}{{ .Function.Name }}{{ end }}{{ end }}", data
    )
    assert out == "assistant:f"
    assert render("{{ .ToolCallID }}", {"tool_call_id": "c1", "ToolCallID": "exact"}) == "exact"


def test_int_and_float_compare_numerically() -> None:
    assert render("{{ eq 1 1.0 }} {{ lt 1 1.5 }}", {}) == "true true"


def test_go_122_and_123_additions() -> None:
    assert render("{{ range 3 }}{{ . }}{{ end }}", {}) == "012"
    assert render("{{ with .A }}a{{ else with .B }}{{ . }}{{ end }}", {"A": "", "B": "b"}) == "b"


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("text\n{{ if .S }}\nbody", "line 2, col 1: unclosed {{if}}"),
        ("{{ range .L }}{{ else }}", "unclosed {{range}}"),
        ("a\nb\n  {{ foo .S }}", 'line 3, col 6: function "foo" not defined'),
        ("line one\n{{ .S ", "line 2, col 1: unclosed action"),
        ("{{ $u }}", 'undefined variable "$u"'),
        ("{{ $u = 1 }}", 'undefined variable "$u"'),
        ("{{ if true }}{{ $z := 1 }}{{ end }}{{ $z }}", 'undefined variable "$z"'),
        ("{{ .S }}{{ end }}", "unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ if .S }}{{ else }}{{ else }}{{ end }}", "found a second {{else}}"),
        ("{{ }}", "missing value for command"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ (1 }}", "unclosed left paren"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{/* unclosed }}", "unclosed comment"),
        ("{{/* x */ }}", "comment ends before closing delimiter"),
        ("{{ .S@ }}", "bad character"),
        ("{{ 1a }}", "bad number syntax"),
        ("{{ range $i, $j, $k := .L }}{{ end }}", "too many declarations in range"),
        ('{{ eq .S"x" }}', "unexpected"),
        ("{{ .S | 3 }}", "non executable command in pipeline stage 2"),
        ('{{ template "x" }}', "{{template}} is not supported"),
    ],
)
def test_parse_errors(source: str, fragment: str) -> None:
    with pytest.raises(GoTemplateError) as info:
        parse(source)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("{{ eq .S 1 }}", "line 1, col 4: error calling eq: incompatible types for comparison"),
        ("{{ lt true false }}", "error calling lt: invalid type for comparison"),
        ("{{ eq .L .L }}", "error calling eq: invalid type for comparison"),
        ("{{ len .N }}", "error calling len: len of type int"),
        ("\n{{ index .L 5 }}", "line 2, col 4: error calling index: index out of range: 5"),
        ("{{ slice .L 2 1 }}", "invalid slice index: 2 > 1"),
        ("{{ .S.Foo }}", "can't evaluate field Foo in type string"),
        ("{{ .S 1 }}", "S is not a method but has arguments"),
        ("{{ 1 2 }}", "can't give argument to non-function 1"),
        ("{{ nil }}", "nil is not a command"),
        ("{{ not 1 2 }}", "wrong number of args for not: want 1 got 2"),
        ("{{ range .S }}{{ end }}", "range can't iterate over str"),
    ],
)
def test_execution_errors(source: str, fragment: str) -> None:
    tmpl = parse(source)
    with pytest.raises(GoTemplateError) as info:
        tmpl.render(DATA)
    assert fragment in str(info.value)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not defined"):
        render("{{ nope }}", {})
