"""Namespace entry: get a TAP fd from inside a container's network namespace.

Theory of operation
===================

usernet runs *outside* the container (in the host's network namespace, where
its NAT sockets must live) but its TAP device must be created *inside* the
container's network namespace. The kernel creates a TAP in the netns of the
process that issues TUNSETIFF, and the fd keeps working wherever it is passed
afterwards. So, like slirp4netns:

* **attach** (``attach(pid=...)`` / ``attach(netns_path=...)``): fork a
  child. The child joins the target's user namespace (if it is not ours),
  then its network namespace (``setns``), opens the TAP there, optionally
  configures it over netlink (address, default route, MTU, ``lo`` up), and
  sends the fd back over a unix socketpair with SCM_RIGHTS. It then exits;
  the parent reaps it and returns the fd. The parent never switches
  namespace, so nothing else in usernet (sockets, the event loop, threads)
  is ever in the wrong one, and a failure in the child cannot leave the
  parent half-moved.

  Why a child and not a thread: ``setns(CLONE_NEWUSER)`` refuses (EINVAL) a
  multi-threaded process, and a user namespace can never be left again. A
  forked child is single-threaded and disposable.

  Child errors come back as one line of text over the same socketpair and
  are raised in the parent as :class:`NetnsError`.

* **run** (``spawn_in_new_namespace(argv, resolv_conf_text=...)``): fork a
  child that ``unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS |
  CLONE_NEWPID)``s. The
  handshake, over two pipes (``status``: child -> parent, lines of text;
  ``ctl``: parent -> child, single bytes):

  1. child: unshare, say ``unshared``;
  2. parent: write the child's ``uid_map``, then ``setgroups`` (``deny``,
     only for an unprivileged single mapping), then ``gid_map`` (order
     matters: see :func:`write_id_maps`); send ``M``;
  3. child: now uid 0 in its namespace with full capabilities there: make
     all mounts private, bind-mount a resolv.conf naming our DNS forwarder
     over ``/etc/resolv.conf``, say ``ready``;
  4. parent (the caller): ``attach(pid=handle.pid, configure=...)`` so the
     network is up before CMD starts, then ``handle.go()`` sends ``G``;
  5. child: find CMD (127 if not found, 126 if not executable, like a
     shell), then fork the new PID namespace's init (``unshare --pid
     --fork`` semantics, with a small init of our own as PID 1, like tini):
     it mounts a fresh ``/proc`` (best effort), forks CMD (PID 2), which
     execs with default signals, and reaps every orphan. When CMD exits,
     init exits with CMD's status, and the kernel kills whatever CMD left
     behind in the namespace (``sleep 1000 &``, a hung ``curl``): nothing
     outlives ``usernet run``. The child waits for init and exits with its
     status, so ``handle.wait()`` is still CMD's status.

  The PID namespace is why CMD is not PID 1 itself: PID 1 gets no signal
  it has no handler for (pid_namespaces(7)), so a plain ``sleep`` would
  ignore SIGTERM, and nobody would reap orphans.

  If the parent dies at any point before ``go``, the child sees EOF on
  ``ctl`` and exits; after ``go`` it has ``PR_SET_PDEATHSIG(SIGKILL)`` so CMD
  does not outlive usernet (its network would be dead anyway).

Signals: children restore SIGINT/SIGTERM/SIGPIPE to their defaults (Python
ignores SIGPIPE and turns SIGINT into KeyboardInterrupt; an exec'd CMD must
see neither) and unblock all signals. CMD stays in usernet's process group,
so a terminal's ^C reaches both; the CLI forwards SIGTERM/SIGINT it receives
with ``handle.kill(sig)`` (the run child and init pass ``FORWARDED_SIGNALS``
sent by a process on to CMD, not the terminal's, which CMD got already) and
reports ``handle.wait()``, which maps death by signal N to 128+N like a
shell. ``handle.kill(SIGKILL)`` kills the run child; init has
``PR_SET_PDEATHSIG(SIGKILL)``, and its death takes the namespace with it. ``handle.pidfd`` becomes readable when CMD
exits (for ``loop.add_reader``).

Cleanup: the namespaces vanish with their last user. The child's processes
are one user; **the TAP fd is another** (the tun socket holds a reference to
the netns it was opened in), so close the TAP fd after ``wait()``.

Python 3.11 has no ``os.setns``/``os.unshare`` (3.12 does), hence ctypes.
"""

