"""The DNS forwarder's upstream side.

The gateway answers local names itself and hands every other query here
(``DnsQuery``); we send it to the upstream resolver over UDP from a fresh
socket with a random source port (so an off-path attacker must guess both the
port and the DNS id), and pass the answer back (``gw.dns_reply``). Upstreams
are ``--dns-upstream`` when given, else the nameservers of the host's
``/etc/resolv.conf``, re-read whenever its mtime or size changes. Loopback
resolvers such as 127.0.0.53 work: usernet runs in the host's namespace.

Failure is never silence: a refused upstream makes us try the next one; when
none is left, ``gw.dns_failed`` sends SERVFAIL. An upstream silent for
``ATTEMPT_TIMEOUT`` makes us try the next one too; the last one is waited
for until the gateway's own deadline (``DNS_QUERY_TIMEOUT``), which
SERVFAILs, and its socket is closed soon after (no fd per lost query). An
answer whose id does not match the query is dropped.

DNS only, never bytes: the gateway screens every UDP query
(``stack.dns.screen_query``) before it becomes a ``DnsQuery``, and TCP DNS to
the forwarder address is not spliced to an upstream. The container's TCP
connection to 10.0.2.3:53 ends here, in a :class:`DnsTcpSession` that stands
where a host socket's protocol would (``TcpHost`` writes the container's bytes
to it and reads the answers from it): it splits the stream into messages (a
2-byte length before each, RFC 1035 4.2.2), screens each one like a UDP
query, answers local names itself, and relays the rest one message at a time
(:meth:`DnsForwarder.resolve`): over TCP, or over UDP to the same upstream
where TCP is refused or silent, so an upstream that speaks only one of the
two still works. A resolver on the
host's loopback therefore only ever sees whole, well-formed queries.

Bounds, each with a name and a counter: ``DNS_MAX_QUERY_SIZE`` per message
(FORMERR past it), ``DNS_TCP_MAX_MESSAGES`` per connection (then FIN),
``DNS_TCP_MAX_INFLIGHT`` per connection (the rest wait, and count as the
flow's host backlog so the window toward the container shuts),
``DNS_TCP_MAX_INFLIGHT_TOTAL`` across connections (SERVFAIL past it) and
``DNS_TCP_IDLE_TIMEOUT`` (RFC 7766 6.2.3: a server may close an idle
connection; we send FIN).
"""

import asyncio
import collections
import logging
import os
import socket
import struct

from ..stack.dns import DROP, REPLY, parse_resolv_conf, screen_query
from ..stack.events import DnsQuery
from ..stack.config import DNS_MAX_PENDING, DNS_QUERY_TIMEOUT
from ..wire import ParseError
from ..wire.dns import QR, TC, DnsTcpFramer, build_servfail, frame_tcp
from .outbound import bind_outbound, local_addr

log = logging.getLogger("usernet")

RESOLV_CONF = "/etc/resolv.conf"
ATTEMPT_TIMEOUT = 2.0     # seconds of upstream silence before the next upstream is tried
DNS_TCP_MAX_MESSAGES = 1000        # messages on one TCP connection; then we answer what we have and FIN
DNS_TCP_MAX_INFLIGHT = 16          # queries of one connection at the upstream at once; the rest wait
DNS_TCP_MAX_INFLIGHT_TOTAL = 256   # across all TCP connections; past it SERVFAIL at once
DNS_TCP_IDLE_TIMEOUT = 30.0        # seconds without a message before we close (FIN)
_LEN16 = struct.Struct("!H")
INFLIGHT_SWEEP = 2 * DNS_MAX_PENDING   # this many sockets: drop those the gateway gave up on


