"""``herd render``: the real console entry point as a subprocess, on the e2e store and on template files.

The MODEL form reads the store directly (no stack); the check that it prints what the worker evaluates
compares its token count with the stack's `prompt_eval_count` for the same request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from workers.llama import LlamaModel

ROOT = Path(__file__).resolve().parents[2]
CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def render(
    *args: str, body: dict[str, Any], models_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`herd render ...` with this checkout's code, the body on stdin, no stack in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "HERD_", "CUDA_"))}
    if models_dir is not None:
        env["OLLAMA_MODELS"] = str(models_dir)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "render", *args],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_template_file_renders_without_a_stack(tmp_path: Path) -> None:
    template = tmp_path / "chatml.tmpl"
    template.write_text(CHATML_GO)
    body = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello"}]}
    result = render("--template", str(template), body=body, models_dir=tmp_path / "no-store")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_file_errors_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tmpl"
    broken.write_text("{{ range .Messages }}")  # no {{ end }}
    result = render("--template", str(broken), body={"messages": [{"role": "user", "content": "x"}]})
    assert result.returncode == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    bad_body = render("--template", str(broken), body={"messages": [{"role": 5}]})
    assert bad_body.returncode == 1 and "invalid request: messages.0.role" in bad_body.stderr


def test_a_stored_model_renders_its_template_with_special_tokens(models_dir: Path) -> None:
    # content null beside tool_calls, as Ollama takes it: the template writes the call.
    body = {
        "model": "tiny-tools",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
    }
    result = render("tiny-tools", body=body, models_dir=models_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "<s><|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|im_end|>\n'
        "<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n"
    )
    missing = render("no-such-model", body=body, models_dir=models_dir)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_render_prints_what_the_worker_evaluates(models_dir: Path, client: httpx.Client) -> None:
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "render parity 7f3a"}]}
    result = render("tiny-chat", body=body, models_dir=models_dir)
    assert result.returncode == 0, result.stderr
    answer = client.post(
        "/api/chat", json={**body, "stream": False, "options": {"num_predict": 1, "temperature": 0}}
    )
    assert answer.status_code == 200, answer.text
    stored_path = _model_path(models_dir, "tiny-chat")
    model = LlamaModel(stored_path)
    try:
        tokens = model.tokenize(result.stdout, add_special=False)
    finally:
        model.close()
    assert len(tokens) == answer.json()["prompt_eval_count"]


def test_a_model_created_with_message_turns_shows_them(models_dir: Path, client: httpx.Client) -> None:
    created = client.post(
        "/api/create",
        json={
            "model": "render-messages",
            "from": "tiny-chat",
            "messages": [
                {"role": "user", "content": "Who are you?"},
                {"role": "assistant", "content": "A parrot from the Modelfile."},
            ],
            "stream": False,
        },
    )
    assert created.status_code == 200, created.text
    body = {"model": "render-messages", "messages": [{"role": "user", "content": "And now?"}]}
    result = render("render-messages", body=body, models_dir=models_dir)
    assert result.returncode == 0, result.stderr
    assert "Who are you?" in result.stdout and "A parrot from the Modelfile." in result.stdout
    assert result.stdout.index("A parrot from the Modelfile.") < result.stdout.index("And now?")


def _model_path(models_dir: Path, name: str) -> Path:
    from herd.names import ModelName
    from herd.store import ModelStore

    return ModelStore(models_dir).get(ModelName.parse(name)).model_path
