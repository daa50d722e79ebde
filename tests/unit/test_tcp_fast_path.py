"""Header prediction (usernet.stack.tcp on_segment / send, tcpnat's frame template).

Every test runs two connections side by side, fed the same segments at the same
times: one with the short paths on (``tcp.FAST_PATH``), one with them off. After
every step the two must agree on everything a connection is (every slot), on the
segments and events they emitted and on every counter except the two that say
which path ran. ``tcp_fast_path_rx`` / ``tcp_fast_path_tx`` then show whether the
prediction hit: it must in the common case, and must not for each excluded one.
"""

import random

import pytest

from usernet.stack import tcp as T
from usernet.stack import tcpnat as TN
from usernet.stack.config import NetConfig
from usernet.stack.counters import Counters
from usernet.stack.events import TcpConnect, TcpData
from usernet.stack.gateway import Gateway
from usernet.stack.tcp import Segment, TcpConnection
from usernet.wire.frame import build_tcp
from usernet.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions, build_tcp_options

ISS = 1000
IRS = 5000
MSS = 1460
M = 0xFFFFFFFF
FAST = ("tcp_fast_path_rx", "tcp_fast_path_tx")


def _ev(e):
    """An event as comparable plain data (events are slotted records)."""
    return (type(e).__name__, [_norm(getattr(e, f)) for f in e.__slots__])


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


class Twin:
    """Two TcpConnections, the short paths on in ``on`` and off in ``off``."""

    def __init__(self, *, ts=True, sack=True, push_ack_delay=0.01, wscale=7, **kw):
        self.now = 0.0
        self.on = TcpConnection(0.0, ISS, MSS, Counters(), push_ack_delay=push_ack_delay, **kw)
        self.off = TcpConnection(0.0, ISS, MSS, Counters(), push_ack_delay=push_ack_delay, **kw)
        self.ts = ts
        self.tsval = 100
        self.seq = IRS + 1           # the container's next sequence number
        self.ack = ISS + 1           # what the container acknowledges
        self.out_on, self.out_off = [], []
        opts = TcpOptions(mss=MSS, wscale=wscale, sack_perm=sack,
                          ts_val=self.tsval if ts else None, ts_ecr=0 if ts else None)
        self.both(lambda c: c.on_syn(Segment(IRS, 0, SYN, 65535, opts, b""), self.now))
        self.both(lambda c: c.host_connected(self.now))
        self.take()
        self.now += 0.001
        self.segment()                                   # completes the handshake
        assert self.on.state == T.ESTABLISHED

    # -- driving both ------------------------------------------------------
    def both(self, fn):
        before = self.on.counters.copy()
        try:
            T.FAST_PATH = False
            r_off = fn(self.off)
        finally:
            T.FAST_PATH = True
        r_on = fn(self.on)
        assert r_on == r_off
        self.check()
        return {k: self.on.counters[k] - before[k] for k in FAST}

    def opts(self, tsval=None, sack_blocks=()):
        if not self.ts:
            return TcpOptions(sack_blocks=sack_blocks) if sack_blocks else T.NO_OPTIONS
        if tsval is None:
            self.tsval += 1
            tsval = self.tsval
        return TcpOptions(None, None, False, sack_blocks, tsval, 0)

    def segment(self, payload=b"", flags=ACK, seq=None, ack=None, window=1000, options=None,
                advance=True):
        """One segment from the container (default: the next in order,
        acknowledging everything sent to it)."""
        if ack is None:
            ack = self.on.snd_max & M
        s = Segment((self.seq if seq is None else seq) & M, ack & M, flags, window,
                    self.opts() if options is None else options, payload)
        if advance and seq is None:
            self.seq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        return self.both(lambda c: c.on_segment(s, self.now))

    def host(self, data):
        return self.both(lambda c: c.send(data, self.now))

    def backlog(self, n):
        return self.both(lambda c: c.set_host_backlog(n, self.now))

    def timer(self):
        t = self.on.get_timer()
        assert t == self.off.get_timer()
        if t is None:
            return None
        self.now = max(self.now, t)
        return self.both(lambda c: c.handle_timer(self.now))

    def take(self):
        """The segments both emitted since the last call (equal by check())."""
        segs = list(self.on.segments_out)
        self.on.segments_out.clear()
        self.off.segments_out.clear()
        self.on.events.clear()
        self.off.events.clear()
        return segs

    # -- the comparison ----------------------------------------------------
    def check(self):
        a, b = self.on, self.off
        for name in TcpConnection.__slots__:
            if name in ("counters", "events", "segments_out", "ts_clock"):
                continue
            va, vb = _norm(getattr(a, name)), _norm(getattr(b, name))
            assert va == vb, f"{name}: fast {va!r} != full {vb!r}"
        assert [_norm(list(s)) for s in a.segments_out] == [_norm(list(s)) for s in b.segments_out]
        assert [_ev(e) for e in a.events] == [_ev(e) for e in b.events]
        ca = {k: v for k, v in a.counters.items() if k not in FAST and v}
        cb = {k: v for k, v in b.counters.items() if k not in FAST and v}
        assert ca == cb
        assert not any(b.counters[k] for k in FAST)


