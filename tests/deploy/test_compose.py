"""compose.yaml: valid Compose, healthy-ordered, nothing internal published, and in step with the code's settings.

The Compose Specification schema (compose_spec.json) is the one docker-compose 1.29.2 ships on PyPI
(compose/config/compose_spec.json, Apache-2.0): a 2021 snapshot of compose-spec/compose-spec, vendored because
only PyPI is reachable here. It knows fewer keys than today's Compose, so a file it accepts is valid for both.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
from pydantic_settings import BaseSettings

from herd.redis_connect import check_access, sync_client
from herd.redis_url import build_url
from herd.settings import CommonSettings
from stack.processes import ManagedProcess
from stack.redis_auth import KEY_PATTERNS, WORKER_USER, user_rules
from stack.settings import StackSettings
from stack.tls import make_self_signed
from tests.deploy.bundle import (
    COMPOSE_FILE,
    ROOT,
    compose_variables,
    env_example_variables,
    load_compose,
)
from tests.support.ports import free_port

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
GPU_WORKERS = [name for name in SERVICES if name.startswith("worker-gpu")]
WORKERS = [*GPU_WORKERS, "worker-cpu"]
HERD_SERVICES = ["api", *WORKERS, "store-worker"]
# The worker of a GPU server that joins this one (profile worker): its Redis and store are the main server's.
REMOTE_WORKER = "worker"

# Which compose services run a process that reads each settings class (app/, workers/).
SERVICES_BY_SETTINGS = {
    "CommonSettings": [*HERD_SERVICES, REMOTE_WORKER],
    "ApiSettings": ["api"],
    "WorkerSettings": [*WORKERS, REMOTE_WORKER],
    "RegistrySettings": ["store-worker"],
    "StoreWorkerSettings": ["store-worker"],
}
# Variables a process reads that its image's entrypoint sets (docker/entrypoint.sh), not compose.yaml.
SET_BY_ENTRYPOINT = {"HERD_CA_BUNDLE"}
# StackSettings is `herd up`'s supervisor, which compose replaces: each of its variables is either handed to
# nginx (which compose runs instead of the supervisor's), or has an equivalent in compose.yaml, named here.
STACK_SETTINGS_FOR_NGINX = {"OLLAMA_ORIGINS", "HERD_MAX_BODY_SIZE", "HERD_METRICS_PUBLIC"}
STACK_SETTINGS_REPLACED = {
    "OLLAMA_HOST": "HERD_BIND_ADDRESS and HERD_HTTPS_PORT publish nginx's HTTPS port",
    "HERD_API_PORT": "gunicorn binds 11435 on the backend network",
    "HERD_REDIS_PORT": "HERD_REDIS_URL names redis:6379",
    "HERD_METRICS_PORT": "nginx's internal listener is 11437; Prometheus scrapes api:11435",
    "HERD_WORKERS": "one worker service per GPU (profiles gpu, gpu1..gpu3) or worker-cpu",
    "HERD_GPUS": "each GPU worker service reserves its device with device_ids",
    "HERD_API_PROCESSES": "the api service's gunicorn --workers",
    "HERD_RUN_DIR": "volumes and tmpfs replace the run dir",
    "HERD_TLS_CERT": "HERD_TLS_DIR/tls.crt",
    "HERD_TLS_KEY": "HERD_TLS_DIR/tls.key",
    "HERD_REDIS_BIND": "HERD_REDIS_BIND_ADDRESS publishes Redis's TLS port",
    "HERD_REDIS_TLS": "Redis serves TLS on its published port 6380 always, plain TCP on the internal network",
    "HERD_REDIS_PASSWORD": "REDIS_PASSWORD (and REDIS_WORKER_PASSWORD for the herd-worker user)",
    "HERD_REDIS_TLS_CERT": "Redis serves HERD_TLS_DIR/tls.crt",
    "HERD_REDIS_TLS_KEY": "Redis serves HERD_TLS_DIR/tls.key",
    "HERD_REDIS_EXTERNAL": "compose runs its own redis service; each service's HERD_REDIS_URL names it",
}
# Variables compose itself reads from .env, not compose.yaml.
COMPOSE_OWN_VARIABLES = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}


# The packages whose processes read settings: the core's base, the API, the workers and `herd up`.
SETTINGS_PACKAGES = ("herd", "app", "workers", "stack")


def _settings_classes() -> dict[str, type[BaseSettings]]:
    """Every settings class of the core, app/, workers/ and stack/ (each defining module imported), by name."""
    defines = re.compile(r"^class \w+\(\w*Settings\):", re.MULTILINE)
    sources = sorted(path for package in SETTINGS_PACKAGES for path in (ROOT / package).rglob("*.py"))
    for path in [p for p in sources if defines.search(p.read_text(encoding="utf-8"))]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        importlib.import_module(module)
    found: dict[str, type[BaseSettings]] = {}
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in SETTINGS_PACKAGES:
                found[sub.__name__] = sub
            pending.append(sub)
    return found


def _aliases(cls: type[BaseSettings], own_only: bool = False) -> set[str]:
    """The environment variables a settings class reads (its fields' aliases)."""
    parents = [base for base in cls.__mro__[1:] if isinstance(base, type) and issubclass(base, BaseSettings)]
    inherited = (
        {name for base in parents for name in getattr(base, "model_fields", {})} if own_only else set()
    )
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        if field_name in inherited:
            continue
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
        names.update(str(choice) for choice in choices if isinstance(choice, str))
        if not choices:
            names.add(field_name.upper())
    return names


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    errors = [
        f"{error.json_path}: {error.message}"
        for error in jsonschema.Draft201909Validator(schema).iter_errors(COMPOSE)
    ]
    assert errors == []


def test_the_schema_check_catches_a_bad_file() -> None:
    """The vendored schema really constrains services (a misspelt key fails)."""
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_the_expected_services_exist() -> None:
    assert {"nginx", "api", "redis", "worker-cpu", "store-worker", "prometheus", "grafana"} <= set(SERVICES)
    assert "worker-gpu0" in GPU_WORKERS
    assert SERVICES["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("prometheus", "grafana", "redis-exporter"):
        assert SERVICES[name]["profiles"] == ["monitoring"], name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_a_restart_policy_and_rotated_logs(name: str) -> None:
    service = SERVICES[name]
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert service["restart"] == "unless-stopped", name
    logging = service["logging"]
    assert (
        logging["driver"] == "json-file" and logging["options"]["max-size"] and logging["options"]["max-file"]
    )


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_for_health(name: str) -> None:
    for dependency, rule in SERVICES[name].get("depends_on", {}).items():
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        assert rule == {"condition": "service_healthy"}, f"{name} -> {dependency}: {rule}"


def test_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: {image}"


def _published(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def test_only_nginx_https_reaches_the_lan() -> None:
    """nginx's 443 is the one LAN-facing port by default; Prometheus, Grafana and Redis's TLS port bind loopback."""
    assert _published(SERVICES["nginx"]) == ["${HERD_BIND_ADDRESS:-0.0.0.0}:${HERD_HTTPS_PORT:-443}:443"]
    for name in ("prometheus", "grafana"):
        for port in _published(SERVICES[name]):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    # Redis's TLS port, for workers on other servers, reaches the LAN only when HERD_REDIS_BIND_ADDRESS says so.
    assert _published(SERVICES["redis"]) == [
        "${HERD_REDIS_BIND_ADDRESS:-127.0.0.1}:${HERD_REDIS_TLS_PORT:-6380}:6380"
    ]
    for name, service in SERVICES.items():
        if name not in ("nginx", "prometheus", "grafana", "redis"):
            assert "ports" not in service, f"{name} publishes {service['ports']}"


def test_redis_is_private_persistent_and_password_protected() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "--appendonly yes" in command
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    # The internal network, and one that carries only the published TLS port.
    assert redis["networks"] == ["backend", "redis-lan"]
    assert COMPOSE["networks"]["backend"]["internal"] is True
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    for name in HERD_SERVICES:
        url = SERVICES[name]["environment"]["HERD_REDIS_URL"]
        assert url.startswith("redis://:${REDIS_PASSWORD:?") and url.endswith("@redis:6379/0"), name


def test_models_volume_is_shared_by_the_api_and_the_workers() -> None:
    assert "models" in COMPOSE["volumes"]
    for name in HERD_SERVICES:
        mounts = [volume for volume in SERVICES[name]["volumes"] if volume.startswith("models:/models")]
        assert mounts, f"{name} does not mount the models volume"
        assert SERVICES[name]["environment"]["OLLAMA_MODELS"] == "/models"
    for name in WORKERS:
        assert "models:/models:ro" in SERVICES[name]["volumes"], f"{name} should only read the store"
    for name in ("api", "store-worker"):
        assert "models:/models" in SERVICES[name]["volumes"], f"{name} writes the store"


def test_each_gpu_worker_is_pinned_to_its_own_device() -> None:
    devices = []
    for name in GPU_WORKERS:
        index = name.removeprefix("worker-gpu")
        (reservation,) = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]
        assert reservation["device_ids"] == [f"${{HERD_GPU{index}_DEVICE:-{index}}}"]
        assert SERVICES[name]["environment"]["HERD_WORKER_ID"] == f"gpu{index}"
        assert SERVICES[name]["profiles"] == ["gpu" if index == "0" else f"gpu{index}"]
        devices.append(reservation["device_ids"][0])
    assert len(set(devices)) == len(devices)
    worker_ids = [SERVICES[name]["environment"]["HERD_WORKER_ID"] for name in WORKERS]
    assert len(set(worker_ids)) == len(worker_ids)


def test_proxy_settings_pass_through_and_never_cover_internal_names() -> None:
    for name in [*HERD_SERVICES, "grafana"]:
        env = SERVICES[name]["environment"]
        for variable in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
            assert variable in env, f"{name} lacks {variable}"
        bypassed = set(env["NO_PROXY"].split(","))
        assert set(SERVICES) <= bypassed, f"{name}: NO_PROXY misses {set(SERVICES) - bypassed}"
        assert env["NO_PROXY"] == env["no_proxy"]
    for name, service in SERVICES.items():
        args = service.get("build", {}).get("args", {})
        if args:
            assert {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"} <= set(args), name


def test_the_corporate_ca_is_mounted_where_the_entrypoint_reads_it() -> None:
    for name in HERD_SERVICES:
        assert "./deploy/ca:/etc/herd/ca:ro" in SERVICES[name]["volumes"], name
        assert SERVICES[name]["environment"]["HERD_CA_DIR"] == "/etc/herd/ca"


def test_bind_mounted_sources_exist_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        dockerfile = service.get("build", {}).get("dockerfile")
        if dockerfile:
            assert (ROOT / dockerfile).is_file(), f"{name} builds from missing {dockerfile}"


def test_every_setting_the_code_reads_is_passed_to_its_services() -> None:
    """Adding a setting to a settings class fails here until compose.yaml passes it (or this test maps it)."""
    classes = _settings_classes()
    unmapped = set(classes) - set(SERVICES_BY_SETTINGS) - {"StackSettings"}
    assert not unmapped, f"settings classes with no compose service mapped in this test: {sorted(unmapped)}"
    missing = []
    for cls_name, service_names in SERVICES_BY_SETTINGS.items():
        for alias in _aliases(classes[cls_name]) - SET_BY_ENTRYPOINT:
            for service in service_names:
                if alias not in SERVICES[service].get("environment", {}):
                    missing.append(f"{alias} ({cls_name}) not passed to {service}")
    assert missing == []
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    for variable in SET_BY_ENTRYPOINT:
        assert re.search(rf"export .*\b{variable}=", entrypoint), (
            f"docker/entrypoint.sh does not set {variable}"
        )

    stack_only = _aliases(classes["StackSettings"], own_only=True)
    unknown = stack_only - STACK_SETTINGS_FOR_NGINX - set(STACK_SETTINGS_REPLACED)
    assert not unknown, f"StackSettings variables compose.yaml does not account for: {sorted(unknown)}"
    for alias in STACK_SETTINGS_FOR_NGINX:
        assert alias in SERVICES["nginx"]["environment"], alias
    assert "HERD_API_PROCESSES" in " ".join(SERVICES["api"]["command"])


def test_the_settings_introspection_sees_real_fields() -> None:
    """Guards the test above: it must find the aliases the code really has."""
    classes = _settings_classes()
    assert {"OLLAMA_MAX_QUEUE", "HERD_API_KEYS_FILE", "HERD_REDIS_URL"} <= _aliases(classes["ApiSettings"])
    assert {"OLLAMA_NUM_PARALLEL", "HERD_WORKER_ID"} <= _aliases(classes["WorkerSettings"])
    assert "HERD_REDIS_URL" not in _aliases(classes["StackSettings"], own_only=True)


def test_required_settings_fail_fast_with_a_message() -> None:
    required = {name for name, op in compose_variables().items() if op in (":?", "?")}
    assert {"REDIS_PASSWORD", "HERD_TLS_DIR", "HERD_SECRETS_DIR", "GRAFANA_ADMIN_PASSWORD"} <= required
    for match in re.finditer(r"\$\{([A-Z_0-9]+):\?([^}]*)\}", COMPOSE_FILE.read_text()):
        assert len(match[2].strip()) > 10, f"{match[1]} has no explanation"


def test_env_example_documents_every_variable_compose_reads() -> None:
    used = compose_variables()
    documented = env_example_variables()
    assert set(used) - set(documented) == set(), "undocumented in .env.example"
    assert set(documented) - set(used) - COMPOSE_OWN_VARIABLES == set(), (
        "documented but unused by compose.yaml"
    )
    for name, op in used.items():
        if op in (":?", "?"):
            assert documented[name], f"{name} is required: .env.example must list it uncommented"


def test_redis_serves_tls_to_other_servers_with_the_worker_acl_user_of_the_stack() -> None:
    """compose's herd-worker user has exactly the rules `herd up` gives it (stack/redis_auth.py)."""
    script = SERVICES["redis"]["command"][-1].replace("\\|", "|")
    assert "--tls-port 6380" in script and "--tls-cert-file /etc/redis-tls/tls.crt" in script
    user = script.split(f"--user {WORKER_USER} reset on", 1)[1].split("; fi")[0].split()
    assert user[0] == '">$${REDIS_WORKER_PASSWORD}"'
    assert [w.strip('"') for w in user[1:] if w.strip('"').startswith(("~", "&"))] == [
        *(f"~{p}" for p in KEY_PATTERNS),
        *(f"&{p}" for p in KEY_PATTERNS),
    ]
    rules = [w for w in user if w.startswith(("+", "-"))]
    assert rules == ["-@all", *user_rules(WORKER_USER).split()]
    assert any(v.endswith(":/etc/redis-tls:ro") for v in SERVICES["redis"]["volumes"])


def test_the_worker_profile_runs_a_worker_alone_from_env() -> None:
    """A worker-only server: its Redis (TLS, herd-worker), CA and store come from .env; nothing else runs."""
    worker = SERVICES[REMOTE_WORKER]
    assert worker["profiles"] == ["worker"]
    assert worker.get("depends_on") == {}, "a worker-only server has no redis service to wait for"
    env = worker["environment"]
    assert env["HERD_REDIS_URL"] == "${HERD_REDIS_URL:-}"
    assert env["HERD_REDIS_CA"] == "/etc/herd/redis-ca.crt"
    assert "${HERD_REDIS_CA:-./deploy/redis-ca.crt}:/etc/herd/redis-ca.crt:ro" in worker["volumes"]
    assert env["HERD_STORE_URL"] == "${HERD_STORE_URL:-}" and env["HERD_STORE_KEY"] == "${HERD_STORE_KEY:-}"
    # Its own writable store (model files fetched from the main server), and the LAN, not the internal network.
    assert "models:/models" in worker["volumes"] and worker["networks"] == ["frontend"]
    (reservation,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert reservation["device_ids"] == ["${HERD_WORKER_DEVICE:-0}"]
    # Every other service either has a profile of its own or is the main server's: none carries `worker`.
    assert [name for name, s in SERVICES.items() if "worker" in s.get("profiles", [])] == [REMOTE_WORKER]


def test_the_redis_command_runs_a_real_redis_with_tls_and_the_worker_user(tmp_path: Path) -> None:
    """compose's redis command, as its shell runs it: the password, TLS on 6380, herd-worker's rules."""
    make_self_signed(tmp_path / "tls.crt", tmp_path / "tls.key", StackSettings(run_dir=tmp_path))
    plain, tls = free_port(), free_port()
    script = (
        SERVICES["redis"]["command"][-1]
        .replace("$$", "$")
        .replace("/etc/redis-tls", str(tmp_path))
        .replace("--tls-port 6380", f"--tls-port {tls} --port {plain} --bind 127.0.0.1 --dir {tmp_path}")
    )
    env = {"REDIS_PASSWORD": "ab" * 16, "REDIS_WORKER_PASSWORD": "cd" * 16, "PATH": os.environ["PATH"]}
    server = ManagedProcess(
        "redis", ["sh", "-c", script], log_path=tmp_path / "redis.log", env=env, cwd=tmp_path
    )
    admin = redis.Redis(port=plain, password="ab" * 16, socket_timeout=2, decode_responses=True)
    try:
        server.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                server.check_running()
                assert time.monotonic() < deadline, server.log_tail(20)
                time.sleep(0.05)
        url = build_url("127.0.0.1", tls, tls=True, username="herd-worker", password="cd" * 16)
        settings = CommonSettings(redis_url=url, redis_ca=tmp_path / "tls.crt")
        worker = sync_client(settings, socket_timeout=2)
        check_access(worker, settings)
        assert worker.set("herd:x", "1") and worker.client_info()["user"] == "herd-worker"
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.config_get("*")
        worker.close()
    finally:
        admin.close()
        server.stop(10.0)
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
