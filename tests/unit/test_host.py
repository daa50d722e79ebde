"""host/ in process: HostDriver, TcpHost, UdpHost and Forwarder against a
socketpair standing in for the TAP and real loopback sockets.

No root, no namespaces: a SOCK_DGRAM socketpair carries one frame per
datagram, like a TAP fd (each with the 10-byte virtio-net header the driver
expects with ``vnet_hdr=True``). The test plays the container on the other
end with scapy-built frames; the host side is ordinary loopback servers and
clients. Time is the event loop's (real, but short).
"""

import asyncio
import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from usernet.host.driver import HostDriver
from usernet.host.forward import Forwarder
from usernet.stack.config import NetConfig
from usernet.stack.gateway import Gateway
from usernet.wire.vnet import VNET_HDR_LEN, VNET_HDR_NONE

GUEST_MAC = "02:00:00:00:00:64"
GW_MAC = "52:55:00:00:02:02"
GUEST = "10.0.2.100"
GW = "10.0.2.2"
TIMEOUT = 5.0


class Guest:
    """The container's end of the fake TAP."""

    def __init__(self, sock: socket.socket, loop):
        self.sock = sock
        self.loop = loop

    def send(self, pkt) -> None:
        self.sock.send(VNET_HDR_NONE + bytes(pkt))

    async def recv(self, want=None, timeout: float = TIMEOUT) -> Ether:
        """The next frame from usernet (for which ``want(frame)`` holds, if given)."""
        deadline = self.loop.time() + timeout
        while True:
            left = deadline - self.loop.time()
            if left <= 0:
                raise AssertionError("no frame from usernet")
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 70000), left)
            assert data[:VNET_HDR_LEN] == VNET_HDR_NONE     # offloads off: plain frames
            f = Ether(data[VNET_HDR_LEN:])
            if want is None or want(f):
                return f

    def tcp(self, sport, dport, flags, seq, ack=0, payload=b"", dst=GW):
        pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=dst) / TCP(
            sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535,
            options=[("MSS", 1460)] if "S" in flags else [])
        self.send(pkt / Raw(payload) if payload else pkt)


def run(coro_fn, **cfg):
    """Run ``coro_fn(driver, guest)`` with a fresh stack on a socketpair TAP."""
    async def main():
        loop = asyncio.get_running_loop()
        tap, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        gw = Gateway(NetConfig(guest_mac=bytes.fromhex("020000000064"), **cfg), seed=1)
        driver = HostDriver(gw, tap.fileno(), vnet_hdr=True)
        driver.start(loop)
        try:
            return await coro_fn(driver, Guest(ours, loop))
        finally:
            driver.close()
            tap.close()
            ours.close()
    return asyncio.run(main())


def is_tcp(f, flags=None):
    return TCP in f and (flags is None or f[TCP].flags == flags)


