"""A real OCI distribution registry over HTTPS, in a thread, for pull and push tests.

It speaks the parts of the distribution API that Ollama and Herd use: GET/HEAD manifests and blobs
(with Range), token auth (401 + ``WWW-Authenticate: Bearer realm=...`` and a token endpoint), and the
push side (POST uploads/, PATCH chunks, PUT ?digest=, PUT manifests). Certificates come from
``trustme`` for a made-up host name, so a client trusts it only with the test CA, and (with
:mod:`tests.support.proxy`) reaches it only through a proxy that resolves that name.

Faults a test can switch on: cut a blob's response off at a byte offset (resume tests), serve a blob
whose bytes do not match its digest (verification tests), and slow blob bodies down (concurrency).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import trustme

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"

_PATH = re.compile(r"^/v2/(?P<repo>[^/]+/[^/]+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_UPLOAD = re.compile(r"^/v2/(?P<repo>[^/]+/[^/]+)/blobs/uploads/(?P<id>[^/]*)$")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Hit:
    """One request the registry answered."""

    method: str
    path: str
    range: str | None
    status: int
    authorization: str | None


@dataclass
class OciRegistry:
    """State and fault switches of the registry; the handler reads them under ``lock``."""

    hostname: str
    port: int = 0
    scheme: str = "https"
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    # Hugging Face style: tags are case-insensitive quants and `latest` means Q4_K_M.
    hf_style: bool = False
    require_token: bool = False
    # digest → byte offset of the blob after which every GET of it is cut off (connection closed).
    cut_at: dict[str, int] = field(default_factory=dict)
    # digests served with one byte flipped (same length, wrong sha256).
    corrupt: set[str] = field(default_factory=set)
    # seconds to sleep per 64 KiB of blob body, to make transfers overlap.
    slow_s: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # token → the (repository, action) pairs it grants
    _tokens: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """``hostname:port``, as a model name's host part."""
        return f"{self.hostname}:{self.port}"

    def add_blob(self, data: bytes) -> str:
        """Serve ``data`` as a blob; returns its digest."""
        digest = digest_of(data)
        with self.lock:
            self.blobs[digest] = data
        return digest

    def add_model(self, repo: str, tag: str, gguf: Path, template: str | None = None) -> bytes:
        """Serve a GGUF (and optional template) as ``repo:tag`` in Ollama's manifest shape; returns it."""
        layers = [(MEDIA_MODEL, gguf.read_bytes())]
        if template is not None:
            layers.append((MEDIA_TEMPLATE, template.encode()))
        entries = [{"mediaType": m, "digest": self.add_blob(b), "size": len(b)} for m, b in layers]
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "rootfs": {"type": "layers", "diff_ids": [e["digest"] for e in entries]},
            },
            separators=(",", ":"),
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": self.add_blob(config), "size": len(config)},
            "layers": entries,
        }
        # Indented on purpose: a pull must keep these exact bytes, not a re-serialisation.
        raw = json.dumps(manifest, indent=2).encode()
        with self.lock:
            self.manifests[(repo, tag)] = raw
        return raw

    def blob_hits(self, digest: str) -> list[Hit]:
        """GETs of one blob, in order."""
        with self.lock:
            return [h for h in self.hits if h.method == "GET" and h.path.endswith(f"/blobs/{digest}")]

    def resolve_tag(self, repo: str, tag: str) -> bytes | None:
        """The manifest for ``repo:tag`` (Hugging Face's tag rules when ``hf_style``)."""
        with self.lock:
            if not self.hf_style:
                return self.manifests.get((repo, tag))
            want = "q4_k_m" if tag.lower() == "latest" else tag.lower()
            for (r, t), raw in self.manifests.items():
                if r == repo and t.lower() == want:
                    return raw
            return None

    def issue_token(self, scopes: list[str]) -> str:
        """A token granting ``repository:<repo>:<actions>`` scopes (the Docker token protocol)."""
        grants: set[tuple[str, str]] = set()
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind == "repository":
                grants |= {(repo, a) for a in actions.split(",")}
        token = secrets.token_hex(8)
        with self.lock:
            self._tokens[token] = grants
        return token

    def token_ok(self, header: str | None, repo: str, action: str) -> bool:
        """Whether ``header`` carries a token granting ``action`` on ``repo``."""
        if header is None or not header.startswith("Bearer "):
            return False
        with self.lock:
            return all((repo, a) in self._tokens.get(header[7:], set()) for a in action.split(","))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read `hits`; stderr noise helps nobody

    @property
    def reg(self) -> OciRegistry:
        return self.server.registry

    def _record(self, status: int) -> None:
        with self.reg.lock:
            self.reg.hits.append(
                Hit(
                    self.command,
                    urlsplit(self.path).path,
                    self.headers.get("Range"),
                    status,
                    self.headers.get("Authorization"),
                )
            )

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._record(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._send(status, body, {"Content-Type": "application/json"})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _unauthorized(self, repo: str, action: str) -> bool:
        """Answer 401 with a Bearer challenge unless the request carries a token we issued."""
        if not self.reg.require_token or self.reg.token_ok(self.headers.get("Authorization"), repo, action):
            return False
        realm = f"{self.reg.scheme}://{self.reg.host}/token"
        challenge = f'Bearer realm="{realm}",service="{self.reg.hostname}",scope="repository:{repo}:{action}"'
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "token required"}]}).encode()
        self._body()  # drain an upload body so the connection stays usable
        self._send(401, body, {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
        return True

    # --- reads -------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/token":
            params = parse_qs(url.query)
            with self.reg.lock:
                self.reg.token_requests.append(params)
            body = json.dumps({"token": self.reg.issue_token(params.get("scope", []))}).encode()
            self._send(200, body, {"Content-Type": "application/json"})
            return
        m = _PATH.match(url.path)
        if m is None:
            self._error(404, "NAME_UNKNOWN", f"no route {url.path}")
            return
        repo, kind, ref = m["repo"], m["kind"], m["ref"]
        if self._unauthorized(repo, "pull"):
            return
        if kind == "manifests":
            raw = self.reg.resolve_tag(repo, ref)
            if raw is None:
                self._error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repo}:{ref}")
                return
            self._send(
                200, raw, {"Content-Type": MANIFEST_MEDIA_TYPE, "Docker-Content-Digest": digest_of(raw)}
            )
            return
        with self.reg.lock:
            data = self.reg.blobs.get(ref)
            corrupt = ref in self.reg.corrupt
            cut = self.reg.cut_at.get(ref)
        if data is None:
            self._error(404, "BLOB_UNKNOWN", f"blob unknown: {ref}")
            return
        if corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._serve_blob(ref, data, cut)

    def _serve_blob(self, digest: str, data: bytes, cut: int | None) -> None:
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.fullmatch(rng.strip())
            if m is None or int(m[1]) >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            start = int(m[1])
            end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            status = 206
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        stop = end + 1
        if cut is not None and start < cut <= end:
            stop = cut  # send part of the body, then hang up: the client sees a short read
        pos = start
        while pos < stop:
            n = min(64 * 1024, stop - pos)
            self.wfile.write(data[pos : pos + n])
            pos += n
            with self.reg.lock:
                self.reg.served[digest] = self.reg.served.get(digest, 0) + n
            if self.reg.slow_s:
                time.sleep(self.reg.slow_s)
        if stop <= end:
            self.wfile.flush()
            self.close_connection = True

    # --- writes (push) -----------------------------------------------------------------------------

    def do_POST(self) -> None:
        m = _UPLOAD.match(urlsplit(self.path).path)
        if m is None or m["id"]:
            self._error(404, "NAME_UNKNOWN", f"no route {self.path}")
            return
        if self._unauthorized(m["repo"], "push,pull"):
            return
        self._body()
        upload = secrets.token_hex(8)
        with self.reg.lock:
            self.reg.uploads[upload] = bytearray()
        self._send(202, b"", {"Location": f"/v2/{m['repo']}/blobs/uploads/{upload}", "Range": "0-0"})

    def do_PATCH(self) -> None:
        m = _UPLOAD.match(urlsplit(self.path).path)
        if m is None or m["id"] not in self.reg.uploads:
            self._error(404, "BLOB_UPLOAD_UNKNOWN", f"no upload {self.path}")
            return
        if self._unauthorized(m["repo"], "push,pull"):
            return
        body = self._body()
        with self.reg.lock:
            buf = self.reg.uploads[m["id"]]
            buf += body
            size = len(buf)
        location = f"/v2/{m['repo']}/blobs/uploads/{m['id']}"
        self._send(202, b"", {"Location": location, "Range": f"0-{size - 1}"})

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        if self._put_upload(url.path, url.query):
            return
        m = _PATH.match(url.path)
        if m is None or m["kind"] != "manifests":
            self._error(404, "NAME_UNKNOWN", f"no route {url.path}")
            return
        if self._unauthorized(m["repo"], "push,pull"):
            return
        raw = self._body()
        try:
            doc = json.loads(raw)
            items = [doc["config"], *doc["layers"]]
        except (ValueError, KeyError, TypeError):
            self._error(400, "MANIFEST_INVALID", "not a manifest")
            return
        with self.reg.lock:
            missing = [i["digest"] for i in items if i["digest"] not in self.reg.blobs]
        if missing:
            self._error(400, "MANIFEST_BLOB_UNKNOWN", f"blob unknown: {missing[0]}")
            return
        with self.reg.lock:
            self.reg.manifests[(m["repo"], m["ref"])] = raw
        self._send(201, b"", {"Docker-Content-Digest": digest_of(raw)})

    def _put_upload(self, path: str, query: str) -> bool:
        m = _UPLOAD.match(path)
        if m is None:
            return False
        if m["id"] not in self.reg.uploads:
            self._error(404, "BLOB_UPLOAD_UNKNOWN", f"no upload {path}")
            return True
        if self._unauthorized(m["repo"], "push,pull"):
            return True
        body = self._body()
        digest = parse_qs(query).get("digest", [""])[0]
        with self.reg.lock:
            data = bytes(self.reg.uploads.pop(m["id"]) + body)
        if digest_of(data) != digest:
            self._error(400, "DIGEST_INVALID", f"upload is {digest_of(data)}, not {digest}")
            return True
        with self.reg.lock:
            self.reg.blobs[digest] = data
        self._send(201, b"", {"Location": f"/v2/{m['repo']}/blobs/{digest}", "Docker-Content-Digest": digest})
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: OciRegistry

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that reject the certificate or hang up mid-body are what several tests do on purpose.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass
class TestCA:
    __test__ = False  # a fixture type, not a test class
    """The test CA: its PEM file (for HERD_CA_BUNDLE) and the trustme object to issue more certs."""

    ca: trustme.CA
    pem: Path


def make_ca(directory: Path) -> TestCA:
    """A fresh CA whose certificate is written to ``directory/ca.pem``."""
    ca = trustme.CA()
    pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return TestCA(ca=ca, pem=pem)


@contextmanager
def running_registry(
    hostname: str, ca: TestCA | None, *, names: tuple[str, ...] = ()
) -> Iterator[OciRegistry]:
    """Serve an OciRegistry on 127.0.0.1 (HTTPS with a cert for ``hostname`` from ``ca``; plain HTTP
    when ``ca`` is None); always stop it."""
    reg = OciRegistry(hostname=hostname, scheme="https" if ca is not None else "http")
    server = _Server(("127.0.0.1", 0), _Handler)
    server.registry = reg
    reg.port = server.server_address[1]
    if ca is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.ca.issue_cert(hostname, *names).configure_cert(ctx)
        # The handshake then happens in the handler's thread, so a client that rejects the certificate
        # cannot stall the accept loop.
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name=f"registry-{hostname}", daemon=True)
    thread.start()
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
