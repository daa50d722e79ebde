"""The source address of every outbound host socket (``--outbound-addr``/``--outbound-addr6``).

slirp4netns (libslirp's ``outbound_addr``/``outbound_addr6``) binds each socket it opens toward
the outside -- TCP connects, UDP flows (which include the DNS redirect to the host's resolvers),
ICMP echo sockets -- to one local address before connecting. usernet does the same at each
socket-creation site in host/ with one call:

* :func:`bind_outbound` for a socket made by hand (UDP flows, DNS upstream queries, ping sockets,
  the TCP flows' sockets, which host/tcp.py connects itself);
* :func:`local_addr` for ``loop.create_connection(..., local_addr=...)`` (DNS over TCP).

``outbound`` is ``HostDriver.outbound``: a mapping of address family to the address (a plain
string), empty when no flag was given (then nothing is bound and the kernel picks the source, as
before). Interface names are resolved to an address by the top layer, not here:
SO_BINDTODEVICE needs CAP_NET_RAW, which an unprivileged user lacks, so slirp4netns resolves the
name too.
"""

import socket


def local_addr(outbound: dict, host: str):
    """The ``local_addr`` for a connection to ``host`` (an address literal), or None."""
    addr = outbound.get(socket.AF_INET6 if ":" in host else socket.AF_INET) if outbound else None
    return (addr, 0) if addr else None


def bind_outbound(outbound: dict, sock: socket.socket) -> None:
    """Bind ``sock`` to the outbound address of its family, if one is set. Raises OSError."""
    addr = outbound.get(sock.family) if outbound else None
    if addr:
        sock.bind((addr, 0))


def is_host_local(host: str) -> bool:
    """True when ``host`` (an address literal) is one of this host's own
    addresses: its kernel would deliver a packet to it locally, as to
    loopback (an interface's address, 127/8, 0.0.0.0, a ``local`` route).

    Asked of the kernel, not of a list read at start (addresses come and
    go): a connected UDP socket toward ``host`` gets ``host`` itself as its
    source when it is an interface's address, and a loopback source when the
    route goes through ``lo`` (the rest of 127/8, 0.0.0.0, a ``local``
    route to a range). No packet is sent. An
    address the kernel will not connect to (a broadcast one: EACCES) is
    reported local too, so the caller refuses it.
    """
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM)
    except OSError:
        return True
    try:
        s.connect((host, 9))
        src = s.getsockname()[0]
        return src == host or src == "::1" or src.startswith("127.")
    except OSError:
        return True
    finally:
        s.close()
