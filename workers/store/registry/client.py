"""The HTTP session for registry traffic: proxies, trust, ``insecure``, Bearer token auth, and errors.

* Proxies: chosen per request from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (:mod:`workers.store.registry.proxies`);
  https goes through the proxy as a CONNECT tunnel, so the proxy never sees the bytes.
* Trust: the system store plus ``HERD_CA_BUNDLE`` (a corporate CA that re-signs or fronts registries).
* ``insecure`` (Ollama's flag): certificates are not checked and, when the registry speaks plain HTTP
  on its port (Ollama switches such pulls to http://), the request is retried over http.
* Auth: a 401 carrying ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` is answered by
  fetching a token from the realm and repeating the request once (the Docker token protocol).
* Guard: loopback, link-local and cloud metadata addresses are refused before any connection unless
  HERD_REGISTRY_ALLOW names them (:mod:`workers.store.registry.guard`), redirects and token realms included.
* Errors: every transport failure becomes a RegistryError naming the host (and the proxy when one is
  in the way) and the cause: name not resolved, connection refused, proxy refused, proxy
  authentication required, certificate not trusted, timeout. A registry's error answer is reported by
  its status and its structured error (OCI ``errors[].code``/``message``, trimmed), never its raw body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

from workers.store.registry.errors import RegistryError
from workers.store.registry.guard import GuardedBackend, RegistryGuard
from workers.store.registry.proxies import ProxyConfig
from workers.store.registry.settings import RegistrySettings

logger = logging.getLogger(__name__)

USER_AGENT = "herd/0.1 (ollama-compatible)"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"|(\w+)=([^,\s]*)')


def parse_bearer_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a ``Bearer realm="...",service="...",scope="..."`` challenge, else None."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params: dict[str, str] = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        key = (m.group(1) or m.group(3)).lower()
        params[key] = m.group(2) if m.group(1) else m.group(4)
    return params if "realm" in params else None


def redact(url: str) -> str:
    """A proxy URL without its password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _port_of(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


class _RoutingTransport(httpx.BaseTransport):
    """Sends each request directly or through the proxy that the environment names for its URL.

    Direct connections go through the guard's socket backend (checked at connect time); a proxied
    request has its registry name checked before the CONNECT, while the proxy itself, which the
    operator configured, is connected to as it is.
    """

    def __init__(
        self, proxies: ProxyConfig, verify: ssl.SSLContext, limits: httpx.Limits, guard: RegistryGuard
    ) -> None:
        self._proxies = proxies
        self._verify = verify
        self._limits = limits
        self._guard = guard
        self._transports: dict[str | None, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()  # ranged parts ask from several threads at once

    def transport_for(self, url: httpx.URL) -> tuple[str | None, httpx.HTTPTransport]:
        """The proxy (None: direct) for ``url`` and the pooled transport that goes that way."""
        proxy = self._proxies.proxy_for(url.scheme, url.host, _port_of(url))
        with self._lock:
            if proxy not in self._transports:
                transport = httpx.HTTPTransport(
                    verify=self._verify, proxy=proxy, limits=self._limits, trust_env=False
                )
                if proxy is None:
                    # httpx takes no network backend; its pool reads this attribute for every new connection.
                    pool = transport._pool
                    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
                        raise RuntimeError("this httpx version cannot take the registry guard's backend")
                    pool._network_backend = GuardedBackend(self._guard)
                self._transports[proxy] = transport
            return proxy, self._transports[proxy]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy, transport = self.transport_for(request.url)
        if proxy is not None:
            self._guard.check_before_proxy(request.url.host, _port_of(request.url))
        return transport.handle_request(request)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


class RegistryClient:
    """One session of registry requests (thread-safe: ranged parts share it)."""

    def __init__(
        self, settings: RegistrySettings, *, insecure: bool, proxies: ProxyConfig | None = None
    ) -> None:
        self.insecure = insecure
        self.proxies = proxies if proxies is not None else ProxyConfig.from_env()
        if insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            # The system store (not certifi's): a corporate CA installed system-wide is trusted as usual.
            ctx = ssl.create_default_context()
            if settings.ca_bundle is not None:
                ctx.load_verify_locations(cafile=str(settings.ca_bundle))
        limits = httpx.Limits(max_connections=settings.concurrency + 4, max_keepalive_connections=8)
        self._routing = _RoutingTransport(self.proxies, ctx, limits, RegistryGuard(settings.allow_list))
        self._http = httpx.Client(
            transport=self._routing,
            follow_redirects=True,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            headers={"User-Agent": USER_AGENT},
        )
        self._tokens: dict[tuple[str, str], str] = {}
        self._plain_http_hosts: set[str] = set()

    def close(self) -> None:
        """Close every pooled connection."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------------------------

    def _rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.netloc in self._plain_http_hosts:
            return urlunsplit(parts._replace(scheme="http"))
        return url

    def _auth_header(self, url: str, scope: str) -> dict[str, str]:
        token = self._tokens.get((urlsplit(url).netloc, scope))
        return {"Authorization": f"Bearer {token}"} if token else {}

    @contextlib.contextmanager
    def open(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> Iterator[httpx.Response]:
        """Send one request (body unread, streamed) with token auth; transport errors as RegistryError.

        ``scope`` is the token scope this request needs (``repository:ns/model:pull``); a 401 with a
        Bearer challenge fetches a token (the challenge's own scope wins) and the request is sent again.
        """
        url = self._rewrite(url)
        for attempt in range(2):
            hdrs = {**(headers or {}), **self._auth_header(url, scope)}
            request = self._http.build_request(method, url, headers=hdrs, content=content)
            response = self._send(request)
            challenge = parse_bearer_challenge(response.headers.get("www-authenticate", ""))
            if response.status_code == 401 and challenge is not None and attempt == 0:
                response.close()
                self._fetch_token(url, scope, challenge)
                continue
            try:
                yield response
            finally:
                response.close()
            return

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            if self.insecure and request.url.scheme == "https" and _is_tls_protocol_error(exc):
                # The registry speaks plain HTTP on this port; insecure means http:// as in Ollama.
                netloc = urlsplit(str(request.url)).netloc
                logger.info("%s does not speak TLS; insecure pull continues over http", netloc)
                self._plain_http_hosts.add(netloc)
                plain = request.url.copy_with(scheme="http")
                retry = self._http.build_request(
                    request.method, plain, headers=request.headers, content=request.content
                )
                try:
                    return self._http.send(retry, stream=True)
                except httpx.HTTPError as exc2:
                    raise self.translate(exc2, retry.url) from exc2
            raise self.translate(exc, request.url) from exc

    def _fetch_token(self, url: str, scope: str, challenge: dict[str, str]) -> None:
        # Ask for what this session needs as well as what the challenge names: a push's first request
        # (HEAD blob) is challenged for pull only, and a pull-only token would be refused at upload.
        scopes = list(dict.fromkeys(s for s in (scope, challenge.get("scope")) if s))
        params: dict[str, str | list[str]] = {"scope": scopes}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        realm = challenge["realm"]
        host = urlsplit(url).netloc
        try:
            response = self._http.get(realm, params=params)
        except httpx.HTTPError as exc:
            raise self.translate(exc, httpx.URL(realm)) from exc
        if response.status_code != 200:
            raise RegistryError(
                f"{host}: token server {urlsplit(realm).netloc} refused a token for {' '.join(scopes)} "
                f"(HTTP {response.status_code})",
                status=401,
            )
        try:
            body: Any = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{host}: token server {urlsplit(realm).netloc} sent no token", status=502)
        self._tokens[(host, scope)] = token

    # --- errors ------------------------------------------------------------------------------------

    def translate(self, exc: httpx.HTTPError, url: httpx.URL) -> RegistryError:
        """A RegistryError naming the host, the proxy in the way (if any) and the cause of ``exc``."""
        host = url.netloc.decode("ascii", "replace")
        proxy, _ = self._routing.transport_for(url)
        via = f" through proxy {redact(proxy)}" if proxy else ""
        if isinstance(exc, httpx.ProxyError):
            code = str(exc).split(" ", 1)[0]
            if code == "407":
                cause = "proxy authentication required"
            elif code in ("403", "401"):
                cause = f"proxy refused the connection ({exc})"
            else:
                cause = f"proxy could not connect ({exc})"
            return RegistryError(f"{host}: {cause}{via}", status=502)
        for cause_exc in _causes(exc):
            if isinstance(cause_exc, ssl.SSLCertVerificationError):
                detail = cause_exc.verify_message or str(cause_exc)
                return RegistryError(
                    f"{host}: certificate not trusted ({detail}){via}; "
                    "set HERD_CA_BUNDLE to the CA that signed it",
                    status=502,
                )
            if isinstance(cause_exc, socket.gaierror):
                if proxy:
                    return RegistryError(f"{host}: cannot resolve proxy {redact(proxy)}", status=502)
                return RegistryError(f"{host}: cannot resolve host name ({cause_exc})", status=502)
            if isinstance(cause_exc, ConnectionRefusedError):
                if proxy:
                    return RegistryError(f"{host}: proxy {redact(proxy)} refused the connection", 502)
                return RegistryError(f"{host}: connection refused", status=502)
        text = str(exc) or type(exc).__name__
        if not self.insecure and _is_tls_protocol_error(exc):
            return RegistryError(
                f"{host}: TLS handshake failed ({text}){via}; if the registry speaks plain HTTP, "
                "pull with insecure",
                status=502,
            )
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return RegistryError(f"{host}: certificate not trusted ({text}){via}", status=502)
        if isinstance(exc, httpx.TimeoutException):
            return RegistryError(f"{host}: timed out ({type(exc).__name__}){via}", status=504)
        if isinstance(exc, httpx.ConnectError) and ("Name or service" in text or "resolution" in text):
            return RegistryError(f"{host}: cannot resolve host name ({text}){via}", status=502)
        if isinstance(exc, (httpx.ProtocolError, httpx.DecodingError)):
            # h11 quotes the bytes it choked on: whatever answered there (a banner, a page) stays out.
            return RegistryError(f"{host}: the answer is not HTTP ({type(exc).__name__}){via}", status=502)
        return RegistryError(f"{host}: {type(exc).__name__}: {text}{via}", status=502)


def _is_tls_protocol_error(exc: BaseException) -> bool:
    """Whether the TLS handshake failed because the peer does not speak TLS (not a trust failure)."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return False
        if isinstance(cause, ssl.SSLError):
            return True
    text = str(exc)
    return "WRONG_VERSION_NUMBER" in text or "record layer failure" in text


_ERROR_BODY_MAX = 64 * 1024
_ERROR_TEXT_MAX = 200
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _trim(text: str) -> str:
    """One line of at most 200 printable characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= _ERROR_TEXT_MAX else flat[: _ERROR_TEXT_MAX - 1] + "…"


def structured_error(body: bytes) -> str:
    """The registry's ``{"errors": [{"code", "message"}]}`` as "CODE: message; ...", trimmed; else "".

    Only these two fields are reported: ``detail`` and any body that is not this JSON shape can hold
    whatever the server at that address serves (a page, a secret), which must not reach the client.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    parts: list[str] = []
    for item in errors[:3]:
        if not isinstance(item, dict):
            continue
        code, message = item.get("code"), item.get("message")
        code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
        message = _trim(message) if isinstance(message, str) else ""
        text = f"{code}: {message}" if code and message else code or message
        if text:
            parts.append(text)
    return _trim("; ".join(parts))


def _error_body(response: httpx.Response) -> bytes:
    """At most 64 KiB of an error answer's body (a hostile server may send gigabytes)."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_MAX:
                break
    except httpx.HTTPError:
        pass
    return bytes(body[:_ERROR_BODY_MAX])


def response_error(response: httpx.Response, what: str) -> RegistryError:
    """A RegistryError for a non-success answer to ``what`` (e.g. "manifest for x:latest")."""
    host = response.request.url.netloc.decode("ascii", "replace")
    code = response.status_code
    if code == 404:
        return RegistryError(f"{host}: {what} not found", status=404)
    if code == 407:
        return RegistryError(f"{host}: proxy authentication required", status=502)
    detail = structured_error(_error_body(response))
    suffix = f": {detail}" if detail else ""
    if code in (401, 403):
        return RegistryError(f"{host}: unauthorized for {what} (HTTP {code}){suffix}", status=401)
    return RegistryError(f"{host}: HTTP {code} for {what}{suffix}", status=502)
