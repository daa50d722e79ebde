"""usernet.stack.tcp loss recovery with SACK: RFC 6675 scoreboard, RACK-TLP (RFC 8985).

Packet traces in the style of test_tcp.py (same harness): the container's ACKs
carry crafted SACK blocks; time moves only with ``h.now``. Every connection
here agreed SACK and has an RTT sample of ``RTT`` from the handshake (so
RACK.min_RTT = SRTT = RTT, reo_wnd = RTT / 4 while no reordering is seen).
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_tcp import ISS, MSS, M, H, drain
from usernet.stack import tcp as T
from usernet.stack.counters import Counters
from usernet.stack.events import TcpData
from usernet.stack.tcp import TcpConnection
from usernet.wire.tcp import ACK, FIN, NO_OPTIONS, SYN, TcpOptions

RTT = 0.01


def S(i):
    """Wire start of our i-th MSS-sized piece of data (timestamps off)."""
    return ISS + 1 + i * MSS


def sack(ack_i, *blocks) -> dict:
    """send() overrides: ACK up to piece ``ack_i``, SACK blocks of pieces [lo, hi)."""
    return dict(ack=S(ack_i), options=TcpOptions(sack_blocks=tuple(
        (S(lo) & M, S(hi) & M) for lo, hi in blocks)) if blocks else NO_OPTIONS)


def rack_established(**kw) -> H:
    h = H(timestamps=False, **kw)
    h.syn(options=TcpOptions(mss=MSS, sack_perm=True, wscale=7))   # 8 MiB windows
    h.conn.host_connected(h.now)
    s = h.recv(flags=SYN | ACK)
    assert s.options.sack_perm                  # we offer SACK back (RFC 2018 3)
    h.advance(RTT)
    h.send()
    assert h.conn.sack_ok and h.conn.srtt == pytest.approx(RTT)
    return h


def flight(h, n, *, big=False) -> list:
    """Queue and send ``n`` MSS of data; return the segments sent."""
    if big:
        h.conn.cwnd = 1000 * MSS                # room for several GSO segments at once
    h.conn.send(b"d" * (n * MSS), h.now)
    out = drain(h)
    assert out and out[0].seq == h.conn.snd_una & M
    return out


def no_loss_state(h):
    c = h.conn
    return not c._sb and not c._lost and not c._rx and c._rp is None


# ---------------------------------------------------------------------------
def test_clean_transfer_leaves_the_scoreboard_empty_and_arms_a_probe():
    h = rack_established()
    flight(h, 10)
    assert h.conn._pto and h.conn.get_timer() == pytest.approx(h.now + 2 * RTT)
    h.advance(RTT)
    h.send(**sack(10))
    assert no_loss_state(h)
    assert h.conn.get_timer() is None           # nothing in flight: no timer at all
    assert h.c["tcp_retransmit"] == 0 and h.c["tcp_tlp_probes"] == 0


def test_single_loss_is_found_by_rack_and_repaired_in_one_recovery():
    h = rack_established()
    assert len(flight(h, 10)) == 10
    h.advance(RTT)
    # Piece 1 lost: piece 0 is acked, then 2, 3, 4 are SACKed one by one.
    h.send(**sack(1))
    drain(h)                                     # slow start sends nothing new (all queued went)
    h.send(**sack(1, (2, 3)))
    h.recv_nothing()                             # one SACKed piece: reo_wnd (RTT/4) first
    assert h.conn.get_timer() == pytest.approx(h.now + RTT / 4)
    h.send(**sack(1, (2, 4)))
    h.recv_nothing()
    h.send(**sack(1, (2, 5)))                    # DupThresh pieces SACKed: reo_wnd 0
    h.recv(seq=S(1), payload=b"d" * MSS)
    h.recv_nothing()
    assert h.c["tcp_fast_recoveries"] == 1 and h.c["tcp_rack_retransmits"] == 1
    assert h.conn._rp == S(10) and h.conn.cwnd == h.conn.ssthresh == 9 * MSS // 2
    for hi in range(6, 11):
        h.send(**sack(1, (2, hi)))
    h.recv_nothing()                             # the retransmission is not resent
    h.advance(RTT)
    h.send(**sack(10))
    assert no_loss_state(h)
    assert h.c["tcp_retransmit"] == 1 and h.c["tcp_retransmit_timeout"] == 0


def test_reordering_inside_reo_wnd_is_not_a_loss():
    h = rack_established()
    flight(h, 10)
    h.advance(RTT)
    h.send(**sack(1))
    h.send(**sack(1, (2, 3)))                    # piece 1 is late, not lost
    h.advance(RTT / 8)
    h.send(**sack(3))                            # ... and here it is
    h.advance(RTT)
    if h.conn.get_timer() is not None and h.conn.get_timer() <= h.now:
        h.conn.handle_timer(h.now)               # the stale reordering timer finds nothing
    h.recv_nothing()
    assert h.c["tcp_reordering_seen"] == 1 and h.c["tcp_retransmit"] == 0
    assert h.c["tcp_fast_recoveries"] == 0
    # Reordering seen: even DupThresh SACKed pieces now wait reo_wnd.
    h.send(**sack(3, (4, 8)))
    h.recv_nothing()
    assert h.conn._rack_at == pytest.approx(h.now + RTT / 4)


def test_late_piece_past_reo_wnd_is_resent_by_the_reordering_timer():
    h = rack_established()
    flight(h, 10)
    h.advance(RTT)
    h.send(**sack(1))
    h.send(**sack(1, (2, 3)))
    h.recv_nothing()
    assert h.fire() == pytest.approx(RTT / 4)
    h.recv(seq=S(1), payload=b"d" * MSS)
    assert h.c["tcp_rack_timer"] == 1 and h.c["tcp_fast_recoveries"] == 1


def test_multiple_losses_in_one_window_one_recovery():
    h = rack_established()
    flight(h, 12)
    h.advance(RTT)
    lost = (1, 4, 7)
    got = [i for i in range(12) if i not in lost]
    # The container's ACKs as each surviving piece arrives (newest block first).
    rexmits = []
    for i in got:
        blocks = []
        hi = None
        for j in sorted(x for x in got if 1 < x <= i):
            if hi is not None and j == hi:
                blocks[-1] = (blocks[-1][0], j + 1)
            else:
                blocks.append((j, j + 1))
            hi = j + 1
        h.send(**sack(1, *reversed(blocks[-3:])))
        rexmits += drain(h)
    # (10 and 11 went out new when piece 0 was acked.)
    assert sorted(s.seq for s in rexmits if s.seq < S(10)) == [S(1), S(4), S(7)]
    assert h.c["tcp_fast_recoveries"] == 1 and h.c["tcp_rack_retransmits"] == 3
    h.advance(RTT)
    h.send(**sack(12))
    assert no_loss_state(h) and h.c["tcp_retransmit_timeout"] == 0


def test_tail_loss_probe_repairs_without_rto():
    h = rack_established()
    flight(h, 10)
    h.advance(RTT)
    h.send(**sack(8))                            # pieces 8 and 9, the tail, are lost
    drain(h)
    # No ACK will come: the loss probe (2 x SRTT) resends the last piece.
    assert h.fire() == pytest.approx(2 * RTT)
    h.recv(seq=S(9), payload=b"d" * MSS)
    h.recv_nothing()
    assert h.c["tcp_tlp_probes"] == 1 and h.c["tcp_retransmit_timeout"] == 0
    assert not h.conn._pto                       # behind the probe: the RTO
    h.advance(RTT)
    h.send(**sack(8, (9, 10)))                   # the probe's SACK shows the hole
    h.recv(seq=S(8), payload=b"d" * MSS)
    assert h.c["tcp_fast_recoveries"] == 1
    h.advance(RTT)
    h.send(**sack(10))
    assert no_loss_state(h) and h.c["tcp_retransmit_timeout"] == 0


def test_tail_loss_probe_sends_new_data_when_it_can():
    h = rack_established()
    flight(h, 10)
    h.conn.send(b"n" * MSS, h.now)               # cwnd is full: it waits
    h.recv_nothing()
    h.fire()
    h.recv(seq=S(10), payload=b"n" * MSS)
    assert h.c["tcp_tlp_new_data"] == 1 and h.conn._tlp_end == S(11)


def test_probe_answered_with_dsack_was_spurious():
    h = rack_established()
    flight(h, 1)
    # A lone segment: the probe also waits for a delayed ACK, but never
    # longer than the RTO would (RFC 8985 7.2).
    assert h.fire() == pytest.approx(min(2 * RTT + T.TLP_DELACK, h.conn.rto))
    h.recv(seq=S(0))
    cwnd = h.conn.cwnd
    h.advance(RTT)
    h.send(**sack(1, (0, 1)))                    # D-SACK: the original had arrived
    assert h.c["tcp_dsack_rx"] == 1 and h.c["tcp_tlp_spurious"] == 1
    assert h.conn._tlp_end is None and h.conn.cwnd >= cwnd


def test_lost_retransmission_probed_then_rto_as_last_resort():
    h = rack_established()
    flight(h, 10)
    h.advance(RTT)
    h.send(**sack(1, (2, 5)))
    h.recv(seq=S(1))                             # fast retransmit...
    for hi in range(6, 11):
        h.send(**sack(1, (2, hi)))
    h.recv_nothing()                             # ...lost too; nothing newer to tell
    # No ACK for a PTO in the recovery: the first hole is probed once...
    assert h.fire() == pytest.approx(2 * RTT)
    h.recv(seq=S(1), payload=b"d" * MSS)
    h.recv_nothing()
    assert h.c["tcp_recovery_probe"] == 1 and h.c["tcp_retransmit_timeout"] == 0
    # ...and if that is lost too, the RTO is the last resort.
    rto = h.conn.rto
    assert h.fire() == pytest.approx(rto)
    assert h.c["tcp_retransmit_timeout"] == 1 and h.c["tcp_recovery_probe"] == 1
    h.recv(seq=S(1))                             # go back N from SND.UNA
    assert h.conn._rp is None and h.conn._rto_rp == S(10)


def test_lost_retransmission_found_by_rack_when_newer_data_is_sacked():
    h = rack_established()
    flight(h, 10)
    h.conn.send(b"e" * (40 * MSS), h.now)        # more to send during the recovery
    h.advance(RTT)
    h.send(**sack(1, (2, 5)))
    out = drain(h)
    assert out[0].seq == S(1)
    h.advance(RTT / 2)
    # SACKs of the rest of the first flight let new data out (pipe < cwnd),
    # sent after the retransmission.
    for hi in range(6, 11):
        h.send(**sack(1, (2, hi)))
        out += drain(h)
    new = [s.seq for s in out if s.seq >= S(10)]
    assert new, "nothing new was sent in recovery"
    h.advance(RTT)
    # New data sent after the retransmission is SACKed, piece 1 still missing.
    h.send(**sack(1, (2, 11)))
    h.send(**sack(1, (10, 11), (2, 10)))
    out = drain(h)
    assert out and out[0].seq == S(1)
    assert h.c["tcp_rack_retransmits"] >= 2 and h.c["tcp_retransmit_timeout"] == 0


# ---------------------------------------------------------------------------
# GSO: our segments are up to ~64 KiB, the container acknowledges MSS pieces
# ---------------------------------------------------------------------------
GSO = 44 * MSS


def test_gso_single_piece_lost_only_that_piece_is_resent():
    h = rack_established(max_seg=GSO)
    out = flight(h, 132, big=True)
    assert [len(s.payload) for s in out] == [GSO] * 3
    h.advance(RTT)
    h.send(**sack(50, (51, 132)))               # piece 50 (inside the 2nd segment) lost
    h.recv(seq=S(50), payload=b"d" * MSS)
    h.recv_nothing()
    assert h.c["tcp_fast_recoveries"] == 1
    h.advance(RTT)
    h.send(**sack(132))
    assert no_loss_state(h) and h.c["tcp_retransmit"] == 1


def test_gso_whole_tail_segment_lost_probe_then_one_big_retransmission():
    h = rack_established(max_seg=GSO)
    flight(h, 132, big=True)
    h.advance(RTT)
    h.send(**sack(88))                           # the third 64 KiB segment is lost
    drain(h)
    h.fire()
    h.recv(seq=S(131), payload=b"d" * MSS)       # the probe: the last MSS piece
    h.advance(RTT)
    h.send(**sack(88, (131, 132)))
    s = h.recv(seq=S(88))
    assert len(s.payload) == 43 * MSS           # the rest of the hole, one GSO segment
    h.recv_nothing()
    h.advance(RTT)
    h.send(**sack(132))
    assert no_loss_state(h) and h.c["tcp_retransmit_timeout"] == 0


def test_gso_two_holes_in_one_segment():
    h = rack_established(max_seg=GSO)
    flight(h, 88, big=True)
    h.advance(RTT)
    h.send(**sack(10, (60, 88), (11, 40)))       # pieces 10 and 40..59 lost
    seqs = [(s.seq, len(s.payload)) for s in drain(h)]
    assert seqs[:2] == [(S(10), MSS), (S(40), 20 * MSS)]
    assert h.c["tcp_fast_recoveries"] == 1 and h.c["tcp_rack_retransmits"] == 2


def test_fin_in_the_lost_tail_is_resent():
    h = rack_established()
    flight(h, 4)
    h.conn.shutdown_host_eof(h.now)
    h.recv(flags=ACK | FIN)
    h.advance(RTT)
    h.send(**sack(3))                            # piece 3 and the FIN lost
    h.fire()
    s = h.recv(seq=S(3))
    assert s.flags & FIN and len(s.payload) == MSS
    assert h.c["tcp_tlp_probes"] == 1


def test_without_sack_no_probe_and_no_scoreboard():
    h = H(timestamps=False)
    h.syn(options=TcpOptions(mss=MSS))
    h.conn.host_connected(h.now)
    s = h.recv(flags=SYN | ACK)
    assert not s.options.sack_perm
    h.advance(RTT)
    h.send()
    flight(h, 10)
    assert not h.conn._pto and not h.conn._xl_end
    h.advance(RTT)
    h.send(**sack(1, (2, 5)))                   # blocks from a confused peer: ignored
    assert no_loss_state(h)


def test_probe_that_repaired_a_loss_halves_cwnd_once_acked_beyond():
    h = rack_established()
    flight(h, 10)
    h.advance(RTT)
    h.send(**sack(9))                            # piece 9, the tail, is lost
    drain(h)
    h.fire()
    h.recv(seq=S(9))                             # the probe resends it
    h.conn.send(b"m" * MSS, h.now)
    h.recv(seq=S(10))
    h.advance(RTT)
    h.send(**sack(10))                           # reaches the probe: not yet proof
    assert h.c["tcp_tlp_loss_repaired"] == 0 and h.conn._tlp_end == S(10)
    cwnd = h.conn.cwnd
    h.send(**sack(11))                           # beyond it, no D-SACK: a repaired loss
    assert h.c["tcp_tlp_loss_repaired"] == 1 and h.conn._tlp_end is None
    half = cwnd // 2                             # then one ACK of congestion avoidance
    assert h.conn.ssthresh == half and h.conn.cwnd == half + MSS * MSS // half
    assert h.c["tcp_retransmit_timeout"] == 0


# ---------------------------------------------------------------------------
# property: losses of first transmissions never need the RTO
# ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32), size=st.integers(1, 400_000),
       loss=st.sampled_from((0.01, 0.05, 0.2)),
       max_seg=st.sampled_from((None, 4 * MSS, 44 * MSS)), timestamps=st.booleans())
def test_lost_first_transmissions_are_repaired_without_rto(seed, size, loss, max_seg, timestamps):
    """Our sender toward our own receiver (SACK on both, at most 3 blocks per
    ACK, no D-SACK), a FIFO link of 100 us per segment that drops first
    transmissions only, never what a timer sent (a loss probe may be new
    data): every byte arrives in order and no RTO fires -- RACK, the
    recovery and the loss probes repair everything."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    now = 0.0
    cs, cr = Counters(), Counters()
    snd = TcpConnection(now, rng.randrange(1 << 32), MSS, cs, max_seg=max_seg,
                        timestamps=timestamps, snd_buf=1 << 20)
    rcv = TcpConnection(now, rng.randrange(1 << 32), MSS, cr, rcv_buf=1 << 20,
                        timestamps=timestamps)
    rcv.open_active(now)
    snd.on_syn(rcv.segments_out.pop(), now)
    snd.host_connected(now)
    got = bytearray()
    pending = memoryview(data)
    high = None                          # highest sequence end sent so far (wire, unwrapped)
    link = []                            # (deliver_at, to, segment)
    timer_sent = False
    for _ in range(200_000):
        if pending and snd.state == T.ESTABLISHED:
            n = snd.send(pending[:65536], now)
            pending = pending[n:]
        for s in snd.segments_out:
            end = snd.iss + ((s.seq - snd.iss) & M) + len(s.payload)
            first = high is None or end > high
            if first:
                high = end
            if first and s.payload and not timer_sent and rng.random() < loss:
                continue
            link.append((now + 1e-4, rcv, s._replace(payload=bytes(s.payload))))
        snd.segments_out.clear()
        timer_sent = False
        for s in rcv.segments_out:
            link.append((now + 1e-4, snd, s))
        rcv.segments_out.clear()
        for e in rcv.events:
            if type(e) is TcpData:
                got += e.data
        rcv.events.clear()
        rcv.set_host_backlog(0, now)
        if len(got) == size:
            break
        if link:
            t, dst, s = link.pop(0)
            now = max(now, t)
            dst.on_segment(s, now)
            continue
        deadlines = [d for d in (snd.get_timer(), rcv.get_timer()) if d is not None]
        assert deadlines, "stuck with nothing in flight"
        now = max(now, min(deadlines))
        for c in (snd, rcv):
            d = c.get_timer()
            if d is not None and d <= now:
                c.handle_timer(now)
        timer_sent = True
    assert bytes(got) == data
    assert cs["tcp_retransmit_timeout"] == 0, dict(cs)