def rr(t: Twin, n: int = 1):
    """n 1-byte request/response transactions, as the container and a host echo do them."""
    hits = {"tcp_fast_path_rx": 0, "tcp_fast_path_tx": 0}
    for _ in range(n):
        t.now += 0.0001
        for k, v in t.segment(b"x", ACK | PSH).items():
            hits[k] += v
        assert [type(e) for e in t.on.events] == [TcpData]
        t.backlog(0)
        for k, v in t.host(b"y").items():
            hits[k] += v
        (s,) = t.take()
        assert s.flags == ACK | PSH and bytes(s.payload) == b"y"
        assert s.ack == t.seq & M               # the ACK rode on the answer
    return hits


# ---------------------------------------------------------------------------
# the common case hits
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ts,sack", [(True, True), (False, True), (True, False), (False, False)])
def test_request_response_takes_both_short_paths(ts, sack):
    t = Twin(ts=ts, sack=sack)
    hits = rr(t, 50)
    assert hits == {"tcp_fast_path_rx": 50, "tcp_fast_path_tx": 50}


def test_pure_ack_of_new_data_and_bulk_in_order_data_hit():
    t = Twin()
    t.host(b"a" * 300)                          # one segment, nothing in flight: predicted
    assert t.on.counters["tcp_fast_path_tx"] == 1
    t.take()
    t.now += 0.001
    assert t.segment()["tcp_fast_path_rx"] == 1  # pure ACK of it
    for _ in range(20):                         # in-order data, ACK every second segment
        t.now += 0.0001
        assert t.segment(b"d" * MSS)["tcp_fast_path_rx"] == 1
    assert len(t.take()) == 10
    # A window that grows on a predicted segment (the largest seen moves too).
    assert t.segment(b"g", ACK | PSH, window=4000)["tcp_fast_path_rx"] == 1
    assert t.on.snd_wnd == 4000 << t.on.snd_wscale == t.on._max_snd_wnd
    t.now += 0.05
    t.timer()


def test_data_that_repeats_snd_una_while_data_is_in_flight_hits():
    t = Twin()
    t.host(b"a" * 100)
    t.take()
    t.host(b"b" * 100)                          # queued behind: not predicted
    assert t.on.counters["tcp_fast_path_tx"] == 1
    t.take()
    t.now += 0.0001
    # Data acknowledging nothing new (ack == SND.UNA): predicted.
    assert t.segment(b"q", ACK | PSH, ack=t.on.snd_una)["tcp_fast_path_rx"] == 1
    assert t.segment(b"", ack=ISS + 1 + 200)["tcp_fast_path_rx"] == 1


# ---------------------------------------------------------------------------
# each excluded case goes the full way and ends the same
# ---------------------------------------------------------------------------
def test_out_of_order_data_and_the_filled_hole_take_the_full_path():
    t = Twin()
    rr(t, 3)
    hole = t.seq
    assert t.segment(b"B" * 10, ACK | PSH, seq=hole + 10)["tcp_fast_path_rx"] == 0
    assert t.on._ooo
    t.take()
    # Fills the hole while pieces are queued: full path (pull from the queue).
    assert t.segment(b"A" * 10, ACK, seq=hole)["tcp_fast_path_rx"] == 0
    t.seq = hole + 20
    t.take()
    assert rr(t, 2)["tcp_fast_path_rx"] == 2    # and the short path again after


def test_fin_and_rst_take_the_full_path():
    t = Twin()
    rr(t, 2)
    assert t.segment(b"z", ACK | PSH | FIN)["tcp_fast_path_rx"] == 0
    assert t.on.state == T.CLOSE_WAIT
    t2 = Twin()
    rr(t2, 2)
    assert t2.segment(b"", RST | ACK, advance=False)["tcp_fast_path_rx"] == 0
    assert t2.on.closed


def test_syn_urg_and_ecn_bits_take_the_full_path():
    for extra in (SYN, 0x20, 0x40, 0x80):       # SYN, URG, ECE, CWR
        t = Twin()
        rr(t, 1)
        assert t.segment(b"x", ACK | PSH | extra, advance=False)["tcp_fast_path_rx"] == 0


