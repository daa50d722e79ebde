"""usernet.stack.tcp: scripted packet traces plus a two-endpoint Hypothesis property.

Conventions (smoltcp style): the container's ISN is ``IRS`` and ours is ``ISS``;
``h.send(...)`` feeds the connection a segment built from a template plus
overrides (seq/ack default to "the next expected" numbers), ``h.recv(...)`` pops
the next emitted segment and checks the named fields, ``h.recv_nothing()``
checks that nothing was emitted, and time only moves with ``h.now``.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usernet.stack import tcp as T
from usernet.stack.counters import Counters
from usernet.stack.events import (TcpAbort, TcpData, TcpInboundConnected, TcpInboundRefused,
                                  TcpPause, TcpResume, TcpShutdown)
from usernet.stack.tcp import Segment, TcpConnection
from usernet.wire.tcp import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, TcpOptions

ISS = 1000        # ours
IRS = 5000        # the container's
MSS = 1460
M = 0xFFFFFFFF
CLOSED = "closed"   # H.events(): the connection closed (conn.closed turned True)


class H:
    """A test harness around one TcpConnection: the container's view."""

    def __init__(self, **kw):
        self.now = 0.0
        self.c = Counters()
        self.conn = TcpConnection(self.now, kw.pop("iss", ISS), kw.pop("mss", MSS), self.c, **kw)
        # What the container will send next / has acked (wire values).
        self.seq = IRS + 1
        self.ack = ISS + 1
        self.window = 65535
        self.options = NO_OPTIONS
        self._closed_seen = False

    # -- driving -----------------------------------------------------------
    def seg(self, **kw) -> Segment:
        d = dict(seq=self.seq, ack=self.ack, flags=ACK, window=self.window, options=self.options,
                 payload=b"")
        d.update(kw)
        d["seq"] &= M
        d["ack"] &= M
        return Segment(**d)

    def send(self, **kw):
        self.conn.on_segment(self.seg(**kw), self.now)

    def syn(self, **kw):
        d = dict(seq=IRS, ack=0, flags=SYN, window=65535,
                 options=TcpOptions(mss=MSS), payload=b"")
        d.update(kw)
        self.conn.on_syn(Segment(**d), self.now)

    def advance(self, dt):
        self.now += dt

    def fire(self):
        """Advance to the connection's next deadline and run it; return the delay."""
        t = self.conn.get_timer()
        assert t is not None, "no timer armed"
        dt = t - self.now
        self.now = max(self.now, t)
        self.conn.handle_timer(self.now)
        return dt

    # -- checking ----------------------------------------------------------
    def recv(self, **expect) -> Segment:
        out = self.conn.segments_out
        assert out, "expected a segment, got none"
        s = out.pop(0)
        for k, v in expect.items():
            got = getattr(s, k)
            if k in ("seq", "ack"):
                v &= M
            if k == "payload":
                got = bytes(got)
                assert got == v, f"payload: got {len(got)} bytes {got[:16]!r}.., want {len(v)} {v[:16]!r}.."
            assert got == v, f"{k}: got {got!r}, want {v!r} in {s._replace(payload=bytes(s.payload)[:16])}"
        return s

    def recv_nothing(self):
        assert not self.conn.segments_out, f"unexpected {self.conn.segments_out}"

    def events(self):
        """The events since the last call, and CLOSED when the connection
        closed meanwhile (the gateway then forgets the flow: exactly once)."""
        ev, self.conn.events[:] = list(self.conn.events), []
        if self.conn.closed and not self._closed_seen:
            self._closed_seen = True
            ev.append(CLOSED)
        return ev

    def data(self):
        """Concatenated TcpData events; asserts there was no other event."""
        ev = self.events()
        assert all(type(e) is TcpData for e in ev), ev
        return b"".join(e.data for e in ev)


def established(syn_options=None, **kw) -> H:
    """A passive-open connection in ESTABLISHED (the container connected out)."""
    h = H(**kw)
    h.syn(options=syn_options or TcpOptions(mss=MSS))
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    if h.conn.ts_ok:
        h.options = TcpOptions(ts_val=100, ts_ecr=0)
    h.send()
    assert h.conn.state == T.ESTABLISHED
    h.recv_nothing()
    assert h.events() == []
    return h


# ---------------------------------------------------------------------------
# passive open
# ---------------------------------------------------------------------------
def test_passive_open_connect_first_answer_second():
    h = H()
    h.syn()
    assert h.conn.state == T.SYN_RECEIVED
    h.recv_nothing()                        # nothing until the host connect finishes
    assert h.conn.get_timer() is None
    h.advance(0.05)
    h.conn.host_connected(h.now)
    s = h.recv(seq=ISS, ack=IRS + 1, flags=SYN | ACK, window=65535)
    assert s.options == TcpOptions(mss=MSS)  # nothing offered -> nothing echoed
    h.advance(0.01)
    h.send()
    assert h.conn.state == T.ESTABLISHED
    assert h.conn.srtt == pytest.approx(0.01)
    h.recv_nothing()
    assert h.conn.get_timer() is None
    assert h.c["tcp_established"] == 1


def test_passive_open_echoes_offered_options_and_never_scales_syn_window():
    h = H(rcv_buf=256 * 1024, wscale=7)
    h.syn(options=TcpOptions(mss=1400, wscale=2, sack_perm=True, ts_val=77, ts_ecr=0), window=1000)
    h.conn.host_connected(h.now)
    s = h.recv(flags=SYN | ACK, window=65535)   # not 256K >> 7
    assert s.options.mss == MSS and s.options.wscale == 7 and s.options.sack_perm
    assert s.options.ts_ecr == 77 and s.options.ts_val is not None
    assert h.conn.snd_wnd == 1000                 # the SYN's window is not scaled
    assert h.conn.snd_mss == 1400 - 12            # peer MSS minus the timestamp option


def test_dup_syn_before_answer_is_absorbed():
    h = H()
    h.syn()
    h.syn()
    h.send(seq=IRS, flags=SYN)                    # the gateway may route it either way
    h.recv_nothing()
    assert h.c["tcp_dup_syn_absorbed"] == 2
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    h.recv_nothing()


def test_dup_syn_after_answer_resends_synack():
    h = H()
    h.syn()
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    h.syn()                                       # our SYN-ACK was lost
    h.recv(seq=ISS, ack=IRS + 1, flags=SYN | ACK)
    assert h.c["tcp_dup_syn_rx"] == 1


def test_host_refused_sends_rst_ack_and_closes():
    h = H()
    h.syn()
    h.conn.host_refused(h.now)
    h.recv(seq=0, ack=IRS + 1, flags=RST | ACK)
    assert h.events() == [CLOSED]
    assert h.conn.state == T.CLOSED
    assert h.c["tcp_syn_host_refused_rst"] == 1


def test_container_rst_while_host_connect_pending():
    h = H()
    h.syn()
    h.send(seq=IRS + 1, flags=RST)
    assert h.events() == [TcpAbort(0), CLOSED]
    h.conn.host_connected(h.now)                 # too late: ignored
    h.recv_nothing()


def test_synack_retransmitted_with_backoff_then_give_up():
    h = H()
    h.syn()
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    delays = []
    for _ in range(T.SYN_RETRIES):
        delays.append(h.fire())
        h.recv(seq=ISS, flags=SYN | ACK)
    assert delays == [1, 2, 4, 8, 16]
    h.fire()
    h.recv(flags=RST | ACK)
    assert h.events() == [TcpAbort(0), CLOSED]
    assert h.c["tcp_give_up"] == 1


