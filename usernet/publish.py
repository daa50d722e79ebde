"""``-p/--publish`` port specs for the standalone CLI.

Owns only the parsing of ``[HOST_ADDR:]HOST_PORT[-END]:GUEST_PORT[-END][/tcp|/udp]`` into
:class:`Forward` tuples, one per port; opening the ports is the backend's job (the same
``add_hostfwd`` the API socket uses). No I/O.

Accepted, like Podman's ``-p`` where the two overlap:

* ``8080:80``, ``8080:80/udp`` (the protocol defaults to tcp);
* ``127.0.0.1:8080:80``; IPv6 host addresses in brackets: ``[::1]:8080:80``;
* ranges of equal length: ``8000-8009:9000-9009`` (ten forwards, paired in order).

Not accepted (Podman-only forms): a missing host port (``:80``, ``80``), a host range onto one guest
port, ``sctp``, ``tcp,udp`` lists, host names instead of addresses.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

__all__ = ["Forward", "parse_publish"]


class Forward(NamedTuple):
    proto: str  # "tcp" | "udp"
    host_addr: str  # canonical IP literal; "0.0.0.0" when the spec gives none
    host_port: int
    guest_port: int


_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", re.ASCII)


def _ports(text: str, what: str, spec: str) -> range:
    m = _PORTS.fullmatch(text)
    if m is None:
        raise _bad(spec, f"{what} port {text!r} is not a port or a range START-END")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    for p in (first, last):
        if not 1 <= p <= 65535:
            raise _bad(spec, f"{what} port {p} is out of range 1-65535")
    if last < first:
        raise _bad(spec, f"{what} port range {text!r} ends before it starts")
    return range(first, last + 1)


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"invalid publish spec {spec!r}: {why}")


def parse_publish(spec: str) -> list[Forward]:
    """Parse one ``-p`` value; raise ``ValueError`` (one line, naming the spec) if it is bad."""
    rest, slash, proto = spec.rpartition("/")
    if not slash:
        rest, proto = spec, "tcp"
    elif proto not in ("tcp", "udp"):
        raise _bad(spec, f"protocol {proto!r} is not tcp or udp")

    host_addr = "0.0.0.0"
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or rest[close + 1:close + 2] != ":":
            raise _bad(spec, "expected [IPV6]:HOST_PORT:GUEST_PORT")
        text = rest[1:close]
        try:
            if "%" in text:
                raise ValueError
            host_addr = str(ipaddress.IPv6Address(text))
        except ValueError:
            raise _bad(spec, f"{text!r} is not an IPv6 address") from None
        parts = rest[close + 2:].split(":")
        if len(parts) != 2:
            raise _bad(spec, "expected [IPV6]:HOST_PORT:GUEST_PORT")
    else:
        parts = rest.split(":")
        if len(parts) == 3:
            text = parts.pop(0)
            try:
                host_addr = str(ipaddress.IPv4Address(text))
            except ValueError:
                raise _bad(spec, f"{text!r} is not an IPv4 address") from None
        elif len(parts) > 3:
            raise _bad(spec, "too many ':' (put IPv6 host addresses in brackets: [::1]:80:80)")
        elif len(parts) != 2:
            raise _bad(spec, "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]")

    host_ports = _ports(parts[0], "host", spec)
    guest_ports = _ports(parts[1], "guest", spec)
    if len(host_ports) != len(guest_ports):
        raise _bad(spec, f"host range has {len(host_ports)} ports but guest range has "
                         f"{len(guest_ports)}")
    return [Forward(proto, host_addr, h, g) for h, g in zip(host_ports, guest_ports)]
