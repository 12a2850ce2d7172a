"""The Modelfile parser and the /api/create body it builds, case by case against Ollama's behaviour."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from herd.store.modelfile import (
    ERR_INVALID_COMMAND,
    ERR_INVALID_ROLE,
    Command,
    ModelfileError,
    create_request,
    parameter_value,
    parse,
)


def body_of(text: str, tmp_path: Path | None = None, model: str = "m") -> dict[str, object]:
    return create_request(parse(text), model, tmp_path or Path("/nonexistent-dir")).body


def test_every_command_lands_in_the_create_body() -> None:
    text = '''# a comment line
FROM llama3.2
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop "<|end|>"
PARAMETER stop <eot>
TEMPLATE """{{ .System }}
{{ .Prompt }}"""
SYSTEM You are a "pirate".
MESSAGE user hi there
MESSAGE assistant ahoy: matey
LICENSE """MIT
text"""
LICENSE Apache-2.0
'''
    assert body_of(text) == {
        "model": "m",
        "from": "llama3.2",
        "parameters": {"temperature": 0.7, "num_ctx": 4096, "stop": ["<|end|>", "<eot>"]},
        "template": "{{ .System }}\n{{ .Prompt }}",
        "system": 'You are a "pirate".',
        "messages": [
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "ahoy: matey"},
        ],
        "license": ["MIT\ntext", "Apache-2.0"],
    }


def test_commands_are_case_insensitive_and_blank_lines_and_indentation_are_skipped() -> None:
    text = "\n\n  from base\n\tParameter top_k 40\nsystem   padded  \n"
    assert parse(text).commands == (
        Command("model", "base"),
        Command("top_k", "40"),
        Command("system", "padded"),
    )


def test_a_hash_starts_a_comment_only_at_the_start_of_a_line() -> None:
    text = "# FROM ignored\n   # also ignored\nFROM base # kept\nSYSTEM a # b\n"
    assert parse(text).commands == (Command("model", "base # kept"), Command("system", "a # b"))


def test_quoted_values_keep_inner_quotes_spaces_and_newlines() -> None:
    text = 'FROM x\nSYSTEM """ say "hi" \n  twice """\nTEMPLATE "one\ntwo"\nPARAMETER stop "a b"\n'
    assert parse(text).commands[1:] == (
        Command("system", ' say "hi" \n  twice '),
        Command("template", "one\ntwo"),
        Command("stop", "a b"),
    )


def test_crlf_line_endings_bom_and_utf16() -> None:
    assert parse("FROM x\r\nSYSTEM hi there\r\n").commands == (
        Command("model", "x"),
        Command("system", "hi there"),
    )
    assert parse(b"\xef\xbb\xbfFROM bom\n").commands == (Command("model", "bom"),)
    assert parse("FROM wide\nSYSTEM s\n".encode("utf-16")).commands == (
        Command("model", "wide"),
        Command("system", "s"),
    )


def test_a_value_without_a_final_newline_is_kept() -> None:
    assert parse("FROM x\nSYSTEM last").commands[-1] == Command("system", "last")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM x\nFOO bar\n", f"(line 2): {ERR_INVALID_COMMAND}"),
        ("FROM x\n\n\nINSTRUCTION y\n", f"(line 4): {ERR_INVALID_COMMAND}"),
        # A command word cut by anything but a space (here its newline) is no command.
        ("FROM\n", f"(line 2): {ERR_INVALID_COMMAND}"),
        ("FROM x\nSYS-TEM y\n", f"(line 2): {ERR_INVALID_COMMAND}"),
        ("FROM x\nMESSAGE bot hi\n", f"(line 2): {ERR_INVALID_ROLE}"),
        ("FROM x\nMESSAGE User hi\n", f"(line 2): {ERR_INVALID_ROLE}"),
        ("PARAMETER temperature 1\nSYSTEM s\n", "no FROM line"),
        ("# only a comment\n", "no FROM line"),
        ("", "no FROM line"),
        ('FROM x\nSYSTEM """never closed\nmore\n', "unexpected EOF"),
        ('FROM x\nSYSTEM "never closed\n', "unexpected EOF"),
        ("FROM x\nSYSTEM", "unexpected EOF"),
        ("FROM x\nPARAMETER te-mp 1\n", "unexpected EOF: te"),
        ("FROM x\nMESSAGE system\n", "unexpected EOF: system"),
    ],
)
def test_parse_errors_are_ollamas(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("num_ctx", "2048", 2048),
        ("seed", "-1", -1),
        ("num_predict", "+12", 12),
        ("temperature", "0.25", 0.25),
        ("top_p", "1", 1.0),
        ("use_mmap", "true", True),
        ("use_mmap", "F", False),
        ("stop", "<|im_end|>", ["<|im_end|>"]),
    ],
)
def test_parameters_are_typed_like_ollamas_options(name: str, raw: str, value: object) -> None:
    got = parameter_value(name, raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("num_ctx", "big", "invalid int value [big]"),
        ("num_ctx", "1.5", "invalid int value [1.5]"),
        ("num_ctx", "1_000", "invalid int value [1_000]"),
        ("temperature", "warm", "invalid float value [warm]"),
        ("use_mmap", "yes", "invalid bool value [yes]"),
        ("not_a_param", "1", "unknown parameter 'not_a_param'"),
    ],
)
def test_bad_parameters_are_refused_with_ollamas_message(name: str, raw: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        body_of(f"FROM x\nPARAMETER {name} {raw}\n")
    assert str(info.value) == message
    with pytest.raises(ModelfileError):
        parameter_value(name, raw)


def test_deprecated_parameters_warn_and_are_dropped() -> None:
    plan = create_request(parse("FROM x\nPARAMETER mirostat 2\nPARAMETER top_k 5\n"), "m", Path("."))
    assert plan.body["parameters"] == {"top_k": 5}
    assert plan.warnings == ["warning: parameter mirostat is deprecated"]


def test_from_a_local_gguf_becomes_a_file_to_upload(tmp_path: Path) -> None:
    data = b"GGUF fake weights"
    (tmp_path / "weights").mkdir()
    gguf = tmp_path / "weights" / "model.gguf"
    gguf.write_bytes(data)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    # A relative path resolves against the Modelfile's directory, not the working directory.
    plan = create_request(parse("FROM ./weights/model.gguf\n"), "m", tmp_path)
    assert plan.body == {"model": "m", "files": {"model.gguf": digest}}
    assert plan.uploads == {gguf: digest}
    # So does an absolute path, and a directory of GGUFs.
    assert create_request(parse(f"FROM {gguf}\n"), "m", Path("/")).body["files"] == {"model.gguf": digest}
    assert create_request(parse("FROM weights\n"), "m", tmp_path).body["files"] == {"model.gguf": digest}


def test_from_a_name_that_is_no_local_file_names_a_model(tmp_path: Path) -> None:
    assert body_of("FROM gemma3:270m\n", tmp_path) == {"model": "m", "from": "gemma3:270m"}


def test_an_adapter_must_be_a_local_file(tmp_path: Path) -> None:
    lora = tmp_path / "lora.gguf"
    lora.write_bytes(b"adapter")
    digest = f"sha256:{hashlib.sha256(b'adapter').hexdigest()}"
    plan = create_request(parse("FROM base\nADAPTER lora.gguf\n"), "m", tmp_path)
    assert plan.body["adapters"] == {"lora.gguf": digest}
    assert plan.uploads == {lora: digest}
    with pytest.raises(ModelfileError, match=r"missing\.gguf"):
        create_request(parse("FROM base\nADAPTER missing.gguf\n"), "m", tmp_path)
