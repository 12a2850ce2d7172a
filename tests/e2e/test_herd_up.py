"""`herd up` as a user runs it: it prints a URL and a curl that works, and Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_herd_up_prints_a_working_curl_and_stops_cleanly_on_ctrl_c(models_dir: Path, tmp_path: Path) -> None:
    ports = {
        "OLLAMA_HOST": free_port(),
        "HERD_API_PORT": free_port(),
        "HERD_REDIS_PORT": free_port(),
        "HERD_METRICS_PORT": free_port(),
    }
    env = {
        **os.environ,
        "OLLAMA_HOST": f"127.0.0.1:{ports['OLLAMA_HOST']}",
        "HERD_API_PORT": str(ports["HERD_API_PORT"]),
        "HERD_REDIS_PORT": str(ports["HERD_REDIS_PORT"]),
        "HERD_METRICS_PORT": str(ports["HERD_METRICS_PORT"]),
        "HERD_RUN_DIR": str(tmp_path / "run"),
        "OLLAMA_MODELS": str(models_dir),
        "HERD_API_PROCESSES": "1",
    }
    herd = Path(sys.executable).with_name("herd")
    proc = subprocess.Popen(
        [str(herd), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        curl_line = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            if line.strip().startswith("curl "):
                curl_line = line.strip()
                break
        assert f"http://127.0.0.1:{ports['OLLAMA_HOST']}" in curl_line
        # The printed curl names no num_predict, so the model may write at length: read the first
        # streamed lines (proof that it answers) and stop it.
        curl = subprocess.Popen(
            shlex.split(curl_line), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert curl.stdout is not None
            first = [json.loads(curl.stdout.readline()) for _ in range(3)]
        finally:
            curl.kill()
            curl.wait()
        assert all(c["model"] == "gemma3:270m" and "response" in c for c in first)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        for name, port in ports.items():
            assert not _port_open(port), f"{name} port {port} still open after Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
