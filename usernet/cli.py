"""The ``usernet`` command line.

    usernet run [OPTIONS] -- CMD [ARGS...]     new user+net+mount namespace for CMD
    usernet attach [OPTIONS] PID|PATH [TAP]    join an existing namespace (like slirp4netns)
    usernet fwd add|list|rm --api-socket PATH  talk to a running usernet's API socket
    usernet slirp4netns [OPTION]... PID|PATH TAPNAME   slirp4netns 1.2's command line
                                                (also the usernet-slirp4netns script)

Every bad value is one line on stderr naming the flag, and exit status 1;
never a traceback. A fatal error at run time is one clear line and a non-zero
exit status.
"""

import argparse
import json
import logging
import os
import sys

from .serve import (log_started, report_fatal, dns_upstream_from_env, ifconfig, new_loop,
                    parse_hostport, raise_fd_limit, serve)

log = logging.getLogger("usernet")


class UsageError(Exception):
    """A bad command line; the message names the flag."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


# ------------------------------------------------------------------ options
def _arg_type(parse, name):
    """An argparse type from ``parse(text)``, which raises ValueError with a
    message for the user (the checks live beside what they protect)."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = name        # argparse names the type in its messages
    return convert


def _parse_mtu(text):
    from .stack.config import check_mtu
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    return check_mtu(v)


def _parse_cidr(text):
    from .stack.config import parse_cidr
    return str(parse_cidr(text))


def _parse_mac(text):
    from .wire.ether import mac_parse
    mac = mac_parse(text)
    if mac[0] & 1:
        raise ValueError(f"{text!r} is a multicast address")
    return mac


def parse_size(text):
    """A byte count: an integer with an optional K, M or G suffix (powers of 1024)."""
    from .stack.config import MIN_MEMORY_BUDGET
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1 << (10 * ("KMG".index(t[-1]) + 1))
        t = t[:-1]
    try:
        v = int(t) * mult
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 256M)") from None
    if v < MIN_MEMORY_BUDGET:
        raise ValueError(f"{text!r}: at least {MIN_MEMORY_BUDGET >> 20}M")
    return v


def _parse_seconds(text):
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not 0 < v <= 86400:
        raise ValueError(f"{text!r}: seconds in (0, 86400]")
    return v


_mtu = _arg_type(_parse_mtu, "mtu")
_size = _arg_type(parse_size, "size")
_seconds = _arg_type(_parse_seconds, "seconds")
_cidr = _arg_type(_parse_cidr, "cidr")
_mac = _arg_type(_parse_mac, "mac")


def _parse_publish(text):
    from .publish import parse_publish
    return parse_publish(text)


def _check_impair(text):
    from .host.driver import Impairment
    from collections import Counter
    Impairment.parse(text, Counter(), "check")
    return text


_hostport = _arg_type(parse_hostport, "hostport")
_publish = _arg_type(_parse_publish, "publish")
_impair = _arg_type(_check_impair, "impair")


def _parse_grace(text):
    v = float(text)
    if not 0 <= v <= 3600:
        raise ValueError("must be 0..3600 seconds")
    return v


def _parse_prefix6(text):
    from .stack.config import NetConfig
    NetConfig(ipv6_prefix=text)          # the one check: a /64 that can be the container's
    return text


_prefix6 = _arg_type(_parse_prefix6, "prefix6")
_grace = _arg_type(_parse_grace, "grace")


def _parse_pcap_size(text):
    from .pcap import parse_size
    return parse_size(text)


def _parse_pcap_snaplen(text):
    from .pcap import parse_snaplen
    return parse_snaplen(text)


def _parse_max_tcp_flows(text):
    from .stack.config import MAX_TCP_FLOWS_CEILING
    if not text.isdigit() or not 1 <= int(text) <= MAX_TCP_FLOWS_CEILING:
        raise ValueError(f"must be 1..{MAX_TCP_FLOWS_CEILING}, got {text!r}")
    return int(text)


_max_tcp_flows = _arg_type(_parse_max_tcp_flows, "max_tcp_flows")
_pcap_size = _arg_type(_parse_pcap_size, "size")
_pcap_snaplen = _arg_type(_parse_pcap_snaplen, "snaplen")


