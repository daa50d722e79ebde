"""The delayed ACK of pushed data (TcpConnection's push_ack_delay, set by TcpNat).

A request with PSH is not ACKed at once: the host's answer, if it comes within the delay, carries
the ACK (one frame per transaction instead of two); if it does not, the ACK goes alone when the
delay ends. Everything else that asks for an ACK at once still gets it at once.
"""

import pytest
from test_tcp import IRS, ISS, MSS, established

from usernet.stack import tcp as T
from usernet.stack.tcpnat import PUSH_ACK_DELAY
from usernet.wire.tcp import ACK, FIN, PSH

D = 0.002


def test_answer_within_the_delay_carries_the_ack():
    h = established(push_ack_delay=D)
    h.send(payload=b"q", flags=ACK | PSH)
    assert h.data() == b"q"
    h.recv_nothing()                                # held for the answer
    h.advance(D / 4)
    assert h.conn.send(b"a", h.now) == 1
    h.recv(seq=ISS + 1, ack=IRS + 2, flags=ACK | PSH, payload=b"a")   # one segment, both jobs
    h.recv_nothing()
    assert h.c["tcp_delayed_ack_tx"] == 0
    # Nothing owed any more: the only timer is the retransmission of the answer.
    assert h.conn.get_timer() == pytest.approx(h.now + h.conn.rto)


def test_no_answer_gets_the_ack_when_the_delay_ends():
    h = established(push_ack_delay=D)
    h.send(payload=b"q", flags=ACK | PSH)
    h.recv_nothing()
    assert h.fire() == pytest.approx(D)
    h.recv(seq=ISS + 1, ack=IRS + 2, flags=ACK, payload=b"")
    assert h.c["tcp_delayed_ack_tx"] == 1
    assert h.conn.get_timer() is None


def test_push_shortens_a_pending_delayed_ack_never_lengthens_it():
    h = established(push_ack_delay=D)
    h.send(payload=b"x" * 10)                       # no PSH: the ordinary delay
    assert h.conn.get_timer() == pytest.approx(T.DELACK_TIME)
    h.seq += 10
    h.send(payload=b"y", flags=ACK | PSH)           # PSH: the short one
    assert h.conn.get_timer() == pytest.approx(D)
    h.fire()
    h.recv(ack=IRS + 12, payload=b"")


def test_two_full_segments_are_still_acked_at_once():
    h = established(push_ack_delay=D)
    h.send(payload=b"y" * MSS)
    h.recv_nothing()
    h.seq += MSS
    h.send(payload=b"z" * MSS, flags=ACK | PSH)
    h.recv(ack=IRS + 1 + 2 * MSS)


def test_without_the_delay_push_is_acked_at_once():
    h = established()
    h.send(payload=b"q", flags=ACK | PSH)
    h.recv(ack=IRS + 2)


def test_the_gateway_uses_a_short_delay():
    # Short enough that a container sending behind Nagle is not held up long
    # (Linux's own delayed ACK is 40 ms), long enough for a loopback answer.
    assert 0 < PUSH_ACK_DELAY <= T.DELACK_TIME / 4


def _gateway_flow():
    from usernet.stack.config import NetConfig
    from usernet.stack.events import TcpConnect
    from usernet.stack.gateway import Gateway
    from usernet.wire.frame import build_tcp
    from usernet.wire.tcp import SYN, build_tcp_options

    gmac, guest, gwip = bytes.fromhex("02aabbccddee"), bytes([10, 0, 2, 100]), bytes([10, 0, 2, 2])
    gw = Gateway(NetConfig(), seed=1, offload=True)

    def frame(seq, ack, flags, payload=b"", opts=b""):
        return build_tcp(gw.mac, gmac, guest, gwip, 40000, 7, seq, ack, flags, 502, opts, payload)

    gw.receive_frame(frame(1000, 0, SYN, opts=build_tcp_options(mss=1460, wscale=7)), 1.0)
    (ev,) = [e for e in gw.events_out if isinstance(e, TcpConnect)]
    gw.events_out.clear()
    gw.tcp_connected(ev.fid, 1.0)
    iss = int.from_bytes(gw.frames_out[-1][1][38:42], "big")
    gw.frames_out.clear()
    gw.receive_frame(frame(1001, iss + 1, ACK), 1.0)
    return gw, ev.fid, iss, frame