async def connect_out(guest, sport: int, serve):
    """Start a loopback server running ``serve``; the guest connects to it
    through usernet (SYN, SYN-ACK, ACK). Returns (server, port, our next seq)."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    guest.tcp(sport, port, "S", 1000)
    synack = await guest.recv(lambda f: is_tcp(f, "SA"))
    ours = synack[TCP].seq + 1
    guest.tcp(sport, port, "A", 1001, ours)
    return server, port, ours


def test_driver_answers_arp_through_the_fake_tap():
    """A frame read from the TAP fd reaches the stack; its answer is written
    back behind the all-zero virtio-net header (one frame per datagram)."""
    async def body(driver, guest):
        guest.send(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GW))
        f = await guest.recv()
        assert f[ARP].op == 2 and f[ARP].psrc == GW and f.dst == GUEST_MAC
        assert driver.counters["tx_frames"] == 1 and driver.counters["arp_reply_tx"] == 1
    run(body)


def test_tcp_flow_to_a_loopback_server_both_ways():
    """Guest SYN -> host connect -> SYN-ACK; guest data reaches the server's
    socket; the server's reply comes back as a segment; the host backlog is
    reported (the window stays open); the server's close becomes a FIN."""
    async def body(driver, guest):
        got = asyncio.get_running_loop().create_future()

        async def serve(reader, writer):
            got.set_result(await reader.readexactly(5))
            writer.write(b"world")
            await writer.drain()
            writer.close()

        server, port, ours = await connect_out(guest, 40000, serve)
        guest.tcp(40000, port, "PA", 1001, ours, b"hello")
        assert await asyncio.wait_for(got, TIMEOUT) == b"hello"
        reply = await guest.recv(lambda f: is_tcp(f) and bytes(f[TCP].payload))
        assert bytes(reply[TCP].payload) == b"world" and reply[TCP].seq == ours
        fin = reply if reply[TCP].flags.F else await guest.recv(lambda f: is_tcp(f)
                                                                and f[TCP].flags.F)
        assert fin[TCP].flags.F
        c = driver.counters
        assert c["tcp_syn_connect"] == 1 and c["tcp_host_connected"] == 1
        assert c["host_event_unhandled"] == 0
        # The container's 5 bytes were written and their backlog (0) reported:
        # the advertised window is the whole buffer again.
        (flow,) = driver.gw.flows.tcp.by_id.values()
        assert flow.conn._backlog == 0 and flow.conn._delivered == 0
        server.close()
    run(body)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_host_socket_has_nodelay_without_asking(loop_kind):
    """FlowProtocol no longer sets TCP_NODELAY itself (a getsockname and a
    setsockopt per connection): it relies on the event loop's TCP transport
    setting it, which both asyncio's and uvloop's do. If a loop stops doing
    so, 1-byte answers would wait on Nagle: this catches it."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")

    async def body(driver, guest):
        async def serve(reader, writer):
            await reader.read(1)
            writer.close()

        server, port, _ = await connect_out(guest, 40001, serve)
        (proto,) = driver.tcp.protocols.values()
        sock = proto.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        server.close()

    if loop_kind == "uvloop":
        real = asyncio.run
        try:
            asyncio.run = uvloop.run
            run(body)
        finally:
            asyncio.run = real
    else:
        run(body)


def test_tcp_connect_refused_by_the_host_is_a_reset():
    async def body(driver, guest):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()                                  # nothing listens there now
        guest.tcp(40001, port, "S", 1000)
        rst = await guest.recv(lambda f: is_tcp(f))
        assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001
        assert driver.counters["tcp_host_connect_failed_refused"] == 1
    run(body)


def test_udp_flow_to_a_loopback_server_and_back():
    async def body(driver, guest):
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        port = srv.getsockname()[1]
        loop = asyncio.get_running_loop()
        guest.send(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / UDP(
            sport=5000, dport=port) / Raw(b"ping"))
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(srv, 100), TIMEOUT)
        assert data == b"ping"
        await loop.sock_sendto(srv, b"pong", addr)
        f = await guest.recv(lambda f: UDP in f)
        assert (f[IP].src, f[UDP].sport, f[UDP].dport, bytes(f[UDP].payload)) == (
            GW, port, 5000, b"pong")
        assert driver.counters["udp_tx_datagrams"] == 1 and driver.counters["udp_rx_datagrams"] == 1
        srv.close()
    run(body)


async def _forward(driver, guest):
    fwd = Forwarder(driver)
    fid = fwd.add("tcp", "127.0.0.1", 0, "", 80)
    await asyncio.sleep(0)                       # the listener starts serving
    port = fwd.forwards[fid]._sock.getsockname()[1] if fwd.forwards[fid]._sock else \
        fwd.forwards[fid].server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    syn = await guest.recv(lambda f: is_tcp(f, "S"))
    return fwd, reader, writer, syn


def test_forward_reaches_the_guest_and_carries_bytes():
    """A client of a forwarded port: the stack's SYN reaches the guest (from
    the gateway address, loopback being unanswerable inside); once the guest
    answers, the client's bytes flow."""
    async def body(driver, guest):
        fwd, reader, writer, syn = await _forward(driver, guest)
        assert syn[IP].src == GW and syn[IP].dst == GUEST and syn[TCP].dport == 80
        assert fwd.gauges()["fwd_tcp_connecting"] == 1
        writer.write(b"GET")
        await writer.drain()
        sp, theirs = syn[TCP].sport, syn[TCP].seq + 1
        guest.tcp(80, sp, "SA", 7000, theirs, dst=GW)
        seg = await guest.recv(lambda f: is_tcp(f) and bytes(f[TCP].payload))
        assert bytes(seg[TCP].payload) == b"GET"
        assert driver.counters["fwd_tcp_guest_connected"] == 1
        assert fwd.gauges()["fwd_tcp_connecting"] == 0
        assert driver.counters["fwd_client_addr_as_gateway"] == 1
        writer.close()
        fwd.close()
    run(body)


