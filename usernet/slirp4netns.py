"""``usernet-slirp4netns``: usernet behind slirp4netns 1.2's command line and fd protocol.

Rootless Podman (4.x, 5.x) and RootlessKit start whatever ``network_cmd_path`` names exactly as
they start slirp4netns, so at that boundary usernet must be indistinguishable from it. This module
is that dialect and nothing else; the work is done by :func:`usernet.netns.attach` (the TAP, made
and configured inside the namespace) and :func:`usernet.serve.serve` (the stack, the API socket).

Theory of operation
===================

1. **Parse** (:func:`parse`): a small getopt_long clone, because slirp4netns is plain
   ``getopt_long`` and its callers rely on its edges: GNU argument permutation, ``--opt=val`` and
   ``--opt val``, ``-cm1500`` clusters, unique prefixes of long options (``--conf``), glibc's own
   error texts (``unrecognized option '--x'``, ``invalid option -- 'x'``, ``option '--mtu'
   requires an argument``, ``... is ambiguous; possibilities: ...``). As in slirp4netns, an option
   is acted on when met (``-h --bogus`` is help and status 0; ``-m 0`` is refused before a later
   unknown option is seen); errors found then, and in the checks right after the loop (PID, path,
   ``--macaddress`` without ``-c``, too few arguments), print the usage on stdout and exit 1. The
   checks slirp4netns makes later (``--cidr``, the MAC's syntax, ``--outbound-addr``) print one
   line and exit 1 without the usage. Texts are slirp4netns's, typos included (``iterface``).
2. **Run** (:func:`run`): attach to the namespace (by PID or path, joining ``--userns-path`` or the
   netns's owner first), configure the TAP when ``-c``, then serve. When the TAP is configured and
   the API socket listens, write the byte ``1`` to the ready fd and close it. The exit fd (the read
   end of a pipe whose write end Podman holds) becoming readable -- HUP when Podman closes it or
   dies, or an error -- ends the run with status 0; so does SIGTERM (Podman stops the helper of
   its rootless network namespace that way). The API socket is removed on the way out.

The installed ``usernet-slirp4netns`` is normally the compiled front
(``usernet/slirp4netns_front.c``): it does step 2 up to the ready byte in C (in ~2 ms, where this
interpreter needs ~0.1 s to start) and execs this module with the fds in ``_USERNET_FRONT``
(:func:`take_front`); anything it does not handle comes here untouched.

Which fd is which is only known from ``-e``/``-r``: Podman 4.0-4.5 passes ``-e 3 -r 4`` and 4.6+
``-r 3 [-e 4]``. Both are made close-on-exec at once, and no other inherited fd is touched.

``--enable-sandbox``/``--create-sandbox`` and ``--enable-seccomp`` are applied by
:mod:`usernet.sandbox` once everything listens (a read-only pivot_root into a tmpfs, capabilities
dropped but CAP_NET_BIND_SERVICE, an allow-list seccomp filter).

``-6`` gives the container IPv6 as slirp4netns does: fd00::/64 by SLAAC (the address is
configured at once with ``-c``), fd00::2 the host's ::1, fd00::3 the DNS forwarder.

Where usernet differs, on purpose: ``--target-type=bess`` is refused; the MTU must also suit usernet's stack (68..65520,
slirp4netns takes 1..65521); an ``--api-socket`` path of 108 bytes or more is refused before
attaching (slirp4netns fails later, at bind); the process also stops when the ``PID`` target
exits; SIGTERM is a clean exit 0 (slirp4netns dies of it). ``$USERNET_DNS_UPSTREAM`` names the
DNS upstream (Podman passes no such flag, but its environment).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

from .serve import report_fatal

log = logging.getLogger("usernet")

#: The slirp4netns release whose command line this is; Podman and RootlessKit want >= 1.2 for
#: the features they probe (--netns-type, --cidr, --enable-seccomp, --outbound-addr, --mtu).
SLIRP4NETNS_VERSION = "1.2.0"

#: sizeof(sun_path): an AF_UNIX path must be shorter than this.
SUN_PATH_MAX = 108

# Verbatim from slirp4netns 1.2.0's usage() (Podman and RootlessKit grep this text for the flag
# names), with usernet's notes after it.
USAGE = """\
Usage: {prog} [OPTION]... PID|PATH [TAPNAME]
User-mode networking for unprivileged network namespaces.

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirp4netns
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default=1500, max=65521)
-6, --enable-ipv6        enable IPv6 (experimental)
-a, --api-socket=PATH    specify API socket path
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE 	 specify network namespace type ([path|pid], default=pid)
--userns-path=PATH	 specify user namespace path
--enable-sandbox         create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)
--enable-seccomp         enable seccomp to limit syscalls (experimental)
--outbound-addr=IPv4     sets outbound ipv4 address to bound to (experimental)
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (experimental)
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect (experimental)
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns|bess], default=netns)
-h, --help               show this help and exit
-v, --version            show version and exit

