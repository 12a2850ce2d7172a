"""When a worker sends the tokens its decode steps made: at once, or a few steps' worth together.

Each send costs about the same whatever it carries: a Redis pipeline, the API's wake-up and read, nginx's
write and the client's read. Where the decode threads take every core (a CPU worker at its default
HERD_THREADS), those run on the decode threads' cores: on a 2-core machine, in interleaved runs against
llama-server at one stream, a send per token cost Herd 5-7% of its throughput and sends every 50 ms still
2-4% (the bench's CPU table, docs/benchmarks.md, shows where the relay's time goes). There a stream's
tokens are held for up to `HERD_STREAM_INTERVAL_MS` (100 ms by
default there) and travel a few at a time. Every token is still its own event and its own NDJSON line or
SSE chunk, as Ollama sends it; only their timing is grouped, at ten updates a second.

Never held: a sequence's first output (time to first token), a sequence's end (the done or error
event), and everything once the interval has passed or the next step would pass it. Where the decode
leaves cores free (a GPU worker, or fewer threads than cores) the default is 0: every step's events go
when the step ends, as Ollama's do.
"""

from __future__ import annotations

from workers.engine_io import DoneEvent, Event

# The default interval where the decode threads take every core; elsewhere 0.
BUSY_CORES_INTERVAL_S = 0.1
# A sequence that vanished without a done event (its engine closed) leaves its key behind; past this
# many the keys are forgotten, which at worst sends one token of a running sequence early.
_MAX_KEYS = 4096


def stream_interval_s(setting_ms: int | None, decode_takes_every_core: bool) -> float:
    """The pacing interval: HERD_STREAM_INTERVAL_MS when set, else by where the relay's CPU comes from."""
    if setting_ms is not None:
        return setting_ms / 1000
    return BUSY_CORES_INTERVAL_S if decode_takes_every_core else 0.0


class StreamPacer:
    """Decides, step by step, whether the events held so far are sent now."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last_sent = 0.0
        self._started: set[str] = set()  # sequences whose first output was sent

    def due(self, events: list[Event], now: float, step_s: float = 0.0) -> bool:
        """Whether to send now, given this step's new `events` (each passed exactly once) and how long a
        step takes (`step_s`: holding for one more would make the oldest held event that much later)."""
        urgent = False
        for event in events:
            if isinstance(event, DoneEvent):
                self._started.discard(event.key)
                urgent = True
            elif event.key not in self._started:
                if len(self._started) >= _MAX_KEYS:
                    self._started.clear()
                self._started.add(event.key)
                urgent = True
        return urgent or now - self._last_sent + step_s >= self.interval_s

    def sent(self, now: float) -> None:
        self._last_sent = now

    def wait_s(self, now: float) -> float:
        """How long held events may still wait (0: they are due)."""
        return max(0.0, self._last_sent + self.interval_s - now)
