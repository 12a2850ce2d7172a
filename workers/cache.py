"""The model cache: which models this worker holds, for how long, and which one to evict.

A model is loaded on demand, kept while it has running sequences, and afterwards until its keep_alive
runs out (never, for a negative keep_alive). At OLLAMA_MAX_LOADED_MODELS an idle model is evicted
(the one expiring soonest, then the least recently used) to make room; a model with running sequences
never is. Loading happens outside the lock so that other models keep decoding meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.chat_templates import ChatTemplate, choose_template
from app.contracts import LoadedModelState
from app.durations import FOREVER
from app.store import StoredModel
from workers.embedder import Embedder
from workers.engine import BatchEngine
from workers.llama import LlamaModel

log = logging.getLogger(__name__)

# /api/ps shows a pinned model's expiry this far ahead (Ollama shows a date centuries away).
_FAR_FUTURE = timedelta(days=365 * 100)


@dataclass
class LoadedModel:
    """One model in memory: its weights, its batching engine and its expiry rule."""

    stored: StoredModel
    llama: LlamaModel
    engine: BatchEngine
    template: ChatTemplate
    n_ctx: int
    keep_alive: float
    users: int = 0  # jobs holding it: running sequences plus jobs being prepared
    expires_at: float | None = None  # wall clock; None while in use or pinned
    last_used: float = field(default_factory=time.time)
    embedder: Embedder | None = None
    # What the template writes before a tool call's JSON ("" for bare JSON); learned on first use.
    tool_call_tag: str | None = None

    @property
    def name(self) -> str:
        return self.stored.name.canonical

    def get_embedder(self, threads: int) -> Embedder:
        """The embedding context, created on first use (most models never embed)."""
        if self.embedder is None or self.embedder.n_ctx != self.n_ctx:
            if self.embedder is not None:
                self.embedder.close()
            self.embedder = Embedder(self.llama, n_ctx=self.n_ctx, n_threads=threads)
        return self.embedder

    def state(self) -> LoadedModelState:
        """What /api/ps shows of this model."""
        if self.keep_alive < 0:
            expires = datetime.now(UTC) + _FAR_FUTURE
        elif self.expires_at is None:
            expires = datetime.now(UTC) + timedelta(seconds=self.keep_alive)
        else:
            expires = datetime.fromtimestamp(self.expires_at, UTC)
        return LoadedModelState(
            name=self.stored.name.display,
            model=self.stored.name.display,
            digest=self.stored.digest,
            size=self.llama.size + _kv_bytes(self),
            size_vram=0,
            expires_at=expires.isoformat().replace("+00:00", "Z"),
            context_length=self.n_ctx,
            details=self.stored.details(),
            busy=self.users,
        )

    def close(self) -> None:
        """Free the contexts, then the weights."""
        self.engine.close()
        if self.embedder is not None:
            self.embedder.close()
        self.llama.close()


def _kv_bytes(model: LoadedModel) -> int:
    """The KV cache the engine's context holds: every cell of every sequence slot."""
    return model.llama.kv_bytes_per_token * model.n_ctx * model.engine.n_parallel


