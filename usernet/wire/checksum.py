"""The internet checksum (RFC 1071) and pseudo-header sums.

The trick: the ones'-complement sum of 16-bit big-endian words equals the
whole buffer read as one big-endian integer, reduced modulo 0xFFFF (because
2**16 = 1 mod 0xFFFF), except that ones'-complement arithmetic has two zeros:
a non-zero buffer whose sum is a multiple of 0xFFFF sums to 0xFFFF, not 0.
``int.from_bytes`` and one single-digit division both run in C, which makes
this several times faster than a Python loop over words (still ~0.2 GB/s on
a 64 KiB segment: the offload path avoids it, see DESIGN.md section 3).
"""

_from_bytes = int.from_bytes


def ones_sum(data, initial: int = 0) -> int:
    """Ones'-complement 16-bit sum of ``data`` plus ``initial`` (not inverted).

    Odd-length data is summed as if padded with one zero byte.
    """
    if len(data) & 1:
        x = _from_bytes(data, "big") << 8
    else:
        x = _from_bytes(data, "big")
    x += initial
    if x == 0:
        return 0
    r = x % 0xFFFF
    return r if r else 0xFFFF


def checksum(data, initial: int = 0) -> int:
    """The internet checksum of ``data``: the inverted ones'-complement sum.

    ``initial`` is a partial sum to fold in (e.g. a pseudo-header sum). A
    buffer whose stored checksum is correct gives 0 here.
    """
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_sum_v4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header (RFC 793 3.1 / RFC 768)."""
    return ones_sum(src + dst, proto + length)


def pseudo_sum_v6(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv6 pseudo-header (RFC 8200 8.1)."""
    return ones_sum(src + dst, proto + (length & 0xFFFF) + (length >> 16))
