"""Whether llama.cpp's CPU weight repacking (its "extra buffer types") is safe and faster here.

Repacking lays quantised weights out for the CPU's wide matrix kernels (AVX-512, AMX, ARM's
i8mm). It is usually faster, but on some CPUs it crashes: with the llama.cpp of llama-cpp-python
0.3.36 the bundled Gemma 3 270M segfaults at its first decode on AMX Xeons. A segfault kills the
whole worker, so the first use of repacking for a (model file, CPU, llama.cpp build) is tried in a
CHILD process: load with repacking, decode a prompt and a few batched steps, and time the same steps
without it. The verdict is recorded in a small JSON file and read from there afterwards, so each
combination is probed once; the worker repacks only where the child survived and was not slower.

The child honours HERD_REPACK_PROBE_FAULT=segv (it sends itself SIGSEGV right after loading with
repacking, where the real crash happens) so that tests exercise the guard with a real crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_FILE_ENV = "HERD_REPACK_PROBE_FILE"
FAULT_ENV = "HERD_REPACK_PROBE_FAULT"
PROBE_NAME = "repack-probe.json"
TIMEOUT_S = 180.0
# Repacking must win by this much at 8 rows to be worth it: a tie is noise, and plain weights keep
# the decode kernels the same at every batch size.
MIN_SPEEDUP = 1.03
_STEP_ROWS = (1, 8)
_BLOB = re.compile(r"sha256[-:]([0-9a-f]{64})$")

# Verdicts already read or probed in this process, by key: a file that cannot be written (a
# read-only store) still probes once per process, never once per load.
_memo: dict[str, Verdict] = {}


@dataclass(frozen=True)
class Verdict:
    """The probe's outcome for one key. ``use`` is what the worker acts on."""

    key: str
    model: str
    ok: bool
    use: bool
    detail: str
    repack_ms: dict[str, float] | None = None
    plain_ms: dict[str, float] | None = None
    probed_at: float = 0.0


def model_digest(path: Path) -> str:
    # Store blobs are named by their sha256; any other file by its identity on disk (hashing a
    # 40 GB file at every load would cost more than the probe).
    match = _BLOB.search(path.name)
    if match:
        return match.group(1)
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _llama_build() -> str:
    import llama_cpp as llama

    info = llama.llama_print_system_info()
    return f"{llama.__version__} {info.decode(errors='replace') if isinstance(info, bytes) else info}"


