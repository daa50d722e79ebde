"""Which ports a network namespace has bound, read from ``/proc/PID/net``.

For ``--publish-only-when-bound`` (:mod:`usernet.host.forward`): a forward's
host socket is open only while the container has its guest port bound. PID
is any process in the container's network namespace; its
``/proc/PID/net/{tcp,tcp6,udp,udp6}`` list that namespace's sockets, not
ours. Read on a timer by the forwarder; a vanished PID raises OSError.
"""

import struct

_TCP_LISTEN = "0A"           # /proc/net/tcp st column: TCP_LISTEN


def _proc_addr(hexaddr: str) -> bytes:
    """An address from /proc/net/{tcp,udp}[6]: 32-bit words in host byte order."""
    words = [int(hexaddr[i:i + 8], 16) for i in range(0, len(hexaddr), 8)]
    return struct.pack("=%dI" % len(words), *words)


def read_bound_ports(pid: int) -> dict:
    """``{"tcp": {port: {addr, ...}}, "udp": {...}}`` for the network namespace of ``pid``:
    TCP sockets in LISTEN, unconnected UDP sockets. IPv6 addresses ``::`` and
    ``::ffff:a.b.c.d`` are folded to IPv4 (a dual-stack socket takes IPv4 too);
    other IPv6 addresses are kept, 16 bytes (IPv6 forwards). Raises OSError if ``pid`` is gone."""
    out = {"tcp": {}, "udp": {}}
    for proto in ("tcp", "udp"):
        for suffix in ("", "6"):
            try:
                with open(f"/proc/{pid}/net/{proto}{suffix}") as f:
                    lines = f.read().splitlines()[1:]
            except FileNotFoundError:
                if suffix:
                    continue   # no IPv6 in this kernel
                raise
            for line in lines:
                parts = line.split()
                if len(parts) < 4:
                    continue
                local, remote, st = parts[1], parts[2], parts[3]
                if proto == "tcp" and st != _TCP_LISTEN:
                    continue
                if proto == "udp" and not remote.endswith(":0000"):
                    continue   # a connected UDP socket takes no forwarded datagrams
                haddr, _, hport = local.rpartition(":")
                addr = _proc_addr(haddr)
                if len(addr) == 16:
                    if addr == bytes(16):
                        addr = bytes(4)
                    elif addr[:12] == b"\0" * 10 + b"\xff\xff":
                        addr = addr[12:]
                out[proto].setdefault(int(hport, 16), set()).add(addr)
    return out
