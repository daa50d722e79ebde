"""``usernet daemon``: one process and one event loop serving many network namespaces.

Theory of operation
===================

A Python usernet costs ~25-30 MiB of RSS, most of it the interpreter and its
modules, so a process per container does not scale to a hundred containers.
The stack was built for this (nothing in a :class:`~usernet.stack.gateway.Gateway`
is global): the daemon is one process whose one loop drives many *links*.

**A link** (:class:`Link`) is one namespace's network, exactly what
:func:`usernet.serve.serve` builds for one TAP: its own ``NetConfig``,
``Gateway`` (flow tables, counters, DNS state, neighbour caches) and
``HostDriver`` (host sockets, timer), its own services (DNS forwarder, the
``-p`` forwards, an optional API socket, an optional pcap). Links share the
loop, the interpreter and the modules, and one global memory budget: each
link's :class:`~usernet.stack.budget.PooledBudget` refuses new work past
either its own limit (the client's ``--memory-budget``, at most the daemon's)
or the daemon's (``usernet daemon --memory-budget``), so one link can neither
exceed its share nor starve the others. Links never see each other: there is
no path from one gateway to another (a switch between links is one more frame
consumer, to be added through :attr:`Daemon.hooks`).

**The clients** (``usernet attach --daemon``, ``usernet run --daemon``) do
what they do without the daemon up to the TAP: they enter the namespace,
open and configure the TAP; then they send the TAP fd, a pidfd of a process
in the namespace, and optionally an exit fd, over the daemon's unix socket
(SCM_RIGHTS) with the link's options as JSON, and wait for ``ok``. ``attach``
then exits: no process is left per container. ``run`` stays, as the parent
of its command only (the command's exit status is ``run``'s, and a shell or a
supervisor waits for that process); it serves no frame.

**The end of a link.** The daemon frees a link when the namespace is done
with it: its pidfd becomes readable (the process exited), its exit fd is
readable or hung up (the slirp4netns convention: the other end closed it),
the TAP read fails (the namespace is gone), or a client asks (``detach``).
Then as in ``serve``: a bounded drain of TCP in flight, bytes acknowledged to
the container delivered to their host peers, then forwards, DNS, host
sockets and the TAP closed, and the link's charge given back to the pool.
The link leaves the status table as soon as its end is seen.

**A crash.** The TAP fds live in the daemon alone. If it dies (kill -9, a
bug), the kernel closes them: every link's TAP disappears from its
namespace (the container sees its interface go, and connects fail at once
with "network unreachable"), its host sockets and forward listeners close
(clients get "connection refused"). Nothing is left half-served. A restarted
daemon knows no links (``status`` shows none); a container is given a
network again by attaching it again. ``usernet run --daemon`` notices the
daemon's connection close and says so on stderr (its command keeps running,
without a network).

**The socket** and its protocol are in docs/daemon.md: newline-terminated
JSON requests on a SOCK_STREAM unix socket, the fds as SCM_RIGHTS on the
request's bytes, one JSON reply line per request. Only the daemon's own user
(and root) may connect (``SO_PEERCRED``); the default directory is made
mode 0700; a lock file beside the socket keeps one daemon per path.

asyncio is imported inside the daemon's functions only: the clients (which
import this module for :class:`DaemonClient` and :func:`hand_over`) never
run a loop, and importing it is most of their start.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import os
import re
import signal
import socket
import stat
import struct
import time

log = logging.getLogger("usernet")

PROTOCOL = 1
SOCKET_NAME = "daemon.sock"
SOCKET_ENV = "USERNET_DAEMON_SOCKET"
MAX_REQUEST = 64 * 1024          # bytes of one request line
MAX_FDS = 3                      # tap, pidfd, exit
FD_ROLES = ("tap", "pidfd", "exit")
MAX_CLIENTS = 256                # connections at once beyond one per link; the oldest idle one goes
CLIENT_IDLE_TIMEOUT = 60.0       # seconds a connection may sit without a request
CLIENT_TIMEOUT = 30.0            # a client's wait for a reply
DEFAULT_MAX_LINKS = 1024
DEFAULT_DAEMON_BUDGET = 1 << 30  # the global memory budget (bytes)
LISTEN_BACKLOG = 128
ACCEPT_BACKOFF = 0.5             # seconds without accepting after running out of fds
# Open files are the one thing links could take from each other (a flow
# holds a host socket; the process has one RLIMIT_NOFILE). Each link's flow
# tables are capped at a fair share of it, recomputed as links come and go:
# (limit - FD_RESERVE) / links - FD_PER_LINK, split TCP 3/4, UDP 1/5, echo
# 1/20, never above the link's own limits. Below MIN_FLOW_SHARE a new link
# is refused.
FD_RESERVE = 64                  # the daemon's own: listening socket, clients, log
FD_PER_LINK = 16                 # a link's fds beside its flows: TAP, pidfd, exit fd, DNS, forwards
MIN_FLOW_SHARE = 32
# A name on a network becomes a DNS name: one label (RFC 1035 2.3.1, with
# digits first allowed as RFC 1123 2.1 does).
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


class DaemonError(Exception):
    """A request the daemon refuses; ``str()`` is one line for the user."""


# ---------------------------------------------------------------- the path
def default_socket_path(environ=None, euid: int | None = None) -> str:
    """``$USERNET_DAEMON_SOCKET``; else ``$XDG_RUNTIME_DIR/usernet/daemon.sock``
    when that directory exists and is the user's; else ``/run/usernet/`` for
    root and ``/tmp/usernet-UID/`` for anyone else."""
    env = os.environ if environ is None else environ
    uid = os.geteuid() if euid is None else euid
    if env.get(SOCKET_ENV):
        return env[SOCKET_ENV]
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                return os.path.join(xdg, "usernet", SOCKET_NAME)
        except OSError:
            pass
    base = "/run/usernet" if uid == 0 else f"/tmp/usernet-{uid}"
    return os.path.join(base, SOCKET_NAME)


def _own_dir(d: str, make: bool) -> None:
    """The default socket directory: made mode 0700, and it must be ours
    (in /tmp another user could have made it first)."""
    from .diagnose import StartError
    if make:
        try:
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise StartError(f"daemon: cannot create {d}: {e.strerror}; fix: give --socket "
                             "PATH in a directory of yours") from None
    try:
        st = os.lstat(d)
    except OSError:
        return
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise StartError(f"daemon: {d} is not a directory of uid {uid}; fix: remove it, or "
                         "give --socket PATH in a directory of yours")
    if make and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(d, 0o700)


# ------------------------------------------------------------ fd transport
def _send(sock: socket.socket, data: bytes, fds=()) -> None:
    """All of ``data`` (blocking socket), the fds with its first bytes."""
    if fds:
        n = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", fds).tobytes())])
        data = data[n:]
    if data:
        sock.sendall(data)


def _peer_uid(sock: socket.socket) -> int:
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", cred)[1]


# ------------------------------------------------------------------ client
class DaemonClient:
    """One connection to a daemon: ``request(msg, fds) -> reply``. A daemon
    that is not there, or not ours, is a :class:`~usernet.diagnose.StartError`
    naming the fix."""

    def __init__(self, path: str, timeout: float = CLIENT_TIMEOUT):
        from .diagnose import StartError, daemon_client_error
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self._buf = b""
        try:
            self.sock.connect(path)
            peer = _peer_uid(self.sock)
        except OSError as e:
            self.sock.close()
            raise StartError(daemon_client_error(path, e)) from None
        if peer not in (os.geteuid(), 0):
            self.sock.close()
            raise StartError(f"daemon: {path} is served by uid {peer}, not by you; fix: start "
                             "your own `usernet daemon`, or give --daemon-socket PATH")

    def request(self, msg: dict, fds=()) -> dict:
        from .diagnose import StartError, daemon_client_error
        try:
            _send(self.sock, json.dumps(msg).encode() + b"\n", fds)
            while b"\n" not in self._buf:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise StartError(f"daemon: {self.path} closed the connection without an "
                                     "answer; fix: see the daemon's log")
                self._buf += chunk
        except OSError as e:
            raise StartError(daemon_client_error(self.path, e)) from None
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            raise StartError(f"daemon: {self.path} answered something that is not JSON; "
                             "fix: is it a usernet daemon's socket?") from None
        if not isinstance(reply, dict):
            raise StartError(f"daemon: {self.path}: bad answer")
        return reply

    def close(self) -> None:
        self.sock.close()


def reply_error(reply: dict) -> str | None:
    """The error line of a reply, or None when it is ``ok``."""
    if reply.get("ok"):
        return None
    err = reply.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or "refused")
    return str(err or "refused")


# ----------------------------------------------------- the attach request
def link_request(cfg, args, *, where: str, pid: int | None, tap: str,
                 network: str | None = None, name: str | None = None,
                 fds=("tap", "pidfd")) -> dict:
    """The ``attach`` request for a link with NetConfig ``cfg`` and the
    options of ``args`` (the run/attach flags; a front end without one
    leaves its default). ``network``/``name``: the switch's (stored)."""
    def opt(k, d=None):
        v = getattr(args, k, d)
        return d if v is None else v

    publish = [[f.proto, f.host_addr, f.host_port, f.guest_port]
               for group in opt("publish", []) for f in group]
    outbound = {("6" if fam == socket.AF_INET6 else "4"): a
                for fam, a in (opt("outbound", {}) or {}).items()}
    return {
        "op": "attach", "version": PROTOCOL, "fds": list(fds),
        "where": where, "pid": pid, "tap": tap, "network": network, "name": name,
        "config": {
            "cidr": cfg.cidr, "mtu": cfg.mtu, "host_loopback": cfg.host_loopback,
            "allow_link_local": cfg.allow_link_local,
            "guest_mac": cfg.guest_mac.hex() if cfg.guest_mac else None,
            "enable_dns": cfg.enable_dns, "enable_dhcp": cfg.enable_dhcp,
            "enable_ipv6": cfg.enable_ipv6, "ipv6_prefix": cfg.ipv6_prefix,
            "memory_budget": cfg.memory_budget, "tcp_fin_timeout": cfg.tcp_fin_timeout,
            "max_tcp_flows": cfg.max_tcp_flows},
        "options": {
            "offload": bool(opt("offload", True)), "impair": opt("impair"),
            "dns_upstream": [[h, p] for h, p in opt("dns_upstream", [])],
            "publish": publish,
            "publish_from_gateway": bool(opt("publish_from_gateway", False)),
            "publish_only_when_bound": bool(opt("publish_only_when_bound", False)),
            "api_socket": os.path.abspath(args.api_socket) if opt("api_socket") else None,
            "pcap": os.path.abspath(args.pcap) if opt("pcap") else None,
            "pcap_snaplen": opt("pcap_snaplen"), "pcap_max_size": opt("pcap_max_size"),
            "outbound": outbound},
    }


