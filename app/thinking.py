"""The request's `think`, as Ollama's routes settle it before a generation is queued.

`think` is true, false or a level ("low", "medium", "high", "max"); anything else is a 400. A model
with the `thinking` capability thinks unless told not to (an unset `think` becomes true, so its template
sees .IsThinkSet); asking a model without it to think is Ollama's 400 `"<model>" does not support
thinking`.
"""

from __future__ import annotations

import json

from app.errors import BadRequest
from herd.store import StoredModel
from herd.templates.capabilities import supports_thinking
from herd.templates.thinking import InvalidThink, ThinkValue, check_think, think_enabled


def resolve_think(
    value: object, stored: StoredModel, requested_name: str, *, relax: bool = False
) -> ThinkValue:
    """The job's `think` for a request naming `requested_name` (quoted in the error as Ollama's %q).

    `relax`: thinking asked of a model that cannot think is dropped rather than refused, as Ollama's
    Anthropic layer does (`relax_thinking`) so that clients which always ask for it still work.
    """
    try:
        think = check_think(value)
    except InvalidThink as exc:
        raise BadRequest(str(exc)) from exc
    if supports_thinking(stored):
        return True if think is None else think
    if think_enabled(think):
        if relax:
            return None
        raise BadRequest(f"{json.dumps(requested_name)} does not support thinking")
    return think
