"""Schemathesis hooks for tests/reliability/test_fuzz.py, loaded by the CLI through SCHEMATHESIS_HOOKS.

Two jobs: steer half of the generated bodies at a model the stack really serves (so generation, chat and
embedding run for real instead of stopping at 404) with a short generation length, and record every
response's method, path and status as one JSON line in $HERD_FUZZ_LOG, the figures the test reports. A
request that got no response at all (a timeout, a reset) is recorded there too, as a network error.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import schemathesis

from app.schemas import MAX_NUM_PREDICT

# Set by the test to what its stack serves.
SERVED_MODEL = os.environ.get("HERD_FUZZ_MODEL", "tiny-a")
# Longest generation a fuzzed request may ask for: every request is real inference on 2 shared cores.
MAX_TOKENS = 8
NATIVE_GENERATION = frozenset({"/api/generate", "/api/chat"})
OPENAI_GENERATION = frozenset({"/v1/chat/completions", "/v1/completions"})
# Each vendor API's own name for the generation length.
LENGTH_FIELDS = {"/v1/responses": "max_output_tokens", "/v1/messages": "max_tokens"}


def _steered(body: dict[str, Any]) -> bool:
    # Decided by the body's content, not by a random draw, so hypothesis' replays stay deterministic.
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).digest()
    return digest[0] % 2 == 0


def _short(value: object, lowest: int) -> object:
    """A valid generation length capped at MAX_TOKENS; -1/-2 (no limit, fill the context) become the cap.

    A value the schema refuses (below `lowest`, past MAX_NUM_PREDICT, not an integer) is left as it is:
    it is a negative case, and rewriting it to a valid one would make schemathesis blame the API for
    accepting what it generated as invalid.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= MAX_NUM_PREDICT:
        return value
    return MAX_TOKENS if value > MAX_TOKENS or value < 0 else value


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    if not isinstance(body, dict) or context.operation is None:
        return body
    path = context.operation.path
    body = dict(body)
    if isinstance(body.get("model"), str) and _steered(body):
        body["model"] = SERVED_MODEL
    options = body.get("options")
    if path in NATIVE_GENERATION and (isinstance(options, dict) or "options" not in body):
        # No num_predict means "until the context is full": every generation gets a short one.
        options = options if isinstance(options, dict) else {}
        body["options"] = {**options, "num_predict": _short(options.get("num_predict", MAX_TOKENS), -2)}
    if path in OPENAI_GENERATION:
        body["max_tokens"] = _short(body.get("max_tokens", MAX_TOKENS), 1)
        if "max_completion_tokens" in body:
            body["max_completion_tokens"] = _short(body["max_completion_tokens"], 1)
    if path in LENGTH_FIELDS:
        field = LENGTH_FIELDS[path]
        # /v1/messages requires max_tokens: a body without it is a negative case, left without it.
        if field in body or path != "/v1/messages":
            body[field] = _short(body.get(field, MAX_TOKENS), 1)
    return body


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """The vendor routes' lengths capped once more on the finished case: a body can reach the case past
    map_body (a fuzzed /v1/responses once asked for 1700 tokens, and the tiny model took over ten seconds
    to write them on a loaded machine, past schemathesis' response time limit)."""
    field = LENGTH_FIELDS.get(case.operation.path)
    if field is not None and isinstance(case.body, dict) and field in case.body:
        case.body = {**case.body, field: _short(case.body[field], 1)}
    return case


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    path = os.environ.get("HERD_FUZZ_LOG")
    if not path:
        return
    record: dict[str, Any] = {
        "method": case.operation.method.upper(),
        "path": case.operation.path,
        "status": response.status_code,
    }
    if response.status_code >= 400:
        record["body"] = response.content[:2000].decode("utf-8", "replace")
    _log(path, record)


@schemathesis.hook
def after_network_error(context: schemathesis.HookContext, case: schemathesis.Case, request: Any) -> None:
    path = os.environ.get("HERD_FUZZ_LOG")
    if path:
        _log(path, {"method": case.operation.method.upper(), "path": case.operation.path, "status": None})


def _log(path: str, record: dict[str, Any]) -> None:
    """One record as a JSON line; each is one short append, so the fuzzer's workers never interleave."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext, failure: Any, case: schemathesis.Case, response: schemathesis.Response
) -> bool:
    """Keep every failure but the 502 of a pull or push whose registry is unreachable by design."""
    # The registry is unreachable by design here (its proxy is a closed port): not Herd's 5xx.
    # test_fuzz checks each such answer names the proxy or the registry.
    return not (response.status_code == 502 and case.operation.path in ("/api/pull", "/api/push"))
