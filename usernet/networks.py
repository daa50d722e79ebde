"""Named networks: ``usernet network create|ls|rm`` and the daemon's side of them.

Theory of operation
===================

A *named network* is an Ethernet segment shared by the daemon's links that
were started with ``--network NAME`` (the switch itself is
:mod:`usernet.stack.switch`, sans-IO). This module is the part with files,
sockets and the daemon:

**The store.** A network is a small JSON file, ``NAME.json``, in the
``networks`` directory beside the daemon's socket
(``$XDG_RUNTIME_DIR/usernet/networks/`` by default; beside
``--socket``/``$USERNET_DAEMON_SOCKET`` when those move it), holding its
IPv4 subnet and IPv6 prefix. ``usernet network create`` writes it (no
daemon needed); the daemon reads it the first time a link asks for the
network. Default subnets are the first free ``10.89.N.0/24`` (with
``fd89:0:0:N::/64``) that no other stored network and no route of the host
uses, so a network never hides a host LAN; slirp4netns's 10.0.2.0/24 of
links on no network is never one of them.

**The lease.** A client with ``--network`` must configure the TAP with the
address the network gives it, before it hands the TAP over, so it asks
first (``{"op": "network_lease", "network": N, "name": M}``); the daemon
reserves an address (and the name) until the attach, or until the client's
connection closes without one, or ``LEASE_TIMEOUT`` seconds, and answers
the NetConfig fields of that address (``cidr``, ``guest_addr``, the one-address
DHCP pool, the DNS search domain, the IPv6 prefix) and a token; the attach
request carries the token back and the link is built with exactly those
fields (the daemon's copy, not the client's). A lease that is never used
expires and its address and name are free again. An attach with a network
but no token (a client that configures the container by DHCP) gets a fresh
address at once.

**Joining and leaving** (:class:`NetworkHub`, one per daemon): a link's
gateway becomes a port of the network's switch before its driver reads the
first frame (:meth:`HostDriver.attach_port`); when the link ends its port
leaves at once (address, name, MACs free for the next link), before the
link's flows finish draining. A network with no ports and no leases is
forgotten, so an ``rm`` and ``create`` with another subnet take effect.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import stat
import time

from .stack.switch import Network, check_name

log = logging.getLogger("usernet")

DEFAULT_PREFIX = "10.89"          # 10.89.N.0/24, as Podman numbers its networks
DEFAULT_PREFIX6 = "fd89:0:0:{:x}::/64"
LEASE_TIMEOUT = 60.0              # seconds a leased address waits for its attach
MAX_NETWORKS = 256


class NetworkError(Exception):
    """A network request refused; ``str()`` is one line for the user."""


# ------------------------------------------------------------------ the store
def store_dir(socket_path: str) -> str:
    """The networks of the daemon at ``socket_path``: beside its socket."""
    return os.path.join(os.path.dirname(os.path.abspath(socket_path)), "networks")


def _path(d: str, name: str) -> str:
    return os.path.join(d, check_name(name, "network name") + ".json")


def load(d: str, name: str) -> dict:
    """The stored network ``name``; NetworkError naming the fix if there is none."""
    p = _path(d, name)
    try:
        with open(p) as f:
            net = json.load(f)
        Network(net["name"], net["subnet"], net.get("ipv6_prefix"))     # still valid?
    except FileNotFoundError:
        raise NetworkError(f"no network {name!r} (in {d}); fix: usernet network create "
                           f"{name}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NetworkError(f"network {name!r}: {p} is unreadable ({e}); fix: usernet "
                           f"network rm {name} and create it again") from None
    return net


def list_networks(d: str) -> list[dict]:
    out = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    for fn in names:
        if fn.endswith(".json"):
            try:
                out.append(load(d, fn[:-5]))
            except (NetworkError, ValueError):
                continue
    return out


def _host_routes() -> list:
    """The host's IPv4 routes (this namespace's), as networks."""
    nets = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) < 8:
                    continue
                dst = int(fields[1], 16).to_bytes(4, "little")
                mask = int(fields[7], 16).to_bytes(4, "little")
                if mask == bytes(4):
                    continue                        # the default route covers everything
                try:
                    nets.append(ipaddress.IPv4Network(
                        (ipaddress.IPv4Address(dst), str(ipaddress.IPv4Address(mask))),
                        strict=False))
                except ValueError:
                    continue
    except OSError:
        pass
    return nets


def create(d: str, name: str, subnet: str | None = None, ipv6_prefix: str | None = None,
           routes=None) -> tuple[dict, list]:
    """Store a new network; returns it and warnings (lines). NetworkError when
    the name exists, the subnet is bad or overlaps another network's."""
    from .stack.config import DEFAULT_CIDR, parse_cidr
    name = check_name(name, "network name")
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        # Beside a socket in a shared directory (/tmp): someone else's
        # networks must not become ours.
        raise NetworkError(f"{d} is not a directory of uid {os.geteuid()}; fix: remove it, or "
                           "give --socket PATH in a directory of yours")
    warnings = []
    lock = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        others = list_networks(d)
        if any(o["name"] == name for o in others):
            raise NetworkError(f"network {name!r} exists; fix: usernet network rm {name} "
                               "first, or choose another name")
        if len(others) >= MAX_NETWORKS:
            raise NetworkError(f"{MAX_NETWORKS} networks exist; fix: remove unused ones")
        used = [ipaddress.IPv4Network(o["subnet"]) for o in others]
        used6 = {o.get("ipv6_prefix") for o in others}
        host = _host_routes() if routes is None else routes
        if subnet is None:
            for n in range(256):
                cand = ipaddress.IPv4Network(f"{DEFAULT_PREFIX}.{n}.0/24")
                if not any(cand.overlaps(u) for u in used + host):
                    net = cand
                    break
            else:
                raise NetworkError(f"no free {DEFAULT_PREFIX}.N.0/24 subnet; fix: give --subnet")
        else:
            try:
                net = parse_cidr(subnet)
            except ValueError as e:
                raise NetworkError(f"--subnet {e}") from None
            for o in others:
                if net.overlaps(ipaddress.IPv4Network(o["subnet"])):
                    raise NetworkError(f"{net} overlaps network {o['name']!r} ({o['subnet']}); "
                                       "fix: choose another --subnet")
            for r in host:
                if net.overlaps(r):
                    warnings.append(f"{net} overlaps the host's route to {r}: containers on "
                                    f"{name} cannot reach those hosts")
            if net.overlaps(ipaddress.IPv4Network(DEFAULT_CIDR)):
                warnings.append(f"{net} overlaps {DEFAULT_CIDR}, the default of links on no "
                                "network: they cannot tell the two apart")
        if ipv6_prefix is None:
            for n in range(1 << 16):
                cand = str(ipaddress.IPv6Network(DEFAULT_PREFIX6.format(n)))
                if cand not in used6:
                    ipv6_prefix = cand
                    break
        entry = {"name": name, "subnet": str(net), "ipv6_prefix": ipv6_prefix,
                 "created": int(time.time())}
        try:
            Network(name, entry["subnet"], ipv6_prefix)
        except ValueError as e:
            raise NetworkError(str(e)) from None
        tmp = os.path.join(d, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(entry, f, indent=1)
            f.write("\n")
        os.replace(tmp, _path(d, name))
        return entry, warnings
    finally:
        os.close(lock)


def remove(d: str, name: str) -> None:
    p = _path(d, name)
    try:
        os.unlink(p)
    except FileNotFoundError:
        raise NetworkError(f"no network {name!r} (in {d})") from None


# ------------------------------------------------------------- in the daemon
class _Lease:
    __slots__ = ("net", "ip", "name", "deadline")

    def __init__(self, net, ip, name, deadline):
        self.net, self.ip, self.name, self.deadline = net, ip, name, deadline


class NetworkHub:
    """The daemon's networks: leases, and links joining and leaving switches."""

    def __init__(self, directory: str):
        self.dir = directory
        self.nets: dict[str, Network] = {}
        self.leases: dict[str, _Lease] = {}

    def network(self, name: str) -> Network:
        net = self.nets.get(name)
        if net is None:
            entry = load(self.dir, name)
            net = Network(entry["name"], entry["subnet"], entry.get("ipv6_prefix"))
            self.nets[net.name] = net
        return net

    def _sweep(self, now: float) -> None:
        for token in [t for t, ls in self.leases.items() if ls.deadline <= now]:
            ls = self.leases.pop(token)
            ls.net.release(ls.ip)
            log.info("network %s: lease of %s expired unused", ls.net.name,
                     ipaddress.IPv4Address(ls.ip))
            self._maybe_forget(ls.net)

    def _name_free(self, net: Network, name: str | None) -> None:
        if name is None:
            return
        if name in net.names or any(ls.net is net and ls.name == name
                                    for ls in self.leases.values()):
            raise NetworkError(f"the name {name!r} is taken on network {net.name}; fix: "
                               "choose another --name, or end the link that has it")

    def lease(self, network: str, name: str | None, now: float | None = None) -> dict:
        """Reserve an address (and the name) on ``network`` for a link to come."""
        now = time.monotonic() if now is None else now
        self._sweep(now)
        try:
            net = self.network(check_name(network, "network name"))
            if name is not None:
                name = check_name(name, "link name")
            self._name_free(net, name)
            ip = net.allocate()
        except ValueError as e:
            raise NetworkError(str(e)) from None
        token = secrets.token_hex(8)
        self.leases[token] = _Lease(net, ip, name, now + LEASE_TIMEOUT)
        fields = net.config_fields(ip)
        fields["dns_search"] = list(fields["dns_search"])
        return {"lease": token, "config": fields, "network": net.info()}

    def cancel(self, token: str) -> None:
        """Give back a lease not used (its client went away); a no-op once
        it was used or has expired."""
        ls = self.leases.pop(token, None)
        if ls is not None:
            ls.net.release(ls.ip)
            self._maybe_forget(ls.net)

    def link_config(self, network: str, name: str | None, token: str | None, cfg,
                    now: float | None = None):
        """The link's NetConfig on ``network``: its lease's address (or a new
        one), the network's subnet and prefix. NetworkError if it cannot be."""
        now = time.monotonic() if now is None else now
        self._sweep(now)
        try:
            network = check_name(network, "network name")
            if name is not None:
                name = check_name(name, "link name")
        except ValueError as e:
            raise NetworkError(str(e)) from None
        if token is not None:
            ls = self.leases.pop(token, None)
            if ls is None:
                raise NetworkError("the network lease is unknown or expired; fix: start the "
                                   "container again")
            if ls.net.name != network or ls.name != name:
                self.leases[token] = ls
                raise NetworkError("the network lease was made for another network or name")
            net, ip = ls.net, ls.ip
        else:
            try:
                net = self.network(network)
                self._name_free(net, name)
                ip = net.allocate()
            except ValueError as e:
                raise NetworkError(str(e)) from None
        try:
            return net, ip, dataclasses.replace(cfg, **net.config_fields(ip))
        except ValueError as e:
            net.release(ip)
            raise NetworkError(f"network {net.name}: {e}") from None

    def join(self, net: Network, ip: bytes, gw, name: str | None, driver):
        """Plug a link's gateway into the switch (its driver feeds the port)."""
        try:
            port = net.add_port(gw, name=name, vnet=driver.vnet_hdr)
        except ValueError as e:
            net.release(ip)
            raise NetworkError(str(e)) from None
        try:
            driver.attach_port(port)
        except ValueError as e:
            self.leave(net, port)
            raise NetworkError(str(e)) from None
        return port

    def leave(self, net: Network, port, ip: bytes | None = None) -> None:
        """The link ended (or never started): its port, address and name are free."""
        if port is not None:
            net.remove_port(port)
        if ip is not None:
            net.release(ip)
        self._maybe_forget(net)

    def _maybe_forget(self, net: Network) -> None:
        if not net.ports and not any(ls.net is net for ls in self.leases.values()) \
                and self.nets.get(net.name) is net:
            del self.nets[net.name]

    def info(self) -> list[dict]:
        return [n.info() for n in self.nets.values()]


# ------------------------------------------------------------------ the CLI
def cmd_network(args) -> int:
    """``usernet network create|ls|rm``."""
    import sys
    from .daemon import default_socket_path
    from .diagnose import StartError, message
    path = args.socket or default_socket_path()
    d = store_dir(path)
    try:
        if args.socket is None and not os.environ.get("USERNET_DAEMON_SOCKET") \
                and args.action == "create":
            # The daemon's default directory: made 0700 and checked to be
            # ours, as the daemon itself does.
            from .daemon import _own_dir
            _own_dir(os.path.dirname(path), make=True)
        if args.action == "create":
            if args.subnet is not None and args.name is None:
                raise NetworkError("network create: give the network's NAME")
            entry, warnings = create(d, args.name, args.subnet)
            for w in warnings:
                print(f"usernet: warning: {w}", file=sys.stderr)
            if args.json:
                print(json.dumps(entry))
            else:
                print(f"{entry['name']}\t{entry['subnet']}\t{entry['ipv6_prefix']}")
            return 0
        if args.action == "ls":
            nets = list_networks(d)
            links = _links_by_network(path)
            if args.json:
                for n in nets:
                    n["links"] = links.get(n["name"], []) if links is not None else None
                print(json.dumps(nets, indent=2))
                return 0
            rows = [("NAME", "SUBNET", "IPV6", "LINKS")]
            for n in nets:
                ln = "-" if links is None else ",".join(
                    (f"{x['name'] or '?'}({x['id']})" for x in links.get(n["name"], []))) or "0"
                rows.append((n["name"], n["subnet"], n.get("ipv6_prefix") or "-", ln))
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            return 0
        # rm
        links = _links_by_network(path)
        name = check_name(args.name, "network name")
        used = (links or {}).get(name)
        if used:
            ids = ", ".join(str(x["id"]) for x in used)
            raise NetworkError(f"network {name!r} has {len(used)} link(s) (id {ids}); fix: "
                               "end those containers first (usernet daemon detach ID)")
        remove(d, name)
        return 0
    except (NetworkError, ValueError, OSError) as e:
        print(f"usernet: {message(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 1
    except StartError as e:
        print(f"usernet: {e}", file=sys.stderr)
        return 1


def _links_by_network(path: str) -> dict | None:
    """The running daemon's links by network name; None when no daemon answers."""
    from .daemon import DaemonClient
    from .diagnose import StartError
    if not os.path.exists(path):
        return None
    try:
        client = DaemonClient(path, timeout=5.0)
    except StartError:
        return None
    try:
        reply = client.request({"op": "status"})
    except StartError:
        return None
    finally:
        client.close()
    out: dict = {}
    for ln in reply.get("links", []):
        if ln.get("network"):
            out.setdefault(ln["network"], []).append({"id": ln["id"], "name": ln.get("name")})
    return out
