"""IPv4 (RFC 791).

Layout: version/IHL (1), DSCP/ECN (1), total length (2), identification (2),
flags/fragment offset (2), TTL (1), protocol (1), header checksum (2),
source (4), destination (4); options to IHL*4 (skipped, never interpreted).

Validated in :func:`usernet.wire.frame.parse_frame`: version 4, IHL >= 5,
IHL*4 <= total length <= bytes present (trailing Ethernet padding beyond
total length is ignored). A fragment (MF set or offset > 0) is flagged; its
payload is not an L4 header. The header checksum is checked apart, by
:func:`usernet.wire.frame.ipv4_header_ok`.
"""

import struct

IPV4 = struct.Struct("!BBHHHBBH4s4s")
IPV4_LEN = 20

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