def test_syn_received_unacceptable_ack_gets_rst():
    h = H()
    h.syn()
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    h.send(ack=ISS + 77)
    h.recv(seq=ISS + 77, flags=RST)
    assert h.conn.state == T.SYN_RECEIVED


# ---------------------------------------------------------------------------
# active open
# ---------------------------------------------------------------------------
def active(**kw) -> H:
    h = H(**kw)
    h.conn.open_active(h.now)
    return h


def test_active_open_handshake():
    h = active(wscale=7)
    s = h.recv(seq=ISS, flags=SYN)
    assert s.options.mss == MSS and s.options.wscale == 7 and s.options.sack_perm
    assert s.options.ts_val is not None and s.options.ts_ecr == 0
    assert h.conn.state == T.SYN_SENT
    h.advance(0.002)
    h.send(seq=IRS, ack=ISS + 1, flags=SYN | ACK, window=29200,
           options=TcpOptions(mss=1460, wscale=7, sack_perm=True, ts_val=9, ts_ecr=0))
    h.recv(seq=ISS + 1, ack=IRS + 1, flags=ACK)
    assert h.events() == [TcpInboundConnected(0)]
    assert h.conn.state == T.ESTABLISHED
    assert h.conn.snd_wnd == 29200 and h.conn.snd_wscale == 7
    assert h.conn.ts_ok and h.conn.sack_ok


def test_active_open_data_queued_before_connect_is_sent_after():
    h = active(timestamps=False)
    h.recv(flags=SYN)
    assert h.conn.send(b"hello", h.now) == 5
    h.recv_nothing()
    h.send(seq=IRS, ack=ISS + 1, flags=SYN | ACK, options=TcpOptions(mss=1460))
    h.recv(seq=ISS + 1, ack=IRS + 1, flags=ACK | PSH, payload=b"hello")
    h.recv_nothing()


def test_active_open_rst_means_refused():
    h = active()
    h.recv(flags=SYN)
    h.send(seq=0, ack=ISS + 1, flags=RST | ACK)
    assert h.events() == [TcpInboundRefused(0, False), CLOSED]
    assert h.conn.state == T.CLOSED


def test_active_open_rst_with_bad_ack_is_ignored():
    h = active()
    h.recv(flags=SYN)
    h.send(seq=0, ack=ISS + 99, flags=RST | ACK)
    h.recv_nothing()
    assert h.events() == [] and h.conn.state == T.SYN_SENT


def test_active_open_bad_synack_ack_gets_rst():
    h = active()
    h.recv(flags=SYN)
    h.send(seq=IRS, ack=ISS + 99, flags=SYN | ACK)
    h.recv(seq=ISS + 99, flags=RST)
    assert h.conn.state == T.SYN_SENT


def test_active_open_timeout():
    h = active()
    h.recv(flags=SYN)
    delays = []
    for _ in range(T.SYN_RETRIES):
        delays.append(h.fire())
        h.recv(seq=ISS, flags=SYN)
    assert delays == [1, 2, 4, 8, 16]
    h.fire()
    h.recv_nothing()
    assert h.events() == [TcpInboundRefused(0, False), CLOSED]
    assert h.c["tcp_syn_timeout"] == 1


def test_simultaneous_open():
    h = active(timestamps=False)
    h.recv(flags=SYN)
    h.send(seq=IRS, ack=0, flags=SYN, options=TcpOptions(mss=1460))
    h.recv(seq=ISS, ack=IRS + 1, flags=SYN | ACK)
    assert h.conn.state == T.SYN_RECEIVED
    h.send()
    assert h.conn.state == T.ESTABLISHED
    assert h.events() == [TcpInboundConnected(0)]


# ---------------------------------------------------------------------------
# data, container -> host
# ---------------------------------------------------------------------------
def test_small_segment_delayed_ack():
    h = established()
    h.send(payload=b"abc")
    assert h.data() == b"abc"
    h.recv_nothing()                               # no PSH, less than 2 segments: delay
    assert h.fire() == pytest.approx(T.DELACK_TIME)
    h.recv(seq=ISS + 1, ack=IRS + 4, flags=ACK)
    assert h.conn.get_timer() is None


def test_psh_and_every_second_full_segment_are_acked_at_once():
    h = established()
    h.send(payload=b"x" * 10, flags=ACK | PSH)
    h.recv(ack=IRS + 11)
    h.seq = IRS + 11
    h.send(payload=b"y" * MSS)
    h.recv_nothing()
    h.seq += MSS
    h.send(payload=b"z" * MSS)
    h.recv(ack=h.seq + MSS)
    assert h.data() == b"x" * 10 + b"y" * MSS + b"z" * MSS


def test_out_of_order_reassembly_with_sack_blocks():
    h = established(syn_options=TcpOptions(mss=MSS, sack_perm=True))
    h.send(seq=IRS + 11, payload=b"B" * 10)        # hole at IRS+1..IRS+11
    s = h.recv(ack=IRS + 1)                         # immediate duplicate ACK
    assert s.options.sack_blocks == ((IRS + 11, IRS + 21),)
    h.send(seq=IRS + 31, payload=b"D" * 10)
    s = h.recv(ack=IRS + 1)
    assert s.options.sack_blocks == ((IRS + 31, IRS + 41), (IRS + 11, IRS + 21))
    h.send(seq=IRS + 21, payload=b"C" * 10)        # joins B and D
    s = h.recv(ack=IRS + 1)
    assert s.options.sack_blocks == ((IRS + 11, IRS + 41),)
    assert h.data() == b""
    assert h.c["tcp_ooo_queued"] == 3
    h.send(seq=IRS + 1, payload=b"A" * 10)         # fills the hole: everything, ACK at once
    assert h.data() == b"A" * 10 + b"B" * 10 + b"C" * 10 + b"D" * 10
    s = h.recv(ack=IRS + 41)
    assert s.options.sack_blocks == ()
    assert h.conn._ooo_bytes == 0


def test_overlapping_and_old_data():
    h = established()
    h.send(payload=b"0123456789", flags=ACK | PSH)
    assert h.data() == b"0123456789"
    h.recv(ack=IRS + 11)
    h.send(payload=b"0123456789", flags=ACK | PSH)  # entirely old: re-ACK, nothing delivered
    h.recv(ack=IRS + 11)
    assert h.data() == b"" and h.c["tcp_dup_data_rx"] == 1
    h.send(seq=IRS + 6, payload=b"56789abc", flags=ACK | PSH)   # straddles: only new part
    assert h.data() == b"abc"
    h.recv(ack=IRS + 14)


def test_ooo_overlaps_are_trimmed():
    h = established()
    h.send(seq=IRS + 11, payload=b"b" * 10)
    h.send(seq=IRS + 6, payload=b"a" * 5 + b"b" * 10 + b"c" * 5)
    h.send(seq=IRS + 11, payload=b"b" * 10)        # pure duplicate
    assert h.c["tcp_ooo_duplicate"] == 1
    assert h.conn._ooo_bytes == 20
    h.send(seq=IRS + 1, payload=b"-" * 5)
    assert h.data() == b"-" * 5 + b"a" * 5 + b"b" * 10 + b"c" * 5