def _common(p):
    from .stack.config import DEFAULT_CIDR, DEFAULT_IPV6_PREFIX, DEFAULT_MTU, MAX_MTU, MIN_MTU
    g = p.add_argument_group("network")
    g.add_argument("-6", "--enable-ipv6", action="store_true",
                   help="IPv6 too: router advertisements for the --ipv6-prefix /64, "
                        "gateway prefix::2 (host ::1), DNS prefix::3")
    g.add_argument("--ipv6-prefix", type=_prefix6, default=DEFAULT_IPV6_PREFIX, metavar="PREFIX/64",
                   help=f"the container's IPv6 network with --enable-ipv6 (default {DEFAULT_IPV6_PREFIX})")
    g.add_argument("--mtu", type=_mtu, default=DEFAULT_MTU,
                   help=f"MTU of the TAP ({MIN_MTU}..{MAX_MTU}, default {DEFAULT_MTU})")
    g.add_argument("--cidr", type=_cidr, default=DEFAULT_CIDR,
                   help=f"virtual network (default {DEFAULT_CIDR}; prefix 1..25)")
    g.add_argument("--disable-host-loopback", action="store_true",
                   help="refuse every path to the host itself: the gateway address, 127.0.0.0/8, "
                        "0.0.0.0, the host's own addresses (and ::1, fd00::2, ::ffff:127.0.0.1 "
                        "with -6)")
    g.add_argument("--allow-link-local", action="store_true",
                   help="let the container reach 169.254.0.0/16 on the host side (refused by "
                        "default: cloud metadata services live there)")
    g.add_argument("--macaddress", type=_mac, default=None, help="MAC address of the TAP")
    g.add_argument("--disable-dns", action="store_true", help="no DNS forwarder at network+3")
    g.add_argument("--dns-upstream", type=_hostport, action="append", default=[],
                   metavar="ADDR[:PORT]", help="upstream resolver (repeatable; default: $USERNET_DNS_UPSTREAM, "
                        "comma-separated, else resolv.conf)")
    g.add_argument("--disable-dhcp", action="store_true", help="no DHCP server")
    g.add_argument("-p", "--publish", type=_publish, action="append", default=[],
                   metavar="[ADDR:]PORT[-END]:PORT[-END][/tcp|/udp]", help="forward a host port inward")
    g.add_argument("--publish-from-gateway", action="store_true",
                   help="forwarded connections reach the container from the gateway address "
                        "(and a port usernet picks) instead of the client's real address")
    g.add_argument("--publish-only-when-bound", action="store_true",
                   help="listen on a forwarded host port only while the container has the "
                        "port bound (polled from /proc/PID/net), so a client gets "
                        "ECONNREFUSED, not a reset")
    g.add_argument("--api-socket", metavar="PATH", help="slirp4netns-compatible JSON API socket")
    g.add_argument("--impair", type=_impair, metavar="loss=F,dup=F,reorder=F,seed=N",
                   help="(testing) drop/duplicate/reorder frames between TAP and stack")
    off = g.add_mutually_exclusive_group()
    off.add_argument("--offload", dest="offload", action="store_true", default=True,
                     help="TAP checksum and TCP segmentation offloads: 64 KiB TCP frames "
                          "both ways (default)")
    off.add_argument("--no-offload", dest="offload", action="store_false",
                     help="no TAP offloads: MTU-sized, fully checksummed frames")
    dm = p.add_argument_group("daemon (one usernet for many namespaces: docs/daemon.md)")
    dm.add_argument("--daemon", action="store_true",
                    help="hand the TAP to a running `usernet daemon` instead of serving it "
                         "from this process (attach exits once the daemon has it)")
    dm.add_argument("--daemon-socket", metavar="PATH",
                    help="the daemon's socket (implies --daemon; default $USERNET_DAEMON_SOCKET, "
                         "else $XDG_RUNTIME_DIR/usernet/daemon.sock)")
    dm.add_argument("--network", metavar="NAME",
                    help="with --daemon: join the named network (usernet network create NAME): "
                         "its links share one switch, reach each other directly and by name; "
                         "the address comes from the network")
    dm.add_argument("--name", metavar="NAME",
                    help="with --daemon: this link's name; on a network, other links resolve "
                         "NAME and NAME.NETWORK to it")
    lg = p.add_argument_group("logging (key=value lines on stderr)")
    lg.add_argument("-v", "--verbose", action="store_true",
                    help="info lines too (run is quiet on success without it; attach prints "
                         "its start line anyway)")
    lg.add_argument("--debug", action="store_true",
                    help="debug lines too: each flow's open and close, counters that moved")
    lg.add_argument("--log-file", metavar="PATH", help="append the log to PATH instead of stderr")
    d = p.add_argument_group("capture")
    d.add_argument("--pcap", metavar="FILE",
                   help="write every frame between the container and usernet (both ways) to "
                        "FILE in pcap format (tcpdump -r, Wireshark); with offloads, TCP "
                        "frames are the 64 KiB segments as they crossed the TAP")
    d.add_argument("--pcap-snaplen", type=_pcap_snaplen, metavar="N",
                   help="keep at most N bytes of each frame (default 262144: all of it)")
    d.add_argument("--pcap-max-size", type=_pcap_size, metavar="BYTES",
                   help="when FILE would grow past BYTES (K, M, G suffixes), rename it to "
                        "FILE.1 and start again: at most twice BYTES on disk")
    h = p.add_argument_group("hardening")
    from .stack.config import DEFAULT_MEMORY_BUDGET, MAX_TCP_FLOWS, TCP_FIN_TIMEOUT
    h.add_argument("--memory-budget", type=_size, default=DEFAULT_MEMORY_BUDGET, metavar="SIZE",
                   help="bytes buffered across all flows, reassembly and DNS; past it new "
                        f"flows are refused and windows shrink (default {DEFAULT_MEMORY_BUDGET >> 20}M)")
    h.add_argument("--max-tcp-flows", type=_max_tcp_flows, default=None, metavar="N",
                   help="TCP flows at once; past it the longest-silent idle flow is evicted, "
                        f"else a new connection is reset (default {MAX_TCP_FLOWS}, lowered "
                        "to what the open-file limit allows)")
    h.add_argument("--tcp-fin-timeout", type=_seconds, default=TCP_FIN_TIMEOUT, metavar="SECONDS",
                   help="probe a flow the container half-closed after this much silence, "
                        f"and tear it down if the container's side is gone (default {TCP_FIN_TIMEOUT:g})")
    h.add_argument("--enable-sandbox", "--create-sandbox", dest="enable_sandbox",
                   action="store_true",
                   help="once set up, pivot_root into an empty read-only tmpfs keeping only "
                        "resolv.conf and the API socket's directory, and drop every "
                        "capability but CAP_NET_BIND_SERVICE")
    h.add_argument("--enable-seccomp", action="store_true",
                   help="once set up, refuse (EPERM) every syscall a running usernet does "
                        "not need: no exec, no fork, no mount")