#: What an attach request may hold: field -> accepted types.
_CONFIG_FIELDS = {"cidr": (str,), "mtu": (int,), "host_loopback": (bool,),
                  "allow_link_local": (bool,), "guest_mac": (str, type(None)),
                  "enable_dns": (bool,), "enable_dhcp": (bool,), "enable_ipv6": (bool,),
                  "ipv6_prefix": (str,), "memory_budget": (int,),
                  "tcp_fin_timeout": (int, float), "max_tcp_flows": (int,)}
_OPTION_FIELDS = {"offload": (bool,), "impair": (str, type(None)), "dns_upstream": (list,),
                  "publish": (list,), "publish_from_gateway": (bool,),
                  "publish_only_when_bound": (bool,), "api_socket": (str, type(None)),
                  "pcap": (str, type(None)), "pcap_snaplen": (int, type(None)),
                  "pcap_max_size": (int, type(None)), "outbound": (dict,)}
_TOP_FIELDS = {"op": (str,), "version": (int,), "fds": (list,), "where": (str,),
               "pid": (int, type(None)), "tap": (str,), "network": (str, type(None)),
               "name": (str, type(None)), "config": (dict,), "options": (dict,),
               "lease": (str, type(None))}


def _check_fields(d: dict, fields: dict, what: str) -> None:
    for k, v in d.items():
        if k not in fields:
            raise DaemonError(f"bad request: unknown field {what}{k!r}")
        if not isinstance(v, fields[k]) or (isinstance(v, bool) and bool not in fields[k]):
            raise DaemonError(f"bad request: {what}{k} has the wrong type")


