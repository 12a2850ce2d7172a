"""The ``herd`` CLI against the real stack: every command as a subprocess, ``run`` through a real pty."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from herd.store.modelfile import ERR_INVALID_COMMAND
from tests.e2e.conftest import GEMMA, start_stack
from tests.support.ports import free_port
from tests.support.registry import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MEDIA_MODEL,
    OciRegistry,
    running_registry,
)
from tests.support.tiny_gguf import write_tiny_llama

HERD = Path(sys.executable).parent / "herd"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
SHORT = "cli-short:latest"
SHORT_OPTIONS = {"num_predict": 8, "temperature": 0, "seed": 7}


def herd(
    base_url: str, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the real console script with OLLAMA_HOST pointing at ``base_url``; stdin is a pipe, not a tty."""
    environ = {k: v for k, v in os.environ.items() if k not in ("HERD_API_KEY", "OLLAMA_HOST")}
    environ.update({"OLLAMA_HOST": base_url, "PYTHONIOENCODING": "utf-8"}, **(env or {}))
    # Bytes, not text: the tiny models emit any byte token, "\r" included, which text mode would rewrite.
    return subprocess.run(
        [str(HERD), *args], input=stdin, capture_output=True, env=environ, cwd=cwd, timeout=180, check=False
    )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


@pytest.fixture(scope="module")
def short_model(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model made by ``herd create`` from tiny-a with pinned sampling and a short answer."""
    work = tmp_path_factory.mktemp("modelfile")
    params = "".join(f"PARAMETER {k} {v}\n" for k, v in SHORT_OPTIONS.items())
    (work / "Modelfile").write_text(
        f'# made by the CLI tests\nFROM tiny-a\n{params}SYSTEM """Be brief.\nVery brief.\nReally."""\nLICENSE MIT-0\n'
    )
    result = herd(base_url, "create", SHORT, cwd=work)  # -f defaults to ./Modelfile, as in Ollama
    assert result.returncode == 0, err(result)
    # stderr is a pipe here: plain status lines, not redrawn bars.
    lines = err(result).splitlines()
    assert lines[0] == "gathering model components" and lines[-1] == "success", lines
    assert "\x1b[" not in err(result)
    return SHORT


def api_generate(client: httpx.Client, model: str, prompt: str) -> dict[str, Any]:
    response = client.post("/api/generate", json={"model": model, "prompt": prompt, "stream": False})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- list, show, ps, stop ----------------------------------------------------------------------------


def test_version(base_url: str) -> None:
    result = herd(base_url, "--version")
    assert result.returncode == 0
    assert re.fullmatch(r"herd version is \d+\.\d+\.\d+\n", out(result))


def test_list_and_ls_print_ollamas_table(base_url: str, client: httpx.Client, short_model: str) -> None:
    result = herd(base_url, "list")
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert re.fullmatch(r"NAME +ID +SIZE +MODIFIED", lines[0])
    tags = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(tags)
    row = rows[short_model].split(None, 1)[1]
    digest = tags[short_model]["digest"].removeprefix("sha256:")
    # "from now" too: a clock step (NTP) between the create and this read puts the model a moment ahead.
    assert re.fullmatch(
        rf"{digest[:12]} +\d+(\.\d)? KB +(Less than a second|\d+ seconds|About a minute) (ago|from now)", row
    ), lines
    assert re.search(r" 253 MB ", rows[GEMMA])
    # Columns line up: every row's ID starts where the header's does.
    assert {
        line.index(tags[line.split()[0]]["digest"].removeprefix("sha256:")[:12]) for line in lines[1:]
    } == {lines[0].index("ID")}
    assert out(herd(base_url, "ls")).splitlines()[0] == lines[0]


def test_show_prints_ollamas_sections(base_url: str, short_model: str) -> None:
    result = herd(base_url, "show", short_model)
    assert result.returncode == 0, err(result)
    text = out(result)
    assert text.startswith("  Model\n    architecture        llama\n    parameters          ")
    assert "\n  Capabilities\n    completion\n" in text
    assert re.search(r"\n  Parameters\n(    \w+ +\S+\n){3}\n", text)
    assert re.search(r"    num_predict +8\n", text)
    # The system message shows its first two lines and then "...".
    assert "\n  System\n    Be brief.\n    Very brief.\n    ...\n" in text
    assert text.endswith("\n  License\n    MIT-0\n\n")


def test_show_flags_print_one_field(base_url: str, client: httpx.Client, short_model: str) -> None:
    shown = client.post("/api/show", json={"model": short_model}).json()
    for flag in ("modelfile", "parameters", "template", "system", "license"):
        result = herd(base_url, "show", short_model, f"--{flag}")
        assert result.returncode == 0, err(result)
        assert out(result) == shown[flag] + "\n", flag
    assert "PARAMETER num_predict 8" in shown["modelfile"]
    both = herd(base_url, "show", short_model, "--system", "--license")
    assert both.returncode == 1
    assert err(both) == (
        "Error: only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified\n"
    )


def test_show_of_a_missing_model_is_ollamas_error(base_url: str) -> None:
    result = herd(base_url, "show", "no-such-model")
    assert (result.returncode, err(result)) == (1, "Error: model 'no-such-model' not found\n")


def test_ps_shows_a_loaded_model_and_stop_unloads_it(
    base_url: str, client: httpx.Client, short_model: str
) -> None:
    api_generate(client, short_model, "load me")
    result = herd(base_url, "ps")
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert re.fullmatch(r"NAME +ID +SIZE +PROCESSOR +CONTEXT +UNTIL", lines[0])
    row = next(line for line in lines if line.startswith(short_model + " "))
    loaded = next(m for m in client.get("/api/ps").json()["models"] if m["name"] == short_model)
    assert re.fullmatch(
        rf"{short_model} +{loaded['digest'].removeprefix('sha256:')[:12]} +\d+(\.\d)? [KM]B +100% CPU +"
        rf"{loaded['context_length']} +(4|5) minutes from now",
        row,
    )

    stopped = herd(base_url, "stop", short_model)
    assert (stopped.returncode, out(stopped), err(stopped)) == (0, "", "")
    deadline = time.monotonic() + 15
    while short_model in out(herd(base_url, "ps")):
        assert time.monotonic() < deadline, "the model stayed loaded after herd stop"
        time.sleep(0.3)


def test_stop_of_a_missing_model(base_url: str) -> None:
    result = herd(base_url, "stop", "no-such-model")
    assert (result.returncode, err(result)) == (1, 'Error: couldn\'t find model "no-such-model" to stop\n')


# --- run, one-shot ------------------------------------------------------------------------------------


def test_run_with_a_prompt_prints_the_answer(base_url: str, client: httpx.Client, short_model: str) -> None:
    expected = api_generate(client, short_model, "Why is the sky blue?")["response"]
    result = herd(base_url, "run", short_model, "Why", "is", "the", "sky", "blue?")
    assert result.returncode == 0, err(result)
    assert out(result) == expected + "\n"


def test_run_reads_a_piped_prompt(base_url: str, client: httpx.Client, short_model: str) -> None:
    expected = api_generate(client, short_model, "piped words\n")["response"]
    result = herd(base_url, "run", short_model, stdin=b"piped words\n")
    assert result.returncode == 0, err(result)
    assert out(result) == expected + "\n"


def test_run_verbose_prints_stats(base_url: str, short_model: str) -> None:
    result = herd(base_url, "run", "--verbose", short_model, "count")
    assert result.returncode == 0, err(result)
    stats = err(result)
    assert re.search(r"^eval count: +8 token\(s\)$", stats, re.M), stats
    assert re.search(r"^eval rate: +\d+\.\d\d tokens/s$", stats, re.M), stats


def test_run_of_a_missing_model_tries_to_pull_it(base_url: str) -> None:
    result = herd(base_url, "run", "no-such-model:v9", "hi")
    assert result.returncode == 1
    # The pull was tried: its failure names the registry host, whatever the network here allows.
    lines = err(result).splitlines()
    assert lines[0] == "pulling manifest", lines
    assert lines[-1].startswith("Error: registry.ollama.ai"), lines


# --- create, cp, rm -----------------------------------------------------------------------------------


def test_create_from_a_local_gguf_uploads_it_as_a_blob(
    base_url: str, client: httpx.Client, tmp_path: Path
) -> None:
    gguf = write_tiny_llama(tmp_path / "weights" / "w.gguf", seed=11)
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert client.head(f"/api/blobs/{digest}").status_code == 404
    (tmp_path / "Local.modelfile").write_text("FROM ./weights/w.gguf\nPARAMETER num_predict 5\n")
    result = herd(base_url, "create", "cli-local", "-f", str(tmp_path / "Local.modelfile"))
    try:
        assert result.returncode == 0, err(result)
        assert f"copying file {digest}: 100% ▕" in err(result)
        assert err(result).splitlines()[-1] == "success"
        assert client.head(f"/api/blobs/{digest}").status_code == 200
        shown = client.post("/api/show", json={"model": "cli-local"}).json()
        assert shown["parameters"].split() == ["num_predict", "5"]
        assert digest.removeprefix("sha256:") in shown["modelfile"]
        answer = herd(base_url, "run", "cli-local", "hi", "--verbose")
        assert answer.returncode == 0 and re.search(r"^eval count: +5 token\(s\)$", err(answer), re.M)
        # A second create finds the blob there and uploads nothing.
        again = herd(base_url, "create", "cli-local", "-f", str(tmp_path / "Local.modelfile"))
        assert again.returncode == 0 and "copying file" not in err(again)
    finally:
        herd(base_url, "rm", "cli-local")


def test_create_refuses_a_bad_modelfile_with_its_line(base_url: str, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM tiny-a\nINSTRUCT be nice\n")
    result = herd(base_url, "create", "cli-bad", "-f", str(tmp_path / "Modelfile"))
    assert (result.returncode, err(result)) == (1, f"Error: (line 2): {ERR_INVALID_COMMAND}\n")
    missing = herd(base_url, "create", "cli-bad", cwd=tmp_path / "..")
    assert missing.returncode == 1
    assert err(missing) == "Error: open Modelfile: no such file or directory\n"
    (tmp_path / "Modelfile").write_text("FROM not-a-model-here\n")
    unknown = herd(base_url, "create", "cli-bad", "-f", str(tmp_path / "Modelfile"))
    # A FROM that names no local file nor stored model is pulled by the server, which fails here.
    assert unknown.returncode == 1 and err(unknown).splitlines()[-1].startswith("Error: "), err(unknown)
    assert "cli-bad" not in out(herd(base_url, "list"))


def test_cp_and_rm(base_url: str, short_model: str) -> None:
    copied = herd(base_url, "cp", short_model, "cli-copy")
    assert (copied.returncode, out(copied)) == (0, f"copied '{short_model}' to 'cli-copy'\n")
    assert "cli-copy:latest " in out(herd(base_url, "list"))
    removed = herd(base_url, "rm", "cli-copy")
    assert (removed.returncode, out(removed)) == (0, "deleted 'cli-copy'\n")
    assert "cli-copy" not in out(herd(base_url, "list"))
    again = herd(base_url, "rm", "cli-copy")
    assert (again.returncode, err(again)) == (1, "Error: model 'cli-copy' not found\n")


# --- pull and push through a real registry (plain HTTP on loopback, hence --insecure) ------------------


@pytest.fixture
def registry() -> Iterator[OciRegistry]:
    with running_registry("127.0.0.1", None) as reg:
        yield reg


def test_pull_then_push_with_progress(base_url: str, registry: OciRegistry, tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "remote.gguf", seed=21)
    raw = registry.add_model("library/cli-remote", "v1", gguf)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    name, pushed = f"{registry.host}/library/cli-remote:v1", f"{registry.host}/library/cli-pushed:v2"
    try:
        pulled = herd(base_url, "pull", "--insecure", name)
        assert pulled.returncode == 0, err(pulled)
        lines = err(pulled).splitlines()
        assert lines[0] == "pulling manifest" and lines[-1] == "success", lines
        assert f"pulling {digest[:12]}" in lines
        assert any(re.fullmatch(rf"pulling {digest[:12]}: 100% ▕█+▏ \d+ KB", line) for line in lines), lines
        assert "verifying sha256 digest" in lines and "writing manifest" in lines
        assert name in out(herd(base_url, "list"))

        assert herd(base_url, "cp", name, pushed).returncode == 0
        pushing = herd(base_url, "push", "--insecure", pushed)
        assert pushing.returncode == 0, err(pushing)
        assert err(pushing).splitlines()[-1] == "success"
        assert registry.manifests[("library/cli-pushed", "v2")] == raw

        absent = herd(base_url, "pull", "--insecure", f"{registry.host}/library/cli-absent:v1")
        assert absent.returncode == 1 and err(absent).splitlines()[-1].startswith("Error: ")
    finally:
        herd(base_url, "rm", name, pushed)


def _serve_with_params(
    registry: OciRegistry, repo: str, tag: str, gguf: Path, params: dict[str, Any]
) -> None:
    """Serve a model whose manifest also carries a params layer (a tiny model never stops by itself)."""
    layers = [(MEDIA_MODEL, gguf.read_bytes()), (MEDIA_PARAMS, json.dumps(params).encode())]
    entries = [{"mediaType": m, "digest": registry.add_blob(b), "size": len(b)} for m, b in layers]
    config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": registry.add_blob(config), "size": len(config)},
        "layers": entries,
    }
    with registry.lock:
        registry.manifests[(repo, tag)] = json.dumps(manifest).encode()


def test_run_pulls_a_missing_model_then_answers(base_url: str, registry: OciRegistry, tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "run.gguf", seed=22)
    _serve_with_params(registry, "library/cli-run", "v1", gguf, {"num_predict": 6})
    name = f"{registry.host}/library/cli-run:v1"
    try:
        result = herd(base_url, "run", "--insecure", "--verbose", name, "hello")
        assert result.returncode == 0, err(result)
        assert err(result).startswith("pulling manifest\n") and "\nsuccess\n" in err(result)
        assert re.search(r"^eval count: +6 token\(s\)$", err(result), re.M)
        assert out(result).endswith("\n") and len(out(result)) > 1
    finally:
        herd(base_url, "rm", name)


def test_pull_on_a_terminal_draws_bars_in_place(base_url: str, registry: OciRegistry, tmp_path: Path) -> None:
    registry.add_model("library/cli-tty", "v1", write_tiny_llama(tmp_path / "tty.gguf", seed=23))
    name = f"{registry.host}/library/cli-tty:v1"
    env = {k: v for k, v in os.environ.items() if k != "HERD_API_KEY"}
    env.update(OLLAMA_HOST=base_url, PYTHONIOENCODING="utf-8")
    try:
        child = pexpect.spawn(str(HERD), ["pull", "--insecure", name], env=env, encoding="utf-8", timeout=60)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        text = child.before or ""
        # Each redraw moves the cursor back up over the lines it drew and clears them.
        assert "\x1b[2Kpulling manifest" in text and re.search(r"\x1b\[\d+F", text)
        assert re.search(r"\x1b\[2Kpulling [0-9a-f]{12}: 100% ▕█+▏", text)
        assert text.rstrip().endswith("success")
    finally:
        herd(base_url, "rm", name)


# --- where the CLI connects ---------------------------------------------------------------------------


def test_nothing_listening_names_the_host(base_url: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = herd(url, "list")
    assert (result.returncode, err(result)) == (
        1,
        f"Error: could not connect to herd at {url}: is it running?\n",
    )


def test_ollama_host_without_scheme(base_url: str) -> None:
    assert herd(base_url.removeprefix("http://"), "list").returncode == 0


@pytest.fixture(scope="module")
def keyed_url(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = tmp_path_factory.mktemp("cli-keys") / "keys.txt"
    keys.write_text("sk-cli-key\n")
    with start_stack(
        models_dir, tmp_path_factory.mktemp("run-cli-keys"), env={"HERD_API_KEYS_FILE": str(keys)}
    ) as s:
        yield s.settings.base_url


def test_herd_api_key_is_sent_as_a_bearer_token(keyed_url: str) -> None:
    refused = herd(keyed_url, "list")
    assert refused.returncode == 1 and err(refused).startswith("Error: ") and "key" in err(refused).lower()
    wrong = herd(keyed_url, "list", env={"HERD_API_KEY": "sk-wrong"})
    assert wrong.returncode == 1
    allowed = herd(keyed_url, "list", env={"HERD_API_KEY": "sk-cli-key"})
    assert allowed.returncode == 0, err(allowed)
    assert "tiny-a:latest" in out(allowed)


# --- run, interactive, through a pty ------------------------------------------------------------------


def test_interactive_run(base_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HERD_API_KEY"}
    env.update(OLLAMA_HOST=base_url, TERM="dumb", PYTHONIOENCODING="utf-8")
    child = pexpect.spawn(str(HERD), ["run", GEMMA, "--verbose"], env=env, encoding="utf-8", timeout=60)
    try:
        child.expect_exact(">>> ")
        child.sendline("/set parameter num_predict 4")
        child.expect_exact("Set parameter 'num_predict' to '4'")
        child.expect_exact(">>> ")
        child.sendline("/set parameter temperature warm")
        child.expect_exact("Couldn't set parameter: 'invalid float value [warm]'")
        child.expect_exact(">>> ")

        child.sendline("Say hello.")
        # The answer streams, then --verbose's stats show the parameter was applied.
        child.expect(r"eval count: +(\d+) token\(s\)\r\n")
        child.expect(r"eval count: +(\d+) token\(s\)\r\n")
        assert child.match.group(1) == "4"
        child.expect_exact(">>> ")

        child.sendline('"""Line one')
        child.expect_exact("... ")
        child.sendline('line two"""')
        child.expect(r"eval count: +4 token\(s\)")
        child.expect_exact(">>> ")

        # Ctrl-C mid-generation stops the stream and gives the prompt back, with no stats for it.
        child.sendline("/set parameter num_predict 2000")
        child.expect_exact(">>> ")
        child.sendline("Write a very long story about a dragon and a knight.")
        child.expect_exact("knight.\r\n")
        child.expect(r"\w+ \w+")  # the answer has begun
        child.sendintr()
        child.expect_exact(">>> ", timeout=10)
        assert "eval count" not in (child.before or "")

        child.sendline("/show parameters")
        child.expect(r"User defined parameters:\r\nnum_predict +2000\r\n")
        child.expect_exact(">>> ")
        child.sendline('/set system """You are')
        child.expect_exact("... ")
        child.sendline('a dragon."""')
        child.expect_exact("Set system message.")
        child.expect_exact(">>> ")
        child.sendline("/show system")
        child.expect_exact("You are\r\na dragon.\r\n")
        child.expect_exact(">>> ")
        child.sendline("/clear")
        child.expect_exact("Cleared session context")
        child.expect_exact(">>> ")
        child.sendline("/nope")
        child.expect_exact("Unknown command '/nope'. Type /? for help")
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_interactive_run_leaves_on_ctrl_d(base_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HERD_API_KEY"}
    env.update(OLLAMA_HOST=base_url, TERM="dumb")
    child = pexpect.spawn(str(HERD), ["run", "tiny-chat"], env=env, encoding="utf-8", timeout=60)
    try:
        child.expect_exact(">>> ")
        child.sendintr()  # Ctrl-C at the prompt only explains how to leave
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        child.expect_exact(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