# Examples at the end of each --help (the manual: docs/README.md).
EPILOG_MAIN = """\
examples:
  usernet run -- curl http://10.0.2.2:8000/        # a command with its own network; the host's
                                                   # 127.0.0.1 is 10.0.2.2 inside
  usernet run -p 8080:80 -- python3 -m http.server 80   # host port 8080 -> the command's port 80
  unshare --user --map-root-user --net sleep 1000 &  usernet attach $!   # an existing namespace
  usernet fwd list --api-socket /run/user/1000/usernet.sock
  usernet slirp4netns --configure --mtu=65520 PID tap0          # slirp4netns's command line

Each subcommand has its own --help. The manual: docs/README.md.
"""

EPILOG_RUN = """\
examples:
  usernet run -- ip addr                          # tap0 10.0.2.100/24, default via 10.0.2.2
  usernet run -- curl http://10.0.2.2:8000/       # reaches the host's 127.0.0.1:8000
  usernet run -6 -- ping -c1 fd00::2              # IPv6 too; fd00::2 is the host's ::1
  usernet run -p 8080:80 -p 5353:53/udp -- CMD    # publish host ports into the namespace
  usernet run --api-socket /tmp/u.sock -- CMD     # then: usernet fwd list --api-socket /tmp/u.sock
  usernet run --mtu 65520 --disable-host-loopback -- CMD

The exit status is CMD's (128+N if killed by signal N); 1 if usernet cannot start.
"""

EPILOG_ATTACH = """\
examples:
  unshare --user --map-root-user --net sleep 1000 &
  usernet attach $!                               # tap0 in that process's network namespace
  usernet attach --netns-type=path /run/netns/web # a named namespace (ip netns add web)
  usernet attach --no-configure $! tap1           # make the TAP, leave its addresses to you

usernet stops when the process exits (pid form), or on SIGINT/SIGTERM.
"""