class LinkSpec:
    """An attach request, checked: everything a :class:`Link` is built from."""

    def __init__(self, req: dict):
        from .publish import Forward
        from .stack.config import NetConfig
        _check_fields(req, _TOP_FIELDS, "")
        if req.get("version", PROTOCOL) != PROTOCOL:
            raise DaemonError(f"protocol version {req.get('version')} is not {PROTOCOL}; "
                              "fix: the same usernet for the daemon and its clients")
        c = dict(req.get("config", {}))
        _check_fields(c, _CONFIG_FIELDS, "config.")
        o = dict(req.get("options", {}))
        _check_fields(o, _OPTION_FIELDS, "options.")
        try:
            if c.get("guest_mac") is not None:
                c["guest_mac"] = bytes.fromhex(c["guest_mac"])
                if len(c["guest_mac"]) != 6:
                    raise ValueError("guest_mac: not a MAC address")
            self.config = NetConfig(**c)
        except (TypeError, ValueError) as e:
            raise DaemonError(f"bad config: {e}") from None
        self.where = req.get("where") or "?"
        self.pid = req.get("pid")
        self.tap = req.get("tap") or "tap0"
        self.network = req.get("network")
        self.name = req.get("name")
        self.lease = req.get("lease")          # a network_lease's token (usernet/networks.py)
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise DaemonError(f"name {self.name!r} is not a DNS label (letters, digits, '-', "
                              "at most 63)")
        self.offload = o.get("offload", True)
        self.impair = o.get("impair")
        if self.impair:
            from collections import Counter
            from .host.driver import Impairment
            try:
                Impairment.parse(self.impair, Counter(), "check")
            except ValueError as e:
                raise DaemonError(f"bad impair: {e}") from None
        try:
            self.dns_upstream = [(str(h), int(p)) for h, p in o.get("dns_upstream", [])]
            self.publish = [Forward(str(pr), str(a), int(hp), int(gp))
                            for pr, a, hp, gp in o.get("publish", [])]
            self.outbound = {(socket.AF_INET6 if k == "6" else socket.AF_INET): str(v)
                             for k, v in o.get("outbound", {}).items()}
        except (TypeError, ValueError):
            raise DaemonError("bad request: options.dns_upstream, publish or outbound "
                              "malformed") from None
        self.publish_from_gateway = o.get("publish_from_gateway", False)
        self.publish_only_when_bound = o.get("publish_only_when_bound", False)
        self.api_socket = o.get("api_socket")
        self.pcap = o.get("pcap")
        self.pcap_snaplen = o.get("pcap_snaplen")
        self.pcap_max_size = o.get("pcap_max_size")
        for p in (self.api_socket, self.pcap):
            if p is not None and not os.path.isabs(p):
                raise DaemonError(f"bad request: {p!r} is not an absolute path")


# -------------------------------------------------------------------- link
def _ports_overlap(a: tuple, b: tuple) -> bool:
    """Two forwards (proto, host_addr, host_port) that the kernel would not let
    both listen: same protocol and port, and the same address or a wildcard
    of the same family on either side."""
    if a[0] != b[0] or a[2] != b[2]:
        return False
    if a[1] == b[1]:
        return True
    v6a, v6b = ":" in a[1], ":" in b[1]
    return v6a == v6b and ("0.0.0.0" in (a[1], b[1]) or "::" in (a[1], b[1]))


