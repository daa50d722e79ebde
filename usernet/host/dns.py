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

TCP DNS to the forwarder address is spliced to the first upstream over TCP
(``tcp_upstream``; see ``host/tcp.py``).
"""

import logging
import os
import socket

from ..stack.dns import parse_resolv_conf
from ..stack.events import DnsQuery
from ..stack.config import DNS_MAX_PENDING, DNS_QUERY_TIMEOUT
from .outbound import bind_outbound

log = logging.getLogger("usernet")

RESOLV_CONF = "/etc/resolv.conf"
ATTEMPT_TIMEOUT = 2.0     # seconds of upstream silence before the next upstream is tried
INFLIGHT_SWEEP = 2 * DNS_MAX_PENDING   # this many sockets: drop those the gateway gave up on


class DnsForwarder:
    def __init__(self, driver, upstreams=None, resolv_conf=RESOLV_CONF):
        self.driver = driver
        self.fixed = list(upstreams or [])
        self.resolv_conf = resolv_conf
        self._rc_key = None
        self._rc_servers = []
        self.inflight = {}   # qid -> [sock, query, remaining upstreams, timer handle]

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