# ---------------------------------------------------------------------------
# data, host -> container
# ---------------------------------------------------------------------------
def test_send_segments_and_psh_on_last():
    h = established(timestamps=False)
    assert h.conn.send(b"a" * 4000, h.now) == 4000
    h.recv(seq=ISS + 1, ack=IRS + 1, flags=ACK, payload=b"a" * 1460)
    h.recv(seq=ISS + 1461, flags=ACK, payload=b"a" * 1460)
    h.recv(seq=ISS + 2921, flags=ACK | PSH, payload=b"a" * 1080)
    h.recv_nothing()
    h.send(ack=ISS + 4001)
    assert h.conn.get_timer() is None
    assert len(h.conn._sndbuf) == 0


def test_max_seg_is_independent_of_mss():
    h = established(max_seg=65536)
    h.conn.send(b"q" * 50000, h.now)
    h.recv(seq=ISS + 1, payload=b"q" * (T.INIT_CWND_SEGS * MSS))   # one segment, cwnd-sized
    h.recv_nothing()
    h.send(ack=ISS + 1 + T.INIT_CWND_SEGS * MSS)   # slow start: cwnd doubles
    h.recv(payload=b"q" * (2 * T.INIT_CWND_SEGS * MSS), flags=ACK)
    h.recv_nothing()
    h.send(ack=ISS + 1 + 3 * T.INIT_CWND_SEGS * MSS)
    h.recv(payload=b"q" * (50000 - 3 * T.INIT_CWND_SEGS * MSS), flags=ACK | PSH)
    assert h.conn.snd_mss == MSS


def test_max_seg_is_whole_wire_segments():
    """A TSO gateway's max_seg is rounded down to a multiple of snd_mss (which
    the timestamp option shrinks), never below one segment."""
    h = established(syn_options=TcpOptions(mss=MSS, ts_val=1, ts_ecr=0), max_seg=65455)
    assert h.conn.snd_mss == MSS - T.TS_OPT_LEN == 1448
    assert h.conn._seg_size == 45 * 1448 == 65160
    assert established(max_seg=65455).conn._seg_size == 44 * MSS
    assert established(max_seg=1000).conn._seg_size == MSS
    assert established().conn._seg_size == MSS


def test_segment_bigger_than_mss_is_taken_whole():
    """The container's TSO super-segments (~64 KiB, far over our MSS) are
    accepted whole inside the window, delivered as one piece and ACKed at once."""
    h = established()
    big = bytes(range(256)) * 251          # 64256 bytes: 44 segments' worth and more
    h.send(payload=big, flags=ACK | PSH)
    assert h.data() == big
    h.recv(ack=IRS + 1 + len(big), payload=b"")
    h.send(seq=IRS + 1 + len(big), payload=big[:40000], flags=ACK)   # no PSH: still ACKed
    assert h.data() == big[:40000]
    h.recv(ack=IRS + 1 + len(big) + 40000)
    assert h.c["tcp_rx_trimmed_to_window"] == 0