from __future__ import annotations

import array
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from usernet import tap

log = logging.getLogger(__name__)

# linux/sched.h
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# linux/mount.h
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

# linux/prctl.h
PR_SET_PDEATHSIG = 1

# linux/nsfs.h: NS_GET_USERNS = _IO(0xb7, 0x1): the user namespace owning a namespace fd.
NS_GET_USERNS = (0xB7 << 8) | 0x1

# The C library is already loaded into this process: look its symbols up
# there (ctypes.util.find_library would run ldconfig, at every start).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_CHILD_TIMEOUT = 30.0  # seconds the parent waits for a namespace child's answer

# Signals the run child and the namespace's init pass on to the command. The
# terminal's own signals (si_code SI_KERNEL) are not passed on: the terminal
# already sent them to the whole foreground process group, the command too.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
_SI_KERNEL = 0x80


class NetnsError(RuntimeError):
    """Entering or creating a namespace failed; ``str()`` is one line saying why."""


@dataclass(frozen=True)
class IfConfig:
    """How to configure the TAP inside the namespace.

    IPv4 is static (address, prefix, default route). IPv6, when
    ``ipv6_prefix`` is given (a /64 such as ``"fd00::"``): duplicate address
    detection off on the TAP (slirp4netns does the same: the link has one
    host, and DAD would hold the address back for a second), the address
    SLAAC would form (the prefix and the TAP's modified EUI-64, RFC 4291
    appendix A) added at once, so it is usable before the first router
    advertisement arrives, and a default route via the router's
    link-local address. The stack's advertisements then keep it fresh."""

    address: str  # "10.0.2.100"
    prefixlen: int  # 24
    gateway: str  # "10.0.2.2"
    mtu: int = 1500
    mac: bytes | None = None  # 6 bytes; None leaves the kernel's random MAC
    ipv6_prefix: str | None = None  # "fd00::" (a /64); None: IPv6 not configured
    ipv6_gateway: str = "fe80::2"


def eui64_address(prefix: str, mac: bytes) -> str:
    """The SLAAC address of ``mac`` in the /64 ``prefix`` (RFC 4291 2.5.1, appendix A)."""
    import ipaddress
    iid = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return str(ipaddress.IPv6Address(ipaddress.IPv6Address(prefix).packed[:8] + iid))


# --------------------------------------------------------------------------- syscalls