class ModelCache:
    """Loaded models of one worker process."""

    def __init__(
        self,
        *,
        max_loaded: int,
        n_parallel: int,
        threads: int,
        n_gpu_layers: int,
        default_keep_alive: float = 300.0,
        on_change: Callable[[], None] = lambda: None,
    ):
        self.default_keep_alive = default_keep_alive
        self._max_loaded = max_loaded
        self._n_parallel = n_parallel
        self._threads = threads
        self._n_gpu_layers = n_gpu_layers
        self._on_change = on_change
        self._models: dict[str, LoadedModel] = {}
        # Held by the decode loop around each step, and by every change to the set of models.
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.loads = 0  # lifetime count, for tests and metrics

    # --- acquire / release -------------------------------------------------------------------------

    def acquire(
        self, stored: StoredModel, *, n_ctx: int, keep_alive: float | None
    ) -> tuple[LoadedModel, int]:
        """The model loaded with this context size and held for one job; returns it and the load time (ns)."""
        name = stored.name.canonical
        with self._changed:
            while True:
                loaded = self._models.get(name)
                if loaded is not None and loaded.stored.digest != stored.digest:
                    # The tag now points at other weights (re-created or pulled): reload once idle.
                    if loaded.users == 0:
                        self._unload_locked(name, "replaced")
                        continue
                elif loaded is not None and loaded.n_ctx == n_ctx:
                    loaded.users += 1
                    loaded.expires_at = None
                    if keep_alive is not None:
                        loaded.keep_alive = keep_alive
                    return loaded, 0
                elif loaded is not None and loaded.users == 0:
                    # A different num_ctx needs a new context; the weights stay.
                    started = time.perf_counter_ns()
                    loaded.engine.close()
                    loaded.engine = self._new_engine(loaded.llama, n_ctx)
                    loaded.n_ctx = n_ctx
                    loaded.users += 1
                    loaded.expires_at = None
                    if keep_alive is not None:
                        loaded.keep_alive = keep_alive
                    self._on_change()
                    return loaded, time.perf_counter_ns() - started
                elif loaded is None and self._make_room_locked():
                    break
                # Wait for a model to go idle (a running model is never evicted).
                self._changed.wait(timeout=1.0)
        started = time.perf_counter_ns()
        llama_model = LlamaModel(stored.model_path, n_gpu_layers=self._n_gpu_layers)
        try:
            engine = self._new_engine(llama_model, n_ctx)
        except Exception:
            llama_model.close()
            raise
        template = choose_template(
            request_template=None,
            layer=stored.template,
            gguf_template=llama_model.meta("tokenizer.chat_template"),
            architecture=llama_model.meta("general.architecture") or "",
        )
        loaded = LoadedModel(
            stored=stored,
            llama=llama_model,
            engine=engine,
            template=template,
            n_ctx=n_ctx,
            keep_alive=keep_alive if keep_alive is not None else self.default_keep_alive,
            users=1,
        )
        load_ns = time.perf_counter_ns() - started
        with self._changed:
            self._models[name] = loaded
            self.loads += 1
        log.info(
            "model loaded",
            extra={"model": stored.name.display, "n_ctx": n_ctx, "load_ms": round(load_ns / 1e6, 1)},
        )
        self._on_change()
        return loaded, load_ns

    def release(self, loaded: LoadedModel) -> None:
        """The job is done with the model: start its keep_alive clock, or unload it for keep_alive 0."""
        with self._changed:
            loaded.users = max(loaded.users - 1, 0)
            loaded.last_used = time.time()
            if loaded.users == 0:
                if loaded.keep_alive == 0:
                    self._unload_locked(loaded.name, "keep_alive 0")
                elif loaded.keep_alive != FOREVER:
                    loaded.expires_at = time.time() + loaded.keep_alive
            self._changed.notify_all()
        self._on_change()

    def _new_engine(self, model: LlamaModel, n_ctx: int) -> BatchEngine:
        return BatchEngine(model, n_ctx=n_ctx, n_parallel=self._n_parallel, n_threads=self._threads)

    # --- eviction ----------------------------------------------------------------------------------

    def _make_room_locked(self) -> bool:
        """Evict one idle model if at the limit; False when every model is busy."""
        if len(self._models) < self._max_loaded:
            return True
        idle = [m for m in self._models.values() if m.users == 0]
        if not idle:
            return False
        victim = min(
            idle, key=lambda m: (m.expires_at if m.expires_at is not None else float("inf"), m.last_used)
        )
        self._unload_locked(victim.name, "max loaded models")
        return True

    def _unload_locked(self, name: str, reason: str) -> None:
        loaded = self._models.pop(name)
        loaded.close()
        log.info("model unloaded", extra={"model": loaded.stored.name.display, "reason": reason})
        self._changed.notify_all()

    def unload(self, name: str) -> bool:
        """Unload now if idle, else as soon as its last sequence ends; False if not loaded."""
        with self._changed:
            loaded = self._models.get(name)
            if loaded is None:
                return False
            loaded.keep_alive = 0
            if loaded.users == 0:
                self._unload_locked(name, "keep_alive 0")
        self._on_change()
        return True

    def expire(self) -> None:
        """Unload idle models whose keep_alive has run out."""
        now = time.time()
        expired = False
        with self._changed:
            for name, m in list(self._models.items()):
                if m.users == 0 and m.expires_at is not None and m.expires_at <= now:
                    self._unload_locked(name, "expired")
                    expired = True
        if expired:
            self._on_change()

    # --- views -------------------------------------------------------------------------------------

    def busy_engines(self) -> list[BatchEngine]:
        with self.lock:
            return [m.engine for m in self._models.values() if m.engine.busy]

    def states(self) -> list[LoadedModelState]:
        """What /api/ps shows, read without the lock so that a heartbeat never waits for a decode step.

        Copying the dict's values is atomic under the GIL, and state() only reads fields.
        """
        return [m.state() for m in list(self._models.values())]

    def close(self) -> None:
        with self._changed:
            for name in list(self._models):
                self._unload_locked(name, "shutdown")