EPILOG_DAEMON = """\
examples:
  usernet daemon &                                  # one process for every namespace below
  usernet attach --daemon $PID                      # hand PID's namespace to it; exits at once
  usernet run --daemon -p 8080:80 -- CMD            # run stays only as CMD's parent
  usernet daemon status                             # links, addresses, flows, bytes, memory
  usernet daemon stop                               # (or SIGTERM) every link closed, exit 0
"""

EPILOG_NETWORK = """\
examples:
  usernet network create app                        # 10.89.0.0/24 (the first free /24)
  usernet run --daemon --network app --name web -- python3 -m http.server 8080 &
  usernet run --daemon --network app -- wget -qO- http://web:8080/
  usernet network ls                                # networks and their links
  usernet network rm app                            # refused while links use it
"""

EPILOG_FWD = """\
examples:
  usernet fwd add --api-socket /tmp/u.sock 8080:80          # host 0.0.0.0:8080 -> container 80
  usernet fwd add --api-socket /tmp/u.sock 127.0.0.1:5353:53/udp
  usernet fwd list --api-socket /tmp/u.sock                 # ids, addresses, listening
  usernet fwd rm --api-socket /tmp/u.sock 1
  usernet fwd stats --api-socket /tmp/u.sock                # every counter, as JSON

The socket is the --api-socket of a running usernet (or usernet-slirp4netns); see docs/api.md.
"""


