"""Which addresses the registry client may connect to: the store worker's guard against SSRF.

A model name carries its registry's host and port, and any client of /api/pull or /api/push picks it,
so without a rule the store worker connects wherever a client points it. These are refused by default:

* loopback (127.0.0.0/8, ::1, ``localhost``): Redis, the API's backends, anything bound "locally only";
* link-local (169.254.0.0/16, fe80::/10), which holds the metadata service of AWS, GCP, Azure and OCI;
* other cloud metadata addresses (fd00:ec2::254, 100.100.100.200, 192.0.0.192);
* unspecified addresses (0.0.0.0/8, ::), which Linux connects to as loopback.

IPv4-mapped and NAT64 IPv6 forms are judged by the IPv4 address inside them. Private LAN ranges (10/8,
172.16/12, 192.168/16, fc00::/7) stay allowed: corporate registries live there. ``HERD_REGISTRY_ALLOW``
lists exceptions: host names, ``host:port``, IP addresses or CIDR ranges. A metadata address is unlocked
only by naming it (its IP or a host name), never by a range that happens to contain it.

Direct connections are checked on the address actually connected to: :class:`GuardedBackend` resolves
the name once, checks every address, then connects to a checked address, so a name that resolves
elsewhere on a second lookup (DNS rebinding) gains nothing. Through a proxy, the proxy resolves the
name: the client refuses a literal refused address or a ``localhost`` name before the CONNECT, and
looks nothing up itself (what the proxy resolves a name to, it cannot see); a proxy's own rules must
keep it off its loopback and metadata addresses.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import httpcore

from workers.store.registry.errors import RegistryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_VARIABLE = "HERD_REGISTRY_ALLOW"
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud Classic
    )
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address reaches."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def refused_kind(ip: IPAddress) -> str | None:
    """What makes ``ip`` refused by default ("a loopback address", ...), or None for an allowed one."""
    ip = _embedded_ipv4(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "an unspecified address"
    return None


def _literal_address(host: str) -> IPAddress | None:
    """The address `host` spells out (an IP literal), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_localhost_name(host: str) -> bool:
    # RFC 6761: "localhost" and every name under it are loopback, whatever a resolver says.
    return host == "localhost" or host.endswith(".localhost")


def _refused_name_kind(name: str) -> str | None:
    return "a loopback name" if _is_localhost_name(name) else None


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {entry!r}")
    return int(text)


@dataclass(frozen=True)
class AllowList:
    """The parsed ``HERD_REGISTRY_ALLOW``: ranges, and host names or addresses with an optional port."""

    networks: tuple[IPNetwork, ...] = ()
    # (lower-case host name or IP text, port or None for any port)
    hosts: frozenset[tuple[str, int | None]] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        """Parse comma-separated hosts, host:port, [v6]:port, IPs and CIDRs; ValueError names a bad entry."""
        networks: list[IPNetwork] = []
        hosts: set[tuple[str, int | None]] = set()
        for entry in (e.strip().lower() for e in raw.split(",")):
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"{entry!r} is not a CIDR range") from None
                continue
            name, port = entry, None
            if entry.startswith("["):
                name, bracket, rest = entry[1:].partition("]")
                if not bracket:
                    raise ValueError(f"{entry!r} is not [address]:port")
                if rest:
                    if not rest.startswith(":"):
                        raise ValueError(f"{entry!r} is not [address]:port")
                    port = _port(rest[1:], entry)
            elif entry.count(":") == 1:
                name, _, port_text = entry.partition(":")
                port = _port(port_text, entry)
            try:
                name = str(ipaddress.ip_address(name))
            except ValueError:
                if entry.startswith("[") or not _HOST_NAME.fullmatch(name):
                    raise ValueError(f"{entry!r} is not a host, host:port, IP or CIDR") from None
                name = name.rstrip(".")
            hosts.add((name, port))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def _names(self, text: str, port: int) -> bool:
        return (text, None) in self.hosts or (text, port) in self.hosts

    def allows(self, host: str, ip: IPAddress | None, port: int) -> bool:
        """Whether an entry names ``host`` (the registry's name) or covers ``ip`` on ``port``."""
        if self._names(host.lower().rstrip("."), port):
            return True
        if ip is None:
            return False
        if self._names(str(ip), port):
            return True
        # A range never unlocks a metadata address: allowing 169.254.0.0/16 for a device must not open IMDS.
        if _embedded_ipv4(ip) in METADATA_ADDRESSES:
            return False
        return any(ip in net for net in self.networks)


class RegistryRefused(RegistryError):
    """The registry's address is refused by the guard; no connection was made."""

    def __init__(self, host: str, port: int, ip: IPAddress | None, kind: str) -> None:
        where = f"{host} is {kind}" if ip is None or host == str(ip) else f"{host} resolves to {ip}, {kind}"
        entry = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(
            f"{entry}: registry refused: {where}; registries on loopback, link-local or cloud metadata "
            f"addresses are reached only when {ALLOW_VARIABLE} names them (e.g. {ALLOW_VARIABLE}={entry})",
            status=403,
        )


class RegistryGuard:
    """Checks registry addresses against the default refusals and the allow list (one per client)."""

    def __init__(self, allow: AllowList | None = None) -> None:
        self.allow = allow if allow is not None else AllowList()

    def check(self, host: str, ip: IPAddress | None, port: int) -> None:
        """Raise RegistryRefused if ``host`` (resolved to ``ip``; None: not resolved) may not be reached."""
        name = host.lower().rstrip(".")
        kind = _refused_name_kind(name) if ip is None else refused_kind(ip)
        if kind is not None and not self.allow.allows(name, ip, port):
            raise RegistryRefused(host, port, ip, kind)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, each checked; RegistryRefused if any is refused."""
        literal = _literal_address(host)
        if literal is not None:
            self.check(host, literal, port)
            return [literal]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            # The same failure, and the same cause for RegistryClient.translate, as httpcore's own lookup.
            raise httpcore.ConnectError(str(exc)) from exc
        addresses: list[IPAddress] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            # Every address is checked, not only the first: a name mixing a public and a refused address
            # would otherwise reach the refused one whenever the first does not answer.
            self.check(host, ip, port)
            if ip not in addresses:
                addresses.append(ip)
        return addresses

    def check_before_proxy(self, host: str, port: int) -> None:
        """Check a host the proxy will resolve: a literal address, or a name that is loopback by definition.

        The name is not looked up here: behind a proxy the local resolver often knows no outside names,
        and a lookup would send the registry's name to it for nothing. What the proxy resolves a name to
        is the proxy's to police.
        """
        literal = _literal_address(host)
        if literal is not None:
            self.check(host, literal, port)
        elif _is_localhost_name(host.lower().rstrip(".")):
            self.check(host, None, port)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, connecting only to addresses the guard allows (checked at connect time)."""

    def __init__(self, guard: RegistryGuard) -> None:
        self._guard = guard
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        last: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for ip in self._guard.resolve(host, port):
            try:
                # The checked address itself, never the name again: TLS still verifies the name (SNI).
                return self._sockets.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        if last is None:
            raise httpcore.ConnectError(f"{host} resolved to no address")
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("registries are not reached over unix sockets")

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)
