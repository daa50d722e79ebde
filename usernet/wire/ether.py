"""Ethernet II (IEEE 802.3 framing with an EtherType), with 802.1Q skipped.

Layout: dst MAC (6), src MAC (6), EtherType (2). A 802.1Q tag inserts TPID
0x8100 + TCI (4 bytes) before the real EtherType; usernet's TAP never sees a
VLAN from a container, so ``parse_frame`` skips one tag (and 802.1ad 0x88a8) and
reports the inner EtherType.
"""

import struct

ETH = struct.Struct("!6s6sH")
ETH_LEN = 14
VLAN_TAG = struct.Struct("!HH")  # TCI, inner EtherType (after the TPID)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

BROADCAST = b"\xff\xff\xff\xff\xff\xff"


def mac_parse(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff``; raise ValueError on anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)