def build_parser():
    raw = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="usernet", description="userspace network for rootless containers",
                epilog=EPILOG_MAIN, formatter_class=raw)
    from . import __version__
    p.add_argument("--version", action="version", version=f"usernet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{run,attach,daemon,network,fwd,stats,flows,slirp4netns}",
                           parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("run", help="run CMD in a new network namespace with usernet's network",
                       description="Run CMD in new user, network and mount namespaces whose "
                                   "only network is usernet's.",
                       epilog=EPILOG_RUN, formatter_class=raw)
    _common(r)
    from .serve import KILL_GRACE
    r.add_argument("--kill-grace", type=_grace, default=KILL_GRACE, metavar="SECONDS",
                   help="after SIGTERM/SIGINT/SIGHUP is passed to CMD, kill CMD and every "
                        f"process of its namespace if still running (default {KILL_GRACE:g})")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

    a = sub.add_parser("attach", help="give an existing namespace usernet's network",
                       description="Give an existing network namespace (a process's, or a path) "
                                   "usernet's network, as slirp4netns PID tap0 does.",
                       epilog=EPILOG_ATTACH, formatter_class=raw)
    _common(a)
    a.add_argument("--netns-type", choices=("pid", "path"), default="pid",
                   help="whether TARGET is a PID (default) or a netns path")
    a.add_argument("--userns-path", help="user namespace to join first (path form)")
    cfg = a.add_mutually_exclusive_group()
    cfg.add_argument("-c", "--configure", dest="configure", action="store_true", default=True,
                     help="configure the TAP: address, route, MTU, lo up (default)")
    cfg.add_argument("--no-configure", dest="configure", action="store_false",
                     help="leave the TAP unconfigured")
    a.add_argument("target", metavar="PID|PATH")
    a.add_argument("tapname", nargs="?", default="tap0")

    a.add_argument("--exit-fd", type=_arg_type(_parse_fd, "fd"), metavar="FD",
                   help="with --daemon: the daemon frees the link when FD (inherited, handed "
                        "to it) is closed by its other end, as slirp4netns's -e")

    dn = sub.add_parser("daemon", help="serve many namespaces from one process (and ask it)",
                        description="Without an action: run the daemon in the foreground "
                                    "(SIGTERM stops it). status: its links; stop: stop it; "
                                    "detach ID: free one link. See docs/daemon.md.",
                        epilog=EPILOG_DAEMON, formatter_class=raw)
    dn.add_argument("action", nargs="?", choices=("status", "stop", "detach"),
                    help="ask a running daemon (default: run one)")
    dn.add_argument("link", nargs="?", type=_arg_type(_parse_count, "link"), metavar="ID",
                    help="detach: the link's id (see status)")
    dn.add_argument("--socket", "--daemon-socket", dest="socket", metavar="PATH",
                    help="the daemon's socket (default $USERNET_DAEMON_SOCKET, else "
                         "$XDG_RUNTIME_DIR/usernet/daemon.sock, /run/usernet/ for root, "
                         "/tmp/usernet-UID/)")
    dn.add_argument("--json", action="store_true", help="status: the reply as JSON")
    from .daemon import DEFAULT_DAEMON_BUDGET, DEFAULT_MAX_LINKS
    dn.add_argument("--memory-budget", type=_size, default=DEFAULT_DAEMON_BUDGET, metavar="SIZE",
                    help="bytes buffered across all links; past it new flows of every link "
                         f"are refused (default {DEFAULT_DAEMON_BUDGET >> 20}M); each link also "
                         "keeps its own --memory-budget")
    dn.add_argument("--max-links", type=_arg_type(_parse_count, "count"), default=DEFAULT_MAX_LINKS,
                    metavar="N", help=f"namespaces served at once (default {DEFAULT_MAX_LINKS})")
    dn.add_argument("-v", "--verbose", action="store_true", help="(the daemon logs info lines anyway)")
    dn.add_argument("--debug", action="store_true", help="debug lines too")
    dn.add_argument("--log-file", metavar="PATH", help="append the log to PATH instead of stderr")

    nw = sub.add_parser("network", help="named networks for the daemon's links (a switch, DNS "
                                        "by name)",
                        description="Create, list and remove named networks. Links started with "
                                    "--daemon --network NAME share one switch: they reach each "
                                    "other directly and by --name. See docs/networks.md.",
                        epilog=EPILOG_NETWORK, formatter_class=raw)
    nw.add_argument("action", choices=("create", "ls", "rm"))
    nw.add_argument("name", nargs="?", metavar="NAME", help="the network (create, rm)")
    nw.add_argument("--subnet", metavar="CIDR",
                    help="create: its IPv4 subnet (default the first free 10.89.N.0/24)")
    nw.add_argument("--socket", "--daemon-socket", dest="socket", metavar="PATH",
                    help="the daemon whose networks these are (they live beside its socket; "
                         "default as for usernet daemon)")
    nw.add_argument("--json", action="store_true", help="create, ls: JSON for scripts")

    f = sub.add_parser("fwd", help="manage port forwards of a running usernet (API socket)",
                       description="Add, list and remove port forwards of a running usernet "
                                   "through its API socket.",
                       epilog=EPILOG_FWD, formatter_class=raw)
    f.add_argument("action", choices=("add", "list", "rm", "stats"))
    f.add_argument("--api-socket", required=True, metavar="PATH")
    f.add_argument("spec", nargs="?", help="add: [ADDR:]PORT:PORT[/proto]; rm: ID")

    for name, what in (("stats", "every counter of a running usernet (non-zero ones unless --all)"),
                       ("flows", "the live flows of a running usernet, busiest first")):
        m = sub.add_parser(name, help=what, description=what + ". Without --api-socket, the "
                           "running usernet with an API socket (the one serving --pid PID, or "
                           "the only one) is found in the process table.")
        w = m.add_mutually_exclusive_group()
        w.add_argument("--api-socket", metavar="PATH", help="the usernet's API socket")
        w.add_argument("--pid", type=_arg_type(_parse_pid, "pid"), metavar="PID",
                       help="the usernet that is PID, runs PID or serves PID's namespace")
        m.add_argument("--json", action="store_true", help="the API's reply as JSON, for scripts")
        m.add_argument("--watch", type=_arg_type(_parse_secs, "secs"), nargs="?", const=1.0,
                       metavar="SECS", help="refresh every SECS seconds (default 1) in place, "
                                            "with rates")
        m.add_argument("--count", type=_arg_type(_parse_count, "count"), metavar="N",
                       help="with --watch: stop after N refreshes")
        if name == "stats":
            m.add_argument("--all", action="store_true", help="zero counters too")
        else:
            m.add_argument("--limit", type=_arg_type(_parse_limit, "limit"), default=1000,
                           metavar="N", help="at most N flows, busiest first (default 1000)")
    return p


def _positive_int(what):
    def parse(text):
        if not text.isdigit() or int(text) <= 0:
            raise ValueError(f"not {what}: {text!r}")
        return int(text)
    return parse


_parse_pid = _positive_int("a PID")


def _parse_fd(text):
    if not text.isdigit() or int(text) < 3:
        raise ValueError(f"not an inherited fd (3 or more): {text!r}")
    return int(text)
_parse_count = _positive_int("a positive count")


def _parse_secs(text):
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= v <= 3600:
        raise ValueError(f"seconds must be 0.05..3600, got {text}")
    return v


def _parse_limit(text):
    from .api import LIST_FLOWS_MAX
    if not text.isdigit() or not 0 < int(text) <= LIST_FLOWS_MAX:
        raise ValueError(f"limit must be 1..{LIST_FLOWS_MAX}, got {text!r}")
    return int(text)


def make_config(args):
    from .stack.config import MAX_TCP_FLOWS, NetConfig
    return NetConfig(cidr=args.cidr, mtu=args.mtu, host_loopback=not args.disable_host_loopback,
                     guest_mac=args.macaddress, enable_dns=not args.disable_dns,
                     enable_dhcp=not args.disable_dhcp, enable_ipv6=args.enable_ipv6,
                     ipv6_prefix=args.ipv6_prefix, allow_link_local=args.allow_link_local,
                     memory_budget=args.memory_budget, tcp_fin_timeout=args.tcp_fin_timeout,
                     max_tcp_flows=args.max_tcp_flows or MAX_TCP_FLOWS)


# --------------------------------------------------------------------- serve
def _resolv_conf(cfg) -> str:
    if not cfg.enable_dns:
        return "# usernet: DNS disabled (--disable-dns)\n"
    search = f"search {' '.join(cfg.dns_search)}\n" if cfg.dns_search else ""
    return f"# written by usernet\nnameserver {cfg.dns_str}\n{search}"


def cmd_run(args) -> int:
    from . import netns
    cmd = args.cmd
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("run: no command given (usernet run [OPTIONS] -- CMD [ARGS...])")
    cfg = make_config(args)
    _preflight(args)
    client = _daemon_client(args)      # before any namespace is made
    try:
        cfg = _network_lease(client, cfg, args)
        handle = netns.spawn_in_new_namespace(cmd, resolv_conf_text=_resolv_conf(cfg))
    except BaseException:
        if client is not None:
            client.close()
        raise
    fd = -1
    try:
        fd = netns.attach(pid=handle.pid, tap_name="tap0", configure=ifconfig(cfg))
        if client is not None:
            from .daemon import run_command_via_daemon
            return run_command_via_daemon(client, cfg, args, handle, fd)
        log_started(cfg, f"new namespace of pid {handle.pid}", "tap0")
        loop = new_loop()
        try:
            async def main():
                return await serve(cfg, fd, args, child=handle)
            return loop.run_until_complete(main())
        finally:
            loop.close()
    finally:
        if client is not None:
            client.close()
        handle.close()
        if fd >= 0:
            os.close(fd)


def _daemon_client(args):
    """With --daemon: a connection to the daemon (StartError if none runs),
    made before anything else so that a missing daemon costs nothing."""
    if getattr(args, "daemon_socket", None):
        args.daemon = True
    if not getattr(args, "daemon", False):
        if getattr(args, "exit_fd", None) is not None:
            raise UsageError("--exit-fd needs --daemon")
        for flag in ("network", "name"):
            if getattr(args, flag, None) is not None:
                raise UsageError(f"--{flag} needs the daemon (links on a network share its "
                                 "switch); fix: start `usernet daemon` and add --daemon")
        return None
    for flag in ("enable_sandbox", "enable_seccomp"):
        if getattr(args, flag, False):
            raise UsageError(f"--{flag.replace('_', '-')} applies to a whole process: not "
                             "with --daemon (the daemon serves many namespaces)")
    from .daemon import DaemonClient, default_socket_path
    return DaemonClient(args.daemon_socket or default_socket_path())


def _network_lease(client, cfg, args):
    """--network: ask the daemon for this link's address on the network (held
    for the attach that follows); the config with the network's addresses."""
    import dataclasses
    from .stack.config import DEFAULT_CIDR, DEFAULT_IPV6_PREFIX
    if client is None or getattr(args, "network", None) is None:
        return cfg
    if args.cidr != DEFAULT_CIDR or args.ipv6_prefix != DEFAULT_IPV6_PREFIX:
        raise UsageError("--cidr/--ipv6-prefix: a link on a network takes the network's "
                         "subnet (see usernet network ls)")
    from .daemon import reply_error
    from .diagnose import StartError
    reply = client.request({"op": "network_lease", "network": args.network,
                            "name": getattr(args, "name", None)})
    err = reply_error(reply)
    if err is not None:
        raise StartError(f"daemon: {err}")
    fields = dict(reply.get("config") or {})
    fields["dns_search"] = tuple(fields.get("dns_search", ()))
    args.network_lease = reply.get("lease")
    try:
        return dataclasses.replace(cfg, **fields)
    except (TypeError, ValueError) as e:
        raise StartError(f"daemon: the network's lease does not fit: {e}") from None


def _preflight(args) -> None:
    """What can be found wrong before any namespace or child exists, as one
    line with its fix (usernet/diagnose.py); a warning for what only degrades."""
    from .diagnose import check_api_socket_path, check_tun, ping_warning
    check_tun()
    check_api_socket_path(args.api_socket)
    warning = ping_warning()
    if warning:
        log.warning("usernet: %s", warning)


def cmd_attach(args) -> int:
    from . import netns
    cfg = make_config(args)
    target = args.target
    pid = pidfd = None
    if args.netns_type == "pid":
        try:
            pid = int(target)
            if pid <= 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"attach: {target!r} is not a PID (use --netns-type=path for a path)")
    _preflight(args)
    client = _daemon_client(args)      # before the TAP is made
    if client is not None:
        try:
            cfg = _network_lease(client, cfg, args)
            return _attach_via_daemon(client, cfg, args, pid)
        finally:
            client.close()
    if pid is not None:
        # The pidfd first: should the process exit while we attach, its exit
        # is still seen (a pid opened later could be gone, or reused).
        try:
            pidfd = netns.pidfd_open(pid)
        except ProcessLookupError:
            from .diagnose import no_process
            raise netns.NetnsError(no_process(pid)) from None
        except OSError:
            pidfd = None
        try:
            fd = netns.attach(pid=pid, userns_path=args.userns_path, tap_name=args.tapname,
                              configure=ifconfig(cfg) if args.configure else None)
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            raise
        where = f"pid {pid}"
    else:
        fd = netns.attach(netns_path=target, userns_path=args.userns_path, tap_name=args.tapname,
                          configure=ifconfig(cfg) if args.configure else None)
        where = target
    log_started(cfg, where, args.tapname)
    loop = new_loop()
    try:
        return loop.run_until_complete(serve(cfg, fd, args, watch_pid=pid, watch_pidfd=pidfd))
    finally:
        loop.close()
        os.close(fd)
        if pidfd is not None:
            os.close(pidfd)


