"""UDP (RFC 768). Layout: sport (2), dport (2), length (2), checksum (2)."""

import struct

UDP = struct.Struct("!HHHH")
UDP_LEN = 8
