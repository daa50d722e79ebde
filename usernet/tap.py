"""The TAP device: open ``/dev/net/tun`` and set it up for usernet.

``open_tap`` must run in the network namespace the TAP is to live in (the
TUNSETIFF ioctl creates the interface in the *caller's current* netns); the
fd it returns keeps working from anywhere afterwards, which is how
``usernet.netns.attach`` hands a TAP made inside a container to a parent that
never left the host namespace.

Constants are named as in ``linux/if_tun.h``; the virtio-net header layout
lives in ``usernet.wire.vnet``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from usernet.wire.vnet import VNET_HDR_LEN

TUN_PATH = "/dev/net/tun"


def _IOW(typ: str, nr: int, size: int) -> int:
    # asm-generic/ioctl.h: dir(2 bits, write=1) << 30 | size << 16 | type << 8 | nr
    return (1 << 30) | (size << 16) | (ord(typ) << 8) | nr


# ioctls (linux/if_tun.h); all take an int-sized argument.
TUNSETIFF = _IOW("T", 202, 4)  # 0x400454ca
TUNSETPERSIST = _IOW("T", 203, 4)
TUNSETOFFLOAD = _IOW("T", 208, 4)  # 0x400454d0
TUNSETVNETHDRSZ = _IOW("T", 216, 4)  # 0x400454d8
TUNSETVNETLE = _IOW("T", 220, 4)

# TUNSETIFF ifr_flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
IFF_MULTI_QUEUE = 0x0100

# TUNSETOFFLOAD features: what *we* (the device side) can take from the kernel.
TUN_F_CSUM = 0x01  # unchecksummed packets (NEEDS_CSUM)
TUN_F_TSO4 = 0x02  # TSO for IPv4 (needs TUN_F_CSUM)
TUN_F_TSO6 = 0x04  # TSO for IPv6 (needs TUN_F_CSUM)
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20  # kernel 6.2+
TUN_F_USO6 = 0x40  # kernel 6.2+

# The offloads usernet asks for by default (DESIGN.md section 3).
DEFAULT_OFFLOAD = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

IFNAMSIZ = 16
# struct ifreq as TUNSETIFF reads it: ifr_name[16], ifr_flags (short), padding to 40 bytes.
_IFREQ = struct.Struct("16sH22x")


class TapError(OSError):
    """Opening or configuring the TAP failed; ``str()`` is one line saying why."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _tap_error(exc: OSError, what: str) -> TapError:
    if what == "open":
        from .diagnose import tun_problem
        why = tun_problem(exc.errno, TUN_PATH)
        if why:
            return TapError(exc.errno, why)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TapError(exc.errno, f"{what}: operation not permitted (no CAP_NET_ADMIN in this "
                                   "network namespace's user namespace?)")
    if exc.errno == errno.EBUSY:
        return TapError(exc.errno, f"{what}: device busy (a TAP of that name is already open?)")
    return TapError(exc.errno, f"{what}: {os.strerror(exc.errno or 0)}")


def open_tap(name: str = "tap0", vnet_hdr: bool = True) -> tuple[int, str]:
    """Create (or attach to) TAP ``name`` in the current network namespace.

    Returns ``(fd, ifname)``: a non-blocking, close-on-exec fd that reads and
    writes whole Ethernet frames (each preceded by a 10-byte virtio-net header
    when ``vnet_hdr``), and the name the kernel gave the interface. Raises
    :class:`TapError`.
    """
    if len(name.encode()) >= IFNAMSIZ:
        raise TapError(errno.EINVAL, f"interface name too long: {name!r} (max {IFNAMSIZ - 1} bytes)")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _tap_error(exc, "open") from None
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        if vnet_hdr:
            set_vnet_hdr_size(fd, VNET_HDR_LEN)
    except OSError as exc:
        os.close(fd)
        raise _tap_error(exc, f"TUNSETIFF {name}") from None
    except BaseException:
        os.close(fd)
        raise
    ifname = _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()
    return fd, ifname


def set_vnet_hdr_size(fd: int, n: int) -> None:
    """TUNSETVNETHDRSZ: the virtio-net header length (10, or 12 with num_buffers)."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", n))
    except OSError as exc:
        raise _tap_error(exc, f"TUNSETVNETHDRSZ {n}") from None


def set_offload(fd: int, flags: int = DEFAULT_OFFLOAD) -> None:
    """TUNSETOFFLOAD: tell the kernel which ``TUN_F_*`` work we will do.

    With ``TUN_F_CSUM`` the container's kernel may send frames with only the
    pseudo-header checksum (``NEEDS_CSUM``); with ``TUN_F_TSO4/6`` it may send
    64 KiB super-segments. Only meaningful on a TAP opened with a vnet header.
    """
    try:
        # The argument is passed by value, not by pointer: ioctl(fd, req, int).
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError as exc:
        raise _tap_error(exc, f"TUNSETOFFLOAD {flags:#x}") from None
