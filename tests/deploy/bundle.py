"""Paths and loaders shared by the deployment bundle's tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
NGINX_DIR = ROOT / "nginx"
DOCKER_DIR = ROOT / "docker"
DEPLOY_DIR = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"
GRAFANA_DIR = DEPLOY_DIR / "grafana"
ANSIBLE_DIR = ROOT / "ansible"
VENV_BIN = ROOT / ".venv" / "bin"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; $$ is a literal dollar.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?")


def load_compose() -> dict[str, Any]:
    """compose.yaml as compose reads it, YAML anchors and merge keys resolved (interpolation not applied)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose_variables() -> dict[str, str]:
    """Every variable compose.yaml interpolates, with its operator ('' plain, ':-' default, ':?' required)."""
    found: dict[str, str] = {}
    for match in _INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        op = match["op"] or ""
        # A variable required anywhere is required.
        if found.get(match["name"], "") not in (":?", "?"):
            found[match["name"]] = op
    return found


def env_example_variables() -> dict[str, bool]:
    """The variables .env.example documents: name -> whether the line is active (not commented out)."""
    names: dict[str, bool] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#)?([A-Z][A-Z0-9_]*)=", line)
        if match:
            names[match[2]] = names.get(match[2], False) or match[1] is None
    return names


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboards."""
    queries: list[str] = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            queries.extend(target["expr"] for target in panel.get("targets", []))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of deploy/prometheus/rules/*.yml."""
    rules: list[dict[str, Any]] = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


# PromQL words that look like metric names but are functions, keywords or aggregation operators.
_PROMQL_WORDS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
        "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
        "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
        "histogram_quantile", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar", "le",
        "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "absent", "label_replace",
        "inf", "nan",
    }
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, strings and durations removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ($__rate_interval included)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    words = set(re.findall(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*(?![\w(])", text))
    functions = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text))
    return {w for w in words - functions if w.lower() not in _PROMQL_WORDS}


def metric_family(sample_name: str) -> str:
    """A histogram's or summary's series name mapped to its family (x_bucket, x_sum, x_count -> x)."""
    return re.sub(r"_(bucket|sum|count)$", "", sample_name)
