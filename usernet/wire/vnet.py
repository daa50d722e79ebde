"""The virtio-net header a TAP opened with ``IFF_VNET_HDR`` puts before each frame.

Layout (linux/virtio_net.h ``struct virtio_net_hdr``), 10 bytes:

    flags (1), gso_type (1), hdr_len (2), gso_size (2), csum_start (2), csum_offset (2)

The 16-bit fields are little-endian on x86 (a TAP uses the host's byte order
unless ``TUNSETVNETBE``/``TUNSETVNETLE`` say otherwise; modern virtio is
little-endian). ``TUNSETVNETHDRSZ`` may make the header 12 bytes (the
``num_buffers`` field of ``virtio_net_hdr_mrg_rxbuf``); the first 10 bytes are
the same either way.

On read: ``flags & NEEDS_CSUM`` means the L4 checksum field holds only the
pseudo-header sum and the sender left the rest to the "device" (us): the
checksum covers ``csum_start`` to the end, stored at ``csum_start +
csum_offset``. ``gso_type != GSO_NONE`` means the frame is a super-segment to
be cut into ``gso_size``-byte payloads. On write, the same fields ask the
kernel to do that work for us; ``DATA_VALID`` is honoured on read only.
"""

import struct

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = 10

# flags
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2

# gso_type
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

# A header that says "nothing to do": a plain, fully checksummed frame.
VNET_HDR_NONE = bytes(VNET_HDR_LEN)


_pack = VNET_HDR.pack


# Where the TCP checksum field sits inside the TCP header.
TCP_CSUM_OFFSET = 16


def tcp_offload_hdr(l4: int, hdr_len: int, gso_size: int = 0, v6: bool = False) -> bytes:
    """The header for a TCP frame whose checksum field holds only the
    pseudo-header sum: the kernel finishes the checksum over ``l4`` .. end
    (``NEEDS_CSUM``). With ``gso_size`` (the payload per wire segment, i.e.
    the connection's MSS net of options) the frame is a TSO super-segment the
    kernel cuts into ``gso_size``-byte segments where it must. ``hdr_len`` is
    L2 + L3 + L4 header bytes. Pass ``gso_size`` only when the payload is
    bigger than it (a "GSO" frame that fits one segment is not one)."""
    if gso_size:
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
    else:
        gso_type = VIRTIO_NET_HDR_GSO_NONE
    return _pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, l4, TCP_CSUM_OFFSET)
