"""frame.build_tcp4 (the established-flow fast path) gives exactly build_tcp's bytes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from usernet.wire.frame import addr_sum4, build_tcp, build_tcp4, parse_frame
from usernet.wire.tcp import build_tcp_options

addr = st.binary(min_size=4, max_size=4)
u16 = st.integers(0, 0xFFFF)


@settings(max_examples=400, deadline=None)
@given(src=addr, dst=addr, sport=u16, dport=u16, seq=st.integers(0, 1 << 40),
       ack=st.integers(0, 1 << 40), flags=st.integers(0, 0xFF), window=u16,
       opts=st.sampled_from([b"", build_tcp_options(ts=(1, 2)),
                             build_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(9, 0)),
                             build_tcp_options(sack_blocks=((1, 2), (3, 4)))]),
       payload=st.binary(max_size=300), ident=u16, csum=st.booleans())
def test_same_bytes_as_build_tcp(src, dst, sport, dport, seq, ack, flags, window, opts, payload,
                                 ident, csum):
    mac1, mac2 = b"\x02\0\0\0\0\1", b"\x02\0\0\0\0\2"
    want = build_tcp(mac1, mac2, src, dst, sport, dport, seq, ack, flags, window, opts, payload,
                     ident=ident, csum=csum)
    got = build_tcp4(mac1, mac2, src, dst, addr_sum4(src, dst), sport, dport, seq, ack, flags,
                     window, opts, payload, ident, csum)
    assert got == want
    parse_frame(got)


def test_big_segment():
    src, dst = bytes([10, 0, 2, 2]), bytes([10, 0, 2, 100])
    payload = bytes(range(256)) * 255
    for csum in (True, False):
        assert build_tcp4(bytes(6), bytes(6), src, dst, addr_sum4(src, dst), 1, 2, 3, 4, 0x10,
                          5, b"", payload, 6, csum) == \
            build_tcp(bytes(6), bytes(6), src, dst, 1, 2, 3, 4, 0x10, 5, b"", payload, ident=6,
                      csum=csum)
