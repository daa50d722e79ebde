"""The services around a running driver, wired by the command line: the DNS
forwarder, port forwards (``-p``), the slirp4netns JSON API socket, and the
whole-stack stats the API and SIGUSR1 report.

Top layer (with ``cli``, ``api``): host/ offers plain objects and plain
errors; this module chooses them from the options and hands the API its
backend (:class:`usernet.api.ForwarderBackend`). Each service started here
is closed by :meth:`Services.close`, in reverse order.
"""

import ipaddress
import logging
from dataclasses import dataclass, field

from .api import ApiServer, ForwarderBackend
from .host.dns import DnsForwarder
from .host.forward import Forwarder
from .stack.counters import snapshot
from .log import suppressed as log_suppressed
from .stack.flows import flow_info

log = logging.getLogger("usernet")


@dataclass
class ServiceOptions:
    """What the services need from the command line."""
    dns_upstream: list = field(default_factory=list)   # [(addr, port)]; empty: resolv.conf
    publish: list = field(default_factory=list)        # [[PublishSpec, ...], ...] from -p
    publish_from_gateway: bool = False
    publish_only_when_bound: bool = False
    api_socket: str | None = None
    api_socket_fd: int | None = None    # already listening at api_socket (the compiled front's)

    @classmethod
    def from_args(cls, args) -> "ServiceOptions":
        """From an argparse Namespace; a front end without an option leaves its default."""
        d = cls()
        return cls(**{k: getattr(args, k, getattr(d, k)) or getattr(d, k)
                      for k in cls.__dataclass_fields__})


def stack_stats(driver, forwarder=None) -> dict:
    """Every declared counter (zero or not), what the stack holds, and the forwards."""
    s = snapshot(driver.counters)
    s.update(driver.gw.gauges())
    if forwarder is not None:
        s.update(forwarder.gauges())
    s["log_warnings_suppressed"] = log_suppressed()
    return s


def _addr(ip: bytes, port: int) -> str:
    a = ipaddress.ip_address(ip)
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def _sockaddr(sa) -> str | None:
    if not sa or not isinstance(sa, tuple):
        return None
    return f"[{sa[0]}]:{sa[1]}" if ":" in sa[0] else f"{sa[0]}:{sa[1]}"


def _host_side(driver, proto: str, fid: int) -> tuple:
    """(local, peer) of the host socket serving flow ``fid``, or (None, None)."""
    try:
        if proto == "tcp":
            p = driver.tcp.protocols.get(fid)
            t = p.transport if p is not None else None
            if t is None:
                return None, None
            return _sockaddr(t.get_extra_info("sockname")), _sockaddr(t.get_extra_info("peername"))
        if proto == "udp":
            fs = driver.udp.socks.get(fid)
            if fs is None:
                return None, None
            return _sockaddr(fs.sock.getsockname()), _sockaddr(fs.sock.getpeername())
        icmp = driver.icmp
        if icmp is not None and fid in icmp.flows:
            host, ident = icmp.flows[fid]
            return None, f"{host} id {ident}"
    except OSError:
        pass
    return None, None


def list_flows(driver) -> list:
    """The live flows for the API's ``list_flows``, busiest first: the stack's
    view (:func:`usernet.stack.flows.flow_info`) with addresses as text and the
    host socket's two ends. ``tx_*`` is what the container sent, ``rx_*`` what
    it received."""
    now = driver.now()
    out = []
    for f in flow_info(driver.gw.flows, now):
        local, peer = _host_side(driver, f["proto"], f["id"])
        out.append({
            "proto": f["proto"], "id": f["id"], "direction": "in" if f["inbound"] else "out",
            "container": _addr(*f["container"]), "remote": _addr(*f["remote"]),
            "host_local": local, "host_peer": peer, "state": f["state"],
            "tx_bytes": f["bytes_in"], "tx_packets": f["pkts_in"],
            "rx_bytes": f["bytes_out"], "rx_packets": f["pkts_out"],
            "age": round(f["age"], 3), "idle": round(f["idle"], 3),
            "retransmits": f["retransmits"]})
    out.sort(key=lambda f: (-(f["tx_bytes"] + f["rx_bytes"]), f["id"]))
    return out


class Services:
    def __init__(self, driver):
        self.driver = driver
        self.closers = []
        self.forwarder = None
        self.api = None

    def stats(self) -> dict:
        return stack_stats(self.driver, self.forwarder)

    def flows(self) -> list:
        return list_flows(self.driver)

    async def close(self):
        for c in reversed(self.closers):
            try:
                r = c()
                if hasattr(r, "__await__"):
                    await r
            except Exception as e:  # noqa: BLE001 - shutdown must finish
                log.debug("closing a service: %s", e)
        self.closers.clear()


async def setup_services(driver, opts: ServiceOptions, *, ns_pid: int | None = None) -> Services:
    """Start what ``opts`` asks for. ``ns_pid`` is a process in the
    container's network namespace (``run``: the child; ``attach``: the target
    PID), needed by ``--publish-only-when-bound``. A port that cannot be
    published raises :class:`~usernet.host.forward.PublishError` (an OSError
    with a one-line message) after closing whatever was already started."""
    s = Services(driver)
    if driver.gw.config.enable_dns:
        driver.attach_dns(DnsForwarder(driver, opts.dns_upstream or None))
    # The forwarder is always there (the API may add forwards later).
    fwd = Forwarder(driver, real_client_addr=not opts.publish_from_gateway,
                    only_when_bound=opts.publish_only_when_bound, ns_pid=ns_pid)
    s.forwarder = fwd
    s.closers.append(fwd.close)
    try:
        for group in opts.publish:
            for f in group:
                fwd.add(f.proto, f.host_addr, f.host_port, "", f.guest_port)
        if opts.api_socket:
            api = await ApiServer.start(opts.api_socket, ForwarderBackend(fwd, s.stats, s.flows),
                                        counters=driver.counters, listen_fd=opts.api_socket_fd)
            s.api = api
            s.closers.append(api.wait_closed)   # closers run in reverse: close, then wait
            s.closers.append(api.close)
    except BaseException:
        await s.close()
        raise
    return s
