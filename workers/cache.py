"""The model cache: which models this worker holds, for how long, and which one to evict.

A model is loaded on demand, kept while it has running sequences, and afterwards until its keep_alive
runs out (never, for a negative keep_alive). Before loading, its memory estimate (herd/memory.py) is
checked against the worker's budget. When it does not fit, or OLLAMA_MAX_LOADED_MODELS is reached, idle
models are evicted: the shortest keep_alive first, then the least recently used. A model with running
sequences never is, and a pinned one (negative keep_alive) never is for memory. When nothing can be
evicted yet the load waits (the worker takes no other job meanwhile, so waiting is FIFO); a model that
could not fit even then is refused at once. Loading happens outside the lock so that other models keep
decoding meanwhile.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from herd.contracts import LoadedModelState
from herd.durations import FOREVER, MAX_KEEP_ALIVE_S
from herd.gguf_meta import GGUFError
from herd.memory import Estimate, available_ram, estimate, format_gib, gpu_memory
from herd.store import StoredModel
from herd.templates.builtin import ChatTemplate, choose_template
from workers.embedder import Embedder
from workers.engine import BatchEngine
from workers.engine_io import ContextError
from workers.llama import LlamaModel, ModelLoadError
from workers.metrics import EvictionReason, WorkerMetrics
from workers.vision import Projector

log = logging.getLogger(__name__)

# /api/ps shows a pinned model's expiry this far ahead (Ollama shows a date centuries away).
_FAR_FUTURE = timedelta(days=365 * 100)
# OLLAMA_NUM_PARALLEL unset: this many sequences per model when they fit, else one (Ollama's rule).
AUTO_PARALLEL = 4


class ModelTooLarge(RuntimeError):
    """The model cannot fit in this worker's memory even after every possible eviction."""


class InvalidKeepAlive(ValueError):
    """A keep_alive that is no number of seconds (NaN)."""


def bound_keep_alive(seconds: float) -> float:
    """keep_alive as the cache holds it: FOREVER for a negative one and for one beyond MAX_KEEP_ALIVE_S.

    The API bounds it already; a job enqueued by other means must not reach the expiry arithmetic
    either, where a huge value overflows `datetime` and `time_t` (and killed the heartbeat thread).
    """
    if math.isnan(seconds):
        raise InvalidKeepAlive(f"invalid keep_alive {seconds!r}: not a number of seconds")
    return FOREVER if seconds < 0 or seconds > MAX_KEEP_ALIVE_S else seconds


def eviction_order(model: LoadedModel) -> tuple[float, float]:
    """Evict the shortest keep_alive first, then the least recently used."""
    return (model.keep_alive if model.keep_alive >= 0 else float("inf"), model.last_used)


@dataclass
class LoadedModel:
    """One model in memory: its weights, its batching engine and its expiry rule."""

    stored: StoredModel
    llama: LlamaModel
    engine: BatchEngine
    template: ChatTemplate
    n_ctx: int
    keep_alive: float  # bound_keep_alive's: FOREVER or at most MAX_KEEP_ALIVE_S, so expiries never overflow
    users: int = 0  # jobs holding it: running sequences plus jobs being prepared
    expires_at: float | None = None  # wall clock; None while in use or pinned
    last_used: float = field(default_factory=time.time)
    embedder: Embedder | None = None
    # What the template writes before a tool call's JSON ("" for bare JSON); learned on first use.
    tool_call_tag: str | None = None
    estimate: Estimate = field(default_factory=lambda: Estimate(0, 0, 0))
    # The vision projector (libmtmd), for a model whose manifest has a projector layer.
    projector: Projector | None = None

    @property
    def pinned(self) -> bool:
        return self.keep_alive < 0

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
            num_parallel=self.engine.n_parallel,
            keep_alive=self.keep_alive,
            estimate=self.estimate.total,
            last_used=self.last_used,
        )

    def close(self) -> None:
        """Free the contexts, then the weights."""
        self.engine.close()
        if self.embedder is not None:
            self.embedder.close()
        if self.projector is not None:
            self.projector.close()
        self.llama.close()