def _attach_via_daemon(client, cfg, args, pid) -> int:
    """attach --daemon: make the TAP as always, hand it (with a pidfd of PID,
    and --exit-fd) to the daemon, print the start line, exit."""
    from . import netns
    from .daemon import hand_over
    pidfd = fd = None
    try:
        if pid is not None:
            try:
                pidfd = netns.pidfd_open(pid)
            except ProcessLookupError:
                from .diagnose import no_process
                raise netns.NetnsError(no_process(pid)) from None
            fd = netns.attach(pid=pid, userns_path=args.userns_path, tap_name=args.tapname,
                              configure=ifconfig(cfg) if args.configure else None)
            where = f"pid {pid}"
        else:
            fd = netns.attach(netns_path=args.target, userns_path=args.userns_path,
                              tap_name=args.tapname,
                              configure=ifconfig(cfg) if args.configure else None)
            where = args.target
        hand_over(client, cfg, args, fd, pidfd=pidfd, exit_fd=args.exit_fd, where=where,
                  pid=pid, tap=args.tapname)
        return 0
    finally:
        for f in (fd, pidfd):
            if f is not None:
                os.close(f)


def cmd_daemon(args) -> int:
    from .daemon import DaemonClient, default_socket_path, format_status, reply_error, serve_daemon
    path = args.socket or default_socket_path()
    if args.action is None:
        if args.link is not None or args.json:
            raise UsageError("daemon: ID and --json go with an action (status, detach)")
        return serve_daemon(path, default_dir=args.socket is None and
                            not os.environ.get("USERNET_DAEMON_SOCKET"),
                            memory_budget=args.memory_budget, max_links=args.max_links)
    if args.action == "detach":
        if args.link is None:
            raise UsageError("daemon detach: give the link's ID (see usernet daemon status)")
        req = {"op": "detach", "link": args.link}
    elif args.link is not None:
        raise UsageError(f"daemon {args.action}: takes no ID")
    else:
        req = {"op": args.action}
    client = DaemonClient(path)
    try:
        reply = client.request(req)
    finally:
        client.close()
    err = reply_error(reply)
    if err is not None:
        print(f"usernet: daemon: {err}", file=sys.stderr)
        return 1
    if args.action == "status":
        reply.pop("ok", None)
        print(json.dumps(reply, indent=2) if args.json else format_status(reply))
    return 0


