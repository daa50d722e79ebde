"""One TCP connection toward the container, at segment level (sans-IO).

Theory of operation
===================

A :class:`TcpConnection` is the *container side* of one NAT'ed TCP flow. The
gateway owns addresses, frames and flow lookup; it hands this object parsed
:class:`Segment` tuples and host-side notifications, and it drains two lists
after every call:

* ``segments_out`` -- segments to frame toward the container;
* ``events`` -- host-side records from :mod:`usernet.stack.events`, tagged
  with the flow id (``fid``) and appended straight to the list the gateway
  passed in (its ``events_out``): ``TcpData``, ``TcpShutdown`` (container
  FIN), ``TcpAbort`` (container RST, or we gave up), ``TcpPause`` /
  ``TcpResume``, ``TcpInboundConnected`` / ``TcpInboundRefused`` (active
  open only). ``closed`` turns True exactly once, when the gateway may
  forget the flow (it then emits ``TcpClose`` itself).

Nothing here reads a clock or draws a random number: every mutating call
takes ``now`` (float seconds, monotonic) and the ISS is a constructor
argument. Every state transition of the flow lives in this one module.

Opening. *Passive* (the container connects out): ``on_syn`` records the
container's SYN and parks in SYN-RECEIVED *without answering*; the gateway
connects the host socket first and then calls ``host_connected`` (we send the
SYN-ACK) or ``host_refused`` (we send RST|ACK and close). Retransmitted SYNs
while the host connect is pending are absorbed. *Active* (a port forward into
the container): ``open_active`` sends a SYN, retransmitted with RFC 6298
backoff up to :data:`SYN_RETRIES` times.

States are the RFC 9293 names as strings (``state`` attribute): LISTEN (fresh
object), SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2,
CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT, CLOSED. "Host EOF" is our CLOSE
call; the container's FIN becomes the ``TcpShutdown`` event.

Sequence numbers. Internally ``snd_*``/``rcv_*``/``iss``/``irs`` are
*unwrapped* integers (they start at the 32-bit value and grow without
wrapping); incoming ``seq``/``ack`` are unwrapped against ``rcv_nxt`` /
``snd_una`` on arrival and masked with ``& 0xFFFFFFFF`` on the way out. So all
comparisons below are plain integer comparisons.

Sending (host -> container). Host bytes go into one ``bytearray`` holding
everything from ``snd_una`` on (unacked + unsent), at most ``snd_buf`` bytes
(``send`` returns how much it took). Segments are views of it (no copy), of at
most ``_seg_size`` bytes (``max_seg`` rounded down to a multiple of ``snd_mss``; a
TSO-capable gateway sets it to ~64 KiB while the wire MSS, ``snd_mss``, stays
the same: the container's kernel takes such a segment whole, and the gateway
writes the view to the TAP behind the headers). A bytearray with views cannot
be resized, so acked bytes are dropped by the next ``send``, not by the ACK
(whose batch may have clocked out segments not yet written): the live bytes
and the new ones go into a new buffer, the old one staying for any frame
that still shows it; growing a queue such a frame shows makes a copy too
(``tcp_send_queue_copied``). With TSO the queue holds whole segments
(``snd_buf`` rounded down) and, while data is in flight, a partial segment
waits: the tail of a host read that said more follows (``send(..., more=True)``,
``tcp_tx_tail_deferred``) or a window that allows under a third of itself
(``tcp_tx_window_deferred``, like Linux's ``tcp_tso_should_defer``); either
leaves at the latest when the flight is acknowledged. Segments that
arrive bigger than our MSS (the container's TSO super-segments, ~64 KiB) are
taken like any other: only the window bounds what we accept. In flight is capped by
``min(cwnd, snd_wnd)``; cwnd starts at 10 segments (RFC 6928), grows by
bytes acked in slow start (the peer is a local kernel, so no ABC limit) and
by ~1 MSS per RTT in congestion avoidance (RFC 5681).

Loss recovery with SACK (the Linux container always agrees to it; RFC 6675
and RFC 8985). ACKs carrying SACK blocks fill a *scoreboard* (``_sb``, sorted
``[s, e)`` ranges above SND.UNA; empty, and never looked at, until the first
block arrives). RACK finds losses by time, not by counting duplicates: a
transmit-time log (``_xl_end``/``_xl_ts``: one entry per distinct ``now`` at
which new data went out, so a 64 KiB GSO segment or a whole burst is one
entry and no object is made per segment) and the retransmitted ranges
(``_rx``) give every byte's RACK.xmit_ts; each ACK moves RACK.xmit_ts /
RACK.end_seq / RACK.rtt to the most recently sent delivered data, and any
hole sent before that by more than RACK.reo_wnd is marked lost (``_lost``).
reo_wnd is RACK.min_RTT/4 (times a multiplier grown by D-SACKs, capped at
SRTT), or 0 once DupThresh segments' worth is SACKed and no reordering was
seen; a hole still inside it arms the RACK timer. The first loss starts a
recovery: ssthresh = cwnd = FlightSize/2, RecoveryPoint = SND.MAX, the first
lost range is resent at once, then lost ranges and new data go out while
``cwnd - pipe >= MSS`` (pipe = in flight - SACKed - lost). Retransmissions
are sized like any segment (up to ``_seg_size``): the container acknowledges
a lost 64 KiB segment in MSS pieces, and the hole it leaves is resent as one.
A retransmission that is lost again is found the same way once data sent
after it is SACKed. The tail: when the retransmission timer would otherwise
be the only guard, a tail loss probe (TLP) is armed at 2 SRTT (+ a delayed
ACK's worth for a lone segment, at least :data:`TLP_MIN`, never after the
RTO); it sends one new segment or resends the last one, so the container's
answer (a SACK, or a D-SACK when nothing was lost) brings RACK in instead of
a timeout. Unlike RFC 8985 (and Linux), the probe timer also runs during a
recovery: when the retransmissions are all the container has left to answer
(pipe full, nothing newer sent), a lost one leaves RACK nothing to compare
with, so after a PTO without a cumulative ACK the first hole is resent
(``tcp_recovery_probe``), with the RTO behind it. The RTO (RFC 6298, go-back-N from ``snd_una``, cwnd to one
segment) remains the last resort; after it the scoreboard is dropped and no
fast recovery starts before everything then outstanding is acknowledged.

Without SACK: RTO as above, fast retransmit after 3 duplicate ACKs with
NewReno partial-ACK handling (RFC 6582), limited transmit on the first two
(RFC 3042); in recovery, a head retransmission unanswered after ~2 SRTT
(:data:`RECOVERY_PROBE_MIN` floor, backed off) is sent again instead of
waiting out the RTO.

A closed peer window starts the persist timer (zero-window probes, Linux style: an ACK with
``seq = snd_una - 1``, which the peer must answer). After
:data:`MAX_RETRIES` timeouts or :data:`GIVE_UP_AFTER` seconds without
progress we send RST, emit ``TcpAbort`` and close.

Receiving (container -> host). In-order data is handed out at once as
``TcpData``; the host side writes it to the host socket and reports what
is stuck there with ``set_host_backlog`` (ideally after every batch of
events; bytes handed out during the current call count as stuck until then,
and if the gateway never reports, the window simply reopens on the next
ACK). The advertised window is ``rcv_buf - backlog``, never moving its right
edge left (RFC 9293 3.8.6.2.1)
and moved right only in steps of at least min(rcv_buf/2, MSS) (receiver-side
SWS avoidance, 3.8.6.2.2). Out-of-order data inside the advertised window is
kept in a sorted list of non-overlapping pieces (at most
:data:`OOO_MAX_PIECES`) and reported in SACK blocks when permitted
(RFC 2018). ACKs are sent for every second full segment, on out-of-order
data or a filled hole, on FIN, else after :data:`DELACK_TIME`. Data with PSH
is ACKed at once, or, with ``push_ack_delay`` (the gateway sets it), after
that short delay: a request the host answers within it gets its ACK on the
answer, one frame instead of two (what a Linux receiver's delayed ACK does
for interactive traffic, with a delay short enough that a sender waiting on
Nagle for the ACK is not held up long). With the delay on, the container's
FIN in ESTABLISHED waits the same way for our own FIN (the host usually
closes at once), and a window update due while such an ACK is pending rides
on it (``tcp_window_update_deferred``).
Header prediction (Van Jacobson's, as in BSD's tcp_input and Linux's
tcp_rcv_established). Most segments of a busy flow are predictable, and
``on_segment`` and ``send`` try the prediction first; ``tcp_fast_path_rx``
/ ``tcp_fast_path_tx`` count the hits. Receiving: in ESTABLISHED, flags ACK
or ACK|PSH only, SEG.SEQ = RCV.NXT, no SACK blocks, a non-zero window both
ways, the text inside the advertised window, the ACK at or above SND.UNA and
at most SND.MAX (a pure ACK must acknowledge new data: a duplicate is the
loss machinery's), PAWS passed when timestamps are on (a segment without
TSval then goes the full way), and no recovery state at all (NewReno or SACK
recovery, scoreboard, lost or retransmitted ranges, a loss probe out, an RTO
recovery point, out-of-order data or FIN). Such a segment does exactly the
steps of the full path it would take (TS.Recent, the cumulative ACK, the
window update, in-order delivery, the ACK decision) and nothing else.
Sending: in ESTABLISHED with nothing queued or in flight, host bytes that
fit one segment both windows allow go out as that one ACK|PSH segment at
once, as ``_output`` would send them. ``FAST_PATH`` turns both off; the
tests run twin connections with it on and off and compare every slot.
(The gateway frames such a segment from a per-flow header template:
``tcpnat``.)

Unacceptable segments are answered with an ACK (RFC 9293), but answers to
*bare* segments (no data: ACKs, challenge-ACK triggers) are rate-limited to
one per :data:`OOW_ACK_INTERVAL` like Linux, which is what stops ACK loops
between two confused endpoints. Pure ACKs carry ``seq = snd_max`` and a bare
ACK exactly at our right window edge is acceptable (Linux does the same).

Memory bound per flow: ``snd_buf`` (send queue) + ``rcv_buf`` (out-of-order
pieces lie inside the advertised window, which is ``rcv_buf`` minus what the
host socket still holds) + a small constant (timers, a few hundred bytes of
state, at most :data:`OOO_MAX_PIECES` piece headers).

Timers are data: ``get_timer()`` returns the earliest of the retransmission
(also SYN / SYN-ACK; or the loss probe standing in front of it), RACK
reordering, persist, delayed-ACK and TIME-WAIT deadlines;
``handle_timer(now)`` runs what is due. TIME-WAIT lasts
:data:`TIME_WAIT_TIME` (we are a proxy on a virtual link); retransmitted
FINs are re-ACKed meanwhile. A SYN arriving in TIME-WAIT closes the
connection at once without an answer: the gateway, seeing ``closed`` and
the SYN, may treat it as a new flow (RFC 6191 style reuse).

Limits: no urgent data, no TCP Fast Open, no PRR (RFC 6937) or undo of
spurious recoveries (D-SACKs only widen the reordering window), no
keepalive (idle flows are the gateway's business), no simultaneous close
subtleties beyond RFC 9293's CLOSING state.

Counters (all ``tcp_*``) are incremented in the shared ``collections.Counter``
for every decision and every drop.
"""

from bisect import bisect_right, insort
from typing import NamedTuple

from usernet.wire.tcp import (ACK, FIN, NO_OPTIONS, O_MSS, O_SACK_BLOCKS, O_SACK_PERM, O_TS_VAL,
                               O_WSCALE, PSH, RST, SYN, TcpOptions)

from .config import TCP_MIN_PEER_MSS
from .events import (TcpAbort, TcpData, TcpInboundConnected, TcpInboundRefused, TcpPause,
                     TcpResume, TcpShutdown)

# --- states (RFC 9293 names) ------------------------------------------------
LISTEN = "LISTEN"
SYN_SENT = "SYN_SENT"
SYN_RECEIVED = "SYN_RECEIVED"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN_WAIT_1"
FIN_WAIT_2 = "FIN_WAIT_2"
CLOSE_WAIT = "CLOSE_WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST_ACK"
TIME_WAIT = "TIME_WAIT"
CLOSED = "CLOSED"
_FIN_RECEIVED = frozenset((CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT))  # rcv_nxt counts the FIN