class Link:
    """One namespace's network inside the daemon (see the module docstring).

    ``network`` and ``name`` are stored as given (the switch will use them);
    ``state`` is ``up``, ``closing`` or ``closed``."""

    def __init__(self, daemon: "Daemon", lid: int, spec: LinkSpec, tap_fd: int,
                 pidfd: int | None, exit_fd: int | None):
        self.daemon = daemon
        self.id = lid
        self.spec = spec
        self.config = spec.config
        self.network = spec.network
        self.name = spec.name
        self.tap_fd, self.pidfd, self.exit_fd = tap_fd, pidfd, exit_fd
        self.gw = self.driver = self.services = self.pcap = self.budget = None
        self.net = self.net_ip = self.port = None     # the named network's switch port
        self.state = "starting"
        self.reason = None
        self.created = time.time()
        self.rx_bytes = self.tx_bytes = 0
        self._watched = []
        self._closing = None
        self.closed = None           # a future, set once everything is released

    def forwards(self) -> list:
        """(proto, host_addr, host_port) of the link's forwards: its forwarder's
        (those added through its API socket too), or, while it starts, its -p."""
        fwd = self.services.forwarder if self.services is not None else None
        if fwd is not None:
            return [(e["proto"], e["host_addr"], e["host_port"]) for e in fwd.entries()]
        return [(f.proto, f.host_addr, f.host_port) for f in self.spec.publish]

    async def start(self) -> None:
        import asyncio
        from .host.driver import HostDriver
        from .serve import open_pcap, set_tap_offload
        from .services import ServiceOptions, setup_services
        from .stack.budget import PooledBudget
        from .stack.gateway import Gateway
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        spec, cfg, pool = self.spec, self.config, self.daemon.pool
        hub = self.daemon.networks
        if spec.network is not None:
            # The network's addresses (the lease's, checked), not the client's.
            self.net, self.net_ip, cfg = hub.link_config(spec.network, spec.name, spec.lease, cfg)
            self.config = cfg
        self.budget = PooledBudget(min(cfg.memory_budget, pool.limit), pool)
        self.gw = Gateway(cfg, offload=set_tap_offload(self.tap_fd, spec.offload),
                          budget=self.budget)
        self.driver = d = HostDriver(self.gw, self.tap_fd, impair=spec.impair,
                                     outbound=spec.outbound)
        if self.net is not None:
            # A port of the switch before the first frame is read. A refusal
            # has given the address back already: nothing left to leave.
            net, self.net = self.net, None
            self.port = hub.join(net, self.net_ip, self.gw, spec.name, d)
            self.net = net
        d.start(loop)
        self._meter()
        try:
            self.pcap = open_pcap(spec, d)
            opts = ServiceOptions(dns_upstream=spec.dns_upstream, publish=[spec.publish],
                                  publish_from_gateway=spec.publish_from_gateway,
                                  publish_only_when_bound=spec.publish_only_when_bound,
                                  api_socket=spec.api_socket)
            self.services = await setup_services(d, opts, ns_pid=spec.pid)
            for fd, why in ((self.pidfd, "process exited"), (self.exit_fd, "exit fd closed")):
                if fd is not None:
                    try:
                        loop.add_reader(fd, self.end, why)
                    except (OSError, ValueError) as e:
                        raise DaemonError(f"the {why.split()[0]} fd cannot be watched "
                                          f"({getattr(e, 'strerror', None) or e})") from None
                    self._watched.append(fd)
        except BaseException:
            await self.abort()
            raise
        self.state = "up"
        d.stopped.add_done_callback(lambda _f: self.end("TAP gone"))

    def _meter(self) -> None:
        """Bytes through the TAP (for status), by wrapping the driver's two
        TAP functions once: one call more per frame, no counter per byte."""
        d = self.driver
        read, write = d._read, d._tap_write

        def metered_read(fd, n):
            data = read(fd, n)
            self.rx_bytes += len(data)
            return data

        def metered_write(entry):
            write(entry)
            self.tx_bytes += len(entry[1])
        d._read, d._tap_write = metered_read, metered_write

    async def abort(self) -> None:
        """Undo a start that failed half-way."""
        self._unwatch()
        if self.services is not None:
            await self.services.close()
        self._release()

    def _unwatch(self) -> None:
        if self.driver is not None and self.driver.loop is not None:
            for fd in self._watched:
                self.driver.loop.remove_reader(fd)
        self._watched = []

    def end(self, reason: str, drain: bool = True) -> None:
        """The namespace is done with this link: leave the table now, release
        everything in the background (bounded)."""
        if self.state != "up":
            return
        self.state = "closing"
        self.reason = reason
        self._unwatch()
        self._leave_network()          # its address and name are free now, not after the drain
        self.daemon._link_ended(self)
        # Kept: the loop holds only a weak reference to a task.
        self._closing = self.driver.loop.create_task(self._close(drain))

    async def _close(self, drain: bool) -> None:
        from .host.driver import DRAIN_TIMEOUT, EXIT_FLUSH_TIMEOUT
        d = self.driver
        try:
            if drain and not d.stopped.done():
                await d.drain(DRAIN_TIMEOUT)
            await d.flush_host(EXIT_FLUSH_TIMEOUT)
        except Exception:  # noqa: BLE001 - the release below must happen
            log.debug("link %d: drain failed", self.id, exc_info=True)
        finally:
            if self.services is not None:
                await self.services.close()
            self._release()

    def _leave_network(self) -> None:
        if self.net is not None:
            self.daemon.networks.leave(self.net, self.port,
                                       None if self.port is not None else self.net_ip)
            self.net = None

    def _release(self) -> None:
        """Close everything this link holds; its charge leaves the pool."""
        self._leave_network()
        if self.driver is not None:
            self.driver.close()
        if self.pcap is not None:
            self.pcap.close()
        if self.budget is not None:
            self.budget.detach()
        for fd in (self.tap_fd, self.pidfd, self.exit_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.tap_fd = self.pidfd = self.exit_fd = None
        self.state = "closed"
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self.daemon._link_released(self)

    def status(self) -> dict:
        cfg = self.config
        g = self.gw.gauges()
        addrs = [f"{cfg.guest_str}/{cfg.prefixlen}"]
        if cfg.enable_ipv6:
            addrs.append(str(cfg.network6))
        f = self.gw.flows
        port = self.port
        return {"id": self.id, "where": self.spec.where, "pid": self.spec.pid,
                "tap": self.spec.tap, "network": self.network or "", "name": self.name or "",
                "mac": port.mac.hex(":") if port is not None and port.mac else None,
                "state": self.state, "addresses": addrs, "gateway": cfg.gateway_str,
                "dns": cfg.dns_str if cfg.enable_dns else None,
                "flows": {"tcp": g["tcp_flows"], "udp": g["udp_flows"], "icmp": g["icmp_flows"]},
                "flow_limits": {"tcp": f.tcp.limit, "udp": f.udp.limit, "icmp": f.icmp.limit},
                "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
                "memory_used": g["memory_used"], "memory_peak": g["memory_peak"],
                "memory_budget": g["memory_budget"],
                "forwards": [f"{p}/{a}:{hp}" for p, a, hp in self.forwards()],
                "age": round(time.time() - self.created, 1)}


# ------------------------------------------------------------------ daemon
def _rss() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


class _Conn:
    """One client connection: newline-terminated requests, fds with their
    bytes, one reply each; served one request at a time."""

    def __init__(self, daemon: "Daemon", sock: socket.socket):
        self.daemon = daemon
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []
        self.out = bytearray()
        self.busy = False
        self.watching = False        # a run client that attached here: stays open, never evicted
        self.task = None
        self.last = time.monotonic()
        self.closed = False
        self.leases: list[str] = []    # network leases made here (usernet/networks.py)
        loop = daemon.loop
        loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, 1 << 16, MAX_FDS)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.fds.extend(fds)
        self.last = time.monotonic()
        if not data:
            self.close()
            return
        if flags & socket.MSG_CTRUNC or len(self.fds) > MAX_FDS:
            self.reply({"ok": False, "error": {"message": f"bad request: more than {MAX_FDS} fds"}},
                       then_close=True)
            return
        self.buf += data
        if len(self.buf) > MAX_REQUEST and b"\n" not in self.buf:
            self.reply({"ok": False, "error": {"message": "bad request: too large"}},
                       then_close=True)
            return
        self.next()

    def next(self) -> None:
        if self.busy or self.closed or b"\n" not in self.buf:
            return
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        fds, self.fds = self.fds, []
        self.busy = True
        self.daemon.loop.remove_reader(self.sock.fileno())
        self.task = self.daemon.loop.create_task(self.serve(line, fds))

    async def serve(self, line: bytes, fds: list) -> None:
        try:
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError
            except ValueError:
                raise DaemonError("bad request: not a JSON object") from None
            reply = await self.daemon.handle(req, fds, self)
        except DaemonError as e:
            reply = {"ok": False, "error": {"message": str(e)}}
        except Exception as e:  # noqa: BLE001 - a request never kills the daemon
            log.debug("request failed", exc_info=True)
            from .diagnose import message
            reply = {"ok": False, "error": {"message": message(e)}}
        finally:
            for fd in fds:           # what handle() did not take
                if fd is not None and fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        self.busy = False
        self.reply(reply)

    def reply(self, msg: dict, then_close: bool = False) -> None:
        if self.closed:
            return
        self.out += json.dumps(msg).encode() + b"\n"
        self._flush()
        if then_close:
            self.close()
        elif not self.closed and not self.out:
            self.daemon.loop.add_reader(self.sock.fileno(), self.readable)
            self.next()

    def _flush(self) -> None:
        loop = self.daemon.loop
        try:
            n = self.sock.send(self.out)
            del self.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.close()
            return
        if self.out:
            loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        self.daemon.loop.remove_writer(self.sock.fileno())
        self._flush()
        if not self.out and not self.closed:
            self.daemon.loop.add_reader(self.sock.fileno(), self.readable)
            self.next()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.daemon.loop
        loop.remove_reader(self.sock.fileno())
        loop.remove_writer(self.sock.fileno())
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()
        self.daemon.conns.discard(self)
        for token in self.leases:
            # A client that leased an address and went away without the
            # attach (its namespace failed, it was killed): free it now.
            self.daemon.networks.cancel(token)
        self.leases = []