def _oserror(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2). Raises OSError."""
    if _libc.setns(fd, nstype) != 0:
        raise _oserror(f"setns({_NS_NAMES.get(nstype, hex(nstype))})")


def unshare(flags: int) -> None:
    """unshare(2). Raises OSError."""
    if _libc.unshare(flags) != 0:
        raise _oserror(f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2). Raises OSError."""
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise _oserror(f"mount {target}")


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid``: readable once the process exits (poll/``loop.add_reader``),
    and a race-free target for ``signal.pidfd_send_signal``. Close it when done."""
    return os.pidfd_open(pid)


_NS_NAMES = {CLONE_NEWUSER: "user", CLONE_NEWNET: "net", CLONE_NEWNS: "mnt", 0: "any"}


def _same_ns(fd: int, path: str) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


# --------------------------------------------------------------------------- child plumbing


def _child_prologue() -> None:
    """First thing in every forked child: default signals, no inherited asyncio state."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop owns that fd, not us
    except ValueError:
        pass
    # Forked from inside a running event loop (3.11 does not reset this after
    # fork): libraries that look for a running loop would use the parent's
    # dead copy and hang.
    events = sys.modules.get("asyncio.events")
    if events is not None:
        events._set_running_loop(None)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not exc.filename:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _reap(pid: int) -> int:
    """waitpid, retrying on EINTR; returns the raw status (0 if already reaped)."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# --------------------------------------------------------------------------- attach


def attach(
    *,
    pid: int | None = None,
    netns_path: str | None = None,
    userns_path: str | None = None,
    tap_name: str = "tap0",
    vnet_hdr: bool = True,
    configure: IfConfig | None = None,
) -> int:
    """Create TAP ``tap_name`` in a process's (``pid``) or a bind-mounted
    (``netns_path``) network namespace and return its fd (non-blocking,
    close-on-exec), without this process ever leaving its own namespaces.

    The user namespace joined first is ``/proc/PID/ns/user`` for ``pid``;
    for ``netns_path`` it is ``userns_path`` if given, else the netns's owner
    (NS_GET_USERNS) when that is a namespace below ours. Raises NetnsError.
    """
    if (pid is None) == (netns_path is None):
        raise ValueError("attach: give exactly one of pid= or netns_path=")
    if pid is not None:
        net_path = f"/proc/{pid}/ns/net"
        user_path = userns_path or f"/proc/{pid}/ns/user"
    else:
        net_path, user_path = netns_path, userns_path

    # Open the namespace files here, in the parent, so that "no such process"
    # and "permission denied" are reported plainly and before forking.
    try:
        net_fd = os.open(net_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        from .diagnose import netns_open_error
        raise NetnsError(netns_open_error(net_path, exc, pid)) from None
    user_fd = -1
    try:
        if user_path is not None:
            try:
                user_fd = os.open(user_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                from .diagnose import userns_open_error
                raise NetnsError(userns_open_error(user_path, exc)) from None
        else:
            user_fd = _owner_userns(net_fd)
        if user_fd >= 0 and _same_ns(user_fd, "/proc/self/ns/user"):
            os.close(user_fd)  # setns into our own userns is EINVAL; nothing to join
            user_fd = -1
        return _attach_fork(net_fd, user_fd, tap_name, vnet_hdr, configure, net_path)
    finally:
        os.close(net_fd)
        if user_fd >= 0:
            os.close(user_fd)


def _owner_userns(net_fd: int) -> int:
    """The fd of the user namespace owning ``net_fd``, or -1 if it is not below ours."""
    import fcntl

    try:
        return fcntl.ioctl(net_fd, NS_GET_USERNS)
    except OSError:
        # EPERM: the owner is an ancestor of our userns (e.g. root attaching
        # to a netns made by `ip netns add`): we already have what it takes.
        return -1


def _recv_fd(sock: socket.socket) -> tuple[bytes, list[int]]:
    """recvmsg one message and its SCM_RIGHTS fds, close-on-exec.

    Not socket.recv_fds: on 3.11 it drops its ``flags`` argument, so the fd
    would arrive without MSG_CMSG_CLOEXEC and leak into every child we exec.
    """
    msg, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


def _attach_fork(net_fd, user_fd, tap_name, vnet_hdr, configure, net_path) -> int:
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
        if pid == 0:  # ---- child: never returns
            status = 1
            try:
                parent_sock.close()
                _child_prologue()
                status = _attach_child(child_sock, net_fd, user_fd, tap_name, vnet_hdr, configure)
            except BaseException as exc:  # noqa: BLE001 - report anything, then _exit
                try:
                    child_sock.send(b"E" + _one_line(exc).encode()[:4000])
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(status)
        # ---- parent
        child_sock.close()
        fd = -1
        try:
            parent_sock.settimeout(_CHILD_TIMEOUT)
            try:
                msg, fds = _recv_fd(parent_sock)
            except socket.timeout:
                os.kill(pid, signal.SIGKILL)
                raise NetnsError(f"attach {net_path}: no answer from the namespace child in {_CHILD_TIMEOUT:.0f}s")
            fd = fds[0] if fds else -1
            for extra in fds[1:]:
                os.close(extra)
        finally:
            status = _reap(pid)
        if msg.startswith(b"E") or fd < 0:
            if fd >= 0:
                os.close(fd)
            why = msg[1:].decode(errors="replace") if msg else f"namespace child {_describe_status(status)}"
            if why.startswith(tap.TUN_PATH):
                raise NetnsError(why)     # names the thing and the fix already
            raise NetnsError(f"attach {net_path}: {why}")
        return fd
    finally:
        parent_sock.close()
        child_sock.close()


def _attach_child(sock, net_fd, user_fd, tap_name, vnet_hdr, configure) -> int:
    # Order: user namespace first. Our capabilities over the target netns come
    # from being (after setns) in the userns that owns it; joining the netns
    # first would need CAP_SYS_ADMIN over it from where we stand now, which
    # an unprivileged caller does not have. setns(CLONE_NEWUSER) also needs a
    # single-threaded process (we are a fresh fork) not sharing its fs_struct.
    if user_fd >= 0:
        try:
            setns(user_fd, CLONE_NEWUSER)
        except OSError as exc:
            raise NetnsError(f"cannot join user namespace: {exc.strerror}") from None
    try:
        setns(net_fd, CLONE_NEWNET)
    except OSError as exc:
        raise NetnsError(f"cannot join network namespace: {exc.strerror}") from None
    fd, ifname = tap.open_tap(tap_name, vnet_hdr=vnet_hdr)
    if configure is not None:
        configure_interface(ifname, configure)
    socket.send_fds(sock, [b"O" + ifname.encode()], [fd])
    return 0


def configure_interface(ifname: str, cfg: IfConfig) -> None:
    """In the current netns: ``lo`` up; ``ifname`` MTU, MAC, up; IPv4 address; default route.

    rtnetlink spoken directly (:mod:`usernet.rtnl`: a netlink library's
    import cost more CPU than the rest of start-up). The netlink socket talks
    to the netns we are in now.
    """
    from usernet.rtnl import RTPROT_STATIC, Rtnl

    step = "netlink"
    try:
        with Rtnl() as nl:
            step = "lo up"
            nl.link_set(socket.if_nametoindex("lo"), up=True)
            step = f"{ifname}: no such interface"
            idx = socket.if_nametoindex(ifname)
            step = f"{ifname} mtu {cfg.mtu}"
            nl.link_set(idx, mtu=cfg.mtu)
            if cfg.mac is not None:
                step = f"{ifname} address {cfg.mac.hex(':')}"
                nl.link_set(idx, mac=cfg.mac)
            if cfg.ipv6_prefix is not None:
                # Before the link is up, or the kernel starts DAD on the
                # link-local address it forms then.
                step = f"{ifname} IPv6 sysctls"
                _ipv6_conf(ifname, disable_ipv6="0", accept_dad="0")
            step = f"{ifname} up"
            nl.link_set(idx, up=True)
            step = f"{ifname} address {cfg.address}/{cfg.prefixlen}"
            nl.addr_add(idx, cfg.address, cfg.prefixlen)
            step = f"default route via {cfg.gateway}"
            # proto boot, as ip(8) and slirp4netns leave it.
            nl.route_add_default(cfg.gateway, idx)
            if cfg.ipv6_prefix is not None:
                mac = cfg.mac or nl.link_mac(idx)
                addr6 = eui64_address(cfg.ipv6_prefix, mac)
                step = f"{ifname} address {addr6}/64"
                nl.addr_add(idx, addr6, 64)
                step = f"default route via {cfg.ipv6_gateway}"
                # proto static, as the kernel's own RA-learnt routes are not.
                nl.route_add_default(cfg.ipv6_gateway, idx, proto=RTPROT_STATIC)
    except OSError as exc:
        raise NetnsError(f"configure {step}: {exc.strerror or exc}") from None


def _ipv6_conf(ifname: str, **values: str) -> None:
    """Write ``/proc/sys/net/ipv6/conf/IFNAME/KEY``: /proc/sys/net shows the
    network namespace of the writer, which is the container's here."""
    for key, value in values.items():
        try:
            _write(f"/proc/sys/net/ipv6/conf/{ifname}/{key}", value)
        except FileNotFoundError:
            raise NetnsError("IPv6 is not available in the namespace (no "
                             f"/proc/sys/net/ipv6/conf/{ifname}); run without --enable-ipv6") from None


