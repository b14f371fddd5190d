"""SSRF guard for webhook URLs (OWASP SSRF cheat sheet, case 2; smokescreen).

A webhook URL is chosen by whoever configures the server, and a server can be
talked into reaching its own private network through it. So before every
attempt the host name is resolved, EVERY resolved address must be public (or
inside an explicit allowlist), and the request then goes to the checked address
itself (the host name travels in ``Host`` and TLS SNI), so a second DNS answer
(rebinding) cannot send it elsewhere. Redirects are never followed.

Refused unless allowlisted: loopback, RFC 1918 and other private ranges,
link-local (cloud metadata 169.254.169.254 included), shared address space,
multicast, unspecified and reserved addresses, IPv4-mapped IPv6 forms of them.
"""

from __future__ import annotations

import _socket
import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import StreamBridgeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(StreamBridgeError):
    """A webhook URL is not allowed (scheme, or an address that is not public)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect, and what to call the host."""

    url: str  # with the checked IP address in place of the host name
    host_header: str  # the original host (and port): the Host header
    sni: str  # the original host name: TLS server name
    address: str


def parse_allowlist(raw: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse comma-separated networks (``127.0.0.0/8``, ``::1``, ``10.1.2.3``).

    Raises:
        ValueError: an entry is not an IP network, naming it.
    """
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    nets = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"webhook allowlist entry {item!r} is not an IP network") from None
    return tuple(nets)


def refusal(address: IPAddress, allow: tuple[IPNetwork, ...]) -> str | None:
    """Why ``address`` may not be reached (None: it may)."""
    if any(address in net for net in allow if net.version == address.version):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped, allow)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives here)"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified or address.is_reserved:
        return "unspecified or reserved"
    if address.is_private or not address.is_global:
        return "private or not globally routable"
    return None


def split_url(url: str) -> tuple[str, str, int]:
    """Return ``(scheme, host, port)`` of an http(s) URL.

    Raises:
        UrlRefused: another scheme, no host, or credentials in the URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"webhook URL {url!r}: only http and https are allowed")
    if not parts.hostname:
        raise UrlRefused(f"webhook URL {url!r} has no host")
    if parts.username or parts.password:
        raise UrlRefused(f"webhook URL {url!r}: credentials in the URL are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused(f"webhook URL {url!r} has an invalid port") from None
    return parts.scheme, parts.hostname, port


async def resolve(url: str, allow: tuple[IPNetwork, ...]) -> Target:
    """Resolve ``url``'s host, check every address, and pin the request to one.

    Raises:
        UrlRefused: an address is refused (all are checked: one bad answer refuses
            the URL), or the name does not resolve.
    """
    scheme, host, port = split_url(url)
    try:
        # Address literals in every spelling inet_aton accepts (2130706433, 0x7f.1)
        # need no DNS: the C resolver with AI_NUMERICHOST answers at once, on any
        # thread (the executor behind loop.getaddrinfo is a greenlet under gevent).
        infos: Sequence[tuple[Any, ...]] = _socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM, 0,
            socket.AI_NUMERICHOST)
    except OSError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise UrlRefused(f"webhook host {host!r} does not resolve: {e}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlRefused(f"webhook host {host!r} does not resolve")
    for text in addresses:
        why = refusal(ipaddress.ip_address(text.split("%")[0]), allow)
        if why is not None:
            raise UrlRefused(f"webhook URL {url!r} resolves to {text}, which is {why}; "
                             "add it to STREAMBRIDGE_WEBHOOK_ALLOW to allow it")
    address = addresses[0]
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc += f":{parts.port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return Target(pinned, host_header, host, address)
