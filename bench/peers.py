"""The comparison peers: llama.cpp's own `llama-server` and `llama-batched-bench`, built once.

They are built from the llama.cpp that the llama-cpp-python sdist of the installed version vendors,
so the peers and Herd run the same kernels, with the flags pip used for Herd's build: llama.cpp's
defaults (GGML_NATIVE, i.e. -march=native) plus whatever CMAKE_ARGS says, as pip reads it too.
The binaries are cached under .cache/peers/<version>/ with a stamp naming the version and flags;
a second call with the same stamp returns at once.

    python -m bench.peers          # build (about 10 minutes on 2 cores), or say where they are
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "peers"
TARGETS = ("llama-server", "llama-batched-bench")
STAMP = "stamp.json"

logger = logging.getLogger("bench.peers")


class PeerBuildError(RuntimeError):
    """The sdist download or the cmake build failed; the message names the step and its log."""


@dataclass(frozen=True)
class Peers:
    version: str
    server: Path
    batched_bench: Path


def llama_cpp_version() -> str:
    """The llama-cpp-python version Herd runs: the peers must vendor the same llama.cpp."""
    return version("llama-cpp-python")


def _cmake_args() -> list[str]:
    # pip's build of llama-cpp-python takes CMAKE_ARGS from the environment; so does this one, so
    # that a Herd built with e.g. -DGGML_NATIVE=OFF is compared with peers built the same way.
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        *shlex.split(os.environ.get("CMAKE_ARGS", "")),
    ]


def _stamp(ver: str) -> dict[str, object]:
    return {"version": ver, "cmake_args": _cmake_args(), "machine": _cpu_flags_digest()}


def _cpu_flags_digest() -> str:
    # -march=native binaries are only valid on a CPU with the same flags: rebuild when they change.
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(flags.encode()).hexdigest()[:16]


def cached(ver: str | None = None) -> Peers | None:
    """The built peers when the stamp matches this version, flags and CPU; else None."""
    ver = ver or llama_cpp_version()
    home = CACHE / ver
    try:
        stamp = json.loads((home / STAMP).read_text())
    except (OSError, ValueError):
        return None
    peers = Peers(ver, home / "bin" / "llama-server", home / "bin" / "llama-batched-bench")
    if stamp != _stamp(ver) or not peers.server.is_file() or not peers.batched_bench.is_file():
        return None
    return peers


def _run(argv: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise PeerBuildError(f"{argv[0]} exited with {proc.returncode} (log {log}):\n{tail}")


def build(jobs: int = 2) -> Peers:
    """Build the peers unless cached; idempotent. Runs at the lowest CPU priority (nice 19)."""
    ver = llama_cpp_version()
    found = cached(ver)
    if found is not None:
        return found
    home = CACHE / ver
    home.mkdir(parents=True, exist_ok=True)
    log = home / "build.log"
    log.write_text("")
    logger.info("building llama-server and llama-batched-bench from llama-cpp-python %s (log %s)", ver, log)
    with tempfile.TemporaryDirectory(prefix="herd-peers-") as tmp:
        work = Path(tmp)
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={ver}", "-d", str(work)],
            log,
        )  # fmt: skip
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work / "build"
        nice = ["nice", "-n", "19"] if shutil.which("nice") else []
        _run([*nice, "cmake", "-S", str(src), "-B", str(build_dir), *_cmake_args()], log)
        _run(
            [*nice, "cmake", "--build", str(build_dir), "--target", *TARGETS, "-j", str(jobs)],
            log,
        )
        bin_dir = home / "bin"
        bin_dir.mkdir(exist_ok=True)
        for target in TARGETS:
            shutil.copy2(build_dir / "bin" / target, bin_dir / target)
    (home / STAMP).write_text(json.dumps(_stamp(ver), indent=1))
    peers = cached(ver)
    assert peers is not None, "the stamp just written does not match"
    return peers


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    peers = build(jobs=int(os.environ.get("HERD_PEERS_JOBS", "2")))
    print(peers.server)
    print(peers.batched_bench)


if __name__ == "__main__":
    main()
