"""Host -> container bulk with TAP offloads (issue 12): how TSO segments are
queued and cut.

* A TSO segment is queued as ``(vnet_hdr, headers, payload)``, its payload a
  view of the connection's send queue (no copy), and the two pieces make the
  same frame the one-piece builder makes.
* A partial segment waits while data is in flight: the tail of a host read
  that said more follows (``tcp_tx_tail_deferred``), or a window that allows
  under a third of itself (``tcp_tx_window_deferred``); it leaves once the
  flight is acknowledged. Bytes arrive intact and in order either way.
* A frame not yet written keeps its bytes even when the queue moves on
  (``tcp_send_queue_copied``).
"""
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from usernet.stack.config import NetConfig
from usernet.stack.gateway import Gateway
from usernet.stack.tcp import SND_BUF
from usernet.wire.frame import addr_sum4, build_tcp4
from usernet.wire.vnet import VNET_HDR

GUEST_MAC = "02:00:00:00:00:01"
GUEST = "10.0.2.100"
GW = "10.0.2.2"
SEG = 45 * 1448          # MSS 1460 less timestamps, 45 of them under 64 KiB


def _flow(window=65535):
    """An offloading gateway with one established flow (the container's
    window ``window << 7``); returns (gw, fid, our first data seq)."""
    gw = Gateway(NetConfig(), seed=1, offload=True)
    gw.receive_frame(bytes(Ether(src=GUEST_MAC, dst=gw.mac) / IP(src=GUEST, dst=GW) / TCP(
        sport=40000, dport=8080, flags="S", seq=1000, window=65535,
        options=[("MSS", 1460), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (1, 0))])), 0.0,
        True)
    (ev,) = gw.events_out
    gw.events_out.clear()
    gw.tcp_connected(ev.fid, 0.0)
    ((_hdr, synack),) = gw.frames_out
    gw.frames_out.clear()
    ours = (Ether(bytes(synack))[TCP].seq + 1) & 0xFFFFFFFF
    _ack(gw, ours, 0.001, window)
    gw.events_out.clear()
    return gw, ev.fid, ours


def _ack(gw, ack, now, window=65535):
    """A pure ACK from the container, as its kernel sends them with offloads."""
    gw.receive_frame(bytes(Ether(src=GUEST_MAC, dst=gw.mac) / IP(src=GUEST, dst=GW) / TCP(
        sport=40000, dport=8080, flags="A", seq=1001, ack=ack & 0xFFFFFFFF, window=window,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (2, 1))])), now, True)


def _take(gw):
    """The frames queued toward the container: [(seq, payload bytes, entry)]."""
    out = []
    for entry in gw.frames_out:
        frame = b"".join(bytes(x) for x in entry[1:])
        t = Ether(frame)[TCP]
        out.append((t.seq, bytes(t.payload), entry))
    gw.frames_out.clear()
    return out


def test_tso_segment_is_headers_and_a_view_of_the_queue():
    gw, fid, ours = _flow()
    data = bytes(range(256)) * 200                      # 51,200 bytes: cwnd lets ~14 KB go first
    gw.tcp_host_data(fid, data, 0.01)
    (entry,) = gw.frames_out
    hdr, head, payload = entry
    assert isinstance(payload, memoryview)              # no copy of the payload was made
    flags, gso_type, hdr_len, gso_size, start, off = VNET_HDR.unpack(hdr)
    assert (flags, gso_type, hdr_len, gso_size, start, off) == (1, 1, 14 + 20 + 32, 1448, 34, 16)
    assert len(head) == hdr_len and bytes(payload) == data[:len(payload)]
    # The same bytes as the one-piece builder (checksum left to the kernel).
    t = Ether(bytes(head))
    gw_ip, guest_ip = bytes([10, 0, 2, 2]), bytes([10, 0, 2, 100])
    whole = build_tcp4(bytes.fromhex(GUEST_MAC.replace(":", "")), gw.mac, gw_ip, guest_ip,
                       addr_sum4(gw_ip, guest_ip), 8080, 40000, t[TCP].seq, t[TCP].ack,
                       int(t[TCP].flags), t[TCP].window, bytes(head[54:66]), payload, t[IP].id,
                       False)
    assert bytes(head) + bytes(payload) == bytes(whole)
    assert gw.counters["tcp_tx_gso_segments"] == 1


