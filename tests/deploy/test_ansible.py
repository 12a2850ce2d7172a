"""ansible/: syntax, ansible-lint's production profile, a check-mode run and an idempotent real run on localhost.

This machine has no Docker engine and no systemd, so the runs turn off the Docker install and the systemd
unit (herd_install_docker / herd_manage_service false): every other task runs, the firewall's in check mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.bundle import ANSIBLE_DIR, ROOT, VENV_BIN, compose_variables

PLAYBOOK = ANSIBLE_DIR / "site.yml"
REDIS_PASSWORD = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: pip install ansible-core ansible-lint (the dev extra)")
    return str(path)


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
    return subprocess.run(
        argv, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _inventory(tmp_path: Path, **host_vars: Any) -> Path:
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "herd_root": str(tmp_path / "herd"),
        "herd_install_docker": False,
        "herd_manage_service": False,
        "herd_manage_firewall": False,
        "herd_redis_password": REDIS_PASSWORD,
        "herd_grafana_admin_password": "grafana-secret",
        "herd_api_keys": ["key-one", "key-two"],
        "herd_gpu_ids": [0, 1],
        "herd_https_proxy": "http://proxy.example.lan:3128",
        **host_vars,
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"herd_servers": {"hosts": {"localhost": host}}}))
    return path


def _recap(output: str) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+(.*)", output.split("PLAY RECAP")[-1])
    assert match, output[-3000:]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[1])}


def test_playbook_syntax() -> None:
    result = _run(
        [_tool("ansible-playbook"), "--syntax-check", "-i", "inventory/hosts.example.yml", str(PLAYBOOK)]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile() -> None:
    result = _run(
        [_tool("ansible-lint"), "--profile", "production", "--nocolor", "site.yml", "roles", "inventory"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.slow
def test_check_mode_run_against_localhost(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, herd_manage_firewall=True, herd_gpu_ids=[])
    result = _run([_tool("ansible-playbook"), "-i", str(inventory), "--check", "--diff", str(PLAYBOOK)])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    recap = _recap(result.stdout)
    assert recap["failed"] == 0 and recap["changed"] > 0
    for task in (
        "Write the settings (.env)",
        "Allow Herd's HTTPS port",
        "Refuse every other incoming connection",
    ):
        assert f"TASK [herd : {task}]" in result.stdout
    assert not (tmp_path / "herd" / ".env").exists(), "check mode wrote a file"


def test_the_role_refuses_a_password_that_cannot_go_into_a_url(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, herd_redis_password="p@ss/word")
    result = _run([_tool("ansible-playbook"), "-i", str(inventory), "--check", str(PLAYBOOK)])
    assert result.returncode != 0
    assert "herd_redis_password must be 32+ hex digits" in result.stdout


@pytest.mark.slow
def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    # A snapshot of the checkout: others editing app/ between the two runs must not count as a change.
    source = tmp_path / "source"
    bundle_paths = yaml.safe_load((ANSIBLE_DIR / "roles" / "herd" / "vars" / "main.yml").read_text())
    for name in bundle_paths["herd_bundle_paths"]:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    # ... with a __pycache__ as a checkout has, which the role must leave behind.
    (source / "app" / "__pycache__").mkdir()
    (source / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00")
    inventory = _inventory(tmp_path, herd_source_dir=str(source))
    first = _run([_tool("ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)])
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert _recap(first.stdout)["changed"] > 0
    second = _run([_tool("ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)])
    assert second.returncode == 0, second.stdout[-4000:]
    assert _recap(second.stdout)["changed"] == 0, second.stdout[-4000:]

    root = tmp_path / "herd"
    env = dict(
        line.split("=", 1)
        for line in (root / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # Every line is a variable compose.yaml (or compose itself) reads, and the required ones are set.
    known = set(compose_variables()) | {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}
    assert set(env) <= known, set(env) - known
    for name, op in compose_variables().items():
        if op == ":?":
            assert env.get(name), f"{name} is required by compose.yaml"
    assert env["COMPOSE_PROFILES"] == "gpu,gpu1,monitoring"
    assert env["REDIS_PASSWORD"] == REDIS_PASSWORD
    assert env["HERD_GPU1_DEVICE"] == "1"
    assert oct((root / ".env").stat().st_mode & 0o777) == "0o600"
    assert (root / "secrets" / "api-keys").read_text().splitlines()[-2:] == ["key-one", "key-two"]
    assert (root / "secrets" / "api-keys").stat().st_gid == 10001

    targets = yaml.safe_load((root / "deploy" / "prometheus" / "targets" / "workers.yml").read_text())
    assert [t["targets"] for t in targets] == [["worker-gpu0:9400"], ["worker-gpu1:9400"]]
    # The bundle is complete, scripts stay executable, and no __pycache__ came along.
    for path in (
        "compose.yaml",
        "nginx/nginx.conf",
        "docker/api.Dockerfile",
        "app/main.py",
        "deploy/ca/README.md",
    ):
        assert (root / path).is_file(), path
    assert os.access(root / "nginx" / "40-herd-config.sh", os.X_OK)
    assert os.access(root / "docker" / "entrypoint.sh", os.X_OK)
    assert not list(root.rglob("__pycache__"))
    # A self-signed pair for nginx, private key private.
    assert oct((root / "certs" / "tls.key").stat().st_mode & 0o777) == "0o600"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(root / "certs" / "tls.crt"), "-noout", "-text"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "DNS:localhost" in text


def test_example_inventory_and_vault_agree_with_the_role() -> None:
    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / "herd" / "defaults" / "main.yml").read_text())
    group_vars = yaml.safe_load(
        (ANSIBLE_DIR / "inventory" / "group_vars" / "herd_servers" / "main.yml").read_text()
    )
    vault = yaml.safe_load(
        (ANSIBLE_DIR / "inventory" / "group_vars" / "herd_servers" / "vault.example.yml").read_text()
    )
    assert set(group_vars) <= set(defaults), set(group_vars) - set(defaults)
    for value in group_vars.values():
        for referenced in re.findall(r"\{\{\s*(vault_\w+)", json.dumps(value)):
            assert referenced in vault, referenced


def _render(template: str, **variables: Any) -> str:
    """A role template rendered as Ansible would (its `bool` filter added to plain Jinja2)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["bool"] = lambda value: str(value).lower() in ("1", "true", "yes", "on")
    source = (ANSIBLE_DIR / "roles" / "herd" / "templates" / template).read_text()
    return env.from_string(source).render(ansible_managed="managed", **variables)


