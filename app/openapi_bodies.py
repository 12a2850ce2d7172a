"""What the successful answers of streaming and empty routes look like, for the served OpenAPI.

FastAPI documents every answer as one JSON object unless told otherwise; these say that generation and
model jobs stream NDJSON (one object with `"stream": false`), that `/v1` generation streams server-sent
events, and that a delete answers with no body, so clients and fuzzers read the schema right.
"""

from __future__ import annotations

from typing import Any

NDJSON_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON, one object per line (`application/x-ndjson`); with `stream: false`, one object.",
        "content": {"application/x-ndjson": {}, "application/json": {}},
    }
}
SSE_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events ending with `data: [DONE]`; with `stream: false`, one object.",
        "content": {"text/event-stream": {}, "application/json": {}},
    }
}
NO_BODY: dict[int | str, dict[str, Any]] = {200: {"description": "Done; the answer has no body."}}