# --------------------------------------------------------------------------- uid/gid maps


def _subid_range(path: str, uid: int, name: str | None) -> tuple[int, int] | None:
    """The first ``name_or_uid:start:count`` range of ``path`` for this user, or None."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(uid)):
                    start, count = int(parts[1]), int(parts[2])
                    if count > 0:
                        return start, count
    except (OSError, ValueError):
        pass
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def write_id_maps(pid: int, uid: int | None = None, gid: int | None = None) -> str:
    """Write ``pid``'s uid_map/gid_map (it has just unshared CLONE_NEWUSER).

    Returns a short description of the mapping chosen:

    * ``"subid"``: non-root with /etc/subuid+/etc/subgid ranges and the
      setuid helpers newuidmap/newgidmap: ``0 -> uid`` and ``1..N -> range``.
    * ``"identity"``: root (CAP_SETUID over our own userns): every id our own
      namespace has, mapped to itself (``0 0 4294967295`` on the host).
    * ``"single"``: ``0 -> uid``, ``0 -> gid`` only.

    Kernel rules that bite: each map can be written once; an unprivileged
    writer may map only its own euid/egid, and for the gid map must first
    write ``deny`` to /proc/PID/setgroups (else a process in the namespace
    could drop supplementary groups that deny it access: CVE-2014-8989).
    newgidmap wants setgroups left at ``allow``.
    """
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    proc = f"/proc/{pid}"
    # Imported here, not at the top: only a non-root start needs them, and
    # every import is start-up time (bench/startup.py).
    import pwd
    import shutil
    import subprocess

    if uid != 0:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
        sub_u = _subid_range("/etc/subuid", uid, name)
        sub_g = _subid_range("/etc/subgid", uid, name)
        nuid, ngid = shutil.which("newuidmap"), shutil.which("newgidmap")
        if sub_u and sub_g and nuid and ngid:
            try:
                for helper, own, (start, count) in ((nuid, uid, sub_u), (ngid, gid, sub_g)):
                    subprocess.run(
                        [helper, str(pid), "0", str(own), "1", "1", str(start), str(count)],
                        check=True, capture_output=True, timeout=10,
                    )
                return "subid"
            except (subprocess.SubprocessError, OSError) as exc:
                err = getattr(exc, "stderr", b"") or b""
                log.warning("usernet: warning: newuidmap/newgidmap failed (%s): the namespace "
                            "has a single uid; fix: check the ranges of %s in /etc/subuid and "
                            "/etc/subgid", err.decode(errors="replace").strip() or exc, name)
                # Fall through: whichever map is still unwritten gets the single mapping.
    else:
        try:
            _write(f"{proc}/uid_map", _identity_map("/proc/self/uid_map"))
            _write(f"{proc}/gid_map", _identity_map("/proc/self/gid_map"))
            return "identity"
        except OSError as exc:
            log.debug("identity id map refused (%s); using a single-id mapping", exc)

    for kind, own in (("uid", uid), ("gid", gid)):
        path = f"{proc}/{kind}_map"
        if _map_written(path):
            continue
        if kind == "gid":
            try:
                _write(f"{proc}/setgroups", "deny")
            except OSError as exc:
                if exc.errno != errno.EPERM:  # EPERM: already "deny" and locked; fine
                    raise
        _write(path, f"0 {own} 1\n")
    return "single"


def _identity_map(own_map: str) -> str:
    """Map every id that exists in our namespace to itself (one line per range we have)."""
    lines = []
    with open(own_map) as f:
        for line in f:
            inside, _outside, count = line.split()
            lines.append(f"{inside} {inside} {count}")
    return "\n".join(lines) + "\n"


def _map_written(path: str) -> bool:
    try:
        with open(path) as f:
            return bool(f.read().strip())
    except OSError:
        return False


# --------------------------------------------------------------------------- run


class RunNamespace:
    """A child in new user+net+mount namespaces, waiting to exec CMD.

    Made by :func:`spawn_in_new_namespace`. ``pid`` is the child; attach to
    it, then :meth:`go`; :meth:`wait` returns the exit status as a shell
    would. A context manager: leaving it kills (SIGKILL) and reaps the child
    if it is still running and closes the pidfd.
    """

    def __init__(self, pid: int, status_r: int, ctl_w: int, idmap: str):
        self.pid = pid
        self.idmap = idmap  # "subid", "identity" or "single"
        self.pidfd = pidfd_open(pid)
        self._status_r = status_r
        self._ctl_w = ctl_w
        self.returncode: int | None = None

    def go(self) -> None:
        """Release the child to exec CMD (call after ``attach(pid=self.pid, ...)``)."""
        if self._ctl_w < 0:
            raise RuntimeError("go() called twice")
        try:
            os.write(self._ctl_w, b"G")
        except BrokenPipeError:
            pass  # the child already died; wait() will say how
        finally:
            os.close(self._ctl_w)
            self._ctl_w = -1

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the child (via its pidfd: no pid-reuse race). No-op once it has exited."""
        if self.returncode is not None:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def poll(self) -> int | None:
        """The exit status if the child has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                wpid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = self.pid, 0
            if wpid:
                self._set_status(status)
        return self.returncode

    def wait(self) -> int:
        """Wait for the child; its exit status, or 128+N if killed by signal N."""
        if self.returncode is None:
            self._set_status(_reap(self.pid))
        return self.returncode

    def _set_status(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        self.returncode = 128 - code if code < 0 else code
        self._close_pipes()

    def _close_pipes(self) -> None:
        for attr in ("_status_r", "_ctl_w"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def close(self) -> None:
        """Kill (SIGKILL) and reap the child if still there; release fds."""
        if self.returncode is None:
            self.kill(signal.SIGKILL)
            self.wait()
        self._close_pipes()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self) -> "RunNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def spawn_in_new_namespace(
    argv: list[str],
    *,
    resolv_conf_text: str | None,
    env: dict[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> RunNamespace:
    """Fork a child into new user+net+mount namespaces, ready to exec ``argv``.

    Returns once the child has its id maps and (if ``resolv_conf_text`` is
    not None) its private /etc/resolv.conf, and is waiting for
    :meth:`RunNamespace.go`. ``stdin/stdout/stderr`` are fds to give CMD
    (default: ours). Raises NetnsError if the namespaces cannot be made.
    """
    if not argv:
        raise ValueError("spawn_in_new_namespace: empty argv")
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # ---- child: never returns
        code = 1
        try:
            os.close(status_r)
            os.close(ctl_w)
            _child_prologue()
            code = _run_child(argv, env, resolv_conf_text, status_w, ctl_r, (stdin, stdout, stderr), parent_pid)
        except BaseException as exc:  # noqa: BLE001
            try:
                os.write(status_w, b"error " + _one_line(exc).encode()[:4000] + b"\n")
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)

    # ---- parent
    os.close(status_w)
    os.close(ctl_r)
    handle = None
    try:
        reader = _LineReader(status_r)
        line = reader.expect("unshared")
        try:
            idmap = write_id_maps(pid)
        except OSError as exc:
            raise NetnsError(f"cannot write uid/gid maps of {pid}: {exc.strerror or exc}") from None
        os.write(ctl_w, b"M")
        handle = RunNamespace(pid, status_r, ctl_w, idmap)
        while True:
            line = reader.expect("ready", "warning")
            if line.startswith("warning "):
                log.warning("%s", line[len("warning "):])
                continue
            return handle
    except BaseException:
        # Failure or ^C while setting up: no child left behind, no zombie.
        if handle is not None:
            handle.close()
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
            os.close(status_r)
            os.close(ctl_w)
        raise


class _LineReader:
    """Lines from the child's status pipe, with the parent's timeout."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""

    def expect(self, *words: str) -> str:
        import select

        while b"\n" not in self.buf:
            r, _, _ = select.select([self.fd], [], [], _CHILD_TIMEOUT)
            if not r:
                raise NetnsError(f"namespace child: no answer in {_CHILD_TIMEOUT:.0f}s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise NetnsError("namespace child exited during setup")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        line = raw.decode(errors="replace")
        if line.startswith("error "):
            raise NetnsError(line[len("error "):])
        if line.split(" ", 1)[0] not in words:
            raise NetnsError(f"namespace child: unexpected message {line!r}")
        return line


def _run_child(argv, env, resolv_conf_text, status_w, ctl_r, stdio, parent_pid) -> int:
    def say(msg: str) -> None:
        os.write(status_w, msg.encode() + b"\n")

    try:
        # USER in the same call as NET and NS: the new userns becomes the
        # owner of the new net and mount namespaces, which is what gives the
        # container's root its power over them. Unprivileged, NEWNET/NEWNS
        # alone would be EPERM.
        unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID)
    except OSError as exc:
        from .diagnose import userns_error
        raise NetnsError(userns_error(exc.errno)) from None
    say("unshared")
    if os.read(ctl_r, 1) != b"M":  # the parent writes our maps, or dies
        return 1

    # The new mount namespace is a copy of the old one, with the same
    # propagation: for root, shared mounts stay shared, so our bind mount
    # would appear on the host. Make everything private first.
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        raise NetnsError(f"cannot make mounts private: {exc.strerror}") from None
    if resolv_conf_text is not None:
        warning = _bind_resolv_conf(resolv_conf_text)
        if warning:
            say("warning " + warning)
    say("ready")

    if os.read(ctl_r, 1) != b"G":  # EOF: usernet went away before go()
        return 1
    os.close(ctl_r)
    # CMD must not outlive usernet (its network would be gone). Set late:
    # credential changes above could have cleared it.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died between go() and prctl
        return 1
    for target, fd in enumerate(stdio):
        if fd is not None and fd != target:
            os.dup2(fd, target)  # dup2 makes the target inheritable
    environ = os.environ if env is None else env
    path, why = _find_command(argv[0], environ)
    if path is None:
        os.write(2, f"usernet: {argv[0]}: {why}\n".encode())
        return 126 if why == "permission denied" else 127
    return _spawn_init(path, argv, environ)