def _request(path, req):
    """One API request; a socket that is missing, dead or not ours is one line with its fix."""
    from .api import request
    from .diagnose import StartError, api_client_error
    try:
        return request(path, req)
    except OSError as e:
        raise StartError(api_client_error(path, e)) from None


def cmd_fwd(args) -> int:
    request = _request
    if args.action == "list":
        req = {"execute": "list_hostfwd"}
    elif args.action == "stats":
        req = {"execute": "stats"}
    elif args.action == "rm":
        try:
            fid = int(args.spec or "")
        except ValueError:
            raise UsageError("fwd rm: give the forward's ID (see 'usernet fwd list')") from None
        req = {"execute": "remove_hostfwd", "arguments": {"id": fid}}
    else:
        if not args.spec:
            raise UsageError("fwd add: give [ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]")
        fwds = _publish_or_usage(args.spec)
        out = []
        for f in fwds:
            reply = request(args.api_socket, {"execute": "add_hostfwd", "arguments": {
                "proto": f.proto, "host_addr": f.host_addr, "host_port": f.host_port,
                "guest_addr": "", "guest_port": f.guest_port}})
            out.append(reply)
            if "error" in reply:
                break
        for r in out:
            print(json.dumps(r))
        return 1 if any("error" in r for r in out) else 0
    reply = request(args.api_socket, req)
    print(json.dumps(reply, indent=2 if args.action in ("list", "stats") else None))
    return 1 if "error" in reply else 0


