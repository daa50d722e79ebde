"""Serving one TAP: what both command lines share once a TAP fd is open.

``usernet run``/``attach`` (:mod:`usernet.cli`) and the slirp4netns dialect
(:mod:`usernet.slirp4netns`) differ in how they are told what to do; from
here on they are the same: :func:`serve` builds the gateway and the host
driver on the fd, starts the services (DNS forwarder, forwards, API socket),
applies the sandbox, and runs until the command or the watched process
exits, the TAP goes away, or a signal says stop. Both front ends import this
module; it imports neither, so the top layer's imports run one way:
cli -> slirp4netns -> serve.

asyncio is imported where it is used: ``usernet run/attach --daemon`` clients
never start a loop, and importing it is most of their start (~30 ms).
"""

import ipaddress
import logging
import os
import signal

log = logging.getLogger("usernet")

DNS_UPSTREAM_ENV = "USERNET_DNS_UPSTREAM"




def parse_hostport(text: str) -> tuple:
    """ADDR[:PORT] or [V6]:PORT (a DNS upstream); ValueError with a message for the user."""
    host, port = text, 53
    if text.startswith("["):
        h, _, rest = text[1:].partition("]")
        host = h
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        port = int(port)
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"bad address {text!r} (want ADDR[:PORT])") from None
    return host, port



def dns_upstream_from_env(environ=None):
    """``$USERNET_DNS_UPSTREAM``: upstream resolvers (ADDR[:PORT], comma- or space-separated)
    for when no ``--dns-upstream`` is given: Podman starts its network helper with no upstream
    flag, but with its own environment. Empty or unset: [] (resolv.conf). Raises ValueError."""
    text = (os.environ if environ is None else environ).get(DNS_UPSTREAM_ENV, "")
    out = []
    for item in text.replace(",", " ").split():
        try:
            out.append(parse_hostport(item))
        except ValueError as e:
            raise ValueError(f"{DNS_UPSTREAM_ENV}: {e}") from None
    return out



