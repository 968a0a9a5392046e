"""Network policy: the caller's address, and tenant / API key CIDR allowlists.

The client address is the socket peer. `X-Forwarded-For` is read only when that peer is one of
the configured trusted proxies, and then from the right: the first hop that is not itself a
trusted proxy is the client. Anything a client writes to the left of that is ignored, so a
spoofed header gains nothing.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import Scope


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (a bare address is a /32 or /128).

    Raises:
        ValueError: A value is not a network.
    """
    return tuple(ipaddress.ip_network(str(cidr).strip(), strict=False) for cidr in cidrs)


@functools.lru_cache(maxsize=4096)
def _address(value: str) -> IPAddress | None:
    # Cached: every request parses its peer (and maybe forwarded hops), and the same few
    # addresses repeat; parsing cost ~1% of a search. Bounded, so junk hops cannot grow it.
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def in_networks(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    """Whether `address` lies in any of `networks` (an empty allowlist admits everyone)."""
    if not networks:
        return True
    if address is None:
        return False
    return any(address in network for network in networks)


class ClientAddressResolver:
    """Finds the client address of an ASGI request, trusting only configured proxies."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted = parse_networks(trusted_proxies)

    def _is_trusted(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self._trusted)

    def resolve(self, scope: Scope) -> IPAddress | None:
        """The client's address: the socket peer, or the forwarded one behind a trusted proxy."""
        client = scope.get("client")
        peer = _address(client[0]) if client else None
        if not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded: list[str] = []
        for name, value in scope.get("headers", ()):
            if name.lower() == b"x-forwarded-for":
                forwarded.extend(value.decode("latin-1").split(","))
        for hop in reversed(forwarded):
            address = _address(hop)
            if address is None:
                # A garbled hop: stop believing anything further left.
                return peer
            if not self._is_trusted(address):
                return address
        return peer