def test_forward_refused_by_the_guest_resets_the_client():
    async def body(driver, guest):
        fwd, reader, writer, syn = await _forward(driver, guest)
        guest.tcp(80, syn[TCP].sport, "RA", 0, syn[TCP].seq + 1)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), TIMEOUT)
        assert driver.counters["fwd_tcp_guest_refused"] == 1
        assert fwd.gauges()["fwd_tcp_connecting"] == 0
        writer.close()
        fwd.close()
    run(body)


def test_forward_unanswered_times_out_in_the_stack():
    """The container never answers: the stack's connect timeout (not a timer
    of the forwarder's) resets the client and forgets the flow."""
    async def body(driver, guest):
        fwd, reader, writer, syn = await _forward(driver, guest)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), TIMEOUT)
        c = driver.counters
        assert c["tcp_inbound_connect_timeout"] == 1 and c["fwd_tcp_guest_timeout"] == 1
        assert not driver.gw.flows.tcp.by_id
        writer.close()
        fwd.close()
    run(body, tcp_connect_timeout=0.3)


def test_udp_forward_round_trip():
    async def body(driver, guest):
        loop = asyncio.get_running_loop()
        fwd = Forwarder(driver)
        fid = fwd.add("udp", "127.0.0.1", 0, "", 53)
        port = fwd.forwards[fid].sock.getsockname()[1]
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cli.setblocking(False)
        cli.connect(("127.0.0.1", port))
        await loop.sock_sendall(cli, b"q1")
        f = await guest.recv(lambda f: UDP in f)
        assert bytes(f[UDP].payload) == b"q1" and f[UDP].dport == 53 and f[IP].src == GW
        guest.send(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / UDP(
            sport=53, dport=f[UDP].sport) / Raw(b"a1"))
        assert await asyncio.wait_for(loop.sock_recv(cli, 100), TIMEOUT) == b"a1"
        await loop.sock_sendall(cli, b"q2")              # same client, same flow
        f2 = await guest.recv(lambda f: UDP in f)
        assert bytes(f2[UDP].payload) == b"q2" and f2[UDP].sport == f[UDP].sport
        c = driver.counters
        assert c["fwd_udp_client_new"] == 1 and c["fwd_udp_reply_tx"] == 1
        cli.close()
        fwd.close()
    run(body)


def test_backlog_is_reported_once_per_flush_not_per_write():
    """Three data segments read in one TAP wake-up are three writes to the
    host socket and one backlog report for the flow, made after the events
    (FlowProtocol.write used to report from inside every write)."""
    async def body(driver, guest):
        got = bytearray()
        done = asyncio.get_running_loop().create_future()

        async def serve(reader, writer):
            while len(got) < 9:
                got.extend(await reader.read(100))
            done.set_result(None)

        server, port, ours = await connect_out(guest, 40002, serve)
        await asyncio.sleep(0.05)
        reports = []
        real = driver.gw.tcp_host_backlog

        def counting(fid, nbytes, now):
            reports.append((fid, nbytes))
            real(fid, nbytes, now)
        driver.gw.tcp_host_backlog = counting
        # The handshake's lone frames put the reader in its one-frame mode
        # (RX_PROBE_EVERY); the batch here is what a draining wake-up reads.
        driver._rx_single = 0
        for i, chunk in enumerate((b"abc", b"def", b"ghi")):   # one batch for the driver
            guest.tcp(40002, port, "PA", 1001 + 3 * i, ours, chunk)
        await asyncio.wait_for(done, TIMEOUT)
        assert bytes(got) == b"abcdefghi"
        assert len(reports) == 1 and reports[0][1] == 0
        server.close()
    run(body)