def model_template(stored: StoredModel, llama_model: LlamaModel) -> ChatTemplate:
    """The chat template a model runs with: its Modelfile's, else its GGUF's, else one for its family."""
    return choose_template(
        request_template=None,
        layer=stored.template,
        gguf_template=llama_model.meta("tokenizer.chat_template"),
        architecture=llama_model.meta("general.architecture") or "",
    )


def _kv_bytes(model: LoadedModel) -> int:
    """The KV cache the engine's context holds, as herd/memory.py sizes it (window-sized SWA layers)."""
    return model.estimate.kv_cache


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
        memory_limit: int | None = None,
        gpu_index: int | None = None,
        metrics: WorkerMetrics | None = None,
        batch_invariant: bool = False,
        on_change: Callable[[], None] = lambda: None,
    ):
        self.default_keep_alive = bound_keep_alive(default_keep_alive)
        self.max_loaded = max_loaded
        self.n_parallel = n_parallel  # 0: AUTO_PARALLEL when it fits, else 1
        self.memory_limit = memory_limit
        self._gpu_index = gpu_index
        self._threads = threads
        self._n_gpu_layers = n_gpu_layers
        self._metrics = metrics
        self._batch_invariant = batch_invariant
        self._on_change = on_change
        self._models: dict[str, LoadedModel] = {}
        # Held by the decode loop around each step, and by every change to the set of models.
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.loads = 0  # lifetime count, for tests and metrics

    # --- memory ------------------------------------------------------------------------------------

    @property
    def memory_used(self) -> int:
        """What the loaded models are counted for."""
        return sum(m.estimate.total for m in list(self._models.values()))

    def memory_budget(self) -> int:
        """HERD_MEMORY_LIMIT, else the device's free memory plus what our own models take."""
        if self.memory_limit is not None:
            return self.memory_limit
        free = gpu_memory(self._gpu_index, "free") if self._gpu_index is not None else None
        if free is None:
            free = available_ram()
        return free + self.memory_used

    def _estimate(self, stored: StoredModel, n_ctx: int, n_parallel: int) -> Estimate:
        try:
            return estimate(
                stored.gguf_info(),
                stored.model_path,
                n_ctx=n_ctx,
                n_parallel=n_parallel,
                projectors=stored.projectors,
                on_gpu=self._gpu_index is not None,
            )
        except (OSError, GGUFError) as exc:
            raise ModelLoadError(f"cannot read {stored.name.display}: {exc}") from exc

    def _plan(self, stored: StoredModel, n_ctx: int, n_parallel: int | None) -> tuple[int, Estimate]:
        """The parallelism to load with and its estimate; refuses a model that can never fit."""
        budget = self.memory_budget()
        # Pinned models are never evicted for memory: what they hold is never ours to give.
        pinned = sum(
            m.estimate.total for m in self._models.values() if m.pinned and m.name != stored.name.canonical
        )
        room = budget - pinned
        wanted = n_parallel or self.n_parallel
        if not wanted:
            auto = self._estimate(stored, n_ctx, AUTO_PARALLEL)
            wanted = AUTO_PARALLEL if auto.total <= room else 1
        need = self._estimate(stored, n_ctx, wanted)
        if need.total > room:
            held = f" ({format_gib(pinned)} is held by pinned models)" if pinned else ""
            raise ModelTooLarge(
                f"model requires more memory ({format_gib(need.total)} for num_ctx {n_ctx} × "
                f"{wanted} parallel) than is available ({format_gib(room)}){held}"
            )
        return wanted, need

    # --- acquire / release -------------------------------------------------------------------------

    def acquire(
        self,
        stored: StoredModel,
        *,
        n_ctx: int,
        keep_alive: float | None,
        n_parallel: int | None = None,
    ) -> tuple[LoadedModel, int]:
        """The model loaded with this context size and held for one job; returns it and the load time (ns).

        `n_parallel` (a request's or the model's `num_parallel`) applies when the model is (re)loaded.
        InvalidKeepAlive for a NaN keep_alive, before anything is held.
        """
        if keep_alive is not None:
            keep_alive = bound_keep_alive(keep_alive)
        name = stored.name.canonical
        with self._changed:
            while True:
                loaded = self._models.get(name)
                if loaded is not None and loaded.stored.digest != stored.digest:
                    # The tag now points at other weights (re-created or pulled): reload once idle.
                    if loaded.users == 0:
                        self._unload_locked(name, "requested")
                        continue
                elif (
                    loaded is not None
                    and loaded.n_ctx == n_ctx
                    and n_parallel in (None, loaded.engine.n_parallel)
                ):
                    return self._hold(loaded, keep_alive), 0
                elif loaded is not None and loaded.users == 0:
                    # A different num_ctx or num_parallel needs a new context; the weights stay.
                    started = time.perf_counter_ns()
                    wanted, need = self._plan(stored, n_ctx, n_parallel)
                    loaded.engine.close()
                    try:
                        loaded.engine = self._new_engine(loaded.llama, n_ctx, wanted)
                    except BaseException:
                        # Its old context is freed: the model cannot stay listed as usable.
                        self._unload_locked(name, "requested")
                        raise
                    loaded.n_ctx = n_ctx
                    loaded.estimate = need
                    self._on_change()
                    return self._hold(loaded, keep_alive), time.perf_counter_ns() - started
                elif loaded is None:
                    wanted, need = self._plan(stored, n_ctx, n_parallel)
                    if self._make_room_locked(need.total):
                        break
                # Wait for a model to go idle (a running model is never evicted).
                self._changed.wait(timeout=1.0)
        started = time.perf_counter_ns()
        loaded = self._load(stored, n_ctx, wanted, need)
        loaded.keep_alive = keep_alive if keep_alive is not None else self.default_keep_alive
        load_ns = time.perf_counter_ns() - started
        with self._changed:
            self._models[name] = loaded
            self.loads += 1
        try:
            if self._metrics is not None:
                self._metrics.record_load(stored.name.display, load_ns / 1e9)
            log.info(
                "model loaded",
                extra={
                    "model": stored.name.display,
                    "n_ctx": n_ctx,
                    "parallel": wanted,
                    "estimate_mib": need.total >> 20,
                    "load_ms": round(load_ns / 1e6, 1),
                },
            )
            self._on_change()
        except BaseException:
            self.release(loaded)  # listed and held for this job, which now fails
            raise
        return loaded, load_ns

    def _load(self, stored: StoredModel, n_ctx: int, n_parallel: int, need: Estimate) -> LoadedModel:
        """The model's weights, context and template, held once; on failure nothing stays allocated."""
        try:
            # Repacked CPU weights only where a probe in a child process found them safe and faster for
            # this file and CPU (workers/repack_probe.py: they crash the first decode on AMX Xeons), and
            # never in the deterministic mode: their kernels switch at 4 rows, so a sequence's numbers
            # would depend on what it is batched with.
            llama_model = LlamaModel(
                stored.model_path, n_gpu_layers=self._n_gpu_layers, repack=not self._batch_invariant
            )
        except ModelLoadError:
            if self._metrics is not None:
                self._metrics.record_load_failure(stored.name.display)
            raise
        try:
            engine = self._new_engine(llama_model, n_ctx, n_parallel)
        except BaseException as exc:
            llama_model.close()
            if isinstance(exc, ContextError) and self._metrics is not None:
                self._metrics.record_load_failure(stored.name.display)
            raise
        try:
            template = model_template(stored, llama_model)
            # Ollama's manifests carry one projector at most; it reads the first.
            projector = (
                Projector(
                    stored.projectors[0],
                    llama_model,
                    n_threads=self._threads,
                    use_gpu=self._n_gpu_layers != 0,
                )
                if stored.projectors
                else None
            )
        except BaseException:
            engine.close()
            llama_model.close()
            raise
        return LoadedModel(
            stored=stored,
            llama=llama_model,
            engine=engine,
            template=template,
            n_ctx=n_ctx,
            keep_alive=self.default_keep_alive,
            users=1,
            estimate=need,
            projector=projector,
        )

    def _hold(self, loaded: LoadedModel, keep_alive: float | None) -> LoadedModel:
        loaded.users += 1
        loaded.expires_at = None
        loaded.last_used = time.time()
        if keep_alive is not None:
            loaded.keep_alive = keep_alive
        return loaded

    def release(self, loaded: LoadedModel) -> None:
        """The job is done with the model: start its keep_alive clock, or unload it for keep_alive 0."""
        with self._changed:
            loaded.users = max(loaded.users - 1, 0)
            loaded.last_used = time.time()
            if loaded.users == 0:
                if loaded.keep_alive == 0:
                    if self._models.get(loaded.name) is loaded:
                        self._unload_locked(loaded.name, "requested")
                elif loaded.keep_alive != FOREVER:
                    loaded.expires_at = time.time() + loaded.keep_alive
            self._changed.notify_all()
        self._on_change()

    def _new_engine(self, model: LlamaModel, n_ctx: int, n_parallel: int) -> BatchEngine:
        return BatchEngine(
            model,
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_threads=self._threads,
            batch_invariant=self._batch_invariant,
        )

    # --- eviction ----------------------------------------------------------------------------------

    def _make_room_locked(self, need: int) -> bool:
        """Evict idle models until one more model of `need` bytes fits; False when it must wait."""
        while len(self._models) >= self.max_loaded:
            idle = [m for m in self._models.values() if m.users == 0]
            if not idle:
                return False
            # Pinned models go last, but MAX_LOADED_MODELS is a hard limit even for them.
            victim = min(idle, key=lambda m: (m.pinned, *eviction_order(m)))
            self._unload_locked(victim.name, "max_loaded_models")
        while self.memory_used + need > self.memory_budget():
            idle = [m for m in self._models.values() if m.users == 0 and not m.pinned]
            if not idle:
                return False
            self._unload_locked(min(idle, key=eviction_order).name, "memory_pressure")
        return True

    def _unload_locked(self, name: str, reason: EvictionReason) -> None:
        loaded = self._models.pop(name)
        loaded.close()
        if self._metrics is not None:
            self._metrics.record_eviction(loaded.stored.name.display, reason)
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
                self._unload_locked(name, "requested")
        self._on_change()
        return True

    def expire(self) -> None:
        """Unload idle models whose keep_alive has run out."""
        now = time.time()
        expired = False
        with self._changed:
            for name, m in list(self._models.items()):
                if m.users == 0 and m.expires_at is not None and m.expires_at <= now:
                    self._unload_locked(name, "keep_alive_expired")
                    expired = True
        if expired:
            self._on_change()

    # --- views -------------------------------------------------------------------------------------

    def busy_engines(self) -> list[BatchEngine]:
        """The engines with sequences to step, read without the lock (a load or an unload may hold it).

        A busy engine's model is held by its jobs, and the cache frees idle models only.
        """
        return [m.engine for m in list(self._models.values()) if m.engine.busy]

    def states(self) -> list[LoadedModelState]:
        """What /api/ps shows, read without the lock so that a heartbeat never waits for a decode step.

        Copying the dict's values is atomic under the GIL, and state() only reads fields.
        """
        return [m.state() for m in list(self._models.values())]

    def residency(self) -> dict[str, tuple[int, int]]:
        """Each loaded model's (busy, total) sequence slots, for the metrics."""
        return {
            m.stored.name.display: (m.engine.busy, m.engine.n_parallel) for m in list(self._models.values())
        }

    def close(self) -> None:
        with self._changed:
            for name in list(self._models):
                self._unload_locked(name, "worker_shutdown")
