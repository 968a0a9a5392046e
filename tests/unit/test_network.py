"""Client address resolution: the socket peer, or X-Forwarded-For behind a trusted proxy only."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from app.identity.network import ClientAddressResolver, in_networks, parse_networks


def _scope(peer: str | None, forwarded: list[str] | None = None) -> Any:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded or []]
    return {"client": (peer, 1234) if peer else None, "headers": headers}


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "expected"),
    [
        ([], "203.0.113.7", ["10.0.0.1"], "203.0.113.7"),  # no proxy trusted: header ignored
        (["192.0.2.0/24"], "203.0.113.7", ["10.0.0.1"], "203.0.113.7"),  # untrusted peer
        (["192.0.2.0/24"], "192.0.2.1", ["10.0.0.1"], "10.0.0.1"),
        (["192.0.2.0/24"], "192.0.2.1", ["10.0.0.1, 198.51.100.4"], "198.51.100.4"),
        (["192.0.2.0/24"], "192.0.2.1", ["10.0.0.1", "198.51.100.4"], "198.51.100.4"),
        (["192.0.2.0/24"], "192.0.2.1", ["10.0.0.1, 192.0.2.9"], "10.0.0.1"),  # proxy chain
        (["192.0.2.0/24"], "192.0.2.1", ["10.0.0.1, garbage"], "192.0.2.1"),
        (["192.0.2.0/24"], "192.0.2.1", [], "192.0.2.1"),
        ([], "testclient", [], None),
    ],
)
def test_client_address(
    trusted: list[str], peer: str, forwarded: list[str], expected: str | None
) -> None:
    resolved = ClientAddressResolver(trusted).resolve(_scope(peer, forwarded))
    assert (str(resolved) if resolved else None) == expected


def test_allowlists() -> None:
    nets = parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.5"])
    assert in_networks(ipaddress.ip_address("10.9.9.9"), nets)
    assert in_networks(ipaddress.ip_address("2001:db8::1"), nets)
    assert in_networks(ipaddress.ip_address("192.0.2.5"), nets)
    assert not in_networks(ipaddress.ip_address("192.0.2.6"), nets)
    assert not in_networks(None, nets)
    assert in_networks(None, ())
    with pytest.raises(ValueError, match="does not appear"):
        parse_networks(["not-a-network"])