@pytest.mark.parametrize("mss", [536, 1460, 9000, 65480])
def test_backlog_up_to_the_host_high_water_mark_never_shuts_the_window(mss):
    """The host side reports its write backlog after writes and on
    pause/resume_writing only; a backlog at or under the high-water mark
    drains without a report. So such a backlog must never close the window
    (SWS avoidance included), or the container's zero-window probes would be
    answered "zero" forever."""
    from usernet.host.tcp import WRITE_HIGH_WATER
    h = established(syn_options=TcpOptions(mss=mss, wscale=7), mss=mss)
    h.conn.set_host_backlog(T.RCV_BUF, h.now)           # paused: nothing more fits
    left = h.conn._rcv_adv - h.conn.rcv_nxt             # fill what was advertised
    while left:
        n = min(left, 60000)
        h.send(payload=b"d" * n, flags=ACK | PSH)
        h.seq += n
        left -= n
    h.events()
    while h.conn.segments_out:
        h.recv()
    h.advance(1.0)
    h.send(seq=h.seq - 1)                               # a zero-window probe
    assert h.recv().window << 7 < 256                   # shut (but for edge rounding)
    h.conn.set_host_backlog(WRITE_HIGH_WATER, h.now)   # the last report it may get
    h.advance(1.0)
    h.send(seq=h.seq - 1)
    while h.conn.segments_out:
        last = h.recv()
    assert last.window << 7 >= min(mss, T.RCV_BUF // 2)


def test_send_respects_peer_window_and_cwnd():
    h = established()
    h.window = 3000
    h.send()
    h.conn.send(b"w" * 10000, h.now)
    a = h.recv(payload=b"w" * 1460)
    b = h.recv(payload=b"w" * 1460)
    h.recv_nothing()                                # 80 bytes left in window: SWS, wait
    assert a.seq == ISS + 1 and b.seq == ISS + 1461
    h.send(ack=ISS + 2921)
    h.recv(seq=ISS + 2921, payload=b"w" * 1460)
    h.recv(seq=ISS + 4381, payload=b"w" * 1460)
    h.recv_nothing()
    # initial cwnd is 10 segments
    h2 = established()
    h2.window = 60000
    h2.send()
    h2.conn.send(b"c" * 60000, h2.now)
    assert len(h2.conn.segments_out) == T.INIT_CWND_SEGS


def test_window_scaling_applied_to_peer_window():
    h = established(syn_options=TcpOptions(mss=MSS, wscale=3), wscale=7, rcv_buf=256 * 1024)
    h.send(window=1000)
    assert h.conn.snd_wnd == 8000
    h.send(payload=b"k", flags=ACK | PSH)
    h.recv(window=(256 * 1024 - 1) >> 7)


def test_no_window_scaling_unless_both_offered():
    h = established(syn_options=TcpOptions(mss=MSS), wscale=7, rcv_buf=256 * 1024)
    h.send(window=1000)
    assert h.conn.snd_wnd == 1000
    h.send(payload=b"k", flags=ACK | PSH)
    h.recv(window=65535)


# ---------------------------------------------------------------------------
# timestamps
# ---------------------------------------------------------------------------
def test_timestamps_on_every_segment_and_echo():
    h = established(syn_options=TcpOptions(mss=MSS, ts_val=50, ts_ecr=0),
                    ts_clock=lambda now: int(now * 1000) + 7)
    h.advance(1.0)
    h.send(payload=b"1", flags=ACK | PSH, options=TcpOptions(ts_val=200, ts_ecr=7))
    s = h.recv()
    assert s.options.ts_val == 1007 and s.options.ts_ecr == 200
    h.conn.send(b"d", h.now)
    s = h.recv(payload=b"d")
    assert s.options.ts_ecr == 200
    # PAWS: an older TSval is refused with an ACK.
    h.send(seq=IRS + 2, payload=b"2", flags=ACK | PSH, options=TcpOptions(ts_val=150, ts_ecr=7))
    h.recv(ack=IRS + 2)
    assert h.data() == b"1" and h.c["tcp_drop_paws"] == 1


def test_no_timestamps_if_not_offered_or_disabled():
    h = established(syn_options=TcpOptions(mss=MSS))
    h.conn.send(b"x", h.now)
    assert h.recv().options == NO_OPTIONS
    h2 = established(syn_options=TcpOptions(mss=MSS, ts_val=5, ts_ecr=0), timestamps=False)
    assert not h2.conn.ts_ok
    h2.conn.send(b"x", h2.now)
    assert h2.recv().options.ts_val is None


# ---------------------------------------------------------------------------
# close
# ---------------------------------------------------------------------------
def test_host_closes_first_then_time_wait():
    h = established()
    h.conn.send(b"bye", h.now)
    h.recv(seq=ISS + 1, flags=ACK | PSH, payload=b"bye")
    h.conn.shutdown_host_eof(h.now)
    h.recv(seq=ISS + 4, flags=ACK | FIN)
    assert h.conn.state == T.FIN_WAIT_1
    h.send(ack=ISS + 5)
    assert h.conn.state == T.FIN_WAIT_2
    assert h.conn.get_timer() is None
    h.send(payload=b"late", flags=ACK | PSH)       # half-close: container may still send
    assert h.data() == b"late"
    h.recv(ack=IRS + 5)
    h.send(seq=IRS + 5, flags=ACK | FIN)
    h.recv(seq=ISS + 5, ack=IRS + 6)
    assert h.events() == [TcpShutdown(0)]
    assert h.conn.state == T.TIME_WAIT
    h.advance(1.0)
    h.send(seq=IRS + 5, flags=ACK | FIN)           # retransmitted FIN: re-ACK, restart
    h.recv(ack=IRS + 6)
    assert h.fire() == pytest.approx(T.TIME_WAIT_TIME)
    assert h.events() == [CLOSED]
    assert h.conn.state == T.CLOSED


def test_container_closes_first():
    h = established()
    h.send(payload=b"req", flags=ACK | PSH | FIN)
    h.recv(ack=IRS + 5)
    assert h.events() == [TcpData(0, b"req"), TcpShutdown(0)]
    assert h.conn.state == T.CLOSE_WAIT
    h.conn.send(b"resp", h.now)
    h.recv(payload=b"resp", ack=IRS + 5)
    h.conn.shutdown_host_eof(h.now)
    h.recv(seq=ISS + 5, flags=ACK | FIN)
    assert h.conn.state == T.LAST_ACK
    h.seq = IRS + 5
    h.send(ack=ISS + 6)
    assert h.conn.state == T.CLOSED
    assert h.events() == [CLOSED]
    assert h.conn.get_timer() is None


def test_simultaneous_close():
    h = established()
    h.conn.shutdown_host_eof(h.now)
    h.recv(seq=ISS + 1, flags=ACK | FIN)
    h.send(flags=ACK | FIN)                        # crosses our FIN: does not ack it
    h.recv(ack=IRS + 2)
    assert h.conn.state == T.CLOSING
    h.send(seq=IRS + 2, ack=ISS + 2)
    assert h.conn.state == T.TIME_WAIT
    h.fire()
    assert h.events() == [TcpShutdown(0), CLOSED]


def test_fin_ack_and_fin_together_from_fin_wait_1():
    h = established()
    h.conn.shutdown_host_eof(h.now)
    h.recv(flags=ACK | FIN)
    h.send(ack=ISS + 2, flags=ACK | FIN)
    h.recv(ack=IRS + 2)
    assert h.conn.state == T.TIME_WAIT


def test_fin_is_retransmitted():
    h = established()
    h.conn.shutdown_host_eof(h.now)
    h.recv(seq=ISS + 1, flags=ACK | FIN)
    h.fire()
    h.recv(seq=ISS + 1, flags=ACK | FIN)
    h.send(ack=ISS + 2)
    assert h.conn.state == T.FIN_WAIT_2


def test_out_of_order_fin_waits_for_the_data():
    h = established()
    h.send(seq=IRS + 4, flags=ACK | FIN, payload=b"def")
    assert h.events() == []
    h.recv(ack=IRS + 1)
    h.send(payload=b"abc")
    assert h.events() == [TcpData(0, b"abcdef"), TcpShutdown(0)]
    h.recv(ack=IRS + 8)
    assert h.conn.state == T.CLOSE_WAIT


def test_host_eof_before_handshake_completes():
    h = H(timestamps=False)
    h.syn()
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    h.conn.send(b"220 hi", h.now)
    h.conn.shutdown_host_eof(h.now)
    h.recv_nothing()
    h.send()
    h.recv(seq=ISS + 1, flags=ACK | PSH | FIN, payload=b"220 hi")
    assert h.conn.state == T.FIN_WAIT_1


# ---------------------------------------------------------------------------
# RST, SYN and acceptability (RFC 9293 3.10.7.4, RFC 5961)
# ---------------------------------------------------------------------------
def test_rst_exact_resets():
    h = established()
    h.send(flags=RST)
    assert h.events() == [TcpAbort(0), CLOSED]
    h.recv_nothing()
    assert h.conn.state == T.CLOSED
    h.send(payload=b"zombie")                      # after close: counted, ignored
    h.recv_nothing()
    assert h.c["tcp_drop_closed"] == 1


def test_rst_in_window_not_exact_gets_challenge_ack():
    h = established()
    h.send(seq=IRS + 100, flags=RST)
    h.recv(seq=ISS + 1, ack=IRS + 1, flags=ACK)
    assert h.events() == [] and h.c["tcp_challenge_ack"] == 1


def test_rst_out_of_window_is_dropped_silently():
    h = established(rcv_buf=4096)
    h.send(seq=IRS + 100000, flags=RST)
    h.send(seq=IRS - 10, flags=RST)
    h.recv_nothing()
    assert h.c["tcp_drop_rst_out_of_window"] == 2


def test_syn_in_synchronized_state_gets_challenge_ack():
    h = established()
    h.send(seq=IRS + 50, flags=SYN)
    h.recv(ack=IRS + 1, flags=ACK)
    assert h.conn.state == T.ESTABLISHED and h.c["tcp_challenge_ack"] == 1


def test_abort_sends_rst():
    h = established()
    h.conn.abort(h.now)
    h.recv(seq=ISS + 1, flags=RST | ACK)
    assert h.events() == [CLOSED]
    h.conn.abort(h.now)
    assert h.events() == []


def test_time_wait_ignores_rst_and_syn_reuse_closes():
    h = established()
    h.conn.shutdown_host_eof(h.now)
    h.recv(flags=ACK | FIN)
    h.send(ack=ISS + 2, flags=ACK | FIN)
    h.recv()
    h.events()
    h.send(seq=IRS + 2, flags=RST)
    assert h.conn.state == T.TIME_WAIT
    h.send(seq=IRS + 100000, flags=SYN, ack=0)
    assert h.conn.state == T.CLOSED
    assert h.events() == [CLOSED]
    h.recv_nothing()


def test_out_of_window_data_is_acked_and_dropped():
    h = established(rcv_buf=4096)
    h.send(seq=IRS + 10000, payload=b"far")
    h.recv(ack=IRS + 1)
    assert h.data() == b"" and h.c["tcp_drop_out_of_window"] == 1
    assert h.conn._ooo_bytes == 0


def test_data_past_right_edge_is_trimmed():
    h = established(rcv_buf=4096)
    h.send(payload=b"a" * 3000 + b"b" * 2000, flags=ACK | PSH | FIN)
    assert h.data() == b"a" * 3000 + b"b" * 1096   # FIN beyond the window is dropped too
    assert h.conn.state == T.ESTABLISHED
    assert h.c["tcp_rx_trimmed_to_window"] == 1


def test_answers_to_bare_unacceptable_segments_are_rate_limited():
    # Breaks ACK loops: at most one ACK per OOW_ACK_INTERVAL to bare segments...
    h = established(rcv_buf=4096)
    h.send(seq=IRS + 100000)
    h.recv(ack=IRS + 1)
    h.send(seq=IRS + 100000)
    h.recv_nothing()
    assert h.c["tcp_oow_ack_ratelimited"] == 1
    h.advance(T.OOW_ACK_INTERVAL)
    h.send(seq=IRS + 100000)
    h.recv(ack=IRS + 1)
    # ...but old data is always re-ACKed (the sender needs it to make progress).
    h.send(seq=IRS - 9, payload=b"x" * 10)
    h.recv(ack=IRS + 1)
    h.send(seq=IRS - 9, payload=b"x" * 10)
    h.recv(ack=IRS + 1)


def test_fast_retransmit_never_sends_beyond_snd_max():
    h = established(timestamps=False, max_seg=4000)
    h.window = 2000
    h.send()
    h.conn.send(b"m" * 10000, h.now)
    h.recv(seq=ISS + 1, payload=b"m" * 2000)       # window-limited, smaller than max_seg
    h.recv_nothing()
    h.window = 65535
    for _ in range(3):
        h.send(ack=ISS + 1)                       # window opens with dup-ish ACKs
    while h.conn.segments_out:
        s = h.recv()
        assert s.seq + len(s.payload) <= h.conn.snd_max


def test_ack_of_unsent_data_is_dropped_with_ack():
    h = established()
    h.send(ack=ISS + 500, payload=b"x", flags=ACK | PSH)
    h.recv(ack=IRS + 1)
    assert h.data() == b"" and h.c["tcp_drop_ack_unsent"] == 1


def test_non_ack_segment_is_dropped():
    h = established()
    h.send(flags=PSH, payload=b"x")
    h.recv_nothing()
    assert h.data() == b"" and h.c["tcp_drop_no_ack"] == 1


def test_sequence_numbers_wrap():
    h = H(iss=M - 2, timestamps=False)
    h.syn(seq=M - 1)
    h.conn.host_connected(h.now)
    h.recv(seq=M - 2, ack=M, flags=SYN | ACK)
    h.seq, h.ack = M, M - 1
    h.send()
    h.send(payload=b"abcdef", flags=ACK | PSH)
    assert h.data() == b"abcdef"
    h.recv(ack=5)
    h.conn.send(b"0123456789", h.now)
    h.recv(seq=M - 1, payload=b"0123456789")
    h.send(seq=5, ack=8)
    assert h.conn.snd_una == h.conn.snd_max and h.conn.get_timer() is None


# ---------------------------------------------------------------------------
# reliability of what we send
# ---------------------------------------------------------------------------
def test_rto_backoff_and_karn():
    h = established(timestamps=False)
    h.conn.send(b"r" * 100, h.now)
    h.recv(payload=b"r" * 100)
    assert h.conn.rto == T.RTO_MIN                # the handshake gave a ~0 RTT sample
    delays = [h.fire() for _ in range(4)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6])
    for _ in range(4):
        h.recv(seq=ISS + 1, payload=b"r" * 100)
    assert h.c["tcp_retransmit_timeout"] == 4
    h.advance(0.5)
    srtt = h.conn.srtt
    h.send(ack=ISS + 101)
    assert h.conn.srtt == srtt                    # Karn: no sample from a retransmission
    assert h.conn._backoff == 0 and h.conn.get_timer() is None