def test_one_frame_wakeups_leave_no_frame_behind():
    """After a wake-up that found one frame, the reader takes one frame per
    wake-up without the read that would answer EAGAIN; frames queued behind
    it wake the (level-triggered) reader again, and the RX_PROBE_EVERY-th
    wake-up drains the rest at once. Every byte arrives, in order."""
    from usernet.host import driver as drv

    async def body(driver, guest):
        got = bytearray()
        done = asyncio.get_running_loop().create_future()
        chunks = [bytes([65 + i]) * 3 for i in range(12)]
        want = b"".join(chunks)

        async def serve(reader, writer):
            while len(got) < len(want):
                got.extend(await reader.read(100))
            done.set_result(None)

        server, port, ours = await connect_out(guest, 40003, serve)
        await asyncio.sleep(0.05)
        reads = []
        real = driver._read

        def counting_read(fd, n):
            try:
                data = real(fd, n)
            except BlockingIOError:
                reads.append(None)
                raise
            reads.append(len(data))
            return data
        driver._read = counting_read
        driver._rx_single = 0                           # draining
        guest.tcp(40003, port, "PA", 1001, ours, chunks[0])
        while len(got) < 3:
            await asyncio.sleep(0.01)
        assert driver._rx_single == drv.RX_PROBE_EVERY   # one frame, then EAGAIN
        reads.clear()
        for i, chunk in enumerate(chunks[1:], 1):       # a burst behind it
            guest.tcp(40003, port, "PA", 1001 + 3 * i, ours, chunk)
        await asyncio.wait_for(done, TIMEOUT)
        assert bytes(got) == want
        # The first RX_PROBE_EVERY wake-ups read one frame each, no EAGAIN
        # among them; then one wake-up drained what was left.
        assert reads[:drv.RX_PROBE_EVERY] == [reads[0]] * drv.RX_PROBE_EVERY
        assert None not in reads[:drv.RX_PROBE_EVERY]
        assert reads.count(None) <= 2
        server.close()
    run(body)


def test_read_bound_ports_sees_our_own_listener_and_udp_socket():
    """--publish-only-when-bound reads /proc/PID/net: here PID is ourselves."""
    import os

    from usernet.host.procnet import read_bound_ports
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    t.listen(1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 0))
    try:
        b = read_bound_ports(os.getpid())
        assert bytes([127, 0, 0, 1]) in b["tcp"][t.getsockname()[1]]
        assert bytes(4) in b["udp"][u.getsockname()[1]]
    finally:
        t.close()
        u.close()


def test_read_bound_ports_keeps_ipv6_addresses():
    """A listener on ::1 is reported as its 16-byte address (an IPv6 forward's
    guest address may be a specific IPv6 one); :: folds to the wildcard."""
    import os

    from usernet.host.procnet import read_bound_ports
    t = socket.socket(socket.AF_INET6)
    t.bind(("::1", 0))
    t.listen(1)
    w = socket.socket(socket.AF_INET6)
    w.bind(("::", 0))
    w.listen(1)
    try:
        b = read_bound_ports(os.getpid())
        assert socket.inet_pton(socket.AF_INET6, "::1") in b["tcp"][t.getsockname()[1]]
        assert bytes(4) in b["tcp"][w.getsockname()[1]]
    finally:
        t.close()
        w.close()


