"""llama.cpp's own tools as the comparison: `llama-server` on a free loopback port, and the step curve
of `llama-batched-bench`, both from bench/peers.py (the llama.cpp that Herd runs, built the same way).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.ports import free_port
from bench.server_process import ServerError, server_process


class NativeError(ServerError):
    """llama-batched-bench did not finish; the message carries its output's tail."""


@dataclass(frozen=True)
class NativeServer:
    url: str
    pid: int


@contextmanager
def native_server(
    binary: Path,
    gguf: Path,
    *,
    threads: int,
    num_ctx: int,
    parallel: int,
    repack: bool,
    log_path: Path,
    timeout: float = 120.0,
) -> Iterator[NativeServer]:
    """llama-server with ``parallel`` slots of ``num_ctx`` tokens each (its -c is the total, split
    between the slots), its prompt cache on (its default); stopped on exit."""
    port = free_port()
    argv = [
        str(binary),
        "-m", str(gguf),
        "-t", str(threads),
        "-tb", str(threads),
        "-c", str(num_ctx * parallel),
        "-np", str(parallel),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--no-webui",
        *([] if repack else ["--no-repack"]),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server_process(argv, "llama-server", f"{url}/health", log_path, timeout) as proc:
        yield NativeServer(url, proc.pid)


# | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|(.*)\|\s*$")


def parse_batched_bench(text: str) -> dict[int, dict[str, float]]:
    """llama-batched-bench's table, by its B (parallel sequences): decode step ms and tok/s, prefill tok/s."""
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        pp, tg, b = int(match[1]), int(match[2]), int(match[3])
        cells = [float(c) for c in match[5].split("|")]
        t_pp, s_pp, t_tg, s_tg = cells[0], cells[1], cells[2], cells[3]
        out[b] = {
            "pp": pp,
            "tg": tg,
            "prefill_tps": s_pp,
            "decode_tps": s_tg,
            "step_ms": t_tg / tg * 1000 if tg else 0.0,
            "prefill_s": t_pp,
        }
    if not out:
        raise ValueError(f"no result rows in llama-batched-bench's output:\n{text[-2000:]}")
    return out


def batched_bench(
    binary: Path,
    gguf: Path,
    *,
    threads: int,
    rows: tuple[int, ...],
    npp: int,
    ntg: int,
    repack: bool,
    timeout: float = 600.0,
) -> tuple[dict[int, dict[str, float]], str]:
    """One llama-batched-bench run over ``rows``; its parsed table and the command line."""
    argv = [
        str(binary),
        "-m", str(gguf),
        "-t", str(threads),
        "-tb", str(threads),
        "-c", str(max(rows) * 256),  # 256 cells a sequence, as bench/steps.py gives each row
        "-npp", str(npp),
        "-ntg", str(ntg),
        "-npl", ",".join(map(str, rows)),
        *([] if repack else ["--no-repack"]),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise NativeError(
            f"llama-batched-bench exited with {proc.returncode}:\n{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    shown = " ".join([binary.name, *argv[1:]])
    return parse_batched_bench(text), shown
