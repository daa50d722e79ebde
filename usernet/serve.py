"""Serving one TAP: what both command lines share once a TAP fd is open.

``usernet run``/``attach`` (:mod:`usernet.cli`) and the slirp4netns dialect
(:mod:`usernet.slirp4netns`) differ in how they are told what to do; from
here on they are the same: :func:`serve` builds the gateway and the host
driver on the fd, starts the services (DNS forwarder, forwards, API socket),
applies the sandbox, and runs until the command or the watched process
exits, the TAP goes away, or a signal says stop. Both front ends import this
module; it imports neither, so the top layer's imports run one way:
cli -> slirp4netns -> serve.
"""

import asyncio
import ipaddress
import json
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



def new_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()



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
    from .host.driver import DRAIN_TIMEOUT, HostDriver
    from .stack.gateway import Gateway
    from .services import ServiceOptions, setup_services

    loop = asyncio.get_running_loop()
    gw = Gateway(cfg, offload=set_tap_offload(tap_fd, getattr(args, "offload", True)))
    driver = HostDriver(gw, tap_fd, impair=args.impair, outbound=getattr(args, "outbound", None))
    driver.start(loop)
    try:
        services = await setup_services(driver, ServiceOptions.from_args(args),
                                        ns_pid=child.pid if child is not None else watch_pid)
    except BaseException:
        driver.close()
        raise
    status = 0
    done = loop.create_future()

    def finish(code):
        if not done.done():
            done.set_result(code)

    def on_signal(sig):
        if child is not None:
            log.debug("signal %d: passing it to the command", sig)
            child.kill(sig)
        else:
            finish(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    # SIGUSR1: print every counter (drops included) without stopping.
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info(
        "usernet counters: %s", json.dumps(services.stats(), sort_keys=True)))
    # Everything is open and listening: shut usernet in before CMD starts.
    if getattr(args, "enable_sandbox", False) or getattr(args, "enable_seccomp", False):
        from . import sandbox
        sandbox.apply(args, driver=driver, ns_pid=child.pid if child is not None else watch_pid)
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
            child.kill(signal.SIGTERM)
        else:
            finish(0)

    driver.stopped.add_done_callback(tap_gone)
    if on_ready is not None:
        on_ready(finish)
    try:
        status = await done
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if child is not None:
            loop.remove_reader(child.pidfd)
        if pfd is not None:
            loop.remove_reader(pfd)
            if pfd is not watch_pidfd:
                os.close(pfd)
        # Let what is in flight arrive before tearing down (bounded).
        if not driver.stopped.done():
            await driver.drain(DRAIN_TIMEOUT)
        await services.close()
        driver.close()
        log.debug("counters: %s", json.dumps(services.stats(), sort_keys=True))
    return status



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



def describe(cfg, where, tap):
    return (f"usernet: attached to {where}, {tap} {cfg.guest_str}/{cfg.prefixlen} "
            f"gateway {cfg.gateway_str} dns {cfg.dns_str if cfg.enable_dns else 'off'} "
            f"mtu {cfg.mtu}"
            + (f", ipv6 {cfg.network6} gateway {cfg.network6[2]}" if cfg.enable_ipv6 else ""))