def test_through_the_gateway_one_frame_per_transaction():
    gw, fid, iss, frame = _gateway_flow()
    now = 1.0
    for i in range(5):
        now += 0.0001
        gw.receive_frame(frame(1001 + i, iss + 1 + i, ACK | PSH, b"q"), now)
        assert gw.frames_out == []
        gw.events_out.clear()
        gw.tcp_host_data(fid, b"a", now)
        (_hdr, f), = gw.frames_out
        gw.frames_out.clear()
        assert int.from_bytes(f[42:46], "big") == 1002 + i      # the answer ACKs the request
        assert bytes(f[-1:]) == b"a"
    # The timer entries left behind by ACKs that rode on answers fire and send nothing.
    t = gw.get_timer()
    while t is not None and t < now + 0.1:
        gw.handle_timer(t)
        assert gw.frames_out == []
        t = gw.get_timer()
    assert gw.counters["tcp_delayed_ack_tx"] == 0


def test_through_the_gateway_unanswered_request_acked_after_the_delay():
    gw, fid, iss, frame = _gateway_flow()
    gw.receive_frame(frame(1001, iss + 1, ACK | PSH, b"q"), 1.5)
    assert gw.frames_out == []
    t = gw.get_timer()
    while not gw.frames_out:        # (earlier entries may fire first, sending nothing)
        assert t is not None
        gw.handle_timer(t)
        fired, t = t, gw.get_timer()
    assert fired == pytest.approx(1.5 + PUSH_ACK_DELAY)
    (_hdr, f), = gw.frames_out
    assert int.from_bytes(f[42:46], "big") == 1002 and len(f) == 54
    assert gw.counters["tcp_delayed_ack_tx"] == 1


def test_window_update_waits_for_the_ack_of_pushed_data():
    # The first backlog report opens the window past the SYN-ACK's unscaled
    # 64 KiB: said on the answer, not in a frame of its own.
    h = established(syn_options=T.TcpOptions(mss=MSS, wscale=7), push_ack_delay=D)
    h.send(payload=b"q", flags=ACK | PSH)
    h.conn.set_host_backlog(0, h.now)
    h.recv_nothing()
    assert h.c["tcp_window_update_deferred"] == 1
    h.conn.send(b"a", h.now)
    s = h.recv(ack=IRS + 2, payload=b"a")
    assert s.window << h.conn.rcv_wscale > 0xFFFF       # the opened window, on the answer
    # Without a pushed ACK pending, the update still goes at once.
    h2 = established(syn_options=T.TcpOptions(mss=MSS, wscale=7), push_ack_delay=D)
    h2.conn.set_host_backlog(0, h2.now)
    h2.recv(flags=ACK, payload=b"")
    assert h2.c["tcp_window_update_tx"] == 1


def test_fin_ack_rides_on_our_fin():
    h = established(push_ack_delay=D)
    h.send(flags=ACK | FIN)
    assert h.conn.state == T.CLOSE_WAIT
    h.recv_nothing()
    h.advance(D / 4)
    h.conn.shutdown_host_eof(h.now)                 # the host closes in turn
    h.recv(seq=ISS + 1, ack=IRS + 2, flags=ACK | FIN)   # one segment: ACK of theirs, our FIN
    h.recv_nothing()


def test_fin_acked_alone_when_the_host_stays_open():
    h = established(push_ack_delay=D)
    h.send(flags=ACK | FIN)
    h.recv_nothing()
    assert h.fire() == pytest.approx(D)
    h.recv(ack=IRS + 2, flags=ACK, payload=b"")
    assert h.conn.state == T.CLOSE_WAIT


def test_fin_in_fin_wait_2_acked_at_once():
    h = established(push_ack_delay=D)
    h.conn.shutdown_host_eof(h.now)
    h.recv(flags=ACK | FIN)
    h.ack = ISS + 2
    h.send()                                         # our FIN acked: FIN-WAIT-2
    assert h.conn.state == T.FIN_WAIT_2
    h.send(flags=ACK | FIN)
    h.recv(ack=IRS + 2, flags=ACK)
    assert h.conn.state == T.TIME_WAIT
