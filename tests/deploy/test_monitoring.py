"""Prometheus config, alert rules (with promtool's unit tests) and the Grafana dashboard and provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.bundle import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    alert_rules,
    dashboard_queries,
    load_compose,
    metric_names,
)

RULE_TESTS = PROMETHEUS_DIR / "tests" / "herd-alerts.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus")
    return found


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", *sorted((PROMETHEUS_DIR / "rules").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = _run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_test_rules_fails_on_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The rule tests can fail: the same tests against a rule with a raised threshold do."""
    rules = (PROMETHEUS_DIR / "rules" / "herd-alerts.yml").read_text().replace("> 0.8", "> 0.95")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "herd-alerts.yml").write_text(rules)
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = _run(promtool, "test", "rules", tmp_path / "tests" / RULE_TESTS.name)
    assert result.returncode != 0
    assert "HerdQueueNearCapacity" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts == firing, f"alerts with no firing test: {alerts - firing}"
    assert alerts == silent, f"alerts with no silent test: {alerts - silent}"


def test_the_issue_asks_for_these_alerts() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert 'up{job="herd-worker"} == 0' in exprs["HerdWorkerDown"]
    assert "redis_up" in exprs["HerdRedisDown"]
    for name in (
        "HerdQueueNearCapacity",
        "HerdRequestsRejected",
        "HerdModelLoadFailures",
        "HerdSlowFirstToken",
    ):
        assert name in exprs
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses the dashboard's queries as recording rules (Grafana's $__rate_interval as 1m)."""
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "1m")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_covers_what_the_issue_lists() -> None:
    used = set().union(*(metric_names(q) for q in dashboard_queries()))
    for metric in (
        "herd_queue_waiting", "herd_queue_capacity", "herd_requests_rejected_total", "herd_model_loads_total",
        "herd_model_evictions_total", "herd_models_loaded", "herd_time_to_first_token_seconds_bucket",
        "herd_generated_tokens_total", "herd_requests_total", "herd_sequences",
    ):  # fmt: skip
        assert metric in used, metric
    evictions = [q for q in dashboard_queries() if "herd_model_evictions_total" in q]
    assert any("by (reason)" in q for q in evictions)


def test_dashboards_use_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (datasource,) = provisioned["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    for path in (GRAFANA_DIR / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_compose_mounts_what_grafana_and_prometheus_are_provisioned_with() -> None:
    services = load_compose()["services"]
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "herd.yml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards_path}:ro" in services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def test_scrape_targets_are_compose_services() -> None:
    """Every scrape target names a service of compose.yaml on the port it listens on."""
    services = load_compose()["services"]
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets: list[str] = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.extend(static["targets"])
        for file_sd in job.get("file_sd_configs", []):
            for name in file_sd["files"]:
                for group in yaml.safe_load((PROMETHEUS_DIR / name).read_text()):
                    targets.extend(group["targets"])
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"herd-api", "herd-worker", "redis"} <= jobs
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in services, target
        if host.startswith("worker-"):
            assert services[host]["environment"]["HERD_WORKER_METRICS_PORT"] == port
    assert "api:11435" in targets and re.search(r"worker-gpu0:9400", " ".join(targets))