def test_the_main_server_admits_the_worker_servers_and_no_other_host_to_redis(tmp_path: Path) -> None:
    hostvars = {"gpu-2": {"ansible_host": "192.168.1.51"}, "gpu-3": {}}
    script = _render("redis-firewall.sh.j2", groups={"herd_workers": ["gpu-2", "gpu-3"]}, hostvars=hostvars)
    path = tmp_path / "redis-firewall.sh"
    path.write_text(script)
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0
    rules = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("ensure ")]
    # Inserted at the top one after the other: the admissions end up above the DROP.
    assert rules == [
        "-p tcp --dport 6380 -j DROP",
        "-p tcp --dport 6380 -s 192.168.1.51 -j RETURN",
        "-p tcp --dport 6380 -s gpu-3 -j RETURN",
    ]


def test_a_worker_servers_env_joins_the_main_servers_redis_and_store() -> None:
    from herd.redis_connect import parse_redis_url
    from tests.deploy.test_compose import SERVICES

    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / "herd" / "defaults" / "main.yml").read_text())
    main = {
        "herd_server_name": "herd.example.lan",
        "herd_redis_worker_password": "ab" * 32,
        "herd_redis_tls_port": 6380,
        "herd_https_port": 443,
        "herd_api_keys": ["key-one"],
    }
    variables = {**defaults, "herd_main": main, "herd_main_name": main["herd_server_name"]}
    variables.update(inventory_hostname="gpu-2", herd_worker_device=1, herd_context_length=4096)
    text = _render("env-worker.j2", **variables)
    env = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    target = parse_redis_url(env["HERD_REDIS_URL"])
    assert (target.tls, target.user, target.password) == (True, "herd-worker", "ab" * 32)
    assert target.hosts == (("herd.example.lan", 6380),)
    assert env["HERD_STORE_URL"] == "https://herd.example.lan:443" and env["HERD_STORE_KEY"] == "key-one"
    assert env["COMPOSE_PROFILES"] == "worker" and env["HERD_WORKER_DEVICE"] == "1"
    # Every variable the compose `worker` service reads from .env is written.
    read = {
        name
        for value in SERVICES["worker"]["environment"].values()
        for name in re.findall(r"\$\{(HERD_[A-Z_]+|OLLAMA_[A-Z_]+)", str(value))
    } | {"HERD_REDIS_CA", "HERD_WORKER_DEVICE"}
    assert read - set(env) <= {"HERD_WORKER_METRICS_PORT"}, read - set(env)