def test_exit_flushes_acknowledged_bytes_then_resets_both_sides():
    """Regression (issue 13, faults): at exit, bytes usernet acknowledged to
    the container reach the host peer before its socket is reset. A host
    server with a tiny receive buffer reads nothing at first, so what the
    container sent sits in usernet's socket; ``flush_host`` waits for the
    peer to take it all (the TAP no longer read), then ``close`` resets the
    host socket (the peer reads every byte, then ECONNRESET: a cut stream,
    not an EOF) and the container's side (a RST at our highest sequence)."""
    async def body(driver, guest):
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.setblocking(False)
        port = ls.getsockname()[1]
        guest.tcp(40010, port, "S", 1000)
        conn, _ = await asyncio.wait_for(loop.sock_accept(ls), TIMEOUT)
        synack = await guest.recv(lambda f: is_tcp(f, "SA"))
        ours = synack[TCP].seq + 1
        guest.tcp(40010, port, "A", 1001, ours)
        data = bytes(range(256)) * 800                  # 204,800 bytes
        for i, off in enumerate(range(0, len(data), 1460)):
            guest.tcp(40010, port, "A", 1001 + off, ours, data[off:off + 1460])
            if i % 16 == 15:
                await asyncio.sleep(0.01)       # let the driver read the fake TAP
        await asyncio.sleep(0.3)
        (flow,) = driver.gw.flows.tcp.by_id.values()
        assert flow.conn.rcv_nxt - flow.conn.irs - 1 == len(data)   # all acknowledged
        assert driver.tcp.unsent() > 0          # ... but not yet at the peer

        got = bytearray()

        async def reader():
            await asyncio.sleep(0.3)
            conn.setblocking(False)
            while True:
                try:
                    d = await loop.sock_recv(conn, 65536)
                except ConnectionResetError:
                    return "reset"
                if not d:
                    return "eof"
                got.extend(d)
        t = loop.create_task(reader())
        assert await driver.flush_host(TIMEOUT)
        assert driver.tcp.unsent() == 0
        driver.close()
        assert await asyncio.wait_for(t, TIMEOUT) == "reset"
        assert bytes(got) == data
        rst = await guest.recv(lambda f: is_tcp(f) and f[TCP].flags.R)
        assert rst[TCP].seq == ours and driver.counters["tcp_exit_reset"] == 1
        conn.close()
        ls.close()
    run(body)


def test_exit_flush_is_bounded_when_the_peer_never_reads():
    """A host peer that never reads cannot hold usernet's exit: the flush
    gives up after its timeout and counts it."""
    async def body(driver, guest):
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.setblocking(False)
        port = ls.getsockname()[1]
        guest.tcp(40011, port, "S", 1000)
        conn, _ = await asyncio.wait_for(loop.sock_accept(ls), TIMEOUT)
        synack = await guest.recv(lambda f: is_tcp(f, "SA"))
        ours = synack[TCP].seq + 1
        guest.tcp(40011, port, "A", 1001, ours)
        for i, off in enumerate(range(0, 100 * 1460, 1460)):
            guest.tcp(40011, port, "A", 1001 + off, ours, b"z" * 1460)
            if i % 16 == 15:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert not await driver.flush_host(0.3)
        assert driver.counters["exit_flush_timeout"] == 1
        conn.close()
        ls.close()
    run(body)


def test_an_endless_event_cascade_is_cut_and_counted():
    """A handler whose work always makes another event (a bug) must not spin the loop: the
    flush stops after FLUSH_ROUNDS_MAX rounds and counts host_flush_rounds_exceeded."""
    from usernet.host.driver import FLUSH_ROUNDS_MAX
    from usernet.stack.events import UdpClose

    async def body(driver, guest):
        rounds = []

        def again(ev):
            rounds.append(ev)
            driver.gw.events_out.append(UdpClose(ev.fid))
        driver._handlers[UdpClose] = again
        driver.gw.events_out.append(UdpClose(1))
        driver.flush()
        assert len(rounds) == FLUSH_ROUNDS_MAX
        assert driver.counters["host_flush_rounds_exceeded"] == 1
        driver.gw.events_out.clear()
    run(body)


