"""The interactive run's slash commands, on a Session that never needs the server for them."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from cli.api import HerdClient
from cli.repl import SET_HELP, Session


@pytest.fixture
def session() -> Iterator[Session]:
    # Nothing listens on port 9: any request these commands made by mistake would fail loudly.
    with HerdClient("http://127.0.0.1:9") as client:
        info = {"parameters": 'stop                           "<|end|>"', "template": "{{ .Prompt }}"}
        yield Session(client, "m", info, out=io.StringIO())


def said(session: Session) -> str:
    assert isinstance(session.out, io.StringIO)
    text = session.out.getvalue()
    session.out.seek(0)
    session.out.truncate()
    return text


def test_set_parameter_types_the_value(session: Session) -> None:
    session._command("/set parameter num_predict 12")
    assert said(session) == "Set parameter 'num_predict' to '12'\n"
    session._command("/set parameter temperature 0.5")
    session._command("/set parameter stop <a> <b>")
    assert session.options == {"num_predict": 12, "temperature": 0.5, "stop": ["<a>", "<b>"]}
    said(session)
    session._command("/set parameter num_predict lots")
    assert said(session) == "Couldn't set parameter: 'invalid int value [lots]'\n\n"
    session._command("/set parameter bogus 1")
    assert said(session) == "Couldn't set parameter: \"unknown parameter 'bogus'\"\n\n"
    assert session.options["num_predict"] == 12


def test_system_message_replaces_the_last_one_and_survives_clear(session: Session) -> None:
    session._command("/set system be brief")
    session._command("/set system be very brief")
    assert session.messages == [{"role": "system", "content": "be very brief"}]
    session.messages.append({"role": "user", "content": "hi"})
    session._command("/clear")
    assert session.messages == [{"role": "system", "content": "be very brief"}]
    assert said(session).endswith("Cleared session context\n")


def test_show_commands(session: Session) -> None:
    session._command("/show parameters")
    assert said(session) == 'Model defined parameters:\nstop                           "<|end|>"\n'
    session._command("/set parameter seed 3")
    said(session)
    session._command("/show parameters")
    assert said(session).endswith("User defined parameters:\nseed                           3\n")
    session._command("/show system")
    assert said(session) == "No system message was specified for this model.\n"
    session._command("/show template")
    assert said(session) == "{{ .Prompt }}\n"
    session._command("/show license")
    assert said(session) == "No license was specified for this model.\n"


def test_unknown_and_exit_commands(session: Session) -> None:
    assert session._command("/frobnicate now") is None
    assert said(session) == "Unknown command '/frobnicate'. Type /? for help\n"
    session._command("/set")
    assert said(session) == SET_HELP
    assert session._command("/bye") == "exit"