class Daemon:
    """The daemon's state: the links, the pool, the listening socket.

    ``hooks``: objects told of links coming and going (``link_added(link)``,
    ``link_removed(link)``), for the switch between links. ``check_network``
    is where a network name is accepted or refused; until there is a switch
    every name is accepted and only stored."""

    def __init__(self, path: str, *, memory_budget: int = DEFAULT_DAEMON_BUDGET,
                 max_links: int = DEFAULT_MAX_LINKS):
        from .stack.budget import BudgetPool
        self.path = path
        self.pool = BudgetPool(memory_budget)
        self.max_links = max_links
        self.links: dict[int, Link] = {}
        self.closing: dict[int, Link] = {}
        self.conns: set[_Conn] = set()
        self.hooks: list = []
        from .networks import NetworkHub, store_dir
        self.networks = NetworkHub(store_dir(path))   # named networks and their switches
        self.next_id = 1
        self.loop = None
        self.sock = None
        self.lock_fd = None
        self.started = time.time()
        self.done = None

    # ------------------------------------------------------ start and stop
    def listen(self, default_dir: bool) -> None:
        """Take the lock, bind the socket (mode 0600). StartError if another
        daemon holds the path or it cannot be made."""
        from .diagnose import StartError, api_socket_problem
        path = self.path
        d = os.path.dirname(os.path.abspath(path))
        _own_dir(d, make=default_dir)
        why = api_socket_problem(path)
        if why:
            raise StartError("daemon: " + why.replace("API socket", "socket")
                             .replace("--api-socket", "--socket"))
        lock = path + ".lock"
        for _ in range(10):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise StartError(f"daemon: already running at {path}"
                                 + (f" (pid {other})" if other else "")
                                 + "; fix: use it, or stop it first (usernet daemon stop)") from None
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break          # still the lock file (the last daemon did not remove it meanwhile)
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise StartError(f"daemon: cannot take the lock {lock}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd
        try:
            os.unlink(path)         # ours (we hold the lock): a dead daemon's socket
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o177)
            try:
                s.bind(path)
            finally:
                os.umask(old)
            s.listen(LISTEN_BACKLOG)
            s.setblocking(False)
        except OSError as e:
            s.close()
            self.unlisten()
            raise StartError(f"daemon: cannot listen on {path}: {e.strerror}") from None
        self.sock = s

    def unlisten(self) -> None:
        if self.sock is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.lock_fd is not None:
            try:
                os.unlink(self.path + ".lock")
            except FileNotFoundError:
                pass
            os.close(self.lock_fd)
            self.lock_fd = None

    async def run(self) -> int:
        import asyncio
        self.loop = loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.sock.fileno(), self._accept)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop, f"signal {signal.Signals(sig).name}")
        loop.add_signal_handler(signal.SIGUSR1, self._print_status)
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        sweep = loop.call_later(CLIENT_IDLE_TIMEOUT, self._sweep)
        from .log import event
        event(log, logging.INFO, "daemon_started", socket=self.path, pid=os.getpid(),
              memory_budget=self.pool.limit, max_links=self.max_links)
        try:
            await self.done
            while self.links or self.closing:
                await self.close_links()
        finally:
            sweep.cancel()
            for c in list(self.conns):
                c.close()
            self.unlisten()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                        signal.SIGUSR2):
                loop.remove_signal_handler(sig)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        event(log, logging.INFO, "daemon_stopped", socket=self.path)
        return 0

    def stop(self, why: str = "asked") -> None:
        if self.done is not None and not self.done.done():
            log.info("daemon: stopping (%s)", why)
            self.done.set_result(None)

    async def close_links(self) -> None:
        """Every link ended (flows drained, bounded, then reset) and released."""
        import asyncio
        for link in list(self.links.values()):
            if link.state == "up":
                link.end("daemon stopping")
        waits = [link.closed for link in list(self.links.values()) + list(self.closing.values())
                 if link.closed is not None]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        else:
            await asyncio.sleep(0.01)     # a link still starting: its attach finishes first

    def _print_status(self) -> None:
        log.log(max(logging.INFO, log.getEffectiveLevel()), "",
                extra={"event": "daemon_status", "fields": self.status()})

    # ------------------------------------------------------------ clients
    def _accept(self) -> None:
        for _ in range(64):
            try:
                s, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of fds (the links' flows hold them): the pending
                    # connection keeps the socket readable, so stop watching it
                    # for a moment rather than spin.
                    log.warning("daemon: cannot accept a client (%s); retrying in %gs",
                                e.strerror, ACCEPT_BACKOFF)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(ACCEPT_BACKOFF, self._rearm_accept)
                else:
                    log.debug("accept: %s", e)
                return
            try:
                uid = _peer_uid(s)
            except OSError:
                s.close()
                continue
            if uid not in (os.geteuid(), 0):
                log.warning("daemon: refused a connection from uid %d", uid)
                s.close()
                continue
            s.setblocking(False)
            if len(self.conns) >= MAX_CLIENTS + self.max_links:
                idle = [c for c in self.conns if not c.busy and not c.watching]
                if not idle:
                    s.close()
                    continue
                min(idle, key=lambda c: c.last).close()
            self.conns.add(_Conn(self, s))

    def _rearm_accept(self) -> None:
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _sweep(self) -> None:
        now = time.monotonic()
        for c in list(self.conns):
            if not c.busy and not c.fds and now - c.last > CLIENT_IDLE_TIMEOUT and c.buf:
                c.close()          # a partial request that never finished
        self.loop.call_later(CLIENT_IDLE_TIMEOUT, self._sweep)

    async def handle(self, req: dict, fds: list, conn: _Conn) -> dict:
        op = req.get("op")
        if op == "attach":
            reply = await self.attach(req, fds)
            conn.watching = True
            return reply
        if fds:
            raise DaemonError(f"bad request: {op!r} takes no fds")
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "stats":
            link = self._link(req)
            return {"ok": True, "link": link.id, "stats": link.services.stats()}
        if op == "flows":
            link = self._link(req)
            return {"ok": True, "link": link.id, "flows": link.services.flows()}
        if op == "detach":
            import asyncio
            link = self._link(req)
            link.end("detached")
            await asyncio.shield(link.closed)
            return {"ok": True, "link": link.id}
        if op == "stop":
            self.stop("asked by a client")
            return {"ok": True}
        if op == "ping":
            return {"ok": True, "version": PROTOCOL, "pid": os.getpid()}
        if op == "network_lease":
            from .networks import NetworkError
            network, name = req.get("network"), req.get("name")
            if not isinstance(network, str) or not isinstance(name, (str, type(None))):
                raise DaemonError("bad request: network_lease needs 'network' (and 'name')")
            try:
                reply = {"ok": True, **self.networks.lease(network, name)}
            except NetworkError as e:
                raise DaemonError(str(e)) from None
            conn.leases.append(reply["lease"])     # given back if the client goes first
            return reply
        raise DaemonError(f"bad request: unknown op {op!r} (attach, status, stats, flows, "
                          "detach, stop, ping, network_lease)")

    def _link(self, req: dict) -> Link:
        lid = req.get("link")
        link = self.links.get(lid) if isinstance(lid, int) else None
        if link is None:
            raise DaemonError(f"no link {lid!r} (see usernet daemon status)")
        return link

    # -------------------------------------------------------------- links
    def check_network(self, network: str | None, name: str | None) -> None:
        """Accept or refuse a link's network and name. No switch yet: every
        network name is stored as given (the switch refuses unknown ones);
        a name must be unique on its network."""
        if network is not None and not _NAME.fullmatch(network):
            raise DaemonError(f"network {network!r} is not a valid name (letters, digits, '-')")
        if name is not None:
            for link in self.links.values():
                if link.name == name and link.network == network:
                    raise DaemonError(f"name {name!r} is taken on network "
                                      f"{network or '(none)'} by link {link.id}")

    @staticmethod
    def _fd_limit() -> int:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return soft if soft != resource.RLIM_INFINITY else 1 << 20

    def flow_share(self, links: int) -> int:
        """Host sockets one of ``links`` links may hold (see FD_RESERVE)."""
        return (self._fd_limit() - FD_RESERVE) // max(links, 1) - FD_PER_LINK

    def _reshare(self) -> None:
        """Each link's flow tables capped at its share of the open files."""
        links = [ln for ln in self.links.values() if ln.gw is not None]
        share = max(self.flow_share(len(links)), MIN_FLOW_SHARE)
        for ln in links:
            c, f = ln.config, ln.gw.flows
            f.tcp.limit = min(c.max_tcp_flows, share * 3 // 4)
            f.udp.limit = min(c.max_udp_flows, max(share // 5, 1))
            f.icmp.limit = min(c.max_icmp_flows, max(share // 20, 1))

    def check_forwards(self, spec: LinkSpec) -> None:
        """A host port is one link's: refuse one another link publishes."""
        want = [(f.proto, f.host_addr, f.host_port) for f in spec.publish]
        for other in list(self.links.values()) + list(self.closing.values()):
            for o in other.forwards():
                for w in want:
                    if _ports_overlap(w, o):
                        state = " (closing)" if other.state == "closing" else ""
                        raise DaemonError(
                            f"host port {w[0]} {w[1]}:{w[2]} is already published by link "
                            f"{other.id}{state} ({other.spec.where}); fix: choose another host "
                            "port (-p OTHER:GUEST)")

    async def attach(self, req: dict, fds: list) -> dict:
        roles = req.get("fds")
        if (not isinstance(roles, list) or len(roles) != len(fds)
                or len(set(map(str, roles))) != len(roles) or "tap" not in roles
                or not set(roles) <= set(FD_ROLES)):
            raise DaemonError(f"bad request: 'fds' must name each fd sent ({', '.join(FD_ROLES)}; "
                              f"tap required): got {roles!r} with {len(fds)} fds")
        spec = LinkSpec(req)
        if self.done is not None and self.done.done():
            raise DaemonError("the daemon is stopping")
        if len(self.links) >= self.max_links:
            raise DaemonError(f"link limit reached ({self.max_links}); fix: end unused "
                              "containers, or start the daemon with a higher --max-links")
        if self.flow_share(len(self.links) + 1) < MIN_FLOW_SHARE:
            raise DaemonError(f"too few open files for another link (RLIMIT_NOFILE "
                              f"{self._fd_limit()}, {len(self.links)} links); fix: raise the "
                              "daemon's hard limit (ulimit -Hn, LimitNOFILE=), or end unused "
                              "containers")
        self.check_network(spec.network, spec.name)
        self.check_forwards(spec)
        got = dict(zip(roles, fds))
        for i in range(len(fds)):
            fds[i] = None                      # the link owns them from here
        link = Link(self, self.next_id, spec, got["tap"], got.get("pidfd"), got.get("exit"))
        self.next_id += 1
        self.links[link.id] = link           # reserves its name and ports while it starts
        try:
            await link.start()          # undoes itself if it fails
        except BaseException:
            self.links.pop(link.id, None)
            raise
        if self.done is not None and self.done.done():
            link.end("daemon stopping", drain=False)
            raise DaemonError("the daemon is stopping")
        self._reshare()
        from .log import event
        event(log, logging.INFO, "link_up", link=link.id, where=spec.where, tap=spec.tap,
              addr=f"{link.config.guest_str}/{link.config.prefixlen}",
              network=spec.network or "", link_name=spec.name or "")
        for h in self.hooks:
            try:
                h.link_added(link)
            except Exception:  # noqa: BLE001 - a hook refusing the link ends it
                log.debug("hook failed", exc_info=True)
                link.end("refused by a hook", drain=False)
                raise
        return {"ok": True, "link": link.id, "daemon_pid": os.getpid()}

    def _link_ended(self, link: Link) -> None:
        if self.links.pop(link.id, None) is not None:
            self.closing[link.id] = link
            from .log import event
            event(log, logging.INFO, "link_down", link=link.id, where=link.spec.where,
                  reason=link.reason)
            for h in self.hooks:
                try:
                    h.link_removed(link)
                except Exception:  # noqa: BLE001
                    log.debug("hook failed", exc_info=True)

    def _link_released(self, link: Link) -> None:
        self.closing.pop(link.id, None)
        self.links.pop(link.id, None)
        self._reshare()

    def status(self) -> dict:
        mem = _rss()
        up = [link for link in self.links.values() if link.state == "up"]
        return {"daemon": {"pid": os.getpid(), "socket": self.path, "links": len(up),
                           "closing": len(self.closing), "max_links": self.max_links,
                           "memory_budget": self.pool.limit, "memory_used": self.pool.used,
                           "rss": mem.get("VmRSS"), "rss_peak": mem.get("VmHWM"),
                           "uptime": round(time.time() - self.started, 1)},
                "links": [link.status() for link in up],
                "networks": self.networks.info()}


# -------------------------------------------------------------- front ends
def serve_daemon(path: str, *, default_dir: bool, memory_budget: int, max_links: int) -> int:
    """``usernet daemon``: serve until SIGTERM/SIGINT/SIGHUP or ``stop``."""
    from .serve import new_loop, raise_fd_limit
    from . import sandbox
    raise_fd_limit()
    # What a link needs, loaded now rather than by the first attach (~60 ms).
    sandbox.preload()
    d = Daemon(path, memory_budget=memory_budget, max_links=max_links)
    d.listen(default_dir)
    loop = new_loop()
    try:
        return loop.run_until_complete(d.run())
    finally:
        d.unlisten()
        loop.close()


def format_status(st: dict) -> str:
    """The status table for people."""
    def size(n):
        if n is None:
            return "-"
        for unit in ("B", "K", "M", "G"):
            if n < 1024 or unit == "G":
                return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
            n /= 1024
    dm = st["daemon"]
    lines = [f"daemon pid {dm['pid']} at {dm['socket']}: {dm['links']} link(s)"
             + (f" ({dm['closing']} closing)" if dm["closing"] else "")
             + f", rss {size(dm['rss'])} (peak {size(dm['rss_peak'])}), buffers "
             f"{size(dm['memory_used'])} of {size(dm['memory_budget'])}"]
    if st["links"]:
        rows = [("LINK", "NAMESPACE", "PID", "NETWORK", "NAME", "ADDRESSES", "FLOWS t/u/i",
                 "RX", "TX", "MEMORY", "FORWARDS")]
        for ln in st["links"]:
            fl = ln["flows"]
            rows.append((str(ln["id"]), ln["where"], str(ln["pid"] or "-"), ln["network"] or "-",
                         ln["name"] or "-", ",".join(ln["addresses"]),
                         f"{fl['tcp']}/{fl['udp']}/{fl['icmp']}", size(ln["rx_bytes"]),
                         size(ln["tx_bytes"]), size(ln["memory_used"]),
                         ",".join(ln["forwards"]) or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for n in st.get("networks", []):
        lines.append(f"network {n['name']} {n['subnet']}: {n['links']} link(s)"
                     + (f", names {', '.join(n['names'])}" if n["names"] else ""))
    return "\n".join(lines)


def hand_over(client: DaemonClient, cfg, args, tap_fd: int, *, pidfd: int | None,
              exit_fd: int | None = None, where: str, pid: int | None, tap: str,
              network: str | None = None, name: str | None = None) -> dict:
    """Send the TAP (and the watches) to the daemon; on its ``ok`` log the
    usual start line (with the link's id) and return the reply. StartError
    with the daemon's line if it refuses."""
    from .diagnose import StartError
    from .serve import log_started
    roles, fds = ["tap"], [tap_fd]
    for role, fd in (("pidfd", pidfd), ("exit", exit_fd)):
        if fd is not None:
            roles.append(role)
            fds.append(fd)
    req = link_request(cfg, args, where=where, pid=pid, tap=tap, fds=roles,
                       network=network if network is not None else getattr(args, "network", None),
                       name=name if name is not None else getattr(args, "name", None))
    if getattr(args, "network_lease", None):
        req["lease"] = args.network_lease      # the address the TAP was configured with
    reply = client.request(req, fds)
    err = reply_error(reply)
    if err is not None:
        raise StartError(f"daemon: {err}")
    log_started(cfg, where, tap, daemon=client.path, link=reply.get("link"))
    return reply


def run_command_via_daemon(client: DaemonClient, cfg, args, handle, tap_fd: int) -> int:
    """``usernet run --daemon``: hand the TAP and the namespace child's pidfd
    to the daemon, then become :mod:`usernet.runwait` (exec: the same process,
    still CMD's parent, without usernet loaded: ~9 MiB instead of ~25), which
    releases CMD, passes stop signals on and exits with CMD's status. Returns
    only if the exec fails (a StartError; CMD never started)."""
    import sys
    from .serve import KILL_GRACE
    hand_over(client, cfg, args, tap_fd, pidfd=handle.pidfd,
              where=f"new namespace of pid {handle.pid}", pid=handle.pid, tap="tap0")
    # Our TAP fd, pidfd and pipes are close-on-exec: the exec below drops
    # them (an open TAP fd here would keep the TAP alive after the daemon).
    grace = getattr(args, "kill_grace", KILL_GRACE)
    ctl, sock = handle._ctl_w, client.sock.fileno()
    os.set_inheritable(ctl, True)
    os.set_inheritable(sock, True)
    client.sock.setblocking(True)
    for h in logging.getLogger("usernet").handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    from . import runwait
    wargs = [str(handle.pid), str(ctl), str(sock), str(-1.0 if grace is None else grace),
             client.path, os.path.abspath(args.log_file) if getattr(args, "log_file", None) else ""]
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", runwait.__file__, *wargs])
    except OSError as e:
        # E.g. an interpreter this user reached only through a capability
        # its starter had: wait here instead, with the same code.
        log.debug("run --daemon: cannot exec %s (%s): waiting in this process",
                  sys.executable, e.strerror)
    handle._ctl_w = -1                 # the waiter writes "G" on it and closes it
    code = runwait.main(wargs)
    handle.returncode = code           # reaped by the waiter
    handle._close_pipes()
    return code