def cmd_monitor(args) -> int:
    from .monitor import MonitorError, run
    if args.count is not None and args.watch is None:
        raise UsageError(f"{args.command}: --count needs --watch")
    try:
        return run(args)
    except MonitorError as e:
        print(f"usernet: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def _publish_or_usage(spec):
    from .publish import parse_publish
    try:
        return parse_publish(spec)
    except ValueError as e:
        raise UsageError(f"fwd add: {e}") from None


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["slirp4netns"]:
        # slirp4netns's own getopt dialect (usernet/slirp4netns.py), not argparse's.
        from .slirp4netns import main as s4main
        return s4main(argv[1:], prog="usernet slirp4netns")
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if (extra and args.command == "fwd" and args.spec is None and len(extra) == 1
                and not extra[0].startswith("-")):
            # argparse fills the optional SPEC positional (with nothing) as soon
            # as it matches ACTION, so "fwd add --api-socket P SPEC" leaves SPEC over.
            args.spec, extra = extra[0], []
        if extra:
            parser.error("unrecognized arguments: " + " ".join(extra))
        if args.command in ("run", "attach") and not args.dns_upstream:
            try:
                args.dns_upstream = dns_upstream_from_env()
            except ValueError as e:
                raise UsageError(str(e)) from None
    except UsageError as e:
        print(f"usernet: {e}", file=sys.stderr)
        return 1
    try:
        # --debug is usernet's debug output, not every library's: only the
        # "usernet" logger is set up (usernet/log.py).
        from . import log as ulog
        if getattr(args, "debug", False):
            level = logging.DEBUG
        elif getattr(args, "verbose", False) or args.command in ("attach", "daemon"):
            level = logging.INFO
        else:
            level = logging.WARNING
        ulog.setup(level, getattr(args, "log_file", None))
        if args.command in ("run", "attach"):
            raise_fd_limit()
        if args.command == "run":
            return cmd_run(args)
        if args.command == "attach":
            return cmd_attach(args)
        if args.command == "daemon":
            return cmd_daemon(args)
        if args.command == "network":
            from .networks import cmd_network
            if args.action in ("create", "rm") and not args.name:
                raise UsageError(f"network {args.action}: give the network's NAME")
            return cmd_network(args)
        if args.command in ("stats", "flows"):
            return cmd_monitor(args)
        return cmd_fwd(args)
    except UsageError as e:
        print(f"usernet: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the one place a fatal error becomes one line
        return report_fatal(e)