def test_rtt_estimate_sets_rto():
    h = established(timestamps=False)
    for i in range(30):
        h.conn.send(b"t", h.now)
        h.recv()
        h.advance(0.1)
        h.send(ack=ISS + 2 + i)
    assert h.conn.srtt == pytest.approx(0.1, rel=0.05)
    assert h.conn.rto == pytest.approx(T.RTO_MIN)     # 0.1 + tiny var floors at 200 ms
    h.conn.send(b"t", h.now)
    h.recv()
    assert h.fire() == pytest.approx(T.RTO_MIN)
    h.recv(payload=b"t")


def test_fast_retransmit_and_newreno_partial_ack():
    h = established(timestamps=False)
    h.conn.send(b"f" * (1460 * 6), h.now)
    segs = [h.recv() for _ in range(6)]
    for _ in range(3):
        h.send(ack=ISS + 1)                       # segment 0 lost, 3 dup ACKs
    h.recv(seq=ISS + 1, payload=b"f" * 1460)
    assert h.c["tcp_fast_retransmit"] == 1 and h.c["tcp_dup_ack_rx"] == 3
    h.send(ack=segs[2].seq)                       # partial ACK: segment 2 lost too
    h.recv(seq=segs[2].seq, payload=b"f" * 1460)
    h.send(ack=ISS + 1 + 1460 * 6)                # full ACK ends recovery
    assert h.conn._recover is None
    assert h.conn.cwnd <= h.conn.ssthresh
    assert h.conn.get_timer() is None


def test_rto_goes_back_n():
    h = established(timestamps=False)
    h.conn.send(b"g" * (1460 * 3), h.now)
    for _ in range(3):
        h.recv()
    h.fire()
    h.recv(seq=ISS + 1)                           # cwnd is one segment after a timeout
    h.recv_nothing()
    h.send(ack=ISS + 1461)
    h.recv(seq=ISS + 1461)
    h.recv(seq=ISS + 2921)
    h.send(ack=ISS + 1 + 1460 * 3)
    assert h.conn.get_timer() is None


def test_abort_after_go_back_n_resets_at_the_highest_sequence_sent():
    """Regression (issue 13, faults): after a timeout rewound snd_nxt for a
    go-back-N retransmission, an abort must still put its RST at the highest
    sequence sent. The container received all of it (only its ACKs were
    not read, e.g. usernet stopping), so its RCV.NXT is there, and a RST
    anywhere else is ignored (RFC 5961 3.2): its applications hung."""
    h = established(timestamps=False)
    h.conn.send(b"g" * (1460 * 3), h.now)
    for _ in range(3):
        h.recv()
    h.fire()
    h.recv(seq=ISS + 1)                           # snd_nxt rewound, one segment resent
    assert h.conn.snd_nxt < h.conn.snd_max
    h.conn.abort(h.now)
    h.recv(flags=RST | ACK, seq=ISS + 1 + 1460 * 3, ack=IRS + 1)


def test_zero_window_persist_probes_with_backoff():
    h = established(timestamps=False)
    h.window = 0
    h.send()
    h.conn.send(b"p" * 100, h.now)
    h.recv_nothing()
    assert h.events() == [TcpPause(0)]
    d1 = h.fire()
    h.recv(seq=ISS, ack=IRS + 1, flags=ACK, payload=b"")   # probe: snd_una - 1
    d2 = h.fire()
    h.recv(seq=ISS)
    assert d2 == pytest.approx(2 * d1)
    assert h.c["tcp_zero_window_probe"] == 2
    h.send(window=1000)                            # window opens (answer to the probe)
    h.recv(seq=ISS + 1, payload=b"p" * 100)
    assert h.events() == [TcpResume(0)]


def test_give_up_after_bounded_retries():
    h = established(timestamps=False)
    h.conn.send(b"lost", h.now)
    h.recv()
    n = 0
    while h.conn.state != T.CLOSED:
        h.fire()
        n += 1
        assert n < 50
    assert h.now <= T.GIVE_UP_AFTER + T.RTO_MAX + 1
    out = h.conn.segments_out
    assert out[-1].flags == RST | ACK
    assert h.events() == [TcpAbort(0), CLOSED]
    assert h.c["tcp_give_up"] == 1