def _connect_in_progress(monkeypatch):
    """Make host connects look like ones to a real network: the first
    connect() starts (as ever), the second says EALREADY instead of the
    loopback's instant answer, so TcpHost takes the waiting path."""
    import errno
    real = socket.socket.connect_ex
    calls = []

    def connect_ex(self, addr):
        calls.append(addr)
        if len(calls) % 2:
            real(self, addr)
            return errno.EINPROGRESS
        return errno.EALREADY
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return calls


def test_tcp_connect_still_in_progress_is_waited_for(monkeypatch):
    """A connect that does not finish inside connect() (a real network) is
    waited for (writable, then SO_ERROR) before the SYN-ACK; data then flows."""
    calls = _connect_in_progress(monkeypatch)

    async def body(driver, guest):
        got = asyncio.get_running_loop().create_future()

        async def serve(reader, writer):
            got.set_result(await reader.readexactly(2))
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        server, port, ours = await connect_out(guest, 40010, serve)
        assert len(calls) == 2                      # the waiting path was taken
        guest.tcp(40010, port, "PA", 1001, ours, b"hi")
        assert await asyncio.wait_for(got, TIMEOUT) == b"hi"
        reply = await guest.recv(lambda f: is_tcp(f) and bytes(f[TCP].payload))
        assert bytes(reply[TCP].payload) == b"ok"
        assert driver.counters["tcp_host_connected"] == 1 and not driver.tcp.connecting
        server.close()
    run(body)


def test_tcp_connect_refused_after_waiting_is_a_reset(monkeypatch):
    """Refused on the waiting path (SO_ERROR ECONNREFUSED): RST to the guest."""
    _connect_in_progress(monkeypatch)

    async def body(driver, guest):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]              # nobody listens here
        guest.tcp(40011, port, "S", 1000)
        rst = await guest.recv(lambda f: is_tcp(f) and f[TCP].flags.R)
        assert rst[TCP].ack == 1001
        assert driver.counters["tcp_host_connect_failed_refused"] == 1
        assert not driver.tcp.connecting and not driver.tcp.protocols
    run(body)


def test_early_transport_replays_in_order():
    """What the gateway asks of a flow before its transport exists is done
    on the transport, in order, when it arrives; its bytes count as backlog."""
    from usernet.host.tcp import EarlyTransport

    class Rec:
        def __init__(self):
            self.log = []

        def write(self, d):
            self.log.append(("write", bytes(d)))

        def can_write_eof(self):
            return True

        def write_eof(self):
            self.log.append(("write_eof",))

        def close(self):
            self.log.append(("close",))

        def pause_reading(self):
            self.log.append(("pause",))

    e = EarlyTransport()
    buf = bytearray(b"ab")
    e.write(memoryview(buf))
    buf[:] = b"zz"                                 # the caller's buffer is reused
    e.write(b"c")
    e.pause_reading()
    e.write_eof()
    e.close()
    assert e.get_write_buffer_size() == 3 and e.get_extra_info("socket") is None
    r = Rec()
    e.replay(r)
    assert r.log == [("pause",), ("write", b"ab"), ("write", b"c"), ("write_eof",), ("close",)]


def test_tcp_socket_the_loop_will_not_take_is_a_reset():
    """Connected, but the event loop fails to wrap the socket in a
    transport: the container is refused (RST), nothing is left behind."""
    async def body(driver, guest):
        async def refuse(*a, **kw):
            raise OSError("no transport for you")
        driver.loop.create_connection = refuse
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        guest.tcp(40012, port, "S", 1000)
        rst = await guest.recv(lambda f: is_tcp(f))
        assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001
        assert driver.counters["tcp_host_connect_failed_error"] == 1
        assert not driver.tcp.protocols and not driver.tcp.wrapping
        server.close()
    run(body)