def report_fatal(e: Exception) -> int:
    """A fatal error at start or run time as one line on stderr; the exit status (1). Errors
    that explain themselves (namespace, TAP, OS, bad value) are printed as they are; anything
    else is a bug, named by its type (the traceback goes to the --debug log)."""
    import sys
    from .diagnose import StartError, message
    from .netns import NetnsError
    from .tap import TapError
    if isinstance(e, (StartError, NetnsError, TapError, OSError, ValueError)):
        print(f"usernet: {message(e)}", file=sys.stderr)
    else:
        log.debug("fatal", exc_info=True)
        print(f"usernet: fatal: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


def raise_fd_limit() -> None:
    """Each flow holds a host socket: raise the soft RLIMIT_NOFILE to the
    hard limit (distributions often default to a 1024 soft limit, below
    usernet's flow limits)."""
    import resource
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        log.debug("cannot raise RLIMIT_NOFILE: %s", e)


# File descriptors kept for what is not a flow: the TAP, the API socket and
# its connections (api.API_MAX_CONNECTIONS), DNS upstream sockets, forward
# listeners, the log and capture files.
FD_RESERVE = 1024


def fit_flow_limit(cfg, explicit: bool = False) -> None:
    """Lower ``cfg.max_tcp_flows`` to what RLIMIT_NOFILE (already raised to
    its hard limit) leaves once every UDP and echo flow and ``FD_RESERVE``
    have theirs, but never below half the limit: each TCP flow holds one
    host socket, and a flow table that outgrows the fds would fail new
    connects (``tcp_host_connect_failed_fd_limit``) where a full table
    evicts its longest-silent idle flow first. A limit given on the command
    line (``explicit``) that does not fit is a warning; the default
    lowered, a debug line."""
    import resource
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ValueError, OSError):
        return
    if soft == resource.RLIM_INFINITY:
        return
    room = max(soft - FD_RESERVE - cfg.max_udp_flows - cfg.max_icmp_flows, soft // 2)
    if cfg.max_tcp_flows <= room:
        return
    log.log(logging.WARNING if explicit else logging.DEBUG,
            "usernet: %d TCP flows at once, not %d: the open-file limit is %d "
            "(raise it with ulimit -n, or the service's LimitNOFILE)",
            room, cfg.max_tcp_flows, soft)
    cfg.max_tcp_flows = room


def new_loop():
    import asyncio
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()



# Signals that stop usernet: passed on to a run command, or the end of an attach.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Seconds a run command has after a stop signal before it is killed (--kill-grace).
KILL_GRACE = 10.0


async def serve(cfg, tap_fd, args, *, child=None, watch_pid=None, watch_pidfd=None,
                on_ready=None) -> int:
    """Run the stack on ``tap_fd`` until the child exits, the watched process
    is gone, or SIGINT/SIGTERM. Returns the exit status.

    ``child`` (a RunNamespace) is released to exec its command only once the
    signal handlers are in place, so a SIGTERM is always passed on to it.
    ``watch_pidfd`` is a pidfd opened before attaching (a pid may be gone by
    now; the pidfd still reports its exit); ``watch_pid`` opens one here.
    ``on_ready(finish)`` is called once everything listens (the slirp4netns
    ready fd); ``finish(status)`` ends the run (its exit fd)."""
    import asyncio
    from .host.driver import DRAIN_TIMEOUT, EXIT_FLUSH_TIMEOUT, HostDriver
    from .stack.gateway import Gateway
    from .services import ServiceOptions, setup_services

    loop = asyncio.get_running_loop()
    fit_flow_limit(cfg, getattr(args, "max_tcp_flows", None) is not None)
    gw = Gateway(cfg, offload=set_tap_offload(tap_fd, getattr(args, "offload", True)))
    driver = HostDriver(gw, tap_fd, impair=args.impair, outbound=getattr(args, "outbound", None))
    # Not reading the TAP yet: no frame of the container's is looked at before the sandbox
    # below is in force (with the compiled slirp4netns front the container may be running and
    # sending already; its frames wait in the TAP's queue).
    driver.start(loop, read_tap=False)
    pcap = None
    try:
        pcap = open_pcap(args, driver)
        services = await setup_services(driver, ServiceOptions.from_args(args),
                                        ns_pid=child.pid if child is not None else watch_pid)
    except BaseException:
        driver.close()
        if pcap is not None:
            pcap.close()
        raise
    status = 0
    done = loop.create_future()
    grace = getattr(args, "kill_grace", KILL_GRACE)
    escalation = None

    def finish(code):
        if not done.done():
            done.set_result(code)

    def stop_child(sig):
        # Pass the signal on; a command that has not exited after the grace
        # period is killed (SIGKILL to the run child takes the namespace's
        # init with it, and with init every process in the namespace).
        nonlocal escalation
        child.kill(sig)
        if escalation is None and grace is not None:
            escalation = loop.call_later(grace, kill_child)

    def kill_child():
        if child.returncode is None:
            log.warning("usernet: the command did not exit %gs after being told to stop; "
                        "killing it", grace)
            child.kill(signal.SIGKILL)

    def on_signal(sig):
        if done.done():
            return              # already stopping: the drain is bounded anyway
        if child is not None:
            log.debug("signal %d: passing it to the command", sig)
            stop_child(sig)
        else:
            finish(0)

    def print_counters():
        # Asked for, so at a level the log shows whatever its threshold.
        log.log(max(logging.INFO, log.getEffectiveLevel()), "",
                extra={"event": "counters", "fields": {"counters": services.stats()}})

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    # SIGUSR1: print every counter (drops included) without stopping; it
    # stays handled through the exit drain. SIGUSR2 means nothing to us.
    loop.add_signal_handler(signal.SIGUSR1, print_counters)
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    # Everything is open and listening: shut usernet in before CMD starts.
    if getattr(args, "enable_sandbox", False) or getattr(args, "enable_seccomp", False):
        from . import sandbox
        sandbox.apply(args, driver=driver, ns_pid=child.pid if child is not None else watch_pid)
    driver.read_tap()
    pfd = watch_pidfd
    if child is not None:
        loop.add_reader(child.pidfd, lambda: finish(child.wait()))
        child.go()
    elif pfd is None and watch_pid is not None:
        from .netns import pidfd_open
        try:
            pfd = pidfd_open(watch_pid)
        except ProcessLookupError:
            log.info("process %d exited; stopping", watch_pid)
            finish(0)
        except OSError:
            pfd = None
    if pfd is not None:
        def watched_exited():
            loop.remove_reader(pfd)
            log.info("process %s exited; stopping", watch_pid if watch_pid is not None else "")
            finish(0)
        loop.add_reader(pfd, watched_exited)
    def tap_gone(_f):
        # The TAP (or its namespace) vanished: there is no network left to
        # serve. A command still running gets SIGTERM; its exit (seen by the
        # pidfd reader) ends the run. Never a blocking wait in a callback.
        if child is not None:
            stop_child(signal.SIGTERM)
        else:
            finish(0)

    driver.stopped.add_done_callback(tap_gone)
    if on_ready is not None:
        on_ready(finish)
    try:
        status = await done
    finally:
        if escalation is not None:
            escalation.cancel()
        if child is not None:
            loop.remove_reader(child.pidfd)
        if pfd is not None:
            loop.remove_reader(pfd)
            if pfd is not watch_pidfd:
                os.close(pfd)
        # Let what is in flight arrive before tearing down (bounded). The
        # signal handlers stay through it: a SIGUSR1 now prints counters, a
        # SIGTERM is ignored (the drain ends by itself), and neither kills us
        # with the API socket left behind.
        try:
            if not driver.stopped.done():
                await driver.drain(DRAIN_TIMEOUT)
            # What the container was told was delivered reaches the host peers
            # before their sockets are reset.
            await driver.flush_host(EXIT_FLUSH_TIMEOUT)
        finally:
            try:
                await services.close()
                driver.close()
                if pcap is not None:
                    pcap.close()
                log.debug("", extra={"event": "counters", "fields": {"counters": services.stats()}})
            finally:
                for sig in STOP_SIGNALS + (signal.SIGUSR1, signal.SIGUSR2):
                    loop.remove_signal_handler(sig)
                # Between here and the process's exit, a stray SIGUSR1/2
                # must not kill us either (their default is to terminate).
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    return status



def open_pcap(args, driver):
    """``--pcap FILE``: a :class:`usernet.pcap.PcapWriter` recording ``driver``'s
    TAP, or None. A file that cannot be opened is a start error naming it."""
    path = getattr(args, "pcap", None)
    if not path:
        return None
    from .pcap import DEFAULT_SNAPLEN, PcapWriter
    try:
        w = PcapWriter(path, snaplen=getattr(args, "pcap_snaplen", None) or DEFAULT_SNAPLEN,
                       max_size=getattr(args, "pcap_max_size", None))
    except OSError as e:
        raise OSError(f"--pcap {path}: cannot write it: {e.strerror}") from None
    w.attach(driver)
    log.debug("pcap: capturing to %s", path)
    return w


def set_tap_offload(fd: int, want: bool) -> bool:
    """Turn the TAP's checksum + TSO offloads on (or explicitly off); True when on.

    Done here, in the parent, on the passed fd (TUNSETOFFLOAD works outside
    the namespace). A kernel that refuses costs nothing but speed: one debug
    line, and the plain-frame path."""
    from . import tap
    try:
        tap.set_offload(fd, tap.DEFAULT_OFFLOAD if want else 0)
    except OSError as e:
        if want:
            log.debug("TAP offloads unavailable (%s): using plain frames", e)
        return False
    return want



def ifconfig(cfg):
    from .netns import IfConfig
    return IfConfig(cfg.guest_str, cfg.prefixlen, cfg.gateway_str, cfg.mtu, cfg.guest_mac,
                    ipv6_prefix=str(cfg.network6.network_address) if cfg.enable_ipv6 else None)



def log_started(cfg, where, tap, **extra) -> None:
    """The one start line (``event=attached``): where, the TAP and the addresses
    (and, through the daemon, its socket and the link's id)."""
    from .log import event
    f = {"where": where, "tap": tap, "addr": f"{cfg.guest_str}/{cfg.prefixlen}",
         "gateway": cfg.gateway_str, "dns": cfg.dns_str if cfg.enable_dns else "off",
         "mtu": cfg.mtu}
    if cfg.enable_ipv6:
        f.update(ipv6=str(cfg.network6), gateway6=str(cfg.network6[2]))
    f.update(extra)
    event(log, logging.INFO, "attached", **f)


def describe(cfg, where, tap):
    return (f"usernet: attached to {where}, {tap} {cfg.guest_str}/{cfg.prefixlen} "
            f"gateway {cfg.gateway_str} dns {cfg.dns_str if cfg.enable_dns else 'off'} "
            f"mtu {cfg.mtu}"
            + (f", ipv6 {cfg.network6} gateway {cfg.network6[2]}" if cfg.enable_ipv6 else ""))