def _pump(gw, fid, ours, chunks, more, window=65535, rounds=400):
    """Offer ``chunks`` one after the other (as host reads, ``more`` each);
    each round the container ACKs what arrived in the rounds before (so a
    flight is out while the host reads), everything once the reads are done.
    Returns the byte stream the container got, in order, and the frames'
    payload sizes."""
    got = {}
    sizes = []
    now = 0.01
    pending = list(chunks)
    held = b""
    acked = ours
    ackable = ours

    def collect():
        for seq, payload, _e in _take(gw):
            if payload:
                got[seq] = payload
                sizes.append(len(payload))

    conn = gw.flows.tcp.by_id[fid].conn
    for _ in range(rounds):
        now += 0.0005
        if held or pending:
            data = held or pending.pop(0)
            n = gw.tcp_host_data(fid, data, now, more)
            held = bytes(data[n:])
        collect()
        # What arrived before this round is acknowledged now; the rest later.
        if ackable != acked or not (held or pending):
            acked = ackable if (held or pending) else acked
            while not (held or pending) and acked in got:
                acked = (acked + len(got[acked])) & 0xFFFFFFFF
            _ack(gw, acked, now, window)
            collect()
        ackable = acked
        while ackable in got:
            ackable = (ackable + len(got[ackable])) & 0xFFFFFFFF
        if not pending and not held and conn.snd_una == conn.snd_max and not gw.frames_out \
                and acked == ackable:
            break
    stream = b""
    seq = ours
    while seq in got:
        stream += got[seq]
        seq = (seq + len(got[seq])) & 0xFFFFFFFF
    return stream, sizes