class DnsForwarder:
    def __init__(self, driver, upstreams=None, resolv_conf=RESOLV_CONF):
        self.driver = driver
        self.fixed = list(upstreams or [])
        self.resolv_conf = resolv_conf
        self._rc_key = None
        self._rc_servers = []
        self.inflight = {}   # qid -> [sock, query, remaining upstreams, timer handle]
        self.tcp_inflight = 0   # queries of TCP sessions at an upstream now

    # -------------------------------------------------------------- upstreams
    def upstreams(self):
        if self.fixed:
            return self.fixed
        try:
            st = os.stat(self.resolv_conf)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            key = None
        if key != self._rc_key:
            self._rc_key = key
            try:
                with open(self.resolv_conf, errors="replace") as f:
                    self._rc_servers = parse_resolv_conf(f.read())
            except OSError as e:
                log.warning("DNS: cannot read %s: %s", self.resolv_conf, e.strerror)
                self._rc_servers = []
            log.debug("DNS upstreams from %s: %s", self.resolv_conf, self._rc_servers)
        return self._rc_servers

    def tcp_upstream(self):
        ups = self.upstreams()
        return ups[0] if ups else None

    # ------------------------------------------------ one message, for TCP
    def tcp_query_done(self, _task) -> None:
        self.tcp_inflight -= 1

    async def resolve(self, query: bytes) -> bytes | None:
        """The upstream's answer to one screened query, or None (SERVFAIL).

        Each upstream in turn: over TCP first (the client chose TCP, most
        often because a UDP answer was truncated), one message on its own
        connection; where TCP is refused or silent, over UDP (a truncated
        answer is passed on as it is). An answer must carry the query's id
        and QR, else it is no answer. Bounded by ``DNS_QUERY_TIMEOUT`` in all.
        """
        try:
            return await asyncio.wait_for(self._resolve(query), DNS_QUERY_TIMEOUT)
        except asyncio.TimeoutError:
            self.driver.counters["dns_upstream_failed_timeout"] += 1
            return None

    async def _resolve(self, query: bytes) -> bytes | None:
        c = self.driver.counters
        ups = list(self.upstreams())
        if not ups:
            c["dns_upstream_failed_no_upstream"] += 1
            return None
        for host, port in ups:
            answer = await self._ask_tcp(host, port, query)
            if answer is not None:
                c["dns_tcp_relayed_tcp"] += 1
                return answer
            # No TCP there (a UDP-only resolver, or a silent port): UDP.
            answer, _refused = await self._ask_udp(host, port, query)
            if answer is not None:
                if _truncated(answer):
                    c["dns_tcp_upstream_truncated"] += 1
                c["dns_tcp_relayed_udp"] += 1
                return answer
        c["dns_upstream_failed_unreachable"] += 1
        return None

    async def _ask_udp(self, host, port, query) -> tuple[bytes | None, bool]:
        d = self.driver
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(fam, socket.SOCK_DGRAM)
        except OSError:
            d.counters["dns_upstream_send_error"] += 1
            return None, False
        try:
            bind_outbound(d.outbound, sock)
            sock.setblocking(False)
            sock.connect((host, port))
            sock.send(query)
            deadline = d.loop.time() + ATTEMPT_TIMEOUT
            while True:
                left = deadline - d.loop.time()
                if left <= 0:
                    d.counters["dns_upstream_silent"] += 1
                    return None, False
                answer = await asyncio.wait_for(d.loop.sock_recv(sock, 65535), left)
                if _answers(answer, query):
                    return answer, False
                d.counters["drop_dns_answer_id_mismatch"] += 1
        except asyncio.TimeoutError:
            d.counters["dns_upstream_silent"] += 1
            return None, False
        except OSError as e:
            d.counters["dns_upstream_refused"] += 1
            log.debug("DNS upstream %s:%d over UDP: %s", host, port, e)
            return None, True
        finally:
            sock.close()

    async def _ask_tcp(self, host, port, query) -> bytes | None:
        d = self.driver
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, local_addr=local_addr(d.outbound, host)), ATTEMPT_TIMEOUT)
            writer.write(frame_tcp(query))
            head = await asyncio.wait_for(reader.readexactly(2), ATTEMPT_TIMEOUT)
            (n,) = _LEN16.unpack(head)
            answer = await asyncio.wait_for(reader.readexactly(n), ATTEMPT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            d.counters["dns_upstream_refused"] += 1
            log.debug("DNS upstream %s:%d over TCP: %r", host, port, e)
            return None
        finally:
            if writer is not None:
                writer.close()
        if not _answers(answer, query):
            d.counters["drop_dns_answer_id_mismatch"] += 1
            return None
        return answer

    # ---------------------------------------------------------------- queries
    def query(self, ev: DnsQuery) -> None:
        qid, query = ev.qid, ev.query
        ups = list(self.upstreams())
        if not ups:
            self.driver.gw.dns_failed(qid, self.driver.now(), "no_upstream")
            return
        if len(self.inflight) >= INFLIGHT_SWEEP:
            # The gateway evicts old queries when its table is full
            # (dns_pending_evicted); let their sockets go too.
            self.expire()
        self.inflight[qid] = [None, query, ups, None]
        self._try_next(qid)

    def _try_next(self, qid) -> None:
        d = self.driver
        ent = self.inflight.get(qid)
        if ent is None:
            return
        self._close_sock(ent)
        if not d.gw.dns_is_pending(qid):
            # The gateway already answered (timeout): stop.
            self.inflight.pop(qid, None)
            return
        while ent[2]:
            host, port = ent[2].pop(0)
            sock = None
            try:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(fam, socket.SOCK_DGRAM)
                bind_outbound(d.outbound, sock)
                sock.setblocking(False)
                sock.connect((host, port))
                sock.send(ent[1])
            except OSError as e:
                d.counters["dns_upstream_send_error"] += 1
                log.debug("DNS upstream %s:%d: %s", host, port, e)
                if sock is not None:
                    sock.close()
                continue
            ent[0] = sock
            d.loop.add_reader(sock.fileno(), self._on_readable, qid)
            # Silence: the next upstream after ATTEMPT_TIMEOUT; from the
            # last one, wait out the gateway's deadline, then let go.
            wait = ATTEMPT_TIMEOUT if ent[2] else DNS_QUERY_TIMEOUT + 1.0
            ent[3] = d.loop.call_later(wait, self._on_silence, qid)
            return
        self.inflight.pop(qid, None)
        d.gw.dns_failed(qid, d.now(), "unreachable")

    def _on_silence(self, qid) -> None:
        ent = self.inflight.get(qid)
        if ent is None:
            return
        ent[3] = None
        self.driver.counters["dns_upstream_silent"] += 1
        if ent[2]:
            self._try_next(qid)
            self.driver.flush()
        else:
            self._close_sock(self.inflight.pop(qid))

    def _on_readable(self, qid) -> None:
        d = self.driver
        ent = self.inflight.get(qid)
        if ent is None:
            return
        sock, query = ent[0], ent[1]
        try:
            answer = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as e:
            # ECONNREFUSED: nobody listens there; try the next upstream.
            d.counters["dns_upstream_refused"] += 1
            log.debug("DNS upstream recv: %s", e)
            self._try_next(qid)
            d.flush()
            return
        if len(answer) < 2 or answer[:2] != query[:2]:
            d.counters["drop_dns_answer_id_mismatch"] += 1
            return
        self._close_sock(ent)
        self.inflight.pop(qid, None)
        d.gw.dns_reply(qid, answer, d.now())
        d.flush()

    def _close_sock(self, ent) -> None:
        if ent[3] is not None:
            ent[3].cancel()
            ent[3] = None
        sock = ent[0]
        if sock is not None:
            self.driver.loop.remove_reader(sock.fileno())
            sock.close()
            ent[0] = None

    def expire(self) -> None:
        """Drop sockets of queries the gateway has already given up on."""
        gw = self.driver.gw
        for qid in [q for q in self.inflight if not gw.dns_is_pending(q)]:
            self._close_sock(self.inflight.pop(qid))

    def close(self) -> None:
        for ent in self.inflight.values():
            self._close_sock(ent)
        self.inflight.clear()


def _answers(answer, query) -> bool:
    """An upstream message that can be the answer to ``query``: same id, QR set."""
    return len(answer) >= 12 and answer[:2] == query[:2] and answer[2] & (QR >> 8)


def _truncated(answer) -> bool:
    return bool(answer[2] & (TC >> 8))


class DnsTcpSession:
    """The container's DNS-over-TCP connection to the forwarder address.

    It takes the place of a host socket's protocol in ``TcpHost`` (and is
    its own transport): ``write`` gets the container's bytes, ``write_eof``
    its FIN, ``close``/``abort`` the end of the flow; answers go to the
    flow with ``gw.tcp_host_data``, what the flow cannot take yet waits in
    ``out`` until ``resume``. Answers may leave in any order (RFC 7766 7:
    the client matches them by id).
    """

    def __init__(self, tcp_host, forwarder: DnsForwarder, fid: int):
        self.host = tcp_host
        self.fwd = forwarder
        self.driver = tcp_host.driver
        self.fid = fid
        self.transport = self
        self.closed = False
        self._torn_down = False
        self.paused = False
        self.framer = DnsTcpFramer()
        self.out = bytearray()         # framed answers the flow has not taken yet
        self.waiting = collections.deque()   # screened queries waiting for a slot
        self.tasks: set = set()
        self.messages = 0
        self.eof_rx = False            # the container sent FIN (or we stopped listening)
        self.eof_tx = False            # our FIN went to the flow
        self._idle = None
        self._arm_idle()

    # ------------------------------------------- what TcpHost calls on us
    def write(self, data) -> None:
        if self.closed or self.eof_rx:
            return
        try:
            messages = self.framer.feed(data)
        except ParseError:
            self.driver.counters["dns_tcp_bad_framing"] += 1
            self._reset()
            return
        if messages:
            self._arm_idle()
        for m in messages:
            if self.closed or self.eof_rx:
                break
            self._message(m)
        self._push()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_rx = True
        self._push()

    def get_extra_info(self, name, default=None):
        return default

    def get_write_buffer_size(self) -> int:
        # Queries waiting for a slot count as the flow's host backlog: the
        # window toward the container shuts instead of the queue growing.
        return sum(len(m) for m in self.waiting)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def resume(self) -> None:
        self.paused = False
        self._push()

    def close(self) -> None:
        self._teardown()

    def abort(self) -> None:
        self._teardown()

    # --------------------------------------------------------------- work
    def _message(self, m: bytes) -> None:
        c = self.driver.counters
        c["dns_tcp_message_rx"] += 1
        self.messages += 1
        if self.messages > DNS_TCP_MAX_MESSAGES:
            # Enough from one connection: answer what we hold, then FIN.
            c["dns_tcp_message_limit"] += 1
            self.eof_rx = True
            return
        action, reply, why = screen_query(m)
        c[why] += 1
        if action == DROP:
            # A response or a headless scrap: this is not a DNS client.
            c["dns_tcp_closed_on_garbage"] += 1
            self._reset()
            return
        if action == REPLY:
            self._answer(reply)
            return
        local = self.driver.gw.local_names.answer(m)
        if local is not None:
            c["dns_tcp_local_answer"] += 1
            self._answer(local)
            return
        if self.fwd.tcp_inflight >= DNS_TCP_MAX_INFLIGHT_TOTAL:
            c["dns_tcp_servfail_too_many_inflight"] += 1
            self._answer(build_servfail(m))
            return
        if len(self.tasks) >= DNS_TCP_MAX_INFLIGHT:
            self.waiting.append(m)
            return
        self._start(m)

    def _start(self, m: bytes) -> None:
        fwd = self.fwd
        fwd.tcp_inflight += 1
        t = self.driver.loop.create_task(self._relay(m))
        # A done callback, not a ``finally``: a task cancelled before its
        # first step never runs its body, and the count must still drop.
        t.add_done_callback(fwd.tcp_query_done)
        self.tasks.add(t)

    async def _relay(self, m: bytes) -> None:
        answer = await self.fwd.resolve(m)
        if self.closed:
            return
        d = self.driver
        if answer is None:
            d.counters["dns_tcp_servfail"] += 1
            answer = build_servfail(m)
        self._answer(answer)
        self.tasks.discard(asyncio.current_task())
        had_waiting = bool(self.waiting)
        while self.waiting and len(self.tasks) < DNS_TCP_MAX_INFLIGHT:
            self._start(self.waiting.popleft())
        if had_waiting:
            d.gw.tcp_host_backlog(self.fid, self.get_write_buffer_size(), d.now())
        self._push()
        d.flush()

    def _answer(self, answer: bytes) -> None:
        self.driver.counters["dns_tcp_answer_tx"] += 1
        self.out += frame_tcp(answer)

    def _push(self) -> None:
        """Offer held answers to the flow; FIN once the container is done and
        every answer is out."""
        if self.closed:
            return
        d = self.driver
        if self.out:
            n = d.gw.tcp_host_data(self.fid, bytes(self.out), d.now())
            del self.out[:n]
            if self.out:
                return
        if self.eof_rx and not self.eof_tx and not self.tasks and not self.waiting:
            self.eof_tx = True
            d.gw.tcp_host_eof(self.fid, d.now())

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.driver.loop.call_later(DNS_TCP_IDLE_TIMEOUT, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self.closed or self.eof_rx or self.tasks or self.waiting:
            if not self.closed and not self.eof_rx:
                self._arm_idle()
            return
        self.driver.counters["dns_tcp_idle_close"] += 1
        self.eof_rx = True
        self._push()
        self.driver.flush()

    def _reset(self) -> None:
        d = self.driver
        self._teardown()
        self.host.forget(self)
        d.gw.tcp_host_reset(self.fid, d.now())

    def _teardown(self) -> None:
        # Not ``closed`` as the guard: TcpHost.forget sets that before it
        # calls abort(), and the work below must still happen.
        if self._torn_down:
            return
        self._torn_down = True
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for t in self.tasks:
            t.cancel()
        self.tasks.clear()
        self.waiting.clear()
        self.out.clear()