def _spawn_init(path, argv, environ) -> int:
    """Fork the PID namespace's init (PID 1), which runs CMD; return CMD's status.

    Signals are blocked and taken with ``sigwaitinfo`` in both this process
    and init (no handler runs in between, nothing is lost), so each is a
    loop: a forwarded signal goes on to the one child; SIGCHLD reaps.
    """
    wanted = set(FORWARDED_SIGNALS) | {signal.SIGCHLD}
    for sig in FORWARDED_SIGNALS:
        # A handler of some kind: init gets no signal from outside its
        # namespace for which it has none (pid_namespaces(7)).
        signal.signal(sig, _ignore_signal)
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    # Held open by this process alone: init reads EOF from it once we are gone.
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    init = os.fork()
    if init == 0:  # ---- PID 1 of the new namespace
        code = 1
        try:
            os.close(alive_w)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            # Our parent may have died before the line above (getppid() is 0
            # for a namespace's init, so ask the pipe): EOF means it did.
            try:
                if os.read(alive_r, 1) == b"":
                    return 1
            except BlockingIOError:
                pass
            os.close(alive_r)
            _mount_proc()
            cmd = os.fork()
            if cmd == 0:  # ---- CMD, PID 2
                try:
                    for sig in FORWARDED_SIGNALS:
                        signal.signal(sig, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_SETMASK, set())
                    os.execve(path, argv, environ)
                except OSError as exc:
                    os.write(2, f"usernet: {argv[0]}: {exc.strerror}\n".encode())
                    os._exit(127 if exc.errno == errno.ENOENT else 126)
                os._exit(126)
            code = _supervise(cmd, wanted)
        finally:
            # PID 1 leaving: the kernel SIGKILLs every process left in the
            # namespace and waits for them before this exit completes.
            os._exit(code)
    os.close(alive_r)
    return _supervise(init, wanted)