def test_one_frame_wakeup_handles_runts_super_frames_and_eof():
    """The written-out one-frame wake-up (HostDriver._on_readable while
    _rx_single) does what the draining loop does with a runt (counted), a TSO
    super-frame (counted, back to draining) and end of file (stops)."""
    from usernet.host import driver as drv
    from usernet.stack.config import NetConfig
    from usernet.stack.gateway import Gateway
    tap, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = asyncio.new_event_loop()
    try:
        gw = Gateway(NetConfig(), seed=1)
        d = drv.HostDriver(gw, tap.fileno())
        d.start(loop)
        d._rx_single = 3
        peer.send(b"\x01\x00\x00")                          # shorter than a vnet header
        d._on_readable()
        assert gw.counters["drop_vnet_truncated"] == 1 and d._rx_single == 2
        d._on_readable()                                    # nothing there: EAGAIN, no harm
        assert d._rx_single == 1 and gw.counters["drop_stack_error"] == 0
        peer.send(bytes([1, 1]) + bytes(8) + bytes(60))     # gso_type TCPV4, a junk frame
        d._on_readable()
        assert gw.counters["rx_gso_frames"] == 1 and d._rx_single == 0
        assert gw.counters["drop_stack_error"] == 0          # the gateway dropped it by name
        d._rx_single = 2
        peer.close()
        d._on_readable()                                    # end of file: stop
        assert d.stopped.done()
        d.close()
    finally:
        loop.close()
        tap.close()


def test_flush_rearms_once_the_timer_fired_though_nothing_was_pushed():
    """flush leaves _arm_timer out while a timer is armed and the stack's heap
    had no push since; once the timer has fired none is armed, so the next
    flush arms one for the next live deadline even if firing pushed nothing."""
    from usernet.host import driver as drv
    tap, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = asyncio.new_event_loop()
    try:
        gw = Gateway(NetConfig(), seed=1)
        fired = []
        kind = gw.timers.kind(lambda key, d: True, lambda key, d, now: fired.append(key))
        d = drv.HostDriver(gw, tap.fileno())
        d.start(loop, read_tap=False)
        t0 = loop.time()
        gw.timers.push(t0 + 100, kind, "first")
        gw.timers.push(t0 + 200, kind, "second")
        d.flush()
        assert d._timer_at == t0 + 100
        d.flush()                                   # nothing pushed: the same timer
        assert d._timer_at == t0 + 100
        d._on_timer()                               # the loop runs it (at its deadline)
        assert fired == ["first"]
        assert d._timer_at == t0 + 200              # re-armed, though nothing was pushed
        gw.timers.push(t0 + 150, kind, "third")     # an earlier one: re-armed for it
        d.flush()
        assert d._timer_at == t0 + 150
        d.close()
    finally:
        loop.close()
        tap.close()
        peer.close()


def test_frames_after_a_blocked_tap_write_queue_behind_it_in_order():
    """flush's frames-only round (written out): once a TAP write answers
    EAGAIN, that frame and every later one wait in the queue, in order, and
    leave in that order when the TAP is writable again."""
    from usernet.host import driver as drv
    tap, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = asyncio.new_event_loop()
    try:
        gw = Gateway(NetConfig(), seed=1)
        d = drv.HostDriver(gw, tap.fileno())
        d.start(loop, read_tap=False)
        wrote, blocked = [], [False, True, False, False]

        def tap_write(entry):
            if blocked.pop(0):
                raise BlockingIOError
            wrote.append(entry[1])
        d._tap_write = tap_write
        gw.frames_out.extend((VNET_HDR_NONE, x) for x in (b"a", b"b", b"c"))
        d.flush()
        assert wrote == [b"a"] and [e[1] for e in d._txq] == [b"b", b"c"] and d._writer_on
        gw.frames_out.append((VNET_HDR_NONE, b"d"))
        d.flush()                                   # behind the queue, not before it
        assert wrote == [b"a"] and [e[1] for e in d._txq] == [b"b", b"c", b"d"]
        blocked[:] = [False] * 3
        d._on_writable()
        assert wrote == [b"a", b"b", b"c", b"d"] and not d._txq and not d._writer_on
        d.close()
    finally:
        loop.close()
        tap.close()
        peer.close()