#: States in which we may (re)transmit data or our FIN.
_OUTPUT_STATES = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
#: States in which segment text from the container is delivered.
_RECV_STATES = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
#: States after the handshake (RFC 9293 "synchronized").
_SYNCHRONIZED = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING,
                           LAST_ACK, TIME_WAIT))

# --- tunables ---------------------------------------------------------------
RTO_INITIAL = 1.0          # RFC 6298 2.1
RTO_MIN = 0.2              # Linux's floor; RFC 6298 says 1 s, too slow for a virtual link
RTO_MAX = 60.0             # RFC 6298 2.5
CLOCK_G = 0.001            # clock granularity G in RFC 6298 2.3
MAX_RETRIES = 15           # consecutive timeouts (or unanswered probes) before giving up
GIVE_UP_AFTER = 120.0      # seconds of timeouts without progress before giving up
SYN_RETRIES = 5            # SYN / SYN-ACK retransmissions (1+2+4+8+16+32 s)
TIME_WAIT_TIME = 2.0       # short 2MSL: a proxy on a virtual link
DELACK_TIME = 0.04         # RFC 9293 3.8.6.3: delay ACKs less than 0.5 s; Linux uses 40 ms
INIT_CWND_SEGS = 10        # RFC 6928
DUPACK_THRESHOLD = 3       # RFC 5681 3.2
OOO_MAX_PIECES = 256       # bound on out-of-order pieces (bytes are bounded by the window)
DEFAULT_MSS = 536          # RFC 9293 3.7.1: MSS when the option is absent
TS_OPT_LEN = 12            # NOP NOP TS: payload per segment shrinks by this (RFC 6691)
MAX_SACK_BLOCKS = 3        # 3 fit beside timestamps in 40 option bytes
OOW_ACK_INTERVAL = 0.5     # min gap between ACKs to bare unacceptable segments (Linux: 500 ms)
RECOVERY_PROBE_MIN = 0.02  # floor of the in-recovery re-retransmission timer (2 x SRTT)
TLP_MIN = 0.005            # floor of the loss probe timeout (Linux: 10 ms; this link is local)
TLP_DELACK = 0.2           # RFC 8985 7.2 WCDelAckT: a lone segment may wait for a delayed ACK
SACK_MAX_RANGES = 64       # bound on scoreboard ranges (more are forgotten: data is resent)
RCV_BUF = 256 * 1024       # default receive buffer (window toward the container)
SND_BUF = 512 * 1024       # default send queue toward the container

_M = 0xFFFFFFFF
_ACK = ACK
_ACK_PSH = ACK | PSH
#: Header prediction (on_segment, send) on or off. Only tests turn it off,
#: to check that the short paths leave a connection exactly as the full ones.
FAST_PATH = True
# Segment(...) runs the NamedTuple's __new__, a Python function; the hot paths
# build one with tuple.__new__(Segment, fields), the same object, a call less.
_new_tuple = tuple.__new__
_HALF = 0x80000000
# The lists an idle flow does not need (out-of-order pieces, the SACK
# scoreboard, lost and retransmitted ranges, the transmit-time log) start as
# this shared empty tuple and go back to it when they empty: a list is made
# when the first item comes. Ten thousand idle flows keep no lists (~0.4 KiB
# each). Code that reads them needs nothing else (len, iteration, bisect
# work on a tuple); code that adds to one checks first.
_EMPTY = ()
# Likewise the send queue: empty bytes until host data comes, and again once
# all of it is acknowledged (a bytearray is made per burst, not kept per flow).
_NO_BYTES = b""
# bytearray().join: one new buffer from pieces, each copied once (TcpConnection.send).
_join = bytearray().join


def _covered(ranges: list, s: int, e: int) -> bool:
    """Is [s, e) inside one of the sorted, disjoint ``ranges``?"""
    for rs, re_ in ranges:
        if rs <= s:
            if e <= re_:
                return True
        else:
            break
    return False


def _range_add(ranges: list, s: int, e: int) -> None:
    """Merge [s, e) into the sorted, disjoint list ``ranges`` (in place)."""
    out = []
    for rng in ranges:
        if rng[1] < s or rng[0] > e:
            out.append(rng)
        else:
            if rng[0] < s:
                s = rng[0]
            if rng[1] > e:
                e = rng[1]
    out.append([s, e])
    out.sort()
    ranges[:] = out


def _range_sub(ranges: list, s: int, e: int) -> None:
    """Remove [s, e) from the sorted, disjoint list ``ranges`` (in place)."""
    out = []
    for rng in ranges:
        if rng[1] <= s or rng[0] >= e:
            out.append(rng)
            continue
        if rng[0] < s:
            out.append([rng[0], s])
        if rng[1] > e:
            out.append([e, rng[1]])
    ranges[:] = out


class Segment(NamedTuple):
    """One TCP segment as the gateway parses / frames it.

    ``window`` is the raw 16-bit field; scaling is applied by the connection.
    """

    seq: int
    ack: int
    flags: int
    window: int
    options: TcpOptions
    payload: bytes | memoryview