def _ignore_signal(_sig, _frame) -> None:
    pass


def _supervise(pid: int, wanted: set) -> int:
    """Pass signals sent by processes on to ``pid``; reap every child; when
    ``pid`` exits, return its status as a shell reports it (128+N for death
    by signal N)."""
    while True:
        info = signal.sigwaitinfo(wanted)
        if info.si_signo != signal.SIGCHLD:
            if info.si_code != _SI_KERNEL:
                try:
                    os.kill(pid, info.si_signo)
                except ProcessLookupError:
                    pass
            continue
        while True:
            try:
                wpid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 1
            if wpid == 0:
                break
            if wpid == pid:
                code = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code


def _mount_proc() -> None:
    """A /proc showing this PID namespace (``ps`` inside sees CMD as PID 2).

    Best effort: the kernel refuses a new procfs where the current one is
    partly hidden (inside some containers); CMD then sees the outer /proc,
    as it would without a PID namespace.
    """
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass


def _find_command(name: str, environ) -> tuple[str | None, str]:
    """Resolve ``name`` like a shell: ``(path, "")``, or ``(None, reason)``.

    Not ``os.execvp``: it reports EACCES from an unsearchable PATH directory
    (common for an unprivileged user with root's PATH) as if the command
    existed but were not executable.
    """
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in environ.get("PATH", os.defpath).split(":")]
    seen_not_exec = False
    for path in candidates:
        if os.path.isdir(path):
            seen_not_exec = True
        elif os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path, ""
            seen_not_exec = True
    if seen_not_exec:
        return None, "permission denied"
    return None, "command not found" if "/" not in name else "no such file or directory"