usernet: a userspace TCP/IP stack in slirp4netns's place (same options, fds and API socket).
--enable-sandbox and --enable-seccomp are applied once everything listens; --enable-ipv6 gives
fd00::/64 (fd00::2 is the host's ::1, fd00::3 the DNS forwarder).
--target-type=bess is not supported. MTU 68..65520.
--pcap=FILE (usernet's own) writes every frame to and from the container to FILE (pcap,
for tcpdump -r); --pcap-snaplen=N cuts frames at N bytes; --pcap-max-size=BYTES rotates
FILE to FILE.1 past BYTES.
--daemon-socket=PATH (usernet's own) hands the TAP, the exit fd and the API socket to the
`usernet daemon` at PATH, writes the ready byte and exits: no process per container.
Environment: USERNET_DNS_UPSTREAM=ADDR[:PORT][,...] DNS upstream for 10.0.2.3
(default: the nameservers of /etc/resolv.conf); USERNET_ALLOW_LINK_LOCAL=1 lets the container
reach 169.254.0.0/16 on the host side (refused by default: cloud metadata services live there);
USERNET_DAEMON=1 (the default daemon socket), =PATH, or =auto (the daemon if one runs, else
serve here) as --daemon-socket. The compiled usernet-slirp4netns writes the ready byte itself and
execs USERNET_PYTHON (default: the one it was built for); USERNET_FRONT=0 turns that off.

Examples:
  unshare --user --map-root-user --net sleep 1000 &
  {prog} --configure --mtu=65520 --disable-host-loopback $! tap0
  {prog} -c -e 3 -r 4 --api-socket /tmp/slirp.sock $! tap0   # as Podman 4.3 starts it
  {prog} --netns-type=path --userns-path=/proc/PID/ns/user /run/user/1000/netns/NS tap0
"""

# (long name, short letter or None, takes an argument)
_OPTIONS = [
    ("help", "h", False), ("version", "v", False), ("configure", "c", False),
    ("exit-fd", "e", True), ("ready-fd", "r", True), ("mtu", "m", True),
    ("enable-ipv6", "6", False), ("api-socket", "a", True), ("cidr", None, True),
    ("disable-host-loopback", None, False), ("netns-type", None, True),
    ("userns-path", None, True), ("create-sandbox", None, False),
    ("enable-sandbox", None, False), ("enable-seccomp", None, False),
    ("outbound-addr", None, True), ("outbound-addr6", None, True),
    ("disable-dns", None, False), ("macaddress", None, True), ("target-type", None, True),
    # usernet's own (slirp4netns has no capture option, and no daemon).
    ("pcap", None, True), ("pcap-snaplen", None, True), ("pcap-max-size", None, True),
    ("daemon-socket", None, True),
]
_SHORT = {s: (name, arg) for name, s, arg in _OPTIONS if s}
_LONG = {name: arg for name, _s, arg in _OPTIONS}


class Exit(Exception):
    """Stop with ``status`` after printing ``out`` (stdout) and ``err`` (stderr)."""

    def __init__(self, status: int, out: str = "", err: str = ""):
        super().__init__(err or out)
        self.status, self.out, self.err = status, out, err


@dataclass
class Options:
    configure: bool = False
    exit_fd: int = -1
    ready_fd: int = -1
    mtu: int = 1500
    enable_ipv6: bool = False
    api_socket: str | None = None
    cidr: str | None = None
    disable_host_loopback: bool = False
    netns_type: str = "pid"
    userns_path: str | None = None
    enable_sandbox: bool = False
    create_sandbox: bool = False
    enable_seccomp: bool = False
    outbound_addr: str | None = None
    outbound_addr6: str | None = None
    disable_dns: bool = False
    macaddress: str | None = None
    target_type: str = "netns"
    pcap: str | None = None
    pcap_snaplen: int | None = None
    pcap_max_size: int | None = None
    daemon_socket: str | None = None
    target_pid: int | None = None
    netns_path: str | None = None
    tapname: str = ""
    warnings: list = field(default_factory=list)


# ------------------------------------------------------------------ getopt_long
def _getopt(argv, prog):
    """Yield ``(name, value)`` for each option in order, then ``(None, positionals)``.
    Raises Exit with glibc's message and the usage, as slirp4netns's ``goto error``."""
    usage = USAGE.format(prog=prog)
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            pos.extend(argv[i:])
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name in _LONG:
                matches = [name]
            else:
                matches = [n for n, _s, _a in _OPTIONS if n.startswith(name)]
            if not matches:
                raise Exit(1, usage, f"{prog}: unrecognized option '--{name}'\n")
            if len(matches) > 1:
                poss = " ".join(f"'--{m}'" for m in matches)
                raise Exit(1, usage, f"{prog}: option '--{name}' is ambiguous; possibilities: {poss}\n")
            name = matches[0]
            if _LONG[name]:
                if not eq:
                    if i >= len(argv):
                        raise Exit(1, usage, f"{prog}: option '--{name}' requires an argument\n")
                    val = argv[i]
                    i += 1
                yield name, val
            else:
                if eq:
                    raise Exit(1, usage, f"{prog}: option '--{name}' doesn't allow an argument\n")
                yield name, None
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                j += 1
                if c not in _SHORT:
                    raise Exit(1, usage, f"{prog}: invalid option -- '{c}'\n")
                name, takes = _SHORT[c]
                if takes:
                    if j < len(a):
                        val = a[j:]
                    elif i < len(argv):
                        val = argv[i]
                        i += 1
                    else:
                        raise Exit(1, usage, f"{prog}: option requires an argument -- '{c}'\n")
                    yield name, val
                    break
                yield name, None
        else:
            pos.append(a)  # GNU getopt permutes: operands may come before options
    yield None, pos


def _strtol(text):
    """C strtol(text, &end, 10) with ``*end == '\\0'`` and no ERANGE, else None."""
    t = text.lstrip(" \t\n\v\f\r")
    if not re.fullmatch(r"[+-]?[0-9]+", t):
        return None
    v = int(t, 10)
    return v if -(1 << 63) <= v < (1 << 63) else None


def version_text() -> str:
    from . import __version__
    return (f"slirp4netns version {SLIRP4NETNS_VERSION}\n"
            f"usernet version {__version__} (slirp4netns {SLIRP4NETNS_VERSION}-compatible; no libslirp)\n")


# Options that only switch something on, and options whose value is kept as given (checked
# later, where slirp4netns checks them); the attribute is the name with "_" for "-".
_SWITCHES = frozenset(("configure", "enable-ipv6", "disable-host-loopback", "enable-seccomp",
                       "disable-dns"))
_PLAIN_VALUES = frozenset(("api-socket", "cidr", "netns-type", "outbound-addr", "outbound-addr6",
                           "macaddress", "pcap", "daemon-socket"))


def parse(argv, prog: str = "slirp4netns") -> Options:
    """slirp4netns 1.2's ``parse_args`` and the checks ``main`` makes after it. Raises Exit."""
    usage = USAGE.format(prog=prog)
    o = Options()
    for name, val in _getopt(list(argv), prog):
        if name is None:
            pos = val
            break
        if name == "help":
            raise Exit(0, usage)
        if name == "version":
            raise Exit(0, version_text())
        attr = name.replace("-", "_")
        if name in _SWITCHES:
            setattr(o, attr, True)
        elif name in _PLAIN_VALUES:
            setattr(o, attr, val)
        elif name in ("exit-fd", "ready-fd"):
            fd = _strtol(val)
            if fd is None or fd < 0:
                raise Exit(1, usage, f"{name} must be a non-negative integer\n")
            setattr(o, attr, fd)
        elif name == "mtu":
            mtu = _strtol(val)
            if mtu is None or mtu <= 0 or mtu > 65521:
                raise Exit(1, usage, "MTU must be a positive integer (< 65522)\n")
            o.mtu = mtu
        elif name == "userns-path":
            if not os.path.exists(val):  # slirp4netns: access(F_OK)
                raise Exit(1, usage, f"userns path doesn't exist: {val}\n")
            o.userns_path = val
        elif name in ("enable-sandbox", "create-sandbox"):
            o.enable_sandbox = True
            o.create_sandbox = o.create_sandbox or name == "create-sandbox"
        elif name in ("pcap-snaplen", "pcap-max-size"):
            from .pcap import parse_size, parse_snaplen
            try:
                setattr(o, attr, (parse_snaplen if name == "pcap-snaplen" else parse_size)(val))
            except ValueError as e:
                raise Exit(1, "", f"usernet: --{name}: {e}\n") from None
        elif name == "target-type":
            if val not in ("netns", "bess"):
                raise Exit(1, usage, '--target-type must be either "netns" or "bess"\n')
            o.target_type = val
    if o.macaddress is not None and not o.configure:
        raise Exit(1, usage, "--macaddr cannot be specified when --configure or -c is not specified\n")
    if o.target_type == "bess":
        raise Exit(1, "", "--target-type=bess is not supported by usernet\n")
    if len(pos) < 2:
        raise Exit(1, usage)
    if len(pos) > 2:
        o.warnings.append("WARNING: too many arguments")
    # slirp4netns: anything but "pid" is a path (it compares with "pid" only).
    if o.netns_type == "pid":
        pid = _strtol(pos[0])
        if pid is None or pid <= 0:
            raise Exit(1, usage, "PID must be a positive integer\n")
        o.target_pid = pid
    else:
        if not os.path.exists(pos[0]):
            raise Exit(1, usage, "existing path expected when --netns-type=path: No such file or directory\n")
        o.netns_path = pos[0]
    o.tapname = pos[1]
    return o


# ------------------------------------------------------------ later checks
def network_config(o: Options):
    """The NetConfig for ``o``; the CIDR and MAC checks slirp4netns makes after parsing."""
    from .stack.config import MAX_MTU, MIN_MTU, NetConfig
    cidr = "10.0.2.0/24"
    if o.cidr is not None:
        try:
            iface = ipaddress.IPv4Interface(o.cidr) if "/" in o.cidr else None
        except ValueError:
            iface = None
        if iface is None:
            raise Exit(1, "", f"invalid CIDR: {o.cidr}\n")
        if not 1 <= iface.network.prefixlen <= 25:
            raise Exit(1, "", "prefix length needs to be 1-25\n")
        if iface.ip != iface.network.network_address:
            raise Exit(1, "", "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24\n")
        cidr = str(iface.network)
    mac = None
    if o.macaddress is not None:
        from .wire.ether import mac_parse
        try:
            mac = mac_parse(o.macaddress)
        except ValueError:
            raise Exit(1, "", f'"{o.macaddress}" is an invalid MAC address.\n'
                              "macaddress has to be a valid MAC address (hex string, 6 bytes, "
                              "each byte separated by a ':').\n") from None
    if not MIN_MTU <= o.mtu <= MAX_MTU:
        raise Exit(1, "", f"usernet: MTU {o.mtu} is outside usernet's range {MIN_MTU}..{MAX_MTU}\n")
    return NetConfig(cidr=cidr, mtu=o.mtu, host_loopback=not o.disable_host_loopback,
                     guest_mac=mac, enable_dns=not o.disable_dns, enable_ipv6=o.enable_ipv6,
                     allow_link_local=os.environ.get("USERNET_ALLOW_LINK_LOCAL", "") == "1")


def _interface_address(name: str, family: int) -> str | None:
    """The first ``family`` address of interface ``name`` (slirp4netns uses getifaddrs)."""
    from .rtnl import Rtnl
    try:
        idx = socket.if_nametoindex(name)
        with Rtnl() as nl:
            found = nl.addresses(family, idx)
        if found:
            return found[0]
    except OSError as e:  # netlink trouble reads as "no such interface"
        log.debug("resolving interface %s: %s", name, e)
    return None


def outbound_addresses(o: Options) -> dict:
    """``--outbound-addr``/``--outbound-addr6`` as {family: address}; an interface name is
    resolved to its address (SO_BINDTODEVICE would need CAP_NET_RAW; slirp4netns resolves too)."""
    out = {}
    # slirp4netns's texts, including the second's copy-paste ("ipv4", "iterface").
    for val, fam, cls, text in (
            (o.outbound_addr, socket.AF_INET, ipaddress.IPv4Address,
             "outbound-addr has to be valid ipv4 address or interface name.\n"),
            (o.outbound_addr6, socket.AF_INET6, ipaddress.IPv6Address,
             "outbound-addr has to be valid ipv4 address or iterface name.\n")):
        if val is None:
            continue
        try:
            addr = str(cls(val))
        except ValueError:
            addr = _interface_address(val, fam)
        if addr is None:
            raise Exit(1, "", text)
        out[fam] = addr
    return out


# ------------------------------------------------------------------ daemon
#: ``USERNET_DAEMON``: how Podman (which passes no option of ours, but its environment) asks for
#: the daemon: ``1`` the default socket, an absolute path that socket, ``auto`` the default
#: socket if a daemon answers there (else serve in this process), empty or ``0`` never.
DAEMON_ENV = "USERNET_DAEMON"
#: After handing over a link with an API socket (Podman's port_handler=slirp4netns), seconds to
#: stay before exiting. Podman, once it has read the ready byte, polls the helper's pid with
#: wait4(WNOHANG) while it waits for the API socket's file (libpod's
#: setupRootlessPortMappingViaSlirp); an exit seen then fails the container's start ("slirp4netns
#: exited with status 0"). That poll lasts a few milliseconds; this outlasts it.
API_HANDOVER_LINGER = 1.0


def daemon_choice(o: Options, environ=None) -> tuple[str | None, bool]:
    """(socket path, required): where the daemon is to be asked, and whether its absence is an
    error (``--daemon-socket``, ``USERNET_DAEMON=1|PATH``) or means serving here (``auto``).
    (None, False): no daemon. Raises Exit on a value that is none of these."""
    if o.daemon_socket is not None:
        if not o.daemon_socket:
            raise Exit(1, "", "usernet: --daemon-socket: give the daemon's socket path\n")
        return o.daemon_socket, True
    env = os.environ if environ is None else environ
    v = env.get(DAEMON_ENV, "").strip()
    if v in ("", "0"):
        return None, False
    if v in ("1", "auto"):
        from .daemon import default_socket_path
        return default_socket_path(env), v == "1"
    if os.path.isabs(v):
        return v, True
    raise Exit(1, "", f"usernet: {DAEMON_ENV}={v!r}: want 1, auto, 0 or the daemon's socket path\n")


def _daemon_client(o: Options):
    """A connection to the daemon the options or the environment ask for, made before any TAP
    exists (so a missing daemon costs nothing); None to serve in this process. A required
    daemon that does not answer is a StartError naming the fix."""
    path, required = daemon_choice(o)
    if path is None:
        return None
    if o.exit_fd < 0 and o.target_pid is None:
        # A path target and no exit fd (Podman's rootless network namespace helper, which it
        # stops with SIGTERM to this pid): nothing would ever tell the daemon the link is done.
        log.info("usernet: serving here, not in the daemon: no exit fd (-e) and no PID to "
                 "watch would end the link")
        return None
    from .daemon import DaemonClient
    from .diagnose import StartError
    try:
        return DaemonClient(path)
    except StartError:
        if required:
            raise
        log.debug("no daemon at %s: serving here", path)
        return None


def _handover(client, o: Options, cfg, args, fd: int, pidfd, where: str) -> int:
    """The link is the daemon's: hand it the TAP, the exit fd (and a pidfd of a PID target),
    write the ready byte, and return the exit status (the caller closes our copies)."""
    import time
    from .daemon import hand_over
    if o.enable_sandbox or o.enable_seccomp:
        # Podman always passes both; they apply to a whole process, and the daemon is one
        # process for every container (docs/podman.md, "One usernet for every container").
        log.info("usernet: --enable-sandbox/--enable-seccomp not applied: the daemon serves "
                 "this container")
    hand_over(client, cfg, args, fd, pidfd=pidfd, exit_fd=o.exit_fd if o.exit_fd >= 0 else None,
              where=where, pid=o.target_pid, tap=o.tapname)
    client.close()
    if o.ready_fd >= 0:
        try:
            os.write(o.ready_fd, b"1")
        except OSError as e:
            log.error("usernet: cannot write to the ready fd %d: %s", o.ready_fd, e.strerror)
            return 1
        finally:
            try:
                os.close(o.ready_fd)
            except OSError:
                pass
    if o.api_socket is not None:
        time.sleep(API_HANDOVER_LINGER)
    return 0


# -------------------------------------------------------------------- the compiled front
#: Set by the compiled front (usernet/slirp4netns_front.c) when it has made the network ready
#: itself: ``tap=FD,ifname=NAME,api=FD,pidfd=FD`` (-1: none), the fds this process inherited.
FRONT_ENV = "_USERNET_FRONT"
#: The front's argv[0], so that messages name the program as it was called.
FRONT_ARGV0_ENV = "USERNET_FRONT_ARGV0"
#: Signals the front blocks before exec'ing us (a SIGTERM sent right after the ready byte
#: waits for the stack's handler instead of killing a half-started interpreter); unblocked once
#: the handlers are in place.
FRONT_BLOCKED_SIGNALS = frozenset((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                                   signal.SIGUSR2))


@dataclass
class Front:
    """What the compiled front did before exec'ing us: the TAP (made, and configured when
    ``-c``), the listening API socket, a pidfd of a PID target; the ready byte is written."""
    tap: int
    ifname: str
    api: int | None
    pidfd: int | None


def take_front(environ=None) -> Front | None:
    """The front's hand-over, removed from the environment (nothing we start inherits it);
    None when this process was started directly. Raises Exit on a value the front never writes."""
    env = os.environ if environ is None else environ
    raw = env.pop(FRONT_ENV, None)
    if raw is None:
        return None
    try:
        f = dict(kv.split("=", 1) for kv in raw.split(","))
        fds = {k: int(f[k]) for k in ("tap", "api", "pidfd")}
        front = Front(fds["tap"], f["ifname"], fds["api"] if fds["api"] >= 0 else None,
                      fds["pidfd"] if fds["pidfd"] >= 0 else None)
    except (KeyError, ValueError):
        raise Exit(1, "", f"usernet: {FRONT_ENV}={raw!r} is not what the compiled front writes\n") from None
    for fd in (front.tap, front.api, front.pidfd):
        if fd is not None and not _cloexec(fd):
            raise Exit(1, "", f"usernet: fd {fd} (from {FRONT_ENV}) is not open\n")
    return front


# -------------------------------------------------------------------- run
def _cloexec(fd: int) -> bool:
    """Keep ``fd`` from leaking into anything we exec; False if it is not open."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        return True
    except OSError:
        return False


def run(o: Options) -> int:
    """Attach, serve, and speak the fd protocol. Returns the exit status; raises Exit,
    NetnsError, TapError or OSError for the caller to print as one line."""
    from .serve import dns_upstream_from_env, ifconfig

    cfg = network_config(o)
    outbound = outbound_addresses(o)
    front = take_front()
    if front is not None:
        o.ready_fd = -1     # the front wrote the ready byte and closed that fd
        from .log import event
        event(log, logging.DEBUG, "front", tap_fd=front.tap, ifname=front.ifname,
              api_fd=front.api, pidfd=front.pidfd)
    from .diagnose import api_socket_problem, check_tun, ping_warning
    if o.api_socket is not None and front is None:
        why = api_socket_problem(o.api_socket)
        if why:
            raise Exit(1, "", f"usernet: {why}\n")
    for fd in (o.exit_fd, o.ready_fd):
        if fd >= 0 and not _cloexec(fd):
            raise Exit(1, "", f"usernet: fd {fd} (given with -e/-r) is not open\n")
    for w in o.warnings:
        print(w, flush=True)
    if front is None:
        check_tun()
    warning = ping_warning()
    if warning:
        log.warning("usernet: %s", warning)
    args = SimpleNamespace(
        offload=True, impair=None, dns_upstream=dns_upstream_from_env(), publish=[],
        publish_from_gateway=False, publish_only_when_bound=False, api_socket=o.api_socket,
        outbound=outbound, api_socket_fd=front.api if front is not None else None,
        # Applied by serve() once everything listens (usernet/sandbox.py), as slirp4netns does.
        enable_sandbox=o.enable_sandbox, enable_seccomp=o.enable_seccomp,
        pcap=o.pcap, pcap_snaplen=o.pcap_snaplen, pcap_max_size=o.pcap_max_size)

    ifc = ifconfig(cfg) if o.configure and front is None else None
    # With the front's fds here no daemon is to be used: the front hands a link to a daemon
    # itself, or leaves the whole start (daemon included) to this path without fds.
    client = _daemon_client(o) if front is None else None
    try:
        return _attach_and_serve(o, cfg, args, ifc, client, front)
    finally:
        if client is not None:
            client.close()


def _attach_and_serve(o: Options, cfg, args, ifc, client, front: Front | None) -> int:
    """Make the TAP (or take the front's), then hand it to the daemon (``client``) or serve it
    here."""
    from . import netns
    from .diagnose import no_process
    from .serve import log_started, new_loop, serve
    pidfd = None
    if front is not None:
        fd, pidfd = front.tap, front.pidfd
        where = f"pid {o.target_pid}" if o.target_pid is not None else o.netns_path
    elif o.target_pid is not None:
        try:
            pidfd = netns.pidfd_open(o.target_pid)
        except ProcessLookupError:
            raise netns.NetnsError(no_process(o.target_pid)) from None
        except OSError:
            pidfd = None
        try:
            fd = netns.attach(pid=o.target_pid, userns_path=o.userns_path, tap_name=o.tapname,
                              configure=ifc)
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            raise
        where = f"pid {o.target_pid}"
    else:
        fd = netns.attach(netns_path=o.netns_path, userns_path=o.userns_path, tap_name=o.tapname,
                          configure=ifc)
        where = o.netns_path
    if client is not None:
        try:
            return _handover(client, o, cfg, args, fd, pidfd, where)
        finally:
            _close_fds(fd, pidfd, o.exit_fd)
    log_started(cfg, where, o.tapname)

    def on_ready(finish):
        import asyncio      # here: a helper that hands its link to the daemon runs no loop
        loop = asyncio.get_running_loop()
        if front is not None:
            # serve() has its handlers now: whatever arrived meanwhile is delivered to them.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FRONT_BLOCKED_SIGNALS)
        if o.ready_fd >= 0:
            # slirp4netns: write(ready_fd, "1", 1), then close. Podman reads one byte and
            # fails the start if it is not '1'.
            try:
                os.write(o.ready_fd, b"1")
            except OSError as e:
                log.error("usernet: cannot write to the ready fd %d: %s", o.ready_fd, e.strerror)
                finish(1)
            finally:
                try:
                    os.close(o.ready_fd)
                except OSError:
                    pass
        if o.exit_fd >= 0:
            # HUP (Podman closed its end, or died), an error, or data: all mean "stop".
            def exit_fd_ready():
                loop.remove_reader(o.exit_fd)
                log.debug("exit fd %d: stopping", o.exit_fd)
                finish(0)
            try:
                loop.add_reader(o.exit_fd, exit_fd_ready)
            except (OSError, ValueError) as e:
                log.error("usernet: cannot watch the exit fd %d: %s", o.exit_fd, e)
                finish(1)

    loop = new_loop()
    try:
        return loop.run_until_complete(serve(cfg, fd, args, watch_pid=o.target_pid,
                                             watch_pidfd=pidfd, on_ready=on_ready))
    finally:
        loop.close()
        _close_fds(fd, pidfd, o.exit_fd)


def _close_fds(tap_fd: int, pidfd, exit_fd: int) -> None:
    """Our copies of the TAP, the pidfd and the exit fd, once served or handed to the daemon
    (the exit fd may already be closed: Podman's end of it is not ours to know)."""
    os.close(tap_fd)
    if pidfd is not None:
        os.close(pidfd)
    if exit_fd >= 0:
        try:
            os.close(exit_fd)
        except OSError:
            pass


def main(argv=None, prog: str | None = None) -> int:
    """The ``usernet-slirp4netns`` console script (and ``usernet slirp4netns``)."""
    if argv is None:
        argv = sys.argv[1:]
    if prog is None:
        prog = (os.environ.pop(FRONT_ARGV0_ENV, None)
                or (sys.argv[0] if sys.argv and sys.argv[0] else "usernet-slirp4netns"))
    from .log import setup
    setup(logging.DEBUG if os.environ.get("USERNET_DEBUG") else logging.INFO)
    try:
        o = parse(argv, prog)
        from .serve import raise_fd_limit
        raise_fd_limit()
        return run(o)
    except Exit as e:
        if e.err:
            sys.stderr.write(e.err)
            sys.stderr.flush()
        if e.out:
            sys.stdout.write(e.out)
            sys.stdout.flush()
        return e.status
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the one place a fatal error becomes one line
        return report_fatal(e)


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
