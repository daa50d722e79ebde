"""Ethernet II (IEEE 802.3 framing with an EtherType), with 802.1Q skipped.

Layout: dst MAC (6), src MAC (6), EtherType (2). A 802.1Q tag inserts TPID
0x8100 + TCI (4 bytes) before the real EtherType; usernet's TAP never sees a
VLAN from a container, so the parser skips one tag (and 802.1ad 0x88a8) and
reports the inner EtherType.
"""

import struct

from . import ParseError

ETH = struct.Struct("!6s6sH")
ETH_LEN = 14
VLAN_TAG = struct.Struct("!HH")  # TCI, inner EtherType (after the TPID)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

BROADCAST = b"\xff\xff\xff\xff\xff\xff"


def parse_ether(buf) -> tuple:
    """Return ``(dst, src, ethertype, l3_offset)``; raise ParseError."""
    if len(buf) < ETH_LEN:
        raise ParseError("eth_truncated")
    dst, src, etype = ETH.unpack_from(buf, 0)
    off = ETH_LEN
    if etype == ETH_P_8021Q or etype == ETH_P_8021AD:
        if len(buf) < ETH_LEN + 4:
            raise ParseError("eth_truncated", "vlan tag")
        _tci, etype = VLAN_TAG.unpack_from(buf, ETH_LEN)
        off += 4
        if etype == ETH_P_8021Q or etype == ETH_P_8021AD:
            raise ParseError("eth_vlan_stacked")
    if etype < 0x0600:
        # An 802.3 length field, not an EtherType (LLC/SNAP): not for us.
        raise ParseError("eth_not_ethernet_ii")
    return dst, src, etype, off


def build_ether_into(buf, off: int, dst: bytes, src: bytes, ethertype: int) -> int:
    ETH.pack_into(buf, off, dst, src, ethertype)
    return off + ETH_LEN


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_parse(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff``; raise ValueError on anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)