def probe_key(path: Path, n_gpu_layers: int) -> str:
    """One key per model file, CPU flags, llama.cpp build and offload: what the verdict depends on."""
    parts = [model_digest(path), _cpu_flags(), platform.machine(), _llama_build(), str(n_gpu_layers)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def probe_file(model_path: Path) -> Path:
    """Where verdicts are recorded: HERD_REPACK_PROBE_FILE, else beside the store's blobs directory."""
    configured = os.environ.get(PROBE_FILE_ENV)
    if configured:
        return Path(configured)
    if model_path.parent.name == "blobs":
        return model_path.parent.parent / PROBE_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "herd" / PROBE_NAME


def _read(file: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(file: Path) -> Iterator[bool]:
    """An exclusive lock beside ``file`` so that workers starting together probe once; False if
    the directory cannot be written (then this process probes on its own)."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{file}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def _record(file: Path, verdict: Verdict) -> None:
    data = _read(file)
    data[verdict.key] = asdict(verdict)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(file)
    except OSError as exc:
        log.warning("could not record the repack probe in %s: %s", file, exc)


def repack_verdict(model_path: Path, n_gpu_layers: int = 0) -> Verdict:
    """The recorded verdict for this model here, probing in a child process the first time."""
    key = probe_key(model_path, n_gpu_layers)
    if key in _memo:
        return _memo[key]
    file = probe_file(model_path)
    with _locked(file):
        found = _read(file).get(key)
        if isinstance(found, dict):
            try:
                verdict = Verdict(**found)  # type: ignore[arg-type]
            except TypeError:
                verdict = None  # written by another version of this module: probe again
            if verdict is not None:
                _memo[key] = verdict
                return verdict
        verdict = _probe(model_path, n_gpu_layers, key)
        _record(file, verdict)
    _memo[key] = verdict
    level = logging.INFO if verdict.ok else logging.WARNING
    log.log(level, "repack probe for %s: %s", model_path.name, verdict.detail)
    return verdict


def _probe(model_path: Path, n_gpu_layers: int, key: str) -> Verdict:
    argv = [sys.executable, "-m", "workers.repack_probe", str(model_path), str(n_gpu_layers)]
    started = time.time()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return Verdict(key, model_path.name, False, False, f"the probe did not finish in {TIMEOUT_S:.0f} s")
    if proc.returncode != 0:
        how = (
            f"killed by {signal.Signals(-proc.returncode).name}"
            if proc.returncode < 0
            else f"exited with {proc.returncode}"
        )
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        detail = f"a decode with repacked weights crashed: the probe process was {how}"
        if tail:
            detail += f" ({' | '.join(tail)})"
        return Verdict(key, model_path.name, False, False, detail, probed_at=started)
    try:
        result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        repack_ms = {str(k): float(v) for k, v in result["repack_ms"].items()}
        plain_ms = {str(k): float(v) for k, v in result["plain_ms"].items()}
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        return Verdict(
            key, model_path.name, False, False, f"unreadable probe output: {exc}", probed_at=started
        )
    rows = str(max(_STEP_ROWS))
    faster = plain_ms[rows] >= repack_ms[rows] * MIN_SPEEDUP
    detail = (
        f"repacked weights decode safely; {rows} rows take {repack_ms[rows]:.1f} ms repacked "
        f"against {plain_ms[rows]:.1f} ms plain: {'repacking' if faster else 'plain weights'}"
    )
    return Verdict(key, model_path.name, True, faster, detail, repack_ms, plain_ms, started)


# --- the child -------------------------------------------------------------------------------------


def _step_times(model_path: Path, n_gpu_layers: int, repack: bool, fault: str | None) -> dict[str, float]:
    """Load with or without repacking, decode a prompt per sequence, then time batched steps."""
    import llama_cpp as llama

    params = llama.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = repack
    model = llama.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_path}")
    if repack and fault == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    n_seq = max(_STEP_ROWS)
    prompt_len = 16
    cparams = llama.llama_context_default_params()
    cparams.n_ctx = 64 * n_seq
    cparams.n_batch = 128
    cparams.n_seq_max = n_seq
    cparams.kv_unified = False
    cparams.no_perf = True
    ctx = llama.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("could not create a context")
    n_vocab = int(llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model)))
    batch = llama.llama_batch_init(128, 0, 1)

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token % n_vocab
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def decode(n: int) -> float:
        batch.n_tokens = n
        started = time.perf_counter()
        if llama.llama_decode(ctx, batch) != 0:
            raise RuntimeError(f"llama_decode of {n} tokens failed")
        return (time.perf_counter() - started) * 1000

    try:
        for seq in range(n_seq):  # a prompt per sequence: the prefill kernels
            for pos in range(prompt_len):
                put(pos, 100 + 7 * seq + pos, pos, seq, pos == prompt_len - 1)
            decode(prompt_len)
        times: dict[str, list[float]] = {str(rows): [] for rows in _STEP_ROWS}
        next_pos = [prompt_len] * n_seq
        for _ in range(5):  # single- and multi-row decode steps, interleaved
            for rows in _STEP_ROWS:
                for seq in range(rows):
                    put(seq, 500 + seq + next_pos[seq], next_pos[seq], seq, True)
                    next_pos[seq] += 1
                times[str(rows)].append(decode(rows))
        return {rows: sorted(ms)[len(ms) // 2] for rows, ms in times.items()}
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)
        llama.llama_model_free(model)


_quiet: object = None


def main() -> None:
    """``python -m workers.repack_probe MODEL N_GPU_LAYERS``: one JSON line on stdout, or a crash."""
    import llama_cpp as llama

    model_path, n_gpu_layers = Path(sys.argv[1]), int(sys.argv[2])
    global _quiet
    _quiet = llama.llama_log_callback(lambda level, text, user_data: None)  # held: C keeps the pointer
    llama.llama_log_set(_quiet, None)
    llama.llama_backend_init()
    fault = os.environ.get(FAULT_ENV)
    repack_ms = _step_times(model_path, n_gpu_layers, True, fault)
    plain_ms = _step_times(model_path, n_gpu_layers, False, fault)
    print(json.dumps({"repack_ms": repack_ms, "plain_ms": plain_ms}))


if __name__ == "__main__":
    main()
