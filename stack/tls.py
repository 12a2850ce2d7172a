"""nginx's TLS certificate: the operator's (HERD_TLS_CERT/HERD_TLS_KEY) or a self-signed one made once."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
from pathlib import Path

from stack.settings import StackSettings

logger = logging.getLogger(__name__)

SELF_SIGNED_DAYS = 825  # the longest validity Apple's clients accept for a server certificate


class TlsError(RuntimeError):
    """No certificate could be made (openssl missing or failing)."""


def tls_paths(settings: StackSettings) -> tuple[Path, Path]:
    """(certificate, key) nginx serves: the configured pair, else the self-signed pair in the run dir."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        return settings.tls_cert, settings.tls_key
    tls_dir = settings.run_dir / "tls"
    return tls_dir / "herd-selfsigned.crt", tls_dir / "herd-selfsigned.key"


def fingerprint(cert: Path) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file, as ``AB:CD:...``."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _subject_alt_names(host: str) -> str:
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        names.append(f"DNS:{host}")
    else:
        if not address.is_unspecified and f"IP:{address}" not in names:
            names.append(f"IP:{address}")
    return ",".join(names)


def make_self_signed(cert: Path, key: Path, settings: StackSettings, host: str | None = None) -> None:
    """Write a self-signed P-256 certificate and its key with the openssl CLI (the key readable by us only).

    It names loopback and ``host`` (default: where nginx listens).
    """
    host = settings.listen_host if host is None else host
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError(
            "openssl is not installed (sudo apt-get install -y openssl), or set HERD_TLS_CERT/HERD_TLS_KEY"
        )
    cert.parent.mkdir(parents=True, exist_ok=True)
    tmp_cert, tmp_key = cert.with_suffix(".crt.tmp"), key.with_suffix(".key.tmp")
    argv = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(tmp_key), "-out", str(tmp_cert), "-days", str(SELF_SIGNED_DAYS),
        "-subj", "/CN=herd", "-addext", f"subjectAltName={_subject_alt_names(host)}",
    ]  # fmt: skip
    old_umask = os.umask(0o077)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    finally:
        os.umask(old_umask)
    if proc.returncode != 0:
        raise TlsError(f"openssl could not make a certificate:\n{(proc.stderr or proc.stdout).strip()}")
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)  # last: a certificate on disk always has its key beside it


def ensure_tls_pair(settings: StackSettings) -> tuple[Path, Path]:
    """The pair nginx will serve, made self-signed when none is configured or made yet; logs its fingerprint."""
    cert, key = tls_paths(settings)
    if settings.tls_cert is None and not (cert.is_file() and key.is_file()):
        make_self_signed(cert, key, settings)
        logger.info("made a self-signed TLS certificate at %s", cert)
    logger.info("TLS certificate %s sha256 fingerprint %s", cert, fingerprint(cert))
    return cert, key


def redis_tls_paths(settings: StackSettings) -> tuple[Path, Path]:
    """(certificate, key) Redis serves: HERD_REDIS_TLS_CERT/KEY, else the self-signed pair in the run dir.

    The self-signed certificate is also the CA file a worker verifies Redis with (HERD_REDIS_CA).
    """
    if settings.redis_tls_cert is not None and settings.redis_tls_key is not None:
        return settings.redis_tls_cert, settings.redis_tls_key
    tls_dir = settings.run_dir / "redis" / "tls"
    return tls_dir / "redis.crt", tls_dir / "redis.key"


def ensure_redis_tls_pair(settings: StackSettings) -> tuple[Path, Path]:
    """Redis's TLS pair, made self-signed for loopback and HERD_REDIS_BIND when none is configured or made yet.

    A pair made for another HERD_REDIS_BIND is made again: a worker checks the address it dials against it.
    """
    cert, key = redis_tls_paths(settings)
    if settings.redis_tls_cert is None:
        address = ipaddress.ip_address(settings.redis_bind)
        want = f"IP Address:{'127.0.0.1' if address.is_unspecified else address}"
        if not (cert.is_file() and key.is_file() and want in _san_text(cert)):
            make_self_signed(cert, key, settings, host=settings.redis_bind)
            logger.info("made a self-signed TLS certificate for Redis at %s", cert)
    logger.info("Redis TLS certificate %s sha256 fingerprint %s", cert, fingerprint(cert))
    return cert, key


def _san_text(cert: Path) -> str:
    """The subjectAltName extension of ``cert`` as openssl prints it (empty when unreadable)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return ""
    proc = subprocess.run(
        [openssl, "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return proc.stdout