def test_sack_blocks_take_the_full_path():
    t = Twin()
    rr(t, 2)
    t.host(b"s" * (4 * MSS))
    t.take()
    una = t.on.snd_una
    blk = ((una + MSS) & M, (una + 2 * MSS) & M)
    t.now += 0.001
    assert t.segment(ack=una, options=t.opts(sack_blocks=(blk,)))["tcp_fast_path_rx"] == 0
    assert t.on._sb
    # With a scoreboard, even a plain in-order ACK goes the full way.
    assert t.segment(ack=una + MSS // 2)["tcp_fast_path_rx"] == 0


def test_peer_zero_window_and_our_closed_window_take_the_full_path():
    t = Twin()
    rr(t, 2)
    assert t.segment(b"x", ACK | PSH, window=0)["tcp_fast_path_rx"] == 0
    assert t.on.snd_wnd == 0
    t.take()
    # With the peer's window at zero the next segments (window open again) go the full way too.
    assert t.segment(b"", window=1000)["tcp_fast_path_rx"] == 0
    assert t.on.snd_wnd > 0
    # Our window: data beyond the advertised right edge is not predicted.
    t2 = Twin(rcv_buf=4096)
    t2.backlog(4096)                            # the host socket holds a full buffer
    edge = t2.on._rcv_adv - t2.on.rcv_nxt
    assert t2.segment(b"w" * (edge + 1), ACK)["tcp_fast_path_rx"] == 0


def test_paws_failure_and_missing_timestamp_take_the_full_path():
    t = Twin()
    rr(t, 2)
    old = t.on._ts_recent - 5
    assert t.segment(b"x", ACK | PSH, options=t.opts(tsval=old), advance=False)[
        "tcp_fast_path_rx"] == 0
    assert t.on.counters["tcp_drop_paws"] == 1
    t.take()
    assert t.segment(b"x", ACK | PSH, options=TcpOptions())["tcp_fast_path_rx"] == 0


def test_retransmission_outstanding_with_rack_state_takes_the_full_path():
    t = Twin()
    rr(t, 3)
    t.now += 0.001
    t.on.cwnd = t.off.cwnd = 100 * MSS
    t.host(b"r" * (10 * MSS))
    t.take()
    una = t.on.snd_una
    # The first segment is lost: SACKs of the rest start RACK.
    for i in range(2, 8):
        t.now += 0.0002
        blk = ((una + MSS) & M, (una + i * MSS) & M)
        assert t.segment(ack=una, options=t.opts(sack_blocks=(blk,)))["tcp_fast_path_rx"] == 0
    t.now += 0.02
    while t.on.get_timer() is not None and t.on.get_timer() <= t.now:
        t.timer()
    assert t.on._rp is not None or t.on._sb or t.on.rexmits
    t.take()
    # Cumulative ACKs during the recovery: full path, same state.
    assert t.segment(ack=una + 3 * MSS)["tcp_fast_path_rx"] == 0
    assert t.segment(ack=t.on.snd_max)["tcp_fast_path_rx"] == 0 or not t.on._rx
    # The send side is not predicted while anything is outstanding.
    t.host(b"n")
    t.take()


def test_after_an_rto_the_full_path_until_recovered():
    t = Twin()
    rr(t, 2)
    t.host(b"L" * 500)
    t.take()
    for _ in range(3):                          # nothing answers: probe, then RTOs
        t.timer()
        t.take()
    assert t.on.rexmits
    t.now += 0.001
    assert t.segment(b"k", ACK | PSH, ack=t.on.snd_una)["tcp_fast_path_rx"] in (0, 1)
    t.segment(ack=t.on.snd_max)
    t.take()
    assert rr(t, 3) == {"tcp_fast_path_rx": 3, "tcp_fast_path_tx": 3}


# ---------------------------------------------------------------------------
# a random walk: any mix of the above, same state at every step
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(24))
def test_random_exchanges_fast_and_full_paths_agree(seed):
    rnd = random.Random(seed)
    t = Twin(ts=rnd.random() < 0.7, sack=rnd.random() < 0.7, push_ack_delay=rnd.choice([0, 0.01]),
             rcv_buf=rnd.choice([8192, 256 * 1024]))
    sent = []       # the segments toward the container not yet delivered to it
    for _ in range(400):
        t.now += rnd.choice([0.00005, 0.0005, 0.003, 0.05])
        r = rnd.random()
        if r < 0.3:
            t.host(bytes([rnd.randrange(256)]) * rnd.choice([1, 10, 700, 3000, 20000]))
        elif r < 0.55:
            t.segment(b"c" * rnd.choice([1, 100, MSS]), ACK | PSH)
        elif r < 0.75:
            # ACK of some of what was sent (or all of it), maybe with a window change.
            una, mx = t.on.snd_una, t.on.snd_max
            t.segment(ack=rnd.randint(una, mx), window=rnd.choice([1000, 1000, 3000, 5, 0]))
        elif r < 0.82:
            # Out of order, or a duplicate from the past.
            t.segment(b"o" * 50, ACK, seq=t.seq + rnd.choice([-60, 100, 3000]))
        elif r < 0.87 and t.on.sack_ok and t.on.snd_max - t.on.snd_una > 2 * MSS:
            una = t.on.snd_una
            blk = ((una + MSS) & M, min(una + 2 * MSS, t.on.snd_max) & M)
            t.segment(ack=una, options=t.opts(sack_blocks=(blk,)))
        elif r < 0.93:
            t.backlog(rnd.choice([0, 0, 100, 5000]))
        else:
            t.timer()
        t.take()
        if t.on.closed:
            break


