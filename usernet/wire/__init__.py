"""usernet.wire: bytes <-> headers.

Pure functions over ``bytes``/``memoryview``: no I/O, no clock, no logging.
Each header's layout is declared once, as a precompiled ``struct.Struct`` at
the top of its module (``ether``, ``arp``, ``ipv4``, ``ipv6``, ``icmp``,
``udp``, ``tcp``, ``vnet``); ``frame`` holds the one hot-path entry point,
:func:`usernet.wire.frame.parse_frame`, and the frame builders.

**The invariant.** Every parser in this package, given any bytes at all,
either returns its result (or ``None`` where documented, e.g. "not for us")
or raises :class:`ParseError`. No other exception escapes: truncated frames,
lengths that point past the buffer, header lengths below the minimum, bad
option lengths and (where a check is asked for) bad checksums all become
``ParseError``. ``tests/unit/test_wire_fuzz.py`` holds this with Hypothesis
over arbitrary bytes and over mutated valid frames.
"""


class ParseError(ValueError):
    """The one error a wire parser raises on bad input.

    ``reason`` is a short stable token (``"eth_truncated"``,
    ``"ipv4_bad_ihl"``, ...) that the stack turns into a named drop counter.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
