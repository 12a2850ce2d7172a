"""A process's resident memory, read from /proc, for the worker RSS comparison."""

from __future__ import annotations

from pathlib import Path


def parse_vm_rss(status_text: str) -> int:
    """Bytes of the ``VmRSS:`` line of a /proc/<pid>/status text."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmRSS in unexpected unit {unit!r}: {line!r}")
            return int(value) * 1024
    raise ValueError("no VmRSS line in the status text (a kernel thread, or a process that exited)")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` now."""
    return parse_vm_rss(Path(f"/proc/{pid}/status").read_text())


def kv_bytes_per_token(gguf: Path) -> int:
    """The worker's own figure for the KV cache bytes one token takes in ``gguf`` (all layers, f16)."""
    from workers.llama import LlamaModel

    model = LlamaModel(gguf)
    try:
        return model.kv_bytes_per_token
    finally:
        model.close()