def _bind_resolv_conf(text: str) -> str | None:
    """Bind-mount a file holding ``text`` over /etc/resolv.conf; a warning on failure."""
    target = "/etc/resolv.conf"
    if os.path.islink(target):
        # A mount over a symlink would hit the link's target anyway (mount
        # follows it); name the target so errors say what was tried.
        target = os.path.realpath(target)
    if not os.path.exists(target):
        return f"{target} does not exist; name resolution inside uses the host's setup"
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix="usernet-resolv-", suffix=".conf")
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o644)
        os.close(fd)
        fd = -1
        mount(tmp, target, None, MS_BIND)
        # Read-only, as a hint that editing it inside is pointless; best effort.
        try:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            pass
        return None
    except OSError as exc:
        return f"cannot bind-mount {target}: {exc.strerror or exc}"
    finally:
        if fd >= 0:
            os.close(fd)
        # The mount holds the inode; the name can go now, leaving nothing in /tmp.
        try:
            os.unlink(tmp)
        except OSError:
            pass


__all__ = [
    "CLONE_NEWNET", "CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER", "IfConfig", "NetnsError", "RunNamespace",
    "attach", "configure_interface", "mount", "pidfd_open", "setns", "spawn_in_new_namespace",
    "unshare", "write_id_maps",
]
