"""What ``herd show MODEL`` prints without a flag: Ollama's Model, Capabilities, Parameters, System and
License sections, each a borderless table indented under its heading."""

from __future__ import annotations

from typing import Any

from cli.format import human_number, table


def _section(title: str, rows: list[list[str]]) -> str:
    # The empty first column is what indents Ollama's rows by the table padding (four spaces).
    return f"  {title}\n" + table(None, [["", *r] for r in rows]) + "\n"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _head(text: str, n: int) -> list[list[str]]:
    """The first ``n`` non-blank lines, then "..." when there are more (Ollama's head)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [[line] for line in lines[:n]]
    if len(lines) > n:
        rows.append(["..."])
    return rows


def render_info(info: dict[str, Any]) -> str:
    """The text of ``show`` for one /api/show answer."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    rows: list[list[str]] = []
    if model_info:
        arch = str(model_info.get("general.architecture", details.get("family", "")))
        rows.append(["architecture", arch])
        params = str(details.get("parameter_size") or "")
        if not params and isinstance(model_info.get("general.parameter_count"), int | float):
            params = human_number(int(model_info["general.parameter_count"]))
        rows.append(["parameters", params])
        for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
            if f"{arch}.{key}" in model_info:
                rows.append([label, _number(model_info[f"{arch}.{key}"])])
    else:
        rows.append(["architecture", str(details.get("family", ""))])
        rows.append(["parameters", str(details.get("parameter_size", ""))])
    rows.append(["quantization", str(details.get("quantization_level", ""))])
    out = _section("Model", rows)

    if info.get("capabilities"):
        out += _section("Capabilities", [[str(c)] for c in info["capabilities"]])
    if info.get("parameters"):
        param_rows = [line.split() for line in str(info["parameters"]).splitlines() if line.strip()]
        out += _section("Parameters", param_rows)
    if info.get("system"):
        out += _section("System", _head(str(info["system"]), 2))
    if info.get("license"):
        out += _section("License", _head(str(info["license"]), 2))
    return out