def test_persist_gives_up_if_probes_unanswered():
    h = established(timestamps=False)
    h.window = 0
    h.send()
    h.conn.send(b"p", h.now)
    n = 0
    while h.conn.state != T.CLOSED:
        h.fire()
        n += 1
        assert n < 50
    assert h.c["tcp_give_up"] == 1


# ---------------------------------------------------------------------------
# backpressure and windows
# ---------------------------------------------------------------------------
def test_backpressure_events_on_transitions():
    h = established(snd_buf=10000, timestamps=False)
    assert h.conn.send(b"a" * 6000, h.now) == 6000
    assert h.conn.send(b"b" * 6000, h.now) == 4000    # bounded by snd_buf
    assert h.events() == [TcpPause(0)]
    assert h.conn.send(b"c", h.now) == 0
    assert h.events() == []
    sent = [h.recv() for _ in range(len(h.conn.segments_out))]
    assert sum(len(s.payload) for s in sent) == 10000
    h.send(ack=ISS + 1 + 4000)                       # 6000 still queued: not below half
    assert h.events() == []
    h.send(ack=ISS + 1 + 6000)                       # 4000 < 5000: resume
    assert h.events() == [TcpResume(0)]


def test_host_backlog_closes_window_and_reopening_sends_update():
    h = established(rcv_buf=8192, timestamps=False)
    h.send(payload=b"x" * 8192, flags=ACK | PSH)
    h.conn.set_host_backlog(8192, h.now)             # host socket did not take any of it
    assert h.data() == b"x" * 8192
    h.recv(ack=IRS + 8193, window=0)
    # a zero-window probe from the container: answered, data not taken
    h.seq = IRS + 8193
    h.send(payload=b"y", flags=ACK | PSH)
    h.recv(ack=IRS + 8193, window=0)
    assert h.data() == b""
    h.conn.set_host_backlog(8000, h.now)             # 192 free: below SWS threshold, keep quiet
    h.recv_nothing()
    h.conn.set_host_backlog(0, h.now)
    h.recv(ack=IRS + 8193, window=8192)
    assert h.c["tcp_window_update_tx"] == 1
    h.send(payload=b"y", flags=ACK | PSH)
    assert h.data() == b"y"


def test_window_right_edge_never_moves_left():
    h = established(rcv_buf=8192, timestamps=False)
    right_edge = IRS + 1 + 8192
    h.send(payload=b"x" * 2000, flags=ACK | PSH)
    h.recv(ack=IRS + 2001, window=right_edge - (IRS + 2001))
    h.conn.set_host_backlog(5000, h.now)             # more stuck than we delivered
    h.seq = IRS + 2001
    h.send(payload=b"x" * 10, flags=ACK | PSH)
    h.recv(ack=IRS + 2011, window=right_edge - (IRS + 2011))
    h.conn.set_host_backlog(0, h.now)                # drained, but the peer still sees > half
    h.recv_nothing()
    h.send(seq=IRS + 1, payload=b"x", flags=ACK | PSH)   # an old duplicate gets an ACK...
    h.recv(ack=IRS + 2011, window=8192)                  # ...carrying the moved edge


def test_bounded_memory_with_a_fast_sender():
    h = established(rcv_buf=16384, timestamps=False)
    rng = random.Random(1)
    # blast out-of-order 1-byte and large segments all over the sequence space
    for _ in range(3000):
        off = rng.randrange(1, 100000)
        ln = rng.choice((1, 7, 1460))
        h.send(seq=IRS + 1 + off, payload=b"z" * ln)
        assert h.conn._ooo_bytes <= 16384
        assert len(h.conn._ooo) <= T.OOO_MAX_PIECES
        h.conn.segments_out.clear()
    assert h.c["tcp_drop_out_of_window"] > 0
    assert h.data() == b""


# ---------------------------------------------------------------------------
# two endpoints in memory, lossy network (Hypothesis)
# ---------------------------------------------------------------------------
class Side:
    """An endpoint plus its host-side bookkeeping."""

    def __init__(self, conn, out_data):
        self.conn = conn
        self.pending = bytearray(out_data)          # host bytes not yet accepted by send()
        self.eof_sent = False
        self.received = bytearray()
        self.eof = False
        self.closed = False
        self.paused = False
        self.events = []

    def pump(self, now):
        self.drain()
        if self.pending and not self.paused and self.conn.state in (
                T.ESTABLISHED, T.CLOSE_WAIT, T.SYN_RECEIVED, T.SYN_SENT):
            n = self.conn.send(bytes(self.pending[:20000]), now)
            del self.pending[:n]
        if not self.pending and not self.eof_sent and self.conn.state in (T.ESTABLISHED,
                                                                          T.CLOSE_WAIT):
            self.eof_sent = True
            self.conn.shutdown_host_eof(now)
        self.drain()

    def drain(self):
        for ev in self.conn.events:
            kind = type(ev)
            self.events.append(kind.KIND)
            if kind is TcpData:
                self.received += ev.data
            elif kind is TcpShutdown:
                self.eof = True
            elif kind is TcpPause:
                self.paused = True
            elif kind is TcpResume:
                self.paused = False
        self.conn.events.clear()
        if self.conn.closed and not self.closed:
            self.closed = True
            self.events.append("closed")


def run_pair(seed, data_a, data_b, loss, dup, reorder, rcv_buf, mss, max_steps=60000):
    rng = random.Random(seed)
    now = 0.0
    ca, cb = Counters(), Counters()
    a = Side(TcpConnection(now, rng.randrange(1 << 32), mss, ca, rcv_buf=rcv_buf,
                           snd_buf=rcv_buf * 2, timestamps=rng.random() < 0.5,
                           max_seg=rng.choice((None, 4 * mss))), data_a)
    b = Side(TcpConnection(now, rng.randrange(1 << 32), mss, cb, rcv_buf=rcv_buf,
                           snd_buf=rcv_buf, wscale=rng.choice((None, 0, 2, 7)),
                           sack=rng.random() < 0.5), data_b)
    net = []                                         # (deliver_to, segment)
    b.conn.open_active(now)

    def collect():
        for src, dst in ((a, b), (b, a)):
            for s in src.conn.segments_out:
                if rng.random() < loss:
                    continue
                net.append((dst, s._replace(payload=bytes(s.payload))))
                if rng.random() < dup:
                    net.append((dst, s))
            src.conn.segments_out.clear()

    steps = 0
    while steps < max_steps:
        steps += 1
        for side in (a, b):
            side.pump(now)
        collect()
        if a.closed and b.closed:
            break
        if net:
            i = rng.randrange(min(len(net), 4)) if rng.random() < reorder else 0
            dst, s = net.pop(i)
            now += 0.0005
            if dst is a and a.conn.state == T.LISTEN:
                if s.flags & SYN:
                    a.conn.on_syn(s, now)
                    a.conn.host_connected(now)
            elif dst.conn.state == T.CLOSED:
                # What the gateway does for a flow it no longer knows (RFC 9293
                # 3.10.7.1): answer with a reset.
                if not s.flags & RST:
                    src = b if dst is a else a
                    if s.flags & ACK:
                        rst = Segment(s.ack, 0, RST, 0, NO_OPTIONS, b"")
                    else:
                        rst = Segment(0, (s.seq + len(s.payload) + (s.flags & (SYN | FIN) != 0)) & M,
                                      RST | ACK, 0, NO_OPTIONS, b"")
                    if rng.random() >= loss:
                        net.append((src, rst))
            else:
                dst.conn.on_segment(s, now)
            # invariants: nobody acks what was never sent; memory stays bounded
            for x, y in ((a, b), (b, a)):
                assert x.conn.rcv_nxt <= y.conn.snd_max + (y.conn.state == T.CLOSED)
                assert len(x.conn._sndbuf) <= x.conn.snd_buf
                assert x.conn._ooo_bytes <= rcv_buf and len(x.conn._ooo) <= T.OOO_MAX_PIECES
            # sometimes the host side is slow to drain
            if rng.random() < 0.05:
                dst.conn.set_host_backlog(rng.randrange(rcv_buf // 2), now)
            elif rng.random() < 0.2:
                dst.conn.set_host_backlog(0, now)
            continue
        timers = [t for t in (a.conn.get_timer(), b.conn.get_timer()) if t is not None]
        if not timers:
            break
        now = max(now, min(timers))
        for side in (a, b):
            t = side.conn.get_timer()
            if t is not None and t <= now:
                side.conn.handle_timer(now)
    return a, b, steps, ca, cb


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32),
       len_a=st.integers(0, 40000), len_b=st.integers(0, 40000),
       loss=st.sampled_from((0.0, 0.02, 0.1, 0.15)), dup=st.sampled_from((0.0, 0.05, 0.2)),
       reorder=st.sampled_from((0.0, 0.3, 0.8)),
       rcv_buf=st.sampled_from((1024, 2048, 8192, 65536)), mss=st.sampled_from((536, 1460)))