def test_tail_of_a_full_read_waits_for_more_and_bytes_arrive_intact():
    gw, fid, ours = _flow()
    # Reads of 3.5 segments each, the host saying more follows: the half
    # segment waits for the next read while the flight is out, so nearly
    # every frame is whole.
    data = bytes((i * 7) & 0xFF for i in range(SEG * 35))
    reads = [data[i:i + SEG * 7 // 2] for i in range(0, len(data), SEG * 7 // 2)]
    stream, sizes = _pump(gw, fid, ours, reads, more=True)
    assert stream == data
    assert gw.counters["tcp_tx_tail_deferred"] > 0
    whole = sum(1 for s in sizes if s == SEG)
    assert whole >= len(sizes) - 6, sizes              # slow start's first frames are smaller
    # Told nothing more follows, each read's tail leaves at once: runts.
    gw2, fid2, ours2 = _flow()
    stream2, sizes2 = _pump(gw2, fid2, ours2, reads, more=False)
    assert stream2 == data
    assert gw2.counters["tcp_tx_tail_deferred"] == 0
    assert sum(1 for s in sizes2 if s == SEG // 2) >= 5, sizes2


def test_a_sliver_of_window_waits_for_the_ack():
    gw, fid, ours = _flow()
    conn = gw.flows.tcp.by_id[fid].conn
    conn.cwnd = 1 << 30                                  # past slow start: the window rules
    # The container's window: 1.25 segments (field << 7). After one whole
    # segment, the quarter segment it leaves waits for that segment's ACK.
    window = (SEG + SEG // 4) >> 7
    _ack(gw, ours, 0.005, window)
    data = bytes((i * 13) & 0xFF for i in range(SEG * 6))
    stream, sizes = _pump(gw, fid, ours, [data], more=False, window=window)
    assert stream == data
    assert sizes == [SEG] * 6
    assert gw.counters["tcp_tx_window_deferred"] >= 1


def test_a_frame_not_yet_written_keeps_its_bytes_when_the_queue_moves_on():
    gw, fid, ours = _flow()
    conn = gw.flows.tcp.by_id[fid].conn
    conn.cwnd = 1 << 30
    data = bytes((i * 3) & 0xFF for i in range(SEG * 2))
    gw.tcp_host_data(fid, data, 0.01)
    kept = list(gw.frames_out)                          # e.g. still in the TAP's queue
    gw.frames_out.clear()
    assert [len(e[2]) for e in kept] == [SEG, SEG]
    # More host bytes while the kept frames show the queue: it cannot grow
    # in place, so it goes on in a copy; the frames keep their bytes.
    gw.tcp_host_data(fid, b"\xee" * 1000, 0.02)
    assert gw.counters["tcp_send_queue_copied"] == 1
    # The container ACKs the first segment; the host offers more: the queue
    # drops the acknowledged bytes (into a new buffer), a kept frame still
    # shows them.
    _ack(gw, ours + SEG, 0.03)
    gw.tcp_host_data(fid, b"\xdd" * 1000, 0.04)
    assert bytes(kept[0][2]) == data[:SEG] and bytes(kept[1][2]) == data[SEG:]
    assert conn._buf_seq == conn.snd_una and len(conn._sndbuf) == SEG + 2000
    assert bytes(conn._sndbuf) == data[SEG:] + b"\xee" * 1000 + b"\xdd" * 1000
    assert gw.counters["tcp_send_queue_copied"] == 1
    kept.clear()


def test_host_reads_and_the_send_queue_are_whole_segments():
    from usernet.host.tcp import READ_MAX, TcpHost
    gw, fid, _ours = _flow()
    assert gw.tcp_segment_size(fid) == SEG
    assert gw.tcp_segment_size(fid + 1000) == 0          # no such flow
    assert gw.tcp_read_size(fid + 1000, READ_MAX) == 0
    conn = gw.flows.tcp.by_id[fid].conn
    assert conn.snd_buf == SND_BUF // SEG * SEG          # whole segments: no runt tail
    # A read: what the queue takes, in whole segments, at most the cap.
    assert gw.tcp_read_size(fid, READ_MAX) == 4 * SEG
    gw.tcp_host_data(fid, bytes(conn.snd_buf - 2 * SEG + 100), 0.01, True)
    assert gw.tcp_read_size(fid, READ_MAX) == SEG            # 2 segments' room less the 100
    gw.tcp_host_data(fid, bytes(SEG), 0.01, True)
    assert gw.tcp_read_size(fid, READ_MAX) == SEG - 100      # under a segment: exactly the room
    host = TcpHost(None)
    view = host.read_view(4 * SEG)
    assert len(view) == 4 * SEG and host.read_view(4 * SEG) is view   # kept, shared
    view[0] = 0xAB
    assert host.read_buf[0] == 0xAB                       # the shared buffer, cut


class _Driver:
    """What FlowProtocol.get_buffer asks of its driver: the gateway."""

    def __init__(self, gw):
        self.gw = gw


def test_read_advice_follows_the_send_queue_room_and_the_state():
    """FlowProtocol.get_buffer reads the stack's kept read advice instead of
    asking (TcpNat.read_advice): its buffer is always read_size's answer,
    however the queue's room and the flow's state move."""
    from usernet.host.tcp import READ_MAX, FlowProtocol, TcpHost
    from usernet.stack.tcpnat import NO_READ_ADVICE
    gw, fid, ours = _flow(window=0)        # the container's window shut: nothing leaves
    host = TcpHost(_Driver(gw))
    proto = FlowProtocol(host, fid)
    conn = gw.flows.tcp.by_id[fid].conn
    asked = []
    real = gw.tcp_read_advice
    gw.tcp_read_advice = lambda f, cap: asked.append(cap) or real(f, cap)

    def check():
        buf = proto.get_buffer(-1)
        want = gw.tcp_read_size(fid, READ_MAX)
        assert len(buf) == (want or READ_MAX)
        return want

    assert check() == 4 * SEG and asked == [READ_MAX]
    assert proto.advice is gw.flows.tcp.by_id[fid]
    assert check() == 4 * SEG and asked == [READ_MAX]            # kept: not asked again
    # Queued bytes that leave a read's room: the advice stands.
    gw.tcp_host_data(fid, bytes(conn.snd_buf - READ_MAX), 0.01)
    assert check() == 4 * SEG and len(asked) == 1
    # One byte more: less room than a read; the advice is withdrawn, and the
    # answer follows the room from then on (asked each time while short).
    gw.tcp_host_data(fid, b"x", 0.02)
    assert proto.advice.rsize == -1
    assert check() == 4 * SEG and len(asked) == 2     # the room still holds 4 segments
    gw.tcp_host_data(fid, bytes(2 * SEG), 0.03)
    assert check() == 2 * SEG and len(asked) == 3
    assert check() == 2 * SEG and len(asked) == 4
    # The container opens its window and acknowledges everything sent: the
    # room comes back, and with it the kept advice.
    _ack(gw, ours, 0.04, window=65535)
    sent = sum(len(p) for _s, p, _e in _take(gw))
    _ack(gw, ours + sent, 0.05)
    for _ in range(20):
        if not conn.snd_max - conn.snd_una:
            break
        sent += sum(len(p) for _s, p, _e in _take(gw))
        _ack(gw, ours + sent, 0.06)
    gw.frames_out.clear()
    gw.tcp_host_data(fid, b"y", 0.07)     # drops the acknowledged bytes from the queue
    n = len(asked)
    assert check() == 4 * SEG
    assert check() == 4 * SEG and len(asked) == n + 1
    # A state change withdraws it; a flow gone answers 0 (the whole buffer).
    flow = gw.flows.tcp.by_id[fid]
    gw.tcp_host_eof(fid, 0.08)             # FIN-WAIT-1
    assert flow.rsize == -1
    assert check() == 4 * SEG
    gw.tcp_host_reset(fid, 0.09)           # aborted: forgotten
    assert fid not in gw.flows.tcp.by_id and flow.rsize == 0
    assert check() == 0 and proto.get_buffer(-1) is host.read_buf
    assert NO_READ_ADVICE.rsize == -1