class TcpConnection:
    """The container side of one TCP flow. See the module docstring."""

    # Slots, not an instance dict: a dict of this many attributes is a
    # private (unshared-key) dict of ~3.3 KiB per connection, the largest
    # single cost of an idle flow (10,000 idle flows: ~32 MiB of dicts);
    # slots are 8 bytes each, ~0.8 KiB in all.
    __slots__ = (
        "state", "counters", "mss", "rcv_buf", "snd_buf", "wscale", "max_seg", "sack",
        "timestamps", "ts_clock", "segments_out", "fid", "events",
        # send sequence space
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "snd_wscale",
        "_ws_ok", "_max_snd_wnd", "_sndbuf", "_buf_seq", "_fin_queued",
        # receive sequence space
        "irs", "rcv_nxt", "rcv_wscale", "_rcv_adv", "_backlog", "_delivered", "_ooo",
        "_ooo_bytes", "_ooo_fin", "_ooo_last", "_unacked_rx", "_ack_now", "push_ack_delay",
        "_push_pending", "_last_ack_sent", "_last_oow_ack",
        # negotiated options
        "peer_mss", "snd_mss", "_seg_size", "_sws_thresh", "sack_ok", "ts_ok", "_ts_recent",
        "_opts_key", "_opts",
        # RFC 6298
        "srtt", "rttvar", "rto", "_backoff", "_retries", "_stall_since", "_rtt_seq", "_rtt_at",
        # congestion control
        "cwnd", "ssthresh", "_dupacks", "_recover", "_lt_extra", "_rexmit_mark", "_rprobe_at",
        "_rprobe_backoff",
        # SACK recovery and RACK-TLP
        "_xl_end", "_xl_ts", "_sb", "_lost", "_rx", "_rp", "_rto_rp", "_rack_ts", "_rack_end",
        "_rack_rtt", "_fack", "_reo_seen", "_reo_mult", "_reo_round", "_min_rtt", "_rack_at",
        "_pto", "_pto_base", "_tlp_end", "_tlp_rexmit",
        # timers and the rest
        "_rto_at", "_persist_at", "_delack_at", "_tw_at", "_persist_backoff", "_probes",
        "_answered", "_active", "_paused", "closed", "rexmits", "_more",
    )

    def __init__(self, now, iss, mss, counters, *, rcv_buf=RCV_BUF, snd_buf=SND_BUF,
                 wscale=7, max_seg=None, sack=True, timestamps=True, ts_clock=None, fid=0,
                 events=None, push_ack_delay=0.0):
        self.state = LISTEN
        self.counters = counters
        self.mss = mss
        self.rcv_buf = rcv_buf
        self.snd_buf = snd_buf
        self.wscale = None if wscale is None else min(wscale, 14)
        self.max_seg = max_seg
        self.sack = sack
        self.timestamps = timestamps
        self.ts_clock = ts_clock
        self.segments_out: list[Segment] = []
        # The flow id the host side knows, and the list host events go to
        # (the gateway passes its own ``events_out``: emitted once, here).
        self.fid = fid
        self.events: list = events if events is not None else []

        # Send sequence space (RFC 9293 3.3.1), unwrapped.
        self.iss = iss & _M
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_wscale = 0
        self._ws_ok = False
        self._max_snd_wnd = 0
        self._sndbuf: bytearray | bytes = _NO_BYTES
        self._buf_seq = self.iss + 1          # sequence number of _sndbuf[0]
        self._fin_queued = False              # host EOF seen; FIN follows the queued data

        # Receive sequence space, unwrapped.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wscale = 0
        self._rcv_adv = 0                     # right edge we advertised (never moves left)
        self._backlog = 0
        self._delivered = 0                   # bytes handed out during the current call
        self._ooo: list[tuple[int, bytes]] | tuple = _EMPTY
        self._ooo_bytes = 0
        self._ooo_fin = None                  # sequence number of an out-of-order FIN
        self._ooo_last = None                 # start of the most recent out-of-order piece
        self._unacked_rx = 0                  # bytes delivered but not yet ACKed
        self._ack_now = False
        # PSH data waiting for its ACK (at most push_ack_delay, hoping to ride
        # on the host's answer); 0: ACK pushed data at once.
        self.push_ack_delay = push_ack_delay
        self._push_pending = False
        self._last_ack_sent = 0
        self._last_oow_ack = -1e9

        # Negotiated options.
        self.peer_mss = DEFAULT_MSS
        self.snd_mss = min(mss, DEFAULT_MSS)
        self._seg_size = self.snd_mss
        self._sws_thresh = max(1, min(rcv_buf // 2, mss))
        self.sack_ok = False
        self.ts_ok = False
        self._ts_recent = 0
        self._opts_key = None
        self._opts = NO_OPTIONS

        # RFC 6298 state.
        self.srtt = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self._backoff = 0
        self._retries = 0
        self._stall_since = None
        self._rtt_seq = None                  # segment end being timed (Karn: cleared on rexmit)
        self._rtt_at = 0.0

        # Congestion control (RFC 5681 / 6582).
        self.cwnd = INIT_CWND_SEGS * self.snd_mss
        self.ssthresh = 1 << 62
        self._dupacks = 0
        self._recover = None                  # not None while in fast recovery
        self._lt_extra = 0                    # RFC 3042 limited transmit allowance
        self._rexmit_mark = None              # snd_max when snd_una was last resent in recovery
        self._rprobe_at = None                # in recovery: resend snd_una if still unacked then
        self._rprobe_backoff = 0

        # SACK-based recovery (RFC 6675) and RACK-TLP (RFC 8985): used when
        # SACK was negotiated; nothing below is touched per segment while no
        # SACK block has arrived, except the transmit-time log.
        # Transmit-time log of original transmissions: _xl_end[i] is the end
        # of a run of data first sent at _xl_ts[i] (one entry per distinct
        # ``now``: a whole burst shares one time, so RACK's per-segment
        # xmit_ts is exact and costs no object per segment).
        self._xl_end: list | tuple = _EMPTY
        self._xl_ts: list | tuple = _EMPTY
        self._sb: list | tuple = _EMPTY       # scoreboard: sorted [s, e) SACKed above SND.UNA
        self._lost: list | tuple = _EMPTY     # [s, e) marked lost, not yet retransmitted
        self._rx: list | tuple = _EMPTY       # [s, e, ts] retransmitted (RACK.xmit_ts of those)
        self._rp = None                       # RecoveryPoint while in SACK recovery, else None
        self._rto_rp = None                   # HighData at the last RTO: no fast recovery before it
        self._rack_ts = None                  # RACK.xmit_ts
        self._rack_end = 0                    # RACK.end_seq
        self._rack_rtt = 0.0                  # RACK.rtt
        self._fack = 0                        # RACK.fack: highest end delivered
        self._reo_seen = False                # RACK.reordering_seen
        self._reo_mult = 1                    # RACK.reo_wnd_mult (grown by DSACKs)
        self._reo_round = 0                   # SND.MAX when reo_wnd_mult last grew
        self._min_rtt = None                  # RACK.min_RTT
        self._rack_at = None                  # RACK reordering timer
        self._pto = False                     # _rto_at is a TLP PTO, not an RTO
        self._pto_base = TLP_MIN              # PTO for a flight of several segments
        self._tlp_end = None                  # TLP.end_seq
        self._tlp_rexmit = False              # TLP.is_retrans

        # Timers (absolute deadlines or None).
        self._rto_at = self._persist_at = self._delack_at = self._tw_at = None
        self._persist_backoff = 0
        self._probes = 0

        self._answered = False                # passive open: SYN-ACK sent
        self._active = False                  # we opened (port forward)
        self._paused = False
        self.closed = False                   # CLOSED: the owner may forget the flow
        self.rexmits = 0                      # segments sent again (list_flows)
        self._more = False                    # the host side said more bytes follow (send)

    # ------------------------------------------------------------------
    # opening
    # ------------------------------------------------------------------
    def on_syn(self, seg: Segment, now: float) -> None:
        """The container's SYN (passive open). Do not answer until the host connects."""
        if self.state != LISTEN:
            if self.state == SYN_RECEIVED and not self._answered and seg.flags & SYN:
                # Connect first, answer second: the container retransmits its SYN while
                # the host connect is pending; nothing to say yet.
                self.counters["tcp_dup_syn_absorbed"] += 1
                return
            self.on_segment(seg, now)
            return
        self.counters["tcp_syn_rx"] += 1
        self.irs = seg.seq & _M
        self.rcv_nxt = self.irs + 1
        self._negotiate(seg.options)
        # RFC 7323 2.2: "The window field in a segment where the SYN bit is set
        # (i.e., a <SYN> or <SYN,ACK>) MUST NOT be scaled."
        self.snd_wnd = self._max_snd_wnd = seg.window
        self.snd_wl1 = self.irs
        self.snd_wl2 = self.iss
        self.state = SYN_RECEIVED

    def host_connected(self, now: float) -> None:
        """The host connect succeeded: answer the container's SYN with SYN-ACK."""
        if self.state != SYN_RECEIVED or self._answered:
            self.counters["tcp_host_connected_ignored"] += 1
            return
        self._answered = True
        self._send_syn(now)
        self.snd_nxt = self.snd_max = self.iss + 1
        self._rtt_seq, self._rtt_at = self.iss + 1, now
        self._rto_at = now + self._cur_rto()

    def host_refused(self, now: float) -> None:
        """The host connect failed: RST|ACK to the container, and close."""
        if self.state != SYN_RECEIVED or self._answered:
            self.counters["tcp_host_refused_ignored"] += 1
            return
        self.counters["tcp_syn_host_refused_rst"] += 1
        # RFC 9293 3.10.7.1: "<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>"
        self.segments_out.append(Segment(0, self.rcv_nxt & _M, RST | ACK, 0, NO_OPTIONS, b""))
        self._close()

    def open_active(self, now: float) -> None:
        """Active open toward the container (port forward): send our SYN."""
        if self.state != LISTEN:
            raise RuntimeError(f"open_active in {self.state}")
        self._active = True
        self.state = SYN_SENT
        self.counters["tcp_active_open"] += 1
        self._send_syn(now)
        self.snd_nxt = self.snd_max = self.iss + 1
        self._rtt_seq, self._rtt_at = self.iss + 1, now
        self._rto_at = now + self._cur_rto()

    def _negotiate(self, o: TcpOptions) -> None:
        """Record the options of the peer's SYN (or SYN-ACK)."""
        self.peer_mss = o[O_MSS] if o[O_MSS] else DEFAULT_MSS
        if self.peer_mss < TCP_MIN_PEER_MSS:
            # A tiny MSS only multiplies our frames (config.TCP_MIN_PEER_MSS);
            # raised to the floor, never above what our own link carries.
            self.counters["tcp_peer_mss_clamped"] += 1
            self.peer_mss = min(TCP_MIN_PEER_MSS, self.mss)
        # RFC 7323 2.2: scaling is on only if both sides sent the option.
        if o[O_WSCALE] is not None and self.wscale is not None:
            self._ws_ok = True
            self.snd_wscale = o[O_WSCALE]
            self.rcv_wscale = self.wscale
        self.sack_ok = bool(self.sack and o[O_SACK_PERM])
        self.ts_ok = bool(self.timestamps and o[O_TS_VAL] is not None)
        if self.ts_ok:
            self._ts_recent = o[O_TS_VAL]
        # RFC 6691: the MSS counts no options, so every option byte we put on a
        # segment comes out of its payload.
        self.snd_mss = max(1, min(self.mss, self.peer_mss) - (TS_OPT_LEN if self.ts_ok else 0))
        # max_seg (a TSO gateway's ~64 KiB) in whole wire segments, so the
        # kernel that cuts it sends no runt; never below one segment.
        seg = self.snd_mss
        self._seg_size = max(seg, self.max_seg - self.max_seg % seg) if self.max_seg else seg
        if self._seg_size > seg and self.snd_buf > self._seg_size:
            # TSO: a send queue of whole segments, so one filled by the host
            # side (which reads whole segments: host/tcp.py) ends on a
            # segment boundary and its tail is no runt.
            self.snd_buf -= self.snd_buf % self._seg_size
        self.cwnd = INIT_CWND_SEGS * self.snd_mss

    def _send_syn(self, now: float) -> None:
        # RFC 7323 2.2: the window in a SYN is never scaled.
        field = max(0, min(self.rcv_buf - self._backlog, 0xFFFF))
        tsval = self._tsval(now)
        if self.state == SYN_SENT:
            opts = TcpOptions(self.mss, self.wscale, bool(self.sack), (),
                              tsval if self.timestamps else None, 0 if self.timestamps else None)
            self.segments_out.append(Segment(self.iss, 0, SYN, field, opts, b""))
            return
        opts = TcpOptions(self.mss, self.rcv_wscale if self._ws_ok else None, self.sack_ok, (),
                          tsval if self.ts_ok else None,
                          self._ts_recent if self.ts_ok else None)
        self._rcv_adv = self.rcv_nxt + field
        self._last_ack_sent = self.rcv_nxt
        self.segments_out.append(Segment(self.iss, self.rcv_nxt & _M, SYN | ACK, field, opts, b""))

    # ------------------------------------------------------------------
    # host side
    # ------------------------------------------------------------------
    def send(self, data, now: float, more: bool = False) -> int:
        """Queue host bytes toward the container; return how many were accepted.

        ``more``: the host side expects more bytes at once (its read filled
        its buffer): while data is in flight, a tail shorter than a whole
        segment waits for them (or for the flight to be acknowledged) instead
        of leaving as a runt frame of its own (see _output)."""
        self._more = more
        st = self.state
        if st is ESTABLISHED and FAST_PATH and not self._sndbuf:
            # The send side's prediction: nothing queued or in flight, and
            # the bytes fit one segment that both windows allow now. Exactly
            # what _output would send (one ACK|PSH segment) without its loop.
            nxt = self._buf_seq
            n = len(data)
            if n and self.snd_nxt == nxt and self.snd_una == nxt and self.snd_max == nxt \
                    and n <= self._seg_size and n < self.snd_buf and self._rp is None \
                    and not self._paused:
                wnd = self.snd_wnd
                cwnd = self.cwnd + self._lt_extra
                if n <= (wnd if wnd < cwnd else cwnd):
                    self.counters["tcp_fast_path_tx"] += 1
                    payload = bytes(data)
                    self._sndbuf = bytearray(payload)
                    end = nxt + n
                    if self._rtt_seq is None:
                        self._rtt_seq = end
                        self._rtt_at = now
                    self._emit(nxt, _ACK_PSH, payload, now)
                    self.snd_nxt = self.snd_max = end
                    if self.sack_ok:
                        self._log_xmit(end, now)
                    if self._rto_at is None or self._pto:
                        self._arm_rtx(now)
                    self._persist_at = None
                    return n
        if self._fin_queued or st not in (SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT):
            self.counters["tcp_send_refused_state"] += 1
            return 0
        buf = self._sndbuf
        # Acknowledged bytes stay at the queue's front until now (see
        # _output: segments in flight may still be views of them).
        dead = self.snd_una - self._buf_seq if buf else 0
        if dead < 0:
            dead = 0
        room = self.snd_buf - len(buf) + dead
        n = len(data)
        if n > room:
            n = room if room > 0 else 0
            data = memoryview(data)[:n]
        if n:
            if dead:
                # The live bytes and the new ones in one new buffer: one copy
                # of each (trimming the old one in place and growing it copied
                # the live bytes once or twice more), and the old buffer is
                # left as it is for frames not yet written that show it.
                self._sndbuf = _join((memoryview(buf)[dead:], data))
                self._buf_seq += dead
            elif buf:
                try:
                    buf += data
                except BufferError:
                    # A frame not yet written (the TAP's queue, an impairment
                    # holding it) still shows the queue: it keeps the old
                    # buffer; the queue goes on in a copy.
                    self.counters["tcp_send_queue_copied"] += 1
                    self._sndbuf = buf + data
            else:
                self._sndbuf = bytearray(data)
            if st in _OUTPUT_STATES:
                self._output(now)
        self._check_pause()
        return n

    def shutdown_host_eof(self, now: float) -> None:
        """The host closed its write side: send FIN after the queued data."""
        st = self.state
        if self._fin_queued or st in (CLOSED, LISTEN):
            return
        self._fin_queued = True
        self.counters["tcp_host_eof"] += 1
        # RFC 9293 3.10.4 CLOSE: ESTABLISHED -> "enter FIN-WAIT-1 state";
        # CLOSE-WAIT -> "enter LAST-ACK state". In SYN states the FIN waits for
        # the handshake (see _established).
        if st == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif st == CLOSE_WAIT:
            self.state = LAST_ACK
        if self.state in _OUTPUT_STATES:
            self._output(now)

    def abort(self, now: float) -> None:
        """The host socket failed or was reset: RST to the container and close."""
        st = self.state
        if st == CLOSED:
            return
        self.counters["tcp_abort"] += 1
        if st == SYN_RECEIVED and not self._answered:
            self.segments_out.append(Segment(0, self.rcv_nxt & _M, RST | ACK, 0, NO_OPTIONS, b""))
        elif st in _SYNCHRONIZED or st == SYN_RECEIVED:
            # RFC 9293 3.10.5 ABORT: "<SEQ=SND.NXT><CTL=RST>". SND.NXT in the
            # RFC's sense is the highest we sent: snd_max (snd_nxt rewinds
            # for a go-back-N retransmission). A peer that got everything
            # takes a RST only at exactly its RCV.NXT (RFC 5961 3.2).
            self.segments_out.append(Segment(self.snd_max & _M, self.rcv_nxt & _M, RST | ACK, 0,
                                             NO_OPTIONS, b""))
        self._close()

    def set_host_backlog(self, nbytes: int, now: float) -> None:
        """Bytes stuck in the host socket's write buffer; drives our window."""
        old_wnd = self._rcv_adv - self.rcv_nxt
        self._backlog = nbytes
        self._delivered = 0
        if self.state not in _RECV_STATES:
            return
        if old_wnd < 0:
            old_wnd = 0
        grow = self.rcv_buf - nbytes - old_wnd
        # RFC 9293 3.8.6.2.2: only tell the peer about a window that grew by at
        # least min(rcv_buf/2, MSS), and only bother while its view is small.
        if grow >= self._sws_thresh and old_wnd < self.rcv_buf // 2:
            if self._push_pending:
                # The ACK of pushed data is due within push_ack_delay (or
                # rides on the host's answer before): it carries the window.
                self.counters["tcp_window_update_deferred"] += 1
                return
            self.counters["tcp_window_update_tx"] += 1
            self._send_ack(now)

    def send_keepalive(self, now: float) -> None:
        """A keepalive probe (the owner decides when): an ACK for old data,
        ``SND.UNA - 1``, which the peer must answer -- with an ACK if its
        socket lives, with RST if it is gone (RFC 9293 3.8.4, RFC 1122
        4.2.3.6)."""
        if self.state in _SYNCHRONIZED and self.state != TIME_WAIT:
            self._emit(self.snd_una - 1, ACK, b"", now)

    # ------------------------------------------------------------------
    # timers
    # ------------------------------------------------------------------
    def get_timer(self):
        # Written out (no tuple, no loop): it runs a few times per packet.
        t = self._rto_at
        x = self._persist_at
        if x is not None and (t is None or x < t):
            t = x
        x = self._delack_at
        if x is not None and (t is None or x < t):
            t = x
        x = self._tw_at
        if x is not None and (t is None or x < t):
            t = x
        x = self._rprobe_at
        if x is not None and (t is None or x < t):
            t = x
        x = self._rack_at
        if x is not None and (t is None or x < t):
            t = x
        return t

    def handle_timer(self, now: float) -> None:
        self._delivered = 0
        if self._tw_at is not None and now >= self._tw_at:
            self.counters["tcp_time_wait_done"] += 1
            self._close()
            return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            if self._unacked_rx or self._ack_now or self._push_pending:
                self.counters["tcp_delayed_ack_tx"] += 1
                self._send_ack(now)
        if self._rto_at is not None and now >= self._rto_at:
            self._rto_at = None
            if self._pto:
                self._pto = False
                self._on_pto(now)
            else:
                self._on_rto(now)
        if self._rack_at is not None and now >= self._rack_at:
            # RFC 8985 6.3: the reordering window of a suspect segment ran out.
            self._rack_at = None
            if self.state in _OUTPUT_STATES and self.snd_max > self.snd_una:
                self.counters["tcp_rack_timer"] += 1
                self._rack_detect(now)
                self._output(now)
        if self._rprobe_at is not None and now >= self._rprobe_at:
            self._rprobe_at = None
            if self._recover is not None and self.state in _OUTPUT_STATES \
                    and self.snd_max > self.snd_una:
                self.counters["tcp_recovery_probe"] += 1
                self._rprobe_backoff += 1
                self._retransmit_head(now)
        if self._persist_at is not None and now >= self._persist_at:
            self._persist_at = None
            self._on_persist(now)

    def _cur_rto(self) -> float:
        r = self.rto * (1 << self._backoff) if self._backoff < 16 else RTO_MAX
        return r if r < RTO_MAX else RTO_MAX

    def _on_rto(self, now: float) -> None:
        st = self.state
        self._retries += 1
        if self._stall_since is None:
            self._stall_since = now
        self.counters["tcp_retransmit_timeout"] += 1
        self._rtt_seq = None                      # Karn: no samples from retransmissions
        if st == SYN_SENT or st == SYN_RECEIVED:
            if self._retries > SYN_RETRIES:
                if st == SYN_SENT:
                    self.counters["tcp_syn_timeout"] += 1
                    self.events.append(TcpInboundRefused(self.fid, False))
                    self._close()
                else:
                    self._give_up(now)
                return
            self._backoff += 1
            self.counters["tcp_retransmit"] += 1
            self.rexmits += 1
            self._send_syn(now)
            self._rto_at = now + self._cur_rto()
            return
        if st not in _OUTPUT_STATES:
            return
        if self._retries > MAX_RETRIES or now - self._stall_since >= GIVE_UP_AFTER:
            self._give_up(now)
            return
        # RFC 6298 5.5: "The host MUST set RTO <- RTO * 2 ("back off the timer")."
        self._backoff += 1
        # RFC 5681 (4): ssthresh = max(FlightSize / 2, 2*SMSS); cwnd = 1 segment.
        seg = self.snd_mss
        self.ssthresh = max((self.snd_max - self.snd_una) // 2, 2 * seg)
        self.cwnd = seg
        self._recover = None
        self._rexmit_mark = None
        self._rprobe_at = None
        self._lt_extra = 0
        self._dupacks = 0
        if self.sack_ok:
            # RFC 6675 5.1: the recovery ends; none starts again until
            # everything sent so far is acknowledged. The scoreboard is
            # dropped (the peer may renege) and go-back-N resends it all.
            self._rto_rp = self.snd_max
            self._rp = None
            self._sb = self._lost = self._rx = _EMPTY
            self._rack_at = None
            self._tlp_end = None
        # Go back N: resend from snd_una as the ACK clock allows.
        self.snd_nxt = self.snd_una
        self._rto_at = None
        self._output(now)

    def _on_persist(self, now: float) -> None:
        if self.state not in _OUTPUT_STATES:
            return
        if self.snd_wnd == 0:
            self._probes += 1
            if self._probes > MAX_RETRIES:
                self._give_up(now)
                return
            # RFC 9293 3.8.6.1: "The sending TCP peer must regularly transmit
            # at least one octet of new data (if available), or retransmit to
            # the receiving TCP peer even if the send window is zero". Like
            # Linux we send an old sequence number, which must be answered by
            # an ACK carrying the current window.
            self.counters["tcp_zero_window_probe"] += 1
            self._emit(self.snd_una - 1, ACK, b"", now)
            self._persist_backoff += 1
            self._arm_persist(now)
        else:
            # RFC 9293 3.8.6.2.1: the sender-side SWS "override timeout".
            self.counters["tcp_sws_override"] += 1
            self._output(now, force=True)

    def _arm_persist(self, now: float) -> None:
        base = self.rto if self.rto > RTO_MIN else RTO_MIN
        b = self._persist_backoff
        t = base * (1 << b) if b < 16 else RTO_MAX
        self._persist_at = now + (t if t < RTO_MAX else RTO_MAX)

    def _give_up(self, now: float) -> None:
        self.counters["tcp_give_up"] += 1
        self.segments_out.append(Segment(self.snd_max & _M, self.rcv_nxt & _M, RST | ACK, 0,
                                         NO_OPTIONS, b""))
        self.events.append(TcpAbort(self.fid))
        self._close()

    def _close(self) -> None:
        self.state = CLOSED
        self._rto_at = self._persist_at = self._delack_at = self._tw_at = None
        self._rprobe_at = self._rack_at = None
        self._sndbuf = _NO_BYTES
        self._ooo = _EMPTY
        self._ooo_bytes = 0
        # The owner sees ``closed`` after the call and forgets the flow.
        self.closed = True

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self._rto_at = self._persist_at = self._rprobe_at = self._rack_at = None
        self._tw_at = now + TIME_WAIT_TIME
        self._sndbuf = _NO_BYTES

    # ------------------------------------------------------------------
    # segment arrival
    # ------------------------------------------------------------------
    def transferred(self) -> tuple:
        """(bytes received from the container, bytes it acknowledged): payload
        only, from the sequence numbers (SYN and FIN take one each)."""
        rin = 0
        if self.state not in (LISTEN, SYN_SENT):
            rin = self.rcv_nxt - self.irs - 1
            if self.state in _FIN_RECEIVED:
                rin -= 1
        data_end = self._buf_seq + len(self._sndbuf)
        return max(0, rin), max(0, min(self.snd_una, data_end) - self.iss - 1)

    def on_segment(self, seg: Segment, now: float) -> None:
        self._delivered = 0
        st = self.state
        if st is ESTABLISHED and FAST_PATH:
            # Header prediction (Van Jacobson; BSD tcp_input, Linux
            # tcp_rcv_established): the next in-order segment, carrying an
            # ACK that repeats or advances SND.UNA, or a pure ACK of new
            # data, on a flow with no loss-recovery, out-of-order or
            # zero-window state. It does what _on_synchronized would do for
            # such a segment and nothing else; anything unpredicted (SYN,
            # FIN, RST, URG, ECN bits, SACK blocks, a PAWS question, a
            # window edge, ...) goes the full way.
            seq, ack, flags, window, opts, payload = seg
            rcv_nxt = self.rcv_nxt
            if (flags == _ACK or flags == _ACK_PSH) and seq == (rcv_nxt & _M) and window \
                    and not opts[O_SACK_BLOCKS] and self._recover is None and self._rp is None \
                    and self._tlp_end is None and self._rto_rp is None \
                    and not (self._sb or self._lost or self._rx or self._ooo) and self.snd_wnd \
                    and self._ooo_fin is None:
                una = self.snd_una
                ack = una + ((ack - una + _HALF) & _M) - _HALF
                plen = len(payload)
                tsval = opts[O_TS_VAL]
                if (una < ack or (plen and una == ack)) and ack <= self.snd_max \
                        and rcv_nxt + plen <= self._rcv_adv \
                        and (not self.ts_ok or (tsval is not None
                                                and ((tsval - self._ts_recent) & _M) < _HALF)):
                    # The steps of _on_synchronized such a segment takes, in its order.
                    self.counters["tcp_fast_path_rx"] += 1
                    # RFC 7323 4.3 (PAWS passed above: TSval >= TS.Recent).
                    if tsval is not None and rcv_nxt <= self._last_ack_sent and self.ts_ok:
                        self._ts_recent = tsval
                    if ack > una:
                        self._new_ack_quiet(una, ack, now)
                    # The window update (SND.WL1 < SEG.SEQ, or equal and SND.WL2 =< SEG.ACK).
                    wl1 = self.snd_wl1
                    if wl1 < rcv_nxt or (wl1 == rcv_nxt and self.snd_wl2 <= ack):
                        swnd = window << self.snd_wscale
                        self.snd_wnd = swnd
                        self.snd_wl1 = rcv_nxt
                        self.snd_wl2 = ack
                        if swnd > self._max_snd_wnd:
                            self._max_snd_wnd = swnd
                    self._probes = 0
                    if plen:
                        # _receive's in-order case: inside the window
                        # (predicted), nothing queued out of order, no FIN.
                        data = payload if type(payload) is bytes else bytes(payload)
                        self.rcv_nxt = rcv_nxt + plen
                        self.events.append(TcpData(self.fid, data))
                        self._delivered = plen
                        un = self._unacked_rx + plen
                        self._unacked_rx = un
                        if un >= 2 * self.mss:
                            self._ack_now = True
                        elif flags & PSH:
                            if self.push_ack_delay:
                                self._push_pending = True
                            else:
                                self._ack_now = True
                    nxt = self.snd_nxt
                    if nxt == self.snd_una and nxt == self._buf_seq + len(self._sndbuf):
                        self._rto_at = None         # _output: nothing queued, nothing in flight
                    else:
                        self._output(now)
                    if self._ack_now:
                        self._send_ack(now)
                    elif self._push_pending:
                        d = now + self.push_ack_delay
                        if self._delack_at is None or d < self._delack_at:
                            self._delack_at = d
                    elif self._unacked_rx:
                        d = now + DELACK_TIME
                        if self._delack_at is None or d < self._delack_at:
                            self._delack_at = d
                    if self._paused or len(self._sndbuf) >= self.snd_buf:
                        self._check_pause()
                    return
        if st in _SYNCHRONIZED or (st == SYN_RECEIVED and self._answered):
            self._on_synchronized(seg, now)
        elif st == SYN_SENT:
            self._on_syn_sent(seg, now)
        elif st == SYN_RECEIVED:
            # Host connect still pending: nothing has been answered yet.
            if seg.flags & RST:
                if (seg.seq & _M) == (self.rcv_nxt & _M):
                    self.counters["tcp_rst_rx"] += 1
                    self.events.append(TcpAbort(self.fid))
                    self._close()
                else:
                    self.counters["tcp_drop_rst_out_of_window"] += 1
            elif seg.flags & SYN:
                self.counters["tcp_dup_syn_absorbed"] += 1
            else:
                self.counters["tcp_drop_before_answer"] += 1
        else:
            self.counters["tcp_drop_" + st.lower()] += 1

    def _on_syn_sent(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.3, SYN-SENT STATE."""
        flags = seg.flags
        if flags & ACK:
            # "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the
            # RST bit is set, if so drop the segment and return)"
            if (seg.ack & _M) != ((self.iss + 1) & _M):
                if not flags & RST:
                    self.counters["tcp_rst_tx_bad_ack"] += 1
                    self.segments_out.append(Segment(seg.ack & _M, 0, RST, 0, NO_OPTIONS, b""))
                else:
                    self.counters["tcp_drop_rst_bad_ack"] += 1
                return
        if flags & RST:
            # "If the ACK was acceptable, then signal to the user "error:
            # connection reset", drop the segment, enter CLOSED state"
            if flags & ACK:
                self.counters["tcp_rst_rx"] += 1
                self.events.append(TcpInboundRefused(self.fid, False))
                self._close()
            else:
                self.counters["tcp_drop_rst_no_ack"] += 1
            return
        if not flags & SYN:
            # "If neither of the SYN or RST bits is set, then drop the segment"
            self.counters["tcp_drop_syn_sent_no_syn"] += 1
            return
        self.irs = seg.seq & _M
        self.rcv_nxt = self.irs + 1
        self._negotiate(seg.options)
        self.snd_wnd = self._max_snd_wnd = seg.window     # SYN windows are not scaled
        self.snd_wl1 = self.irs
        # What our SYN offered (unscaled) is the window the peer sees now.
        self._rcv_adv = self.rcv_nxt + max(0, min(self.rcv_buf - self._backlog, 0xFFFF))
        if flags & ACK:
            # "If SND.UNA > ISS (our SYN has been ACKed), change the connection
            # state to ESTABLISHED, form an ACK segment ... and send it."
            self.snd_wl2 = self.iss + 1
            self._new_ack(self.iss + 1, now)
            if len(seg.payload) or flags & FIN:
                self.counters["tcp_drop_synack_data"] += 1  # rare; the peer resends it
            self._established(now)
            self._ack_now = True
            if self.state in _OUTPUT_STATES:
                self._output(now)
            if self._ack_now:
                self._send_ack(now)
            self._check_pause()
        else:
            # "Otherwise, enter SYN-RECEIVED, form a SYN,ACK segment" (simultaneous open)
            self.counters["tcp_simultaneous_open"] += 1
            self.snd_wl2 = self.iss
            self.state = SYN_RECEIVED
            self._answered = True
            self._send_syn(now)

    def _established(self, now: float) -> None:
        self.state = ESTABLISHED
        if self._active:
            self.events.append(TcpInboundConnected(self.fid))
        if self._fin_queued:
            self.state = FIN_WAIT_1

    def _on_synchronized(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4, "Otherwise" (SYN-RECEIVED and the synchronized states)."""
        flags = seg.flags
        payload = seg.payload
        plen = len(payload)
        st = self.state
        rcv_nxt = self.rcv_nxt
        seq = rcv_nxt + ((seg.seq - rcv_nxt + _HALF) & _M) - _HALF
        opts = seg.options

        if flags & SYN and not flags & RST:
            if st == SYN_RECEIVED and seq == self.irs and not flags & ACK:
                # Our SYN-ACK was lost and the container retransmitted its SYN.
                self.counters["tcp_dup_syn_rx"] += 1
                self.counters["tcp_retransmit"] += 1
                self.rexmits += 1
                self._send_syn(now)
                return
            if st == TIME_WAIT and seq > rcv_nxt and not flags & ACK:
                # RFC 6191-style reuse: a new connection with the same ports.
                # Leave the SYN unanswered; the gateway makes it a new flow.
                self.counters["tcp_time_wait_syn_reuse"] += 1
                self._close()
                return
            # RFC 5961 4.2: "If the SYN bit is set, irrespective of the
            # sequence number, TCP MUST send an ACK (also referred to as
            # challenge ACK) to the remote peer"
            self.counters["tcp_challenge_ack"] += 1
            self._oow_ack(0, now)
            return

        # RFC 7323 5.3 PAWS: "If the SEG.TSval is less than TS.Recent ... the
        # segment is not acceptable" (RSTs are exempt).
        if self.ts_ok and opts[O_TS_VAL] is not None and not flags & RST \
                and ((opts[O_TS_VAL] - self._ts_recent) & _M) >= _HALF:
            self.counters["tcp_drop_paws"] += 1
            self._oow_ack(plen + (flags & FIN), now)
            return

        # --- first: check sequence number (the four acceptability cases) ---
        wnd = self._rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        fin = flags & FIN
        seg_len = plen + fin
        data_ok = True
        if seg_len == 0:
            # Like Linux, accept a bare ACK sitting exactly on the right edge
            # (a sender that filled our window sends its ACKs from there).
            ok = rcv_nxt <= seq <= rcv_nxt + wnd
        elif wnd == 0:
            ok = False
            # "If the RCV.WND is zero, no segments will be acceptable, but
            # special allowance should be made to accept valid ACKs, URGs, and
            # RSTs."
            if seq == rcv_nxt:
                ok, data_ok = True, False
                self.counters["tcp_drop_zero_window"] += 1
                self._ack_now = True
        else:
            end = seq + seg_len - 1
            ok = (rcv_nxt <= seq < rcv_nxt + wnd) or (rcv_nxt <= end < rcv_nxt + wnd) \
                or (seq < rcv_nxt and end >= rcv_nxt + wnd)
        if not ok:
            if flags & RST:
                self.counters["tcp_drop_rst_out_of_window"] += 1
                return
            # "If an incoming segment is not acceptable, an acknowledgment
            # should be sent in reply (unless the RST bit is set)"
            if seq + seg_len <= rcv_nxt:
                self.counters["tcp_dup_data_rx"] += 1
                if st == TIME_WAIT and fin:
                    # "Acknowledge it, and restart the 2 MSL timeout."
                    self._tw_at = now + TIME_WAIT_TIME
            else:
                self.counters["tcp_drop_out_of_window"] += 1
            self._oow_ack(seg_len, now)
            return

        # RFC 7323 4.3: "If SEG.TSval >= TS.Recent and SEG.SEQ <= Last.ACK.sent
        # then SEG.TSval is copied to TS.Recent".
        if opts[O_TS_VAL] is not None and self.ts_ok and seq <= self._last_ack_sent:
            self._ts_recent = opts[O_TS_VAL]

        # --- second: check the RST bit (RFC 5961 3.2) ---
        if flags & RST:
            if seq == rcv_nxt:
                # "If the RST bit is set and the sequence number exactly matches
                # the next expected sequence number (RCV.NXT), then TCP MUST
                # reset the connection."
                if st == TIME_WAIT:
                    # RFC 1337: ignore RSTs in TIME-WAIT (avoid TIME-WAIT assassination).
                    self.counters["tcp_rst_rx_time_wait_ignored"] += 1
                    return
                self.counters["tcp_rst_rx"] += 1
                self.events.append(TcpAbort(self.fid))
                self._close()
            else:
                # "Otherwise ... TCP MUST send an ACK (challenge ACK)"
                self.counters["tcp_challenge_ack"] += 1
                self._oow_ack(0, now)
            return

        # --- fifth: check the ACK field ---
        if not flags & ACK:
            # "if the ACK bit is off, drop the segment and return"
            self.counters["tcp_drop_no_ack"] += 1
            return
        una = self.snd_una
        ack = una + ((seg.ack - una + _HALF) & _M) - _HALF
        if st == SYN_RECEIVED:
            # "If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED state ...
            # If the segment acknowledgment is not acceptable, form a reset
            # segment <SEQ=SEG.ACK><CTL=RST> and send it."
            if not una < ack <= self.snd_max:
                self.counters["tcp_rst_tx_bad_ack"] += 1
                self.segments_out.append(Segment(seg.ack & _M, 0, RST, 0, NO_OPTIONS, b""))
                return
            self.counters["tcp_established"] += 1
            self._established(now)
            st = self.state
            self.snd_wl1 = seq - 1          # force the window update below
        if ack > self.snd_max:
            # "If the ACK acks something not yet sent (SEG.ACK > SND.NXT) then
            # send an ACK, drop the segment, and return."
            self.counters["tcp_drop_ack_unsent"] += 1
            self._oow_ack(seg_len, now)
            return
        if ack < una - self._max_snd_wnd:
            # RFC 5961 5.2: ACKs older than the largest window ever seen are
            # dropped with an ACK.
            self.counters["tcp_drop_ack_too_old"] += 1
            self._oow_ack(seg_len, now)
            return
        swnd = seg.window << self.snd_wscale
        if self.sack_ok and (opts[O_SACK_BLOCKS] or self._sb or self._rp is not None
                             or self._tlp_end is not None):
            # Scoreboard and RACK state first: they need the transmit times
            # of what this ACK covers, which the cumulative ACK then forgets.
            self._sack_update(ack, opts[O_SACK_BLOCKS], now)
        if ack > una:
            self._new_ack(ack, now)
        elif ack == una and seg_len == 0 and self.snd_max > una \
                and (swnd == self.snd_wnd or (opts[O_SACK_BLOCKS] and self.sack_ok)):
            # RFC 5681 2: a duplicate ACK (no data, no SYN/FIN, same window,
            # outstanding data, ack == snd_una). A Linux receiver grows its
            # window as out-of-order data arrives (tcp_grow_window from the
            # ofo queue), so "same window" would miss every dupack of a
            # loss; one carrying SACK blocks counts whatever its window
            # (as Linux's own sender counts SACKed segments).
            if self.sack_ok:
                # With SACK, losses are found by RACK from the scoreboard
                # (RFC 8985), not by counting duplicates.
                self.counters["tcp_dup_ack_rx"] += 1
            else:
                self._dup_ack(now)
        if ack >= una:
            # "If SND.UNA =< SEG.ACK =< SND.NXT, the send window should be
            # updated. If (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2
            # =< SEG.ACK)), set SND.WND <- SEG.WND, set SND.WL1 <- SEG.SEQ, and
            # set SND.WL2 <- SEG.ACK."
            if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
                if swnd and not self.snd_wnd:
                    self._persist_backoff = 0
                    self._persist_at = None
                self.snd_wnd = swnd
                self.snd_wl1 = seq
                self.snd_wl2 = ack
                if swnd > self._max_snd_wnd:
                    self._max_snd_wnd = swnd
            self._probes = 0
        if self._sb or self._rp is not None:
            self._rack_detect(now)

        if self._fin_queued and self.snd_una == self._buf_seq + len(self._sndbuf) + 1:
            # Our FIN is acknowledged.
            if st == FIN_WAIT_1:
                # "if the FIN segment is now acknowledged, then enter FIN-WAIT-2"
                self.state = st = FIN_WAIT_2
            elif st == CLOSING:
                # "if the ACK acknowledges our FIN, then enter the TIME-WAIT state"
                self._enter_time_wait(now)
                return
            elif st == LAST_ACK:
                # "If our FIN is now acknowledged, delete the TCB, enter the
                # CLOSED state, and return."
                self.counters["tcp_closed_last_ack"] += 1
                self._close()
                return

        # --- seventh: process the segment text ---
        if seg_len and st in _RECV_STATES:
            if data_ok:
                self._receive(seq, payload, fin, flags, now)
        elif seg_len and st not in _RECV_STATES and plen:
            # "This should not occur since a FIN has been received from the
            # remote side. Ignore the segment text."
            self.counters["tcp_drop_data_after_fin"] += 1

        if self.state in _OUTPUT_STATES:
            self._output(now)
        if self._ack_now:
            self._send_ack(now)
        elif self._unacked_rx or self._push_pending:
            d = now + (self.push_ack_delay if self._push_pending else DELACK_TIME)
            if self._delack_at is None or d < self._delack_at:
                self._delack_at = d
        self._check_pause()

    def _receive(self, seq: int, payload, fin: int, flags: int, now: float) -> None:
        """Accept the text of an acceptable segment (RFC 9293 3.10.7.4 seventh/eighth)."""
        rcv_nxt = self.rcv_nxt
        if seq < rcv_nxt:
            # "If a segment's contents straddle the boundary between old and
            # new, only the new parts are processed."
            payload = payload[rcv_nxt - seq:]
            seq = rcv_nxt
        right = self._rcv_adv
        if seq + len(payload) > right:
            # Beyond the advertised window: trim (and the FIN with it).
            self.counters["tcp_rx_trimmed_to_window"] += 1
            payload = payload[:max(0, right - seq)]
            fin = 0
        plen = len(payload)
        fin_seq = seq + plen
        if seq == rcv_nxt:
            if plen:
                data = payload if type(payload) is bytes else bytes(payload)
                rcv_nxt += plen
                if self._ooo:
                    chunks = [data]
                    rcv_nxt = self._ooo_pull(rcv_nxt, chunks)
                    data = b"".join(chunks)
                    self._ack_now = True    # RFC 5681 4.2: ACK at once when a hole fills
                self.rcv_nxt = rcv_nxt
                self.events.append(TcpData(self.fid, data))
                self._unacked_rx += len(data)
                self._delivered += len(data)
                if self._unacked_rx >= 2 * self.mss:
                    self._ack_now = True
                elif flags & PSH:
                    if self.push_ack_delay:
                        self._push_pending = True
                    else:
                        self._ack_now = True
            if (fin and fin_seq == rcv_nxt) or (self._ooo_fin is not None
                                                and self._ooo_fin == rcv_nxt):
                self._receive_fin(now)
        else:
            # Out of order: keep it (inside the window, bounded) and send a
            # duplicate ACK at once (RFC 5681 4.2), with SACK blocks.
            if plen:
                self._ooo_insert(seq, payload)
            if fin:
                self._ooo_fin = fin_seq
            self._ack_now = True

    def _receive_fin(self, now: float) -> None:
        # "eighth, check the FIN bit": advance RCV.NXT over the FIN, signal the user.
        self.rcv_nxt += 1
        self._ooo_fin = None
        self._ooo = _EMPTY
        self._ooo_bytes = 0
        self.counters["tcp_fin_rx"] += 1
        self.events.append(TcpShutdown(self.fid))
        st = self.state
        if st == ESTABLISHED and self.push_ack_delay and not self._ack_now:
            # The container closed first; the host side, told at once,
            # usually closes too within the delay: our FIN then carries
            # this ACK (one frame, not two).
            self._push_pending = True
        else:
            self._ack_now = True
        if st == ESTABLISHED:
            self.state = CLOSE_WAIT
        elif st == FIN_WAIT_1:
            # Our FIN is not yet acked (else we would be in FIN-WAIT-2).
            self.state = CLOSING
        elif st == FIN_WAIT_2:
            # "Enter the TIME-WAIT state. Start the time-wait timer"
            self._enter_time_wait(now)

    def _ooo_insert(self, seq: int, data) -> None:
        end = seq + len(data)
        pos = seq
        new = []
        for s, d in self._ooo:
            e = s + len(d)
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                new.append((pos, bytes(data[pos - seq:s - seq])))
            pos = e
            if pos >= end:
                break
        if pos < end:
            new.append((pos, bytes(data[pos - seq:])))
        if not new:
            self.counters["tcp_ooo_duplicate"] += 1
            return
        if len(self._ooo) + len(new) > OOO_MAX_PIECES:
            self.counters["tcp_drop_ooo_full"] += 1
            return
        self.counters["tcp_ooo_queued"] += 1
        if not self._ooo:
            self._ooo = []
        for piece in new:
            insort(self._ooo, piece)
            self._ooo_bytes += len(piece[1])
        self._ooo_last = seq

    def _ooo_pull(self, rcv_nxt: int, chunks: list) -> int:
        ooo = self._ooo
        i = 0
        while i < len(ooo) and ooo[i][0] <= rcv_nxt:
            s, d = ooo[i]
            self._ooo_bytes -= len(d)
            e = s + len(d)
            if e > rcv_nxt:
                chunks.append(d[rcv_nxt - s:])
                rcv_nxt = e
            i += 1
        if i:
            del ooo[:i]
            if not ooo:
                self._ooo = _EMPTY
        return rcv_nxt

    def _sack_blocks(self) -> tuple:
        """Merged out-of-order ranges, the one holding the newest piece first (RFC 2018 4)."""
        blocks = []
        for s, d in self._ooo:
            e = s + len(d)
            if blocks and blocks[-1][1] == s:
                blocks[-1][1] = e
            else:
                blocks.append([s, e])
        last = self._ooo_last
        blocks.sort(key=lambda b: not (last is not None and b[0] <= last < b[1]))
        return tuple((s & _M, e & _M) for s, e in blocks[:MAX_SACK_BLOCKS])

    # ------------------------------------------------------------------
    # ACK processing of what we sent
    # ------------------------------------------------------------------
    def _new_ack(self, ack: int, now: float) -> None:
        una = self.snd_una
        acked = ack - una
        if una == self.iss:
            acked -= 1                              # the SYN is not data
        self.snd_una = ack
        if ack > self.snd_nxt:
            self.snd_nxt = ack
        n = ack - self._buf_seq
        if n > 0:
            blen = len(self._sndbuf)
            if n >= blen:
                self._sndbuf = _NO_BYTES        # all acknowledged
                self._buf_seq += blen
            # else: the acknowledged bytes are dropped by the next send(), not
            # here: segments this batch of ACKs clocked out are views of the
            # queue (_output) not yet written, and a bytearray with views
            # cannot be resized.
        xe = self._xl_end
        if xe and xe[0] <= ack:
            i = bisect_right(xe, ack)
            if i == len(xe):
                self._xl_end = self._xl_ts = _EMPTY    # all acknowledged
            else:
                del xe[:i]
                del self._xl_ts[:i]
        in_sack_recovery = self._rp is not None
        if self._sb or self._lost or self._rx or in_sack_recovery or self._rto_rp is not None:
            self._sack_trim(ack)
        # RFC 6298 (Karn): sample only segments that were never retransmitted.
        if self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rtt_sample(now - self._rtt_at)
            self._rtt_seq = None
        self._backoff = 0
        self._retries = 0
        self._stall_since = None
        seg = self.snd_mss
        if self._recover is not None:
            if ack >= self._recover:
                # RFC 6582 3.2 step 3, full acknowledgment: deflate the window.
                self.cwnd = min(self.ssthresh, max(self.snd_max - ack, seg) + seg)
                self._recover = None
                self._rexmit_mark = None
                self._rprobe_at = None
                self._rprobe_backoff = 0
            else:
                # Partial acknowledgment: retransmit the next hole, deflate by
                # the amount acked, add back one segment.
                self._rprobe_backoff = 0
                self._retransmit_head(now)
                self.cwnd = max(self.cwnd - acked + seg, seg)
        elif in_sack_recovery:
            pass                                    # RFC 6675: cwnd stays ssthresh meanwhile
        elif self.cwnd < self.ssthresh:
            self.cwnd += acked                      # slow start
        else:
            self.cwnd += max(1, seg * acked // self.cwnd)   # congestion avoidance
        cap = 2 * max(self._max_snd_wnd, self.snd_buf) + INIT_CWND_SEGS * seg
        if self.cwnd > cap:
            self.cwnd = cap
        self._dupacks = 0
        self._lt_extra = 0
        # RFC 6298 5.2: "When all outstanding data has been acknowledged, turn
        # off the retransmission timer." 5.3: "When an ACK is received that
        # acknowledges new data, restart the retransmission timer" (RFC 8985
        # 7.2: or the loss probe timer, which stands in front of it).
        if self.snd_max > ack:
            if self._pto and self.snd_max - ack > self.snd_mss:
                # Still probing (nothing that stops probes happens without
                # re-arming): the per-ACK fast path of _arm_rtx.
                self._rto_at = now + self._pto_base
            else:
                self._arm_rtx(now)
        else:
            self._rto_at = None
            self._pto = False

    def _new_ack_quiet(self, una: int, ack: int, now: float) -> None:
        """_new_ack for header prediction: SND.UNA < ack =< SND.MAX on an
        ESTABLISHED flow with no recovery (NewReno or SACK), no scoreboard,
        no lost or retransmitted ranges and no RTO recovery point, so only
        the branches of _new_ack such an ACK takes are here."""
        self.snd_una = ack
        if ack > self.snd_nxt:
            self.snd_nxt = ack
        n = ack - self._buf_seq
        if n > 0:
            buf = self._sndbuf
            blen = len(buf)
            if n >= blen:
                self._sndbuf = _NO_BYTES        # all acknowledged
                self._buf_seq += blen
            # else: as in _new_ack, the next send() drops the acknowledged
            # bytes (segments not yet written are views of the queue).
        xe = self._xl_end
        if xe and xe[0] <= ack:
            if xe[-1] <= ack:
                self._xl_end = self._xl_ts = _EMPTY    # all acknowledged
            else:
                i = bisect_right(xe, ack)
                del xe[:i]
                del self._xl_ts[:i]
        rs = self._rtt_seq
        if rs is not None and ack >= rs:
            self._rtt_sample(now - self._rtt_at)
            self._rtt_seq = None
        self._backoff = 0
        self._retries = 0
        self._stall_since = None
        seg = self.snd_mss
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            cwnd += ack - una                       # slow start
        else:
            cwnd += max(1, seg * (ack - una) // cwnd)   # congestion avoidance
        cap = 2 * max(self._max_snd_wnd, self.snd_buf) + INIT_CWND_SEGS * seg
        self.cwnd = cwnd if cwnd < cap else cap
        self._dupacks = 0
        self._lt_extra = 0
        snd_max = self.snd_max
        if snd_max > ack:
            if self._pto and snd_max - ack > seg:
                self._rto_at = now + self._pto_base
            else:
                self._arm_rtx(now)
        else:
            self._rto_at = None
            self._pto = False

    def _dup_ack(self, now: float) -> None:
        """A duplicate ACK without SACK: RFC 5681 / RFC 6582 (with SACK, RACK decides)."""
        self._dupacks += 1
        self.counters["tcp_dup_ack_rx"] += 1
        seg = self.snd_mss
        if self._recover is None:
            if self._dupacks == DUPACK_THRESHOLD:
                # RFC 5681 3.2 steps 2-4 / RFC 6582: fast retransmit, then
                # fast recovery until everything sent so far is acknowledged.
                self.counters["tcp_fast_retransmit"] += 1
                self.ssthresh = max((self.snd_max - self.snd_una) // 2, 2 * seg)
                self._recover = self.snd_max
                self._lt_extra = 0
                self._rprobe_backoff = 0
                self._retransmit_head(now)
                self.cwnd = self.ssthresh + DUPACK_THRESHOLD * seg
            elif self._dupacks < DUPACK_THRESHOLD:
                # RFC 3042 limited transmit: "a TCP sender SHOULD send a
                # segment of previously unsent data in response to each of
                # the first two duplicate acknowledgments" (cwnd unchanged;
                # _output adds this allowance). With the small windows that
                # loss leaves, this is what still makes three dupacks.
                self.counters["tcp_limited_transmit"] += 1
                self._lt_extra = self._dupacks * seg
        else:
            # "For each additional duplicate ACK received ... increment cwnd by SMSS."
            self.cwnd += seg

    def _retransmit_head(self, now: float) -> None:
        """Resend one segment at snd_una (fast retransmit / partial ACK)."""
        una = self.snd_una
        buf_end = self._buf_seq + len(self._sndbuf)
        # Only what was sent before: never new data beyond snd_max here.
        size = (buf_end if buf_end < self.snd_max else self.snd_max) - una
        if size > self._seg_size:
            size = self._seg_size
        if size > 0:
            off = una - self._buf_seq
            with memoryview(self._sndbuf) as mv:
                payload = bytes(mv[off:off + size])
            flags = ACK
            if una + size == buf_end:
                flags |= PSH
                if self._fin_queued and self.snd_max > buf_end:
                    flags |= FIN
        elif self._fin_queued and una == buf_end and self.snd_max > buf_end:
            payload, flags = b"", ACK | FIN
        else:
            return
        self.counters["tcp_retransmit"] += 1
        self.rexmits += 1
        self._rtt_seq = None
        self._rexmit_mark = self.snd_max
        self._emit(una, flags, payload, now)
        if self._recover is not None:
            # In recovery the container has out-of-order data, so it ACKs at
            # once: no answer within ~2 SRTT means the retransmission or its
            # ACK was lost. Resend then (the idea of RFC 8985's RACK/TLP)
            # rather than stall for a full RTO and go back N.
            t = 2 * self.srtt if self.srtt else 0.0
            if t < RECOVERY_PROBE_MIN:
                t = RECOVERY_PROBE_MIN
            b = self._rprobe_backoff
            self._rprobe_at = now + t * (1 << (b if b < 6 else 6))
        if self._rto_at is None:
            self._rto_at = now + self._cur_rto()

    # ------------------------------------------------------------------
    # SACK scoreboard (RFC 6675), RACK-TLP (RFC 8985)
    # ------------------------------------------------------------------
    def _arm_rtx(self, now: float) -> None:
        """Arm the retransmission timer: a tail loss probe (RFC 8985 7.2)
        when one may be sent, else the RTO (RFC 6298)."""
        rto = self._cur_rto()
        srtt = self.srtt
        # In a recovery too (unlike RFC 8985 7.2): when the retransmissions
        # sent are all the container has to answer, a lost one would
        # otherwise wait for the RTO; on a link this short the probe is cheap.
        if self.sack_ok and srtt is not None and (self._rp is not None or self._tlp_end is None) \
                and self._rto_rp is None and not self._backoff and self.state in _OUTPUT_STATES:
            # "PTO = 2*SRTT ... If FlightSize is one segment, PTO += WCDelAckT"
            pto = 2 * srtt
            if self.snd_max - self.snd_una <= self.snd_mss:
                pto += TLP_DELACK
            if pto < TLP_MIN:
                pto = TLP_MIN
            # "If RTO is earlier, ... PTO = RTO": a probe, not a timeout, first.
            self._rto_at = now + (pto if pto < rto else rto)
            self._pto = True
            return
        self._rto_at = now + rto
        self._pto = False

    def _xmit_ts(self, seq: int):
        """RACK's Segment.xmit_ts of the byte at ``seq``: (time, retransmitted)."""
        for s, e, t in self._rx:
            if s <= seq < e:
                return t, True
            if s > seq:
                break
        xe = self._xl_end
        i = bisect_right(xe, seq)
        if i < len(xe):
            return self._xl_ts[i], False
        return None, False

    def _sack_update(self, ack: int, blocks, now: float) -> None:
        """The scoreboard and RACK's view of one ACK (before SND.UNA moves).

        RFC 6675 Update(); RFC 8985 6.2 steps 1-4 (RACK.xmit_ts, RACK.rtt,
        reordering, reo_wnd_mult) and 7.4 (was a loss probe answered?).
        """
        una = self.snd_una
        snd_max = self.snd_max
        newly = []
        if ack > una:
            # Newly cumulatively acked: [SND.UNA, ack) less what was SACKed.
            pos = una
            for s, e in self._sb:
                if s >= ack:
                    break
                if s > pos:
                    newly.append((pos, s))
                if e > pos:
                    pos = e
            if pos < ack:
                newly.append((pos, ack))
        dsack = False
        if blocks:
            base = ack if ack > una else una
            for j, (l, r) in enumerate(blocks):
                l = una + ((l - una + _HALF) & _M) - _HALF
                r = una + ((r - una + _HALF) & _M) - _HALF
                if j == 0 and r > l:
                    # RFC 2883: a D-SACK is the first block, below the
                    # cumulative ACK or inside the second block.
                    d = r <= ack
                    if not d and len(blocks) > 1:
                        l2 = una + ((blocks[1][0] - una + _HALF) & _M) - _HALF
                        r2 = una + ((blocks[1][1] - una + _HALF) & _M) - _HALF
                        d = l2 <= l and r <= r2
                    if d:
                        dsack = True
                        continue
                if l < base:
                    l = base
                if r > snd_max:
                    r = snd_max
                if r > l:
                    self._sb_add(l, r, newly)
        if dsack:
            self.counters["tcp_dsack_rx"] += 1
            # RFC 8985 6.2 step 4: a D-SACK means a spurious retransmission;
            # widen the reordering window, at most once per round trip.
            if una >= self._reo_round and self._reo_mult < 16:
                self._reo_mult += 1
                self._reo_round = snd_max
        min_rtt = self._min_rtt
        if len(newly) > 1:
            newly.sort()                # in sequence order: blocks of one ACK are no reordering
        for s, e in newly:
            ts, rexmit = self._xmit_ts(e - 1)
            if ts is None:
                continue
            rtt = now - ts
            # RFC 8985 6.2 step 2: an ACK of a retransmission that came back
            # faster than any round trip answers the original: no sample.
            # Compared to the microsecond, as Linux does (tcp_rack.c): in
            # float seconds a round trip equal to min_rtt can come out a
            # hair shorter, and the answer to a loss probe was then ignored.
            if rexmit and min_rtt is not None and rtt < min_rtt - 1e-6:
                continue
            if min_rtt is None or rtt < min_rtt:
                self._min_rtt = min_rtt = rtt
            # Step 3: an original delivered below RACK.fack arrived out of order.
            if not rexmit and e < self._fack and not self._reo_seen:
                self._reo_seen = True
                self.counters["tcp_reordering_seen"] += 1
            if e > self._fack:
                self._fack = e
            rts = self._rack_ts
            if rts is None or ts > rts or (ts == rts and e > self._rack_end):
                self._rack_ts = ts
                self._rack_end = e
                self._rack_rtt = rtt
        tlp = self._tlp_end
        if tlp is not None:
            # RFC 8985 7.4: the loss probe's fate.
            if dsack and self._tlp_rexmit:
                self.counters["tcp_tlp_spurious"] += 1      # the original had arrived
                self._tlp_end = None
            elif ack > tlp and self._tlp_rexmit:
                # Acknowledged beyond the probe with no D-SACK for it: the
                # probe repaired a loss (like Linux, only an ACK past it
                # says so: the one reaching it may answer the original).
                # The congestion response of a fast recovery, without one.
                self.counters["tcp_tlp_loss_repaired"] += 1
                seg = self.snd_mss
                self.ssthresh = max(self.cwnd // 2, 2 * seg)
                self.cwnd = self.ssthresh
                self._tlp_end = None
            elif ack >= tlp and (not self._tlp_rexmit or ack >= snd_max):
                # New data as the probe, or everything acknowledged (a tail:
                # nothing later will tell): the episode is over.
                self._tlp_end = None

    def _sb_add(self, l: int, r: int, newly: list) -> None:
        """Merge a SACKed [l, r) into the scoreboard; the parts not known yet go to ``newly``."""
        out = []
        ml, mr = l, r
        pos = l
        for rng in self._sb:
            s, e = rng
            if e < l or s > r:
                out.append(rng)
                continue
            if s > pos:
                newly.append((pos, s))
            if e > pos:
                pos = e
            if s < ml:
                ml = s
            if e > mr:
                mr = e
        if pos < r:
            newly.append((pos, r))
        out.append([ml, mr])
        out.sort()
        if len(out) > SACK_MAX_RANGES:
            # Forgetting SACK information is always safe: that data is resent.
            self.counters["tcp_sack_scoreboard_full"] += 1
            del out[SACK_MAX_RANGES:]
        self._sb = out
        if self._lost:
            # SACKed data is delivered, whatever was thought of it.
            lost = []
            for rng in self._lost:
                s, e = rng
                if e <= ml or s >= mr:
                    lost.append(rng)
                    continue
                if s < ml:
                    lost.append([s, ml])
                if e > mr:
                    lost.append([mr, e])
            self._lost = lost

    def _sack_trim(self, ack: int) -> None:
        """SND.UNA moved to ``ack``: drop what lies below it; end recoveries it completes."""
        for lst in (self._sb, self._lost, self._rx):
            i = 0
            n = len(lst)
            while i < n and lst[i][1] <= ack:
                i += 1
            if i:
                del lst[:i]
            if lst and lst[0][0] < ack:
                lst[0][0] = ack
        if not self._sb:
            self._sb = _EMPTY
        if not self._lost:
            self._lost = _EMPTY
        if not self._rx:
            self._rx = _EMPTY
        if self._rp is not None and ack >= self._rp:
            # RFC 6675 5: "once a cumulative ACK covers RecoveryPoint ... exit loss recovery"
            self._rp = None
            self._rx = _EMPTY
        if self._rto_rp is not None and ack >= self._rto_rp:
            self._rto_rp = None

    def _rack_detect(self, now: float) -> None:
        """RFC 8985 6.2 step 5: mark lost what was sent a reordering window
        and a RACK.rtt before the most recently sent delivered segment; arm
        the reordering timer for the rest; start a recovery when there is
        a first loss."""
        rack_ts = self._rack_ts
        una = self.snd_una
        snd_max = self.snd_max
        if rack_ts is None or self._rto_rp is not None or snd_max <= una:
            return
        sb = self._sb
        # RFC 8985 6.2 step 4, RACK.reo_wnd.
        if not self._reo_seen and (self._rp is not None or sum(e - s for s, e in sb)
                                   >= DUPACK_THRESHOLD * self.snd_mss):
            reo = 0.0
        else:
            reo = self._reo_mult * (self._min_rtt or 0.0) / 4
            srtt = self.srtt
            if srtt is not None and reo > srtt:
                reo = srtt
        # Sent at or before ``thresh``: lost (a microsecond of slack for float rounding).
        thresh = now - self._rack_rtt - reo
        rack_end = self._rack_end
        rx = self._rx
        rx_hi = rx[-1][1] if rx else 0
        xe, xt = self._xl_end, self._xl_ts
        nx = len(xe)
        lost = self._lost or []             # a new list is kept only if something is marked
        timeout = None
        marked = False
        pos = una
        k = 0
        nsb = len(sb)
        while pos < snd_max:
            while k < nsb and sb[k][1] <= pos:
                k += 1
            if k < nsb and sb[k][0] <= pos:
                pos = sb[k][1]
                k += 1
                continue
            hole_end = sb[k][0] if k < nsb else snd_max
            while pos < hole_end:
                # The piece of the hole from ``pos`` sharing one transmit time.
                end = hole_end
                t = None
                for rs, re_, rt in rx:
                    if rs <= pos < re_:
                        t = rt
                        if re_ < end:
                            end = re_
                        break
                    if rs > pos:
                        if rs < end:
                            end = rs
                        break
                rexmit = t is not None
                if t is None:
                    i = bisect_right(xe, pos)
                    if i >= nx:
                        pos = snd_max        # never logged (sent before SACK was in use)
                        break
                    t = xt[i]
                    if xe[i] < end:
                        end = xe[i]
                # Sent before RACK.segment: earlier, or at the same time and
                # below it -- which only an original transmission can claim
                # (a retransmission at that same ``now`` may have followed
                # it: the driver gives one time to a whole batch).
                if t < rack_ts or (t == rack_ts and end <= rack_end and not rexmit):
                    if t <= thresh + 1e-6:
                        if not _covered(lost, pos, end):
                            _range_add(lost, pos, end)
                            marked = True
                    else:
                        rem = t - thresh
                        if timeout is None or rem < timeout:
                            timeout = rem
                elif not rexmit and pos >= rx_hi:
                    # Original data is logged in send order: all the rest
                    # was sent after RACK.segment.
                    pos = snd_max
                    break
                pos = end
        self._rack_at = None if timeout is None else now + timeout
        if marked:
            self._lost = lost
            self.counters["tcp_rack_lost_marked"] += 1
            if self._rp is None:
                self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        """RFC 6675 5 (with RACK as the loss detector): a fast recovery."""
        self.counters["tcp_fast_recoveries"] += 1
        self.counters["tcp_fast_retransmit"] += 1
        seg = self.snd_mss
        # "ssthresh = cwnd = (FlightSize / 2)"
        self.ssthresh = max((self.snd_max - self.snd_una) // 2, 2 * seg)
        self.cwnd = self.ssthresh
        self._rp = self.snd_max
        self._tlp_end = None                # this recovery is the congestion response
        # 4.3: "Retransmit the first data segment presumed dropped" whatever the pipe.
        self._retransmit_lost(now)
        self._arm_rtx(now)

    def _retransmit_lost(self, now: float) -> int:
        """Resend the first lost range (one segment of at most ``_seg_size``)."""
        lost = self._lost
        s, e = lost[0]
        n = e - s
        if n > self._seg_size:
            n = self._seg_size
        if s + n >= e:
            del lost[0]
        else:
            lost[0][0] = s + n
        self.counters["tcp_rack_retransmits"] += 1
        self._retransmit(s, n, now)
        self._rx_add(s, s + n, now)
        return n

    def _recovery_output(self, now: float) -> None:
        """RFC 6675 5 (4.4): while cwnd - pipe >= 1 SMSS, send lost data
        first (NextSeg rule 1), then new data (rule 2)."""
        una = self.snd_una
        pipe = self.snd_max - una - sum(e - s for s, e in self._sb) \
            - sum(e - s for s, e in self._lost)
        mss = self.snd_mss
        cwnd = self.cwnd
        while self._lost and cwnd - pipe >= mss:
            pipe += self._retransmit_lost(now)
        room = cwnd - pipe
        if room >= mss and self.snd_nxt == self.snd_max:
            edge = una + self.snd_wnd
            lim = self.snd_max + room
            self._output(now, limit=lim if lim < edge else edge)
        elif self._rto_at is None:
            self._arm_rtx(now)

    def _retransmit(self, s: int, n: int, now: float) -> None:
        """Resend [s, s + n) of what was sent (data, and our FIN if it lies inside)."""
        buf_seq = self._buf_seq
        buf_end = buf_seq + len(self._sndbuf)
        snd_max = self.snd_max
        e = s + n
        if e > snd_max:
            e = snd_max
        if s < buf_seq:
            s = buf_seq
        data_end = e if e < buf_end else buf_end
        flags = ACK
        payload = b""
        if data_end > s:
            with memoryview(self._sndbuf) as mv:
                payload = bytes(mv[s - buf_seq:data_end - buf_seq])
            if data_end == buf_end:
                flags |= PSH
        if self._fin_queued and e > buf_end and snd_max > buf_end:
            flags |= FIN
        if not payload and not flags & FIN:
            return
        self.counters["tcp_retransmit"] += 1
        self._rtt_seq = None                       # Karn
        self._emit(s, flags, payload, now)
        if self._rto_at is None:
            self._rto_at = now + self._cur_rto()
            self._pto = False

    def _rx_add(self, s: int, e: int, ts: float) -> None:
        out = []
        for r in self._rx:
            rs, re_, rt = r
            if re_ <= s or rs >= e:
                out.append(r)
                continue
            if rs < s:
                out.append([rs, s, rt])
            if re_ > e:
                out.append([e, re_, rt])
        out.append([s, e, ts])
        out.sort()
        self._rx = out

    def _on_pto(self, now: float) -> None:
        """RFC 8985 7.3: the loss probe timer fired."""
        una = self.snd_una
        snd_max = self.snd_max
        if self.state not in _OUTPUT_STATES or snd_max <= una:
            return
        if self._rp is not None:
            # In a recovery nothing was acknowledged for a PTO: the
            # retransmission of the first hole (or its answer) is likely
            # lost and nothing sent after it will tell RACK. Resend it.
            self.counters["tcp_recovery_probe"] += 1
            sb = self._sb
            e = sb[0][0] if sb and sb[0][0] > una else snd_max
            n = e - una
            if n > self._seg_size:
                n = self._seg_size
            if self._lost:
                _range_sub(self._lost, una, una + n)
            self._retransmit(una, n, now)
            self._rx_add(una, una + n, now)
            self._pto = False
            self._rto_at = now + self._cur_rto()
            return
        self.counters["tcp_tlp_probes"] += 1
        buf_end = self._buf_seq + len(self._sndbuf)
        if buf_end > snd_max and una + self.snd_wnd > snd_max:
            # "If previously unsent data is available and the receive window
            # allows, transmit ... one new segment"
            self._output(now, force=True)
        if self.snd_max > snd_max:
            self.counters["tcp_tlp_new_data"] += 1
            self._tlp_rexmit = False
        else:
            # "Otherwise, retransmit the most recently sent segment"
            hi = snd_max if snd_max < buf_end else buf_end
            s = hi - self.snd_mss
            if s < una:
                s = una
            self._retransmit(s, snd_max - s, now)
            self._rx_add(s, snd_max, now)
            self._tlp_rexmit = True
        self._tlp_end = self.snd_max
        # "the sender MUST arm the RTO timer"
        self._pto = False
        self._rto_at = now + self._cur_rto()

    def _rtt_sample(self, r: float) -> None:
        # RFC 6298 2.2 / 2.3
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        rto = self.srtt + max(CLOCK_G, 4 * self.rttvar)
        self.rto = RTO_MIN if rto < RTO_MIN else RTO_MAX if rto > RTO_MAX else rto
        if self._min_rtt is None or r < self._min_rtt:
            self._min_rtt = r
        pto = 2 * self.srtt
        if pto < TLP_MIN:
            pto = TLP_MIN
        self._pto_base = pto if pto < self.rto else self.rto

    # ------------------------------------------------------------------
    # output
    # ------------------------------------------------------------------
    def _log_xmit(self, end: int, now: float) -> None:
        """RACK's transmit-time log (RFC 8985 6.1's xmit_ts): new data up to
        ``end`` left at ``now``; one entry per distinct time."""
        xt = self._xl_ts
        if not xt:
            self._xl_end = [end]
            self._xl_ts = [now]
        elif xt[-1] == now:
            self._xl_end[-1] = end
        else:
            self._xl_end.append(end)
            xt.append(now)

    def _output(self, now: float, force: bool = False, limit=None) -> None:
        """Send what the windows allow (or up to ``limit``): data, then our FIN."""
        if self._rp is not None and limit is None:
            self._recovery_output(now)
            return
        nxt = self.snd_nxt
        if nxt == self.snd_una and nxt == self._buf_seq + len(self._sndbuf) \
                and not self._fin_queued:
            # Nothing queued, nothing in flight (every ACK of a request/response
            # exchange): what the code below comes to, without the set-up.
            self._rto_at = None
            return
        buf = self._sndbuf
        buf_seq = self._buf_seq
        buf_end = buf_seq + len(buf)
        una = self.snd_una
        wnd = self.snd_wnd
        # May a segment shorter than _seg_size wait (for data or window)?
        # Only on the ordinary path (not a probe, not recovery's own limit),
        # only with data in flight (its ACK comes and sends what waited) and
        # only with segments bigger than the wire MSS (TSO: a partial one is
        # a whole extra frame for us and an extra ACK from the container).
        defer = not force and limit is None and self._seg_size > self.snd_mss
        if force:
            limit = una + wnd
        elif limit is None:
            cwnd = self.cwnd + self._lt_extra
            limit = una + (wnd if wnd < cwnd else cwnd)
        seg_size = self._seg_size
        nxt = self.snd_nxt
        snd_max = self.snd_max
        mv = None
        while True:
            avail = buf_end - nxt
            if avail > 0:
                size = limit - nxt
                if size <= 0:
                    break
                if size > seg_size:
                    size = seg_size
                if size >= avail:
                    size = avail
                    if defer and size < seg_size and self._more and nxt > una \
                            and not self._fin_queued:
                        # A tail of the host's data with more on its way:
                        # it leaves with that data, or once the flight is
                        # acknowledged (nothing then in flight).
                        self.counters["tcp_tx_tail_deferred"] += 1
                        break
                elif size < self.snd_mss and size < (self._max_snd_wnd >> 1) and not force:
                    # RFC 9293 3.8.6.2.1 sender SWS avoidance: no runt
                    # segments into a small usable window.
                    break
                elif defer and size < seg_size and nxt > una and 3 * size < limit - una:
                    # The window allows only part of a segment, and less
                    # than a third of the window (Linux's tcp_tso_should_defer,
                    # tso_win_divisor 3): the ACK of what is in flight opens
                    # it for a whole one.
                    self.counters["tcp_tx_window_deferred"] += 1
                    break
                off = nxt - buf_seq
                if mv is None:
                    mv = memoryview(buf)
                # A view, not a copy: a TSO segment's payload goes from the
                # queue to the TAP's writev as it is (TcpNat.output). The
                # queue is never resized while such a view lives (send()).
                payload = mv[off:off + size]
                end = nxt + size
                flags = ACK
                if end == buf_end:
                    flags = ACK | PSH
                    if self._fin_queued:
                        flags = ACK | PSH | FIN
                if nxt < snd_max:
                    self.counters["tcp_retransmit"] += 1
                    self.rexmits += 1
                elif self._rtt_seq is None:
                    self._rtt_seq, self._rtt_at = end, now
                self._emit(nxt, flags, payload, now)
                nxt = end + (flags & FIN)
                if flags & FIN or force:
                    break
            elif avail == 0 and self._fin_queued and nxt == buf_end:
                # RFC 9293 3.10.4: "form a FIN segment and send it" once all
                # preceding data has been segmentized.
                if nxt < snd_max:
                    self.counters["tcp_retransmit"] += 1
                    self.rexmits += 1
                self._emit(nxt, ACK | FIN, b"", now)
                nxt += 1
                break
            else:
                break
        if mv is not None:
            mv.release()
        self.snd_nxt = nxt
        if nxt > snd_max:
            self.snd_max = nxt
            if self.sack_ok:
                self._log_xmit(nxt, now)
        if nxt > una:
            # RFC 6298 5.1: "Every time a packet containing data is sent
            # (including a retransmission), if the timer is not running, start it"
            # (RFC 8985 7.2: a loss probe timer restarts on new data).
            if self._rto_at is None or (self._pto and nxt > snd_max):
                self._arm_rtx(now)
            self._persist_at = None
        else:
            self._rto_at = None
            if buf_end > nxt and self._persist_at is None:
                # Data waiting, nothing in flight, window closed (or too small):
                # the persist timer makes sure we ask again (RFC 9293 3.8.6.1).
                self._arm_persist(now)

    def _tsval(self, now: float) -> int:
        if self.ts_clock is not None:
            return self.ts_clock(now) & _M
        return int(now * 1000) & _M

    def _emit(self, seq: int, flags: int, payload, now: float) -> None:
        """Append one ACK-bearing segment; it acknowledges everything received."""
        rcv_nxt = self.rcv_nxt
        if self.ts_ok:
            tc = self.ts_clock        # _tsval, inline: one call less per segment
            tsval = (tc(now) if tc is not None else int(now * 1000)) & _M
            if self.sack_ok and self._ooo and not payload:
                opts = TcpOptions(None, None, False, self._sack_blocks(), tsval, self._ts_recent)
            else:
                key = (tsval, self._ts_recent)
                if key != self._opts_key:
                    self._opts_key = key
                    self._opts = TcpOptions(None, None, False, (), tsval, self._ts_recent)
                opts = self._opts
        elif self.sack_ok and self._ooo and not payload:
            opts = TcpOptions(sack_blocks=self._sack_blocks())
        else:
            opts = NO_OPTIONS
        self.segments_out.append(_new_tuple(Segment, (seq & _M, rcv_nxt & _M, flags,
                                                      self._wnd_field(), opts, payload)))
        self._last_ack_sent = rcv_nxt
        self._unacked_rx = 0
        self._delack_at = None
        self._ack_now = False
        self._push_pending = False

    def _send_ack(self, now: float) -> None:
        # SND.MAX rather than SND.NXT: after a go-back-N timeout snd_nxt may
        # lie below what the peer already holds, and an ACK from there looks
        # like an old duplicate that it would answer (an ACK loop).
        self._emit(self.snd_max, ACK, b"", now)

    def _oow_ack(self, seg_len: int, now: float) -> None:
        """ACK an unacceptable segment; rate-limited unless it carried data.

        RFC 5961 10 asks for a limit on challenge ACKs; like Linux
        (tcp_oow_rate_limited) we limit every answer to a bare segment, which
        is what breaks ACK loops between two confused endpoints.
        """
        if not seg_len:
            if now - self._last_oow_ack < OOW_ACK_INTERVAL:
                self.counters["tcp_oow_ack_ratelimited"] += 1
                return
            self._last_oow_ack = now
        self._send_ack(now)

    def _wnd_field(self) -> int:
        """The window field for an outgoing segment; updates the advertised right edge."""
        rcv_nxt = self.rcv_nxt
        cur = self._rcv_adv - rcv_nxt
        if cur < 0:
            cur = 0
        # Bytes handed out during this call are not yet in the host's backlog
        # report; count them as stuck until the gateway tells us otherwise.
        avail = self.rcv_buf - self._backlog - self._delivered
        # RFC 9293 3.8.6.2.2: keep RCV.NXT + RCV.WND fixed until the window
        # can grow by at least min(rcv_buf/2, MSS); and never shrink it
        # (3.8.6.2.1: "A TCP receiver SHOULD NOT shrink the window").
        wnd = avail if avail - cur >= self._sws_thresh else cur
        s = self.rcv_wscale
        field = wnd >> s
        if (field << s) < cur:
            field += 1                      # rounding down would shrink the edge
        if field > 0xFFFF:
            field = 0xFFFF
        elif not field:
            self.counters["tcp_zero_window_tx"] += 1
        edge = rcv_nxt + (field << s)
        if edge > self._rcv_adv:
            self._rcv_adv = edge
        return field

    def _check_pause(self) -> None:
        """Backpressure toward the host socket, on transitions only."""
        end = self._buf_seq + len(self._sndbuf)
        # Bytes not yet acknowledged (acknowledged ones may still sit at the
        # queue's front until the next send()).
        queued = end - (self.snd_una if self.snd_una > self._buf_seq else self._buf_seq)
        if self.state in _SYNCHRONIZED:
            closed = self.snd_wnd == 0 and end > self.snd_max
        else:
            closed = False
        if self._paused:
            if queued < self.snd_buf // 2 and not closed:
                self._paused = False
                self.counters["tcp_resume_reading"] += 1
                self.events.append(TcpResume(self.fid))
        elif queued >= self.snd_buf or closed:
            if self.state == CLOSED:
                return
            self._paused = True
            self.counters["tcp_pause_reading"] += 1
            self.events.append(TcpPause(self.fid))

    # ------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"<TcpConnection {self.state} snd_una={self.snd_una & _M} "
                f"snd_nxt={self.snd_nxt & _M} rcv_nxt={self.rcv_nxt & _M} "
                f"snd_wnd={self.snd_wnd} cwnd={self.cwnd} queued={len(self._sndbuf)}>")