def test_two_endpoints_lossy_network_deliver_both_streams(seed, len_a, len_b, loss, dup,
                                                          reorder, rcv_buf, mss):
    gen = random.Random(seed ^ 0x5A5A)
    data_a = gen.randbytes(len_a)
    data_b = gen.randbytes(len_b)
    a, b, steps, ca, cb = run_pair(seed, data_a, data_b, loss, dup, reorder, rcv_buf, mss)
    assert bytes(b.received) == data_a
    assert bytes(a.received) == data_b
    assert a.eof and b.eof
    assert a.closed and b.closed, (a.conn, b.conn, steps)
    for side in (a, b):
        # A reset may only come from the harness's "gateway" after the peer
        # forgot a finished flow (our TIME-WAIT is short), never before EOF.
        if "tcp_abort" in side.events:
            assert "tcp_shutdown" in side.events[:side.events.index("tcp_abort")], side.events
        assert side.events.count("closed") == 1
    assert "tcp_inbound_connected" in b.events
    assert "tcp_data" not in b.events or (b.events.index("tcp_inbound_connected")
                                          < b.events.index("tcp_data"))


def test_two_endpoints_clean_network_bulk():
    data_a = bytes(range(256)) * 2000
    data_b = b"reply" * 10000
    a, b, steps, ca, cb = run_pair(7, data_a, data_b, 0.0, 0.0, 0.0, 65536, 1460)
    assert bytes(b.received) == data_a and bytes(a.received) == data_b
    assert ca["tcp_retransmit"] == 0 and cb["tcp_retransmit"] == 0


# ---------------------------------------------------------------------------
# loss recovery without SACK: dupacks, limited transmit, NewReno recovery probe
# ---------------------------------------------------------------------------
def S(i):
    """Wire start of our i-th full data segment (timestamps off: MSS-sized)."""
    return ISS + 1 + i * MSS


def sacked(lo, hi, **kw) -> dict:
    """send() overrides: a duplicate ACK of segment 0 SACKing segments lo..hi-1."""
    return dict(ack=ISS + 1, options=TcpOptions(sack_blocks=((S(lo) & M, S(hi) & M),)), **kw)


def drain(h) -> list:
    out = list(h.conn.segments_out)
    h.conn.segments_out.clear()
    return out


def test_window_changing_acks_without_sack_are_not_dupacks():
    # RFC 5681 2: a duplicate ACK has "the advertised window in the incoming
    # acknowledgment equals the advertised window in the last incoming
    # acknowledgment" -- without SACK blocks, a changed window is an update.
    # (Without SACK: with it, RACK finds losses from the scoreboard, see
    # test_tcp_recovery.py.)
    h = established(timestamps=False)
    h.window = 30000
    h.send()
    h.conn.send(b"s" * (6 * MSS), h.now)
    drain(h)
    for w in (31000, 32000, 33000, 34000):
        h.send(ack=ISS + 1, window=w)
    h.recv_nothing()
    assert h.c["tcp_dup_ack_rx"] == 0 and h.c["tcp_fast_retransmit"] == 0
    assert h.conn.snd_wnd == 34000 and h.conn._recover is None
    for _ in range(3):                             # same window again: duplicates
        h.send(ack=ISS + 1, window=34000)
    h.recv(seq=S(0), payload=b"s" * MSS)
    assert h.c["tcp_dup_ack_rx"] == 3 and h.c["tcp_fast_retransmit"] == 1


def test_sack_blocks_do_not_make_dupacks_unless_negotiated():
    h = established(timestamps=False)              # no SACK-permitted in the SYN
    h.window = 30000
    h.send()
    h.conn.send(b"s" * (6 * MSS), h.now)
    drain(h)
    for i, w in enumerate((31000, 32000, 33000)):
        h.send(window=w, **sacked(1, 2 + i))
    h.recv_nothing()
    assert h.c["tcp_dup_ack_rx"] == 0 and h.c["tcp_fast_retransmit"] == 0


def test_limited_transmit_on_first_two_dupacks():
    # RFC 3042: one previously unsent segment for each of the first two
    # duplicate ACKs (cwnd is full: 10 segments out), none on the third,
    # which is the fast retransmit.
    h = established(timestamps=False)
    h.conn.send(b"l" * (14 * MSS), h.now)
    assert [s.seq for s in drain(h)] == [S(i) for i in range(T.INIT_CWND_SEGS)]
    h.send(ack=ISS + 1)
    h.recv(seq=S(10), payload=b"l" * MSS)
    h.recv_nothing()
    assert h.c["tcp_limited_transmit"] == 1
    h.send(ack=ISS + 1)
    h.recv(seq=S(11), payload=b"l" * MSS)
    h.recv_nothing()
    assert h.c["tcp_limited_transmit"] == 2
    h.send(ack=ISS + 1)
    h.recv(seq=S(0), payload=b"l" * MSS)           # the fast retransmit, nothing new
    h.recv_nothing()
    assert h.c["tcp_limited_transmit"] == 2 and h.c["tcp_fast_retransmit"] == 1
    assert h.conn.snd_max == S(12)


def test_limited_transmit_respects_the_receiver_window():
    h = established(timestamps=False)
    h.window = T.INIT_CWND_SEGS * MSS              # exactly what cwnd sends
    h.send()
    h.conn.send(b"l" * (14 * MSS), h.now)
    assert len(drain(h)) == T.INIT_CWND_SEGS
    h.send(ack=ISS + 1)
    h.send(ack=ISS + 1)
    h.recv_nothing()                               # window full: no new segment
    assert h.conn.snd_max == S(10)
    h.send(ack=ISS + 1)
    h.recv(seq=S(0))
    h.recv_nothing()


