"""ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) headers.

Layout (both): type (1), code (1), checksum (2), then 4 bytes whose meaning
depends on the type: identifier (2) + sequence (2) for echo; unused + next-hop
MTU for "fragmentation needed" / "packet too big"; unused otherwise.
"""

import struct

ICMP = struct.Struct("!BBHHH")  # type, code, checksum, ident/rest-hi, seq/rest-lo
ICMP_LEN = 8

# ICMPv4 types and codes
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4
UNREACH_ADMIN_PROHIBITED = 13

# ICMPv6 types
ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