# ---------------------------------------------------------------------------
# the frame template gives the general builder's bytes
# ---------------------------------------------------------------------------
GUEST_MAC = bytes.fromhex("02aabbccddee")
GUEST = bytes([10, 0, 2, 100])
GW = bytes([10, 0, 2, 2])


def _gateway_run(fast: bool, offload: bool):
    T.FAST_PATH = TN.FRAME_TEMPLATE = fast
    try:
        gw = Gateway(NetConfig(), seed=3, offload=offload)
        now = 1.0
        opts = build_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(1, 0))
        gw.receive_frame(build_tcp(gw.mac, GUEST_MAC, GUEST, GW, 40000, 7, 1000, 0, SYN, 64240,
                                   opts), now, True)
        (ev,) = [e for e in gw.events_out if isinstance(e, TcpConnect)]
        gw.tcp_connected(ev.fid, now)
        our = int.from_bytes(gw.frames_out[-1][1][38:42], "big") + 1
        seq = 1001
        out = []
        for k in range(30):
            now += 0.0001
            gw.receive_frame(build_tcp(gw.mac, GUEST_MAC, GUEST, GW, 40000, 7, seq, our,
                                       ACK | PSH, 502, build_tcp_options(ts=(3 + k, 1)),
                                       b"x" * (k % 3 + 1), csum=not offload), now, offload)
            seq += k % 3 + 1
            gw.tcp_host_backlog(ev.fid, 0, now)
            data = b"y" * (1 + (k * 37) % 1500) if k % 5 else b"z" * 5000
            gw.tcp_host_data(ev.fid, data, now)
            our += len(data)
        # a frame is (vnet header, frame), or with TSO (vnet header, headers, payload view)
        out = [tuple(bytes(x) for x in fr) for fr in gw.frames_out]
        counters = dict(gw.counters)
        return out, [_ev(e) for e in gw.events_out], counters
    finally:
        T.FAST_PATH = TN.FRAME_TEMPLATE = True


@pytest.mark.parametrize("offload", [True, False])
def test_gateway_frames_identical_with_and_without_the_short_paths(offload):
    a = _gateway_run(True, offload)
    b = _gateway_run(False, offload)
    assert a[0] == b[0]
    assert a[1] == b[1]
    ca = {k: v for k, v in a[2].items() if k not in FAST and v}
    cb = {k: v for k, v in b[2].items() if k not in FAST and v}
    assert ca == cb
    assert a[2]["tcp_fast_path_rx"] > 0 and a[2]["tcp_fast_path_tx"] > 0
    assert not b[2].get("tcp_fast_path_rx") and not b[2].get("tcp_fast_path_tx")


def test_template_frame_equals_the_general_builder():
    from usernet.wire.frame import addr_sum4, build_tcp4, build_tcp4_ts, tcp4_ts_template
    rnd = random.Random(5)
    m1, m2 = bytes(range(6)), bytes(range(6, 12))
    tpl = tcp4_ts_template(m1, m2, GW, GUEST, 7, 40000)
    before = bytes(tpl)
    asum = addr_sum4(GW, GUEST)
    for _ in range(500):
        seq, ack, tv, te = (rnd.getrandbits(32) for _ in range(4))
        flags, win, ident = rnd.choice([ACK, ACK | PSH, ACK | FIN]), rnd.getrandbits(16), \
            rnd.getrandbits(16)
        payload = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 77, 1448])))
        want = build_tcp4(m1, m2, GW, GUEST, asum, 7, 40000, seq, ack, flags, win,
                          build_tcp_options(ts=(tv, te)), payload, ident, False)
        assert build_tcp4_ts(tpl, asum, seq, ack, flags, win, tv, te, payload, ident) == want
    assert bytes(tpl) == before                 # the template is never written to