def into_sack_recovery(h, extra, base=0) -> int:
    """Segment `base` lost, the container SACKs the next three: fast retransmit.

    (On a connection without SACK the blocks are ignored and the three ACKs
    are plain duplicates: NewReno. With SACK, see test_tcp_recovery.py.)

    Queues a full cwnd (n0 segments, returned), two for limited transmit and
    `extra` more; the recovery point is then S(base + n0 + 2).
    """
    b = base
    n0 = h.conn.cwnd // MSS
    h.conn.send(b"r" * ((n0 + 2 + extra) * MSS), h.now)
    assert [s.seq for s in drain(h)] == [S(b + i) for i in range(n0)]
    for i in range(3):
        h.send(ack=S(b), options=TcpOptions(sack_blocks=((S(b + 1) & M, S(b + 2 + i) & M),)))
        if i < 2:
            h.recv(seq=S(b + n0 + i))              # limited transmit
    h.recv(seq=S(b), payload=b"r" * MSS)           # fast retransmit
    h.recv_nothing()
    assert h.c["tcp_fast_retransmit"] == 1
    assert h.conn._recover == h.conn._rexmit_mark == S(b + n0 + 2)
    return n0


def srtt_established() -> H:
    """RTT samples of 10 ms then 300 ms: srtt ~46 ms while the RTO is ~350 ms.

    One segment (S(0)) is sent and acknowledged on the way.
    """
    h = H(timestamps=False)
    h.syn(options=TcpOptions(mss=MSS))             # no SACK: the NewReno recovery probe
    h.conn.host_connected(h.now)
    h.recv(flags=SYN | ACK)
    h.advance(0.01)
    h.send()
    h.conn.send(b"a" * MSS, h.now)
    h.recv(seq=S(0))
    h.advance(0.3)
    h.send(ack=S(1))
    h.ack = S(1)
    assert h.conn.srtt < 0.05 and h.conn.rto > 0.3, (h.conn.srtt, h.conn.rto)
    assert h.conn.get_timer() is None
    return h


def test_recovery_probe_resends_head_after_two_srtt_with_backoff():
    h = srtt_established()
    srtt, rto = h.conn.srtt, h.conn.rto
    into_sack_recovery(h, 0, base=1)
    # Nothing answers the fast retransmission: resent after 2 x SRTT...
    assert h.fire() == pytest.approx(2 * srtt)
    h.recv(seq=S(1), payload=b"r" * MSS)
    h.recv_nothing()
    assert h.c["tcp_recovery_probe"] == 1
    # ...then after twice that...
    assert h.fire() == pytest.approx(4 * srtt)
    h.recv(seq=S(1), payload=b"r" * MSS)
    h.recv_nothing()
    assert h.c["tcp_recovery_probe"] == 2
    # ...and the next would come after the RTO, which wins and ends recovery.
    assert h.fire() == pytest.approx(rto - 6 * srtt)
    assert h.c["tcp_retransmit_timeout"] == 1 and h.c["tcp_recovery_probe"] == 2
    h.recv(seq=S(1))
    h.recv_nothing()
    assert h.conn._recover is None and h.conn.get_timer() == pytest.approx(h.now + 2 * rto)


def test_recovery_probe_has_a_floor():
    h = established(timestamps=False)                         # handshake RTT 0: srtt == 0
    into_sack_recovery(h, 0)
    assert h.fire() == pytest.approx(T.RECOVERY_PROBE_MIN)
    h.recv(seq=S(0))
    assert h.c["tcp_recovery_probe"] == 1


def test_recovery_probe_restarts_on_partial_ack_and_stops_on_full_ack():
    h = srtt_established()
    srtt, rto = h.conn.srtt, h.conn.rto
    n0 = into_sack_recovery(h, 4, base=1)
    rp = S(1 + n0 + 2)                             # the recovery point
    assert h.fire() == pytest.approx(2 * srtt)    # one probe: backoff now 1
    h.recv(seq=S(1))
    h.advance(0.01)
    # Partial ACK (segment 1 arrived, 2 is missing too): NewReno resends 2,
    # and the probe timer restarts from now, backoff reset.
    h.send(ack=S(2), options=TcpOptions(sack_blocks=((S(3) & M, S(1 + n0) & M),)))
    h.recv(seq=S(2), payload=b"r" * MSS)
    assert all(s.seq >= rp for s in drain(h))      # new data only, if any
    assert h.fire() == pytest.approx(2 * srtt)
    h.recv(seq=S(2))
    assert h.c["tcp_recovery_probe"] == 2
    # Full ACK of everything sent before the fast retransmit: recovery is
    # over and no probe follows; only the RTO guards what is still in flight.
    h.advance(0.01)
    h.send(ack=rp, options=NO_OPTIONS)
    assert h.conn._recover is None
    drain(h)
    assert h.conn.snd_max > h.conn.snd_una
    assert h.fire() == pytest.approx(rto)
    assert h.c["tcp_recovery_probe"] == 2 and h.c["tcp_retransmit_timeout"] == 1


# ---------------------------------------------------------------------------
# zero window advertised
# ---------------------------------------------------------------------------
def test_zero_window_tx_is_counted():
    h = established(rcv_buf=8192, timestamps=False)
    h.send(payload=b"x" * 4096, flags=ACK | PSH)
    h.recv(ack=IRS + 4097, window=4096)
    h.conn.set_host_backlog(4096, h.now)           # the host took none of it
    assert h.c["tcp_zero_window_tx"] == 0          # a small window is not zero
    h.seq = IRS + 4097
    h.send(payload=b"y" * 4096, flags=ACK | PSH)
    h.recv(ack=IRS + 8193, window=0)               # rcv_buf all stuck in the host
    h.conn.set_host_backlog(8192, h.now)
    assert h.c["tcp_zero_window_tx"] == 1
    h.seq = IRS + 8193
    h.send(payload=b"z", flags=ACK | PSH)          # the container's window probe
    h.recv(ack=IRS + 8193, window=0)
    assert h.c["tcp_zero_window_tx"] == 2
    h.conn.set_host_backlog(0, h.now)              # reopens: a window update
    h.recv(ack=IRS + 8193, window=8192)
    assert h.c["tcp_zero_window_tx"] == 2


def test_an_idle_connection_keeps_no_buffers_or_lists():
    """Issue 15 (10,000 idle flows): once everything sent is acknowledged and a hole in
    what was received is filled, the send queue, the transmit-time log and the
    out-of-order list are the shared empty objects again, not empty containers per flow;
    and the connection has no instance dict."""
    h = established(syn_options=TcpOptions(mss=MSS, sack_perm=True))
    c = h.conn
    assert not hasattr(c, "__dict__")
    assert c._sndbuf is T._NO_BYTES and c._xl_end is T._EMPTY and c._ooo is T._EMPTY
    assert c.send(b"r" * 3000, h.now) == 3000
    sent = 0
    while c.segments_out:
        sent += len(h.recv().payload)
    assert sent == 3000 and len(c._sndbuf) == 3000 and c._xl_end
    h.send(ack=ISS + 1 + 3000)
    assert c._sndbuf is T._NO_BYTES and c._xl_end is T._EMPTY and c._xl_ts is T._EMPTY
    # Out of order, then the hole filled: the piece is delivered, the list goes.
    h.send(seq=IRS + 1 + 100, payload=b"b" * 50)
    assert len(c._ooo) == 1
    h.send(payload=b"a" * 100)
    assert h.data() == b"a" * 100 + b"b" * 50
    assert c._ooo is T._EMPTY and c._sb is T._EMPTY and c._lost is T._EMPTY
    c.segments_out.clear()                      # the ACKs of those
    # And the next burst works as the first did.
    assert c.send(b"s" * 10, h.now) == 10
    assert bytes(h.recv(flags=ACK | PSH).payload) == b"s" * 10
