"""``--enable-sandbox`` and ``--enable-seccomp``: shut usernet in once it is set up.

Theory of operation
===================

usernet parses frames from an untrusted container. Once its TAP fd is open,
its port-forward listeners bound and its API socket listening, it needs very
little from the host: sockets in the host's network namespace (already its
own), the host's resolv.conf (re-read when it changes), the API socket's
directory (to remove the socket at exit), ``/proc/PID/net`` for
``--publish-only-when-bound``, and nothing it could exec. :func:`apply` is
called at that point (from ``serve()``, before a ``run`` command starts) and
takes the rest away, in this order, as slirp4netns's ``sandbox.c`` and
``seccompfilter.c`` do:

**Sandbox** (:func:`enter_sandbox`):

1. A new mount namespace. With ``CAP_SYS_ADMIN`` in our user namespace
   (root, or root of Podman's user namespace) ``unshare(CLONE_NEWNS)``
   alone, like slirp4netns. Without it (an unprivileged ``usernet run`` or
   ``attach``) ``unshare(CLONE_NEWUSER | CLONE_NEWNS)`` and a one-id map of
   ourselves (``uid uid 1``, so files and sockets still look like ours; the
   kernel gives the creator every capability in the new namespace, which
   the mounts below need and which step 5 takes away again). Already-open
   fds and the host network namespace are untouched: host ``connect``,
   ``bind``, ping sockets (``ping_group_range`` is checked against the
   global gid) keep working, and so do signals to our own children (kill
   permission compares global uids).

   Kernel quirk: ``unshare(CLONE_NEWUSER)`` is EINVAL in a multi-threaded
   process, and ``unshare``, ``capset`` and ``prctl`` act on the calling
   thread only. So the sandbox is refused (one warning line) if usernet has
   more than one thread at that point; threads made later inherit it all.

2. All mounts private (else root's shared ``/`` would propagate our mounts
   to the host), then a small tmpfs on ``/tmp`` (in our namespace only)
   holding empty mount points at the same paths as what is kept, each a
   recursive bind mount (``nosuid,nodev,noexec``; read-only but for the API
   socket's directory). Sources are opened (``O_PATH``) *before* the tmpfs
   hides ``/tmp``, and bound from ``/proc/self/fd/N``, so a kept directory
   under ``/tmp`` works too.

   What is kept: resolv.conf's target (unless ``--dns-upstream`` makes it
   unused) and the symlinks leading to it; the target's directory when that
   is a directory of its own (``/run/systemd/resolve``: a file replaced by
   ``rename`` stays visible), the file alone when it lives in ``/etc`` (so
   ``/etc/shadow``, readable by uid 0 without capabilities, stays out;
   an ``/etc/resolv.conf`` replaced by rename is then not seen until
   restart, one rewritten in place is). The API socket's directory, writable.
   ``/proc/PID/net`` of the namespace's process for ``--publish-only-when-bound``
   (a bind of that one procfs directory, not all of ``/proc``, whose
   ``/proc/*/root`` would lead back to the host's files).

3. ``pivot_root(".", ".")`` into the tmpfs and a lazy unmount of the old
   root stacked under it (pivot_root(2): "new_root and put_old may be the
   same directory"), then the tmpfs remounted read-only. The working
   directory is restored when it is kept (a relative ``--api-socket``).
   Where ``pivot_root`` is refused (a ramfs root: EINVAL) a ``chroot`` is
   used instead, with a warning.

4. ``PR_SET_NO_NEW_PRIVS``.

5. Capabilities: the bounding set emptied but ``CAP_NET_BIND_SERVICE``
   (``PR_CAPBSET_DROP`` needs ``CAP_SETPCAP``, so before ``capset``),
   ambient cleared, then effective = permitted = ``CAP_NET_BIND_SERVICE``
   only (the API may add a forward on a port below 1024), inheritable none.

**Seccomp** (:func:`enable_seccomp`, libseccomp via ``pyseccomp``): an
allow-list (:data:`ALLOWED_SYSCALLS`, found by tracing usernet through every
integration scenario, see ``docs/internals.md``); everything else fails with
EPERM (chosen over killing: a missed syscall is one clear error in the log,
not a silent death of everybody's network). ``execve``/``execveat`` are not
on it, nor ``fork``: ``clone`` is allowed only with ``CLONE_THREAD`` (a
thread for a pool), ``clone3`` answers ENOSYS, which makes glibc fall back
to ``clone`` where the flags can be checked (clone3's are behind a pointer).
``mount``, ``unshare``, ``setns``, ``ptrace``, ``bpf``, ``keyctl`` and the
like are not on it. The filter is synchronised to all threads (TSYNC).

Everything usernet may import later must be imported before this (no file
outside the sandbox can be read afterwards): :func:`preload` imports the
modules imported lazily at run time (stdlib ones included, e.g. the ``idna``
codec that ``getaddrinfo`` uses) and warms the ICMP path's one lazy socket.

``USERNET_TEST_SANDBOX_PROBE`` (tests only): when set, after the sandbox is
applied usernet tries to open the file it names ("1": /etc/passwd), to
execve /bin/true and to read resolv.conf, and logs
``event=sandbox_probe open=ERRNO|ok exec=ERRNO|ok resolv=ERRNO|ok path=...``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from dataclasses import dataclass

from . import netns

log = logging.getLogger("usernet")

PROBE_ENV = "USERNET_TEST_SANDBOX_PROBE"

# linux/capability.h
CAP_NET_BIND_SERVICE = 10
CAP_SYS_ADMIN = 21
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# linux/prctl.h
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# linux/mount.h (those netns.py does not define)
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
# statvfs f_flag -> the mount flag that must be repeated on a bind remount.
# Kernel quirk: in a user namespace, mounts copied from a more privileged one
# have these flags locked; a remount that would clear one is EPERM.
_ST_TO_MS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
             (os.ST_RELATIME, MS_RELATIME))

O_PATH = getattr(os, "O_PATH", 0o10000000)
CLONE_THREAD = 0x00010000

STAGE = "/tmp"        # where the new root is built (a tmpfs there, in our namespace only)
TMPFS_SIZE = "1m"     # mount points only

_libc = netns._libc
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.pivot_root.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.chroot.argtypes = [ctypes.c_char_p]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


class SandboxError(OSError):
    """A step of the sandbox failed; ``str()`` is one line naming the step."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise SandboxError(e, f"{what}: {os.strerror(e)}")


# ------------------------------------------------------------------ what to keep
@dataclass(frozen=True)
class Keep:
    """One path to bind into the sandbox at the same place."""

    path: str               # absolute, no symlinks
    writable: bool = False


@dataclass(frozen=True)
class Plan:
    keep: tuple[Keep, ...]
    symlinks: tuple[tuple[str, str], ...] = ()   # (where, link text): recreated as is
    cwd: str = "/"


def _resolv_conf_plan(path: str) -> tuple[list[Keep], list[tuple[str, str]]]:
    """Keep ``path`` (resolv.conf) readable at the same name: the symlinks on
    the way, and the final target (its directory when it has one of its own)."""
    links = []
    p = path
    for _ in range(16):  # a symlink loop: give up like the kernel would (ELOOP)
        if not os.path.islink(p):
            break
        where = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        text = os.readlink(p)
        links.append((where, text))
        p = os.path.normpath(os.path.join(os.path.dirname(where), text))
    target = os.path.realpath(path)
    if not os.path.exists(target):
        return [], links
    parent = os.path.dirname(target)
    if parent in ("/", "/etc"):
        return [Keep(target)], links
    return [Keep(parent)], links


def make_plan(*, resolv_conf: str | None, api_socket: str | None = None,
              proc_pid: int | None = None, cwd: str | None = None) -> Plan:
    """What a sandboxed usernet keeps: see the module docstring."""
    cwd = cwd or os.getcwd()
    keep: list[Keep] = []
    links: list[tuple[str, str]] = []
    if resolv_conf:
        keep, links = _resolv_conf_plan(resolv_conf)
    if api_socket:
        keep.append(Keep(os.path.dirname(os.path.realpath(os.path.join(cwd, api_socket))),
                         writable=True))
    if proc_pid is not None:
        keep.append(Keep(f"/proc/{proc_pid}/net"))
    # A directory both kept read-only and writable: writable wins; nested
    # keeps are fine (mounted parent first).
    merged: dict[str, Keep] = {}
    for k in keep:
        if k.path in merged and merged[k.path].writable:
            continue
        merged[k.path] = k
    ordered = sorted(merged.values(), key=lambda k: k.path.count("/"))
    return Plan(tuple(ordered), tuple(links), cwd)


# ------------------------------------------------------------------ the sandbox
def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _cap_last() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def _write_self_maps(uid: int, gid: int) -> None:
    # uid, gid: read before unshare; inside the new namespace, unmapped,
    # they read as the overflow id (65534).
    # Kernel rule: an unprivileged gid_map needs setgroups "deny" first
    # (CVE-2014-8989); a map can be written once.
    for name, text in (("uid_map", f"{uid} {uid} 1\n"), ("setgroups", "deny"),
                       ("gid_map", f"{gid} {gid} 1\n")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            raise OSError(e.errno, f"{name}: {e.strerror}") from None


def _mount_flags_of(path: str) -> int:
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if f & st)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def enter_sandbox(plan: Plan) -> list[str]:
    """Steps 1-5 of the module docstring. Returns warnings (parts not
    applied, each one line); raises SandboxError when nothing could be."""
    warnings: list[str] = []
    n = _threads()
    if n != 1:
        raise SandboxError(errno.EINVAL, f"usernet has {n} threads; the sandbox needs one "
                                         "(unshare and capset act on one thread)")
    last_cap = _cap_last()
    privileged = bool(_cap_eff() & (1 << CAP_SYS_ADMIN))
    euid, egid = os.geteuid(), os.getegid()
    srcs = []
    entered = staged = pivoted = False
    try:
        try:
            netns.unshare(netns.CLONE_NEWNS if privileged
                          else netns.CLONE_NEWUSER | netns.CLONE_NEWNS)
        except OSError as e:
            how = "mount" if privileged else "user+mount"
            raise SandboxError(e.errno, f"cannot create a {how} namespace: {e.strerror}") from None
        entered = True
        if not privileged:
            try:
                _write_self_maps(euid, egid)
            except OSError as e:
                raise OSError(e.errno, f"cannot map our ids in the new user namespace: "
                                       f"{e.strerror}") from None
        netns.mount(None, "/", None, netns.MS_REC | netns.MS_PRIVATE)
        # Sources now: after unshare (kernel quirk: a bind from a mount of
        # the old namespace is EINVAL) and before the tmpfs may hide them.
        for k in plan.keep:
            try:
                srcs.append((k, os.open(k.path, O_PATH | os.O_CLOEXEC)))
            except OSError as e:
                warnings.append(f"{k.path} not kept ({e.strerror})")
        netns.mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    f"size={TMPFS_SIZE},mode=755")
        staged = True
        for k, fd in srcs:
            dst = STAGE + k.path
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            _mkdirs(dst if is_dir else os.path.dirname(dst))
            if not is_dir:
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            try:
                netns.mount(f"/proc/self/fd/{fd}", dst, None, netns.MS_BIND | netns.MS_REC)
            except OSError as e:
                warnings.append(f"{k.path} not kept (bind mount: {e.strerror})")
                continue
            flags = netns.MS_REMOUNT | netns.MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
            flags |= _mount_flags_of(dst)
            if not k.writable:
                flags |= netns.MS_RDONLY
            try:
                netns.mount(None, dst, None, flags)
            except OSError as e:
                warnings.append(f"{k.path} kept but not remounted read-only/noexec ({e.strerror})")
        for where, text in plan.symlinks:
            link = STAGE + where
            if not os.path.lexists(link):
                _mkdirs(os.path.dirname(link))
                os.symlink(text, link)
        os.chdir(STAGE)
        pivoted = True  # from here on, undoing would expose more than going on
        if _libc.pivot_root(b".", b".") == 0:
            # The old root is now stacked under the new one at "/": detach it.
            _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
        else:
            e = ctypes.get_errno()
            _check(_libc.chroot(b"."), "chroot")
            warnings.append(f"pivot_root refused ({os.strerror(e)}): chroot used instead")
        os.chdir("/")
        try:
            netns.mount(None, "/", None, netns.MS_REMOUNT | netns.MS_BIND | netns.MS_RDONLY
                        | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as e:
            warnings.append(f"root not remounted read-only ({e.strerror})")
        if plan.cwd != "/" and os.path.isdir(plan.cwd):
            os.chdir(plan.cwd)
    except OSError as e:
        if not entered:
            raise SandboxError(e.errno, e.strerror or str(e)) from None
        # Past unshare there is no way back: say what is missing, and still
        # take what can be taken.
        warnings.append(f"filesystem not confined ({e.strerror or e})")
        if staged and not pivoted:
            # Our tmpfs would hide the real /tmp (an API socket there, say).
            _libc.umount2(STAGE.encode(), MNT_DETACH)
    finally:
        for _k, fd in srcs:
            os.close(fd)
    try:
        drop_privileges(last_cap)
    except SandboxError as e:
        warnings.append(f"capabilities not dropped ({e.strerror})")
    return warnings


def drop_privileges(last_cap: int | None = None) -> None:
    """NO_NEW_PRIVS, then every capability but CAP_NET_BIND_SERVICE, everywhere."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    last_cap = _cap_last() if last_cap is None else last_cap
    for cap in range(last_cap + 1):
        if cap != CAP_NET_BIND_SERVICE:
            # EINVAL: a capability this kernel does not know; EPERM: no
            # CAP_SETPCAP (then the bounding set was not ours to keep anyway).
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    keep = 1 << CAP_NET_BIND_SERVICE if _cap_permitted() & (1 << CAP_NET_BIND_SERVICE) else 0
    data[0].effective = data[0].permitted = keep
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def _cap_permitted() -> int:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    return data[0].permitted | data[1].permitted << 32


# ------------------------------------------------------------------ seccomp
# What a running usernet calls, found with strace -f through the integration
# scenarios (TCP, UDP, DNS over UDP and TCP, ping, port forwards, the API
# socket, exit) under uvloop and asyncio; see docs/internals.md.
ALLOWED_SYSCALLS = (
    # the event loop
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
    "select", "pselect6", "eventfd2", "pipe2", "timerfd_create", "timerfd_settime",
    # libuv (uvloop) batches epoll_ctl through an io_uring it sets up with
    # the loop, before the sandbox: entering that ring is allowed, making or
    # registering one is not (io_uring_setup, io_uring_register).
    "io_uring_enter",
    # I/O
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "dup", "dup3", "fcntl",
    "ioctl", "lseek",
    # sockets
    "socket", "socketpair", "connect", "bind", "listen", "accept4", "accept", "setsockopt",
    "getsockopt", "getsockname", "getpeername", "shutdown", "sendto", "recvfrom", "sendmsg",
    "recvmsg", "sendmmsg", "recvmmsg",
    # files still reachable in the sandbox (resolv.conf, /proc/PID/net, the API socket)
    "openat", "newfstatat", "fstat", "stat", "lstat", "statx", "getdents64", "readlink",
    "unlink", "unlinkat",
    # an import that was missed still fails plainly (ENOENT) rather than on
    # the getcwd that importlib does first for sys.path's "" entry
    "getcwd",
    # memory
    "mmap", "munmap", "mremap", "mprotect", "brk", "madvise",
    # threads, time, signals
    "futex", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity", "gettid",
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "tgkill", "kill",
    "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getrandom", "uname",
    "prlimit64", "getrusage", "sysinfo", "restart_syscall",
    # our child (run): its exit and the signals passed on to it
    "pidfd_open", "pidfd_send_signal", "wait4", "waitid",
    "exit", "exit_group",
)


def build_filter(allowed=ALLOWED_SYSCALLS):
    """The libseccomp filter (not loaded): allow ``allowed``, ``clone`` only
    for threads, ``clone3`` ENOSYS, everything else EPERM. Raises
    ImportError/RuntimeError when pyseccomp or libseccomp is missing."""
    import pyseccomp as sc
    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    for name in allowed:
        if sc.resolve_syscall(sc.system_arch(), name) < 0:
            continue  # not a syscall on this architecture (e.g. select on aarch64)
        f.add_rule(sc.ALLOW, name)
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    # glibc >= 2.34 makes threads with clone3 and falls back to clone on ENOSYS
    # only; the flags of clone3 are in memory, out of a filter's reach.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # libseccomp's own default, said out loud: NO_NEW_PRIVS before loading.
    f.set_attr(sc.Attr.CTL_NNP, 1)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)
    return f


def enable_seccomp() -> None:
    try:
        f = build_filter()
    except (ImportError, RuntimeError) as e:
        raise SandboxError(errno.ENOSYS, f"libseccomp unavailable ({e})") from None
    try:
        f.load()
    except OSError as e:
        raise SandboxError(e.errno, f"cannot load the seccomp filter: {e.strerror}") from None


# ------------------------------------------------------------------ preload
# Modules imported lazily (inside functions) somewhere on the running path,
# by usernet or the standard library: after the sandbox they could not be
# read. The idna codec: getaddrinfo encodes host names with it.
PRELOAD = (
    "encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_8",
    "encodings.raw_unicode_escape", "unicodedata", "stringprep",
    "concurrent.futures.thread", "asyncio.unix_events", "asyncio.selector_events",
    "json.decoder", "json.encoder", "traceback", "linecache", "tokenize",
    "usernet.api", "usernet.publish", "usernet.services", "usernet.slirp4netns", "usernet.serve",
    "usernet.diagnose",
    "usernet.stack.gateway", "usernet.host.driver",
    "usernet.host.icmp", "usernet.host.dns",
    "usernet.host.forward", "usernet.stack.config", "usernet.wire.ether", "usernet.pcap",
)


def preload(driver=None) -> None:
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # The ICMP path decides on first use between ping sockets and a raw
    # socket; a raw socket needs CAP_NET_RAW, gone once the sandbox is in.
    if driver is not None and driver.icmp is not None:
        driver.icmp.prepare()


# ------------------------------------------------------------------ entry point
def apply(args, *, driver=None, ns_pid: int | None = None) -> dict:
    """Apply what ``args.enable_sandbox``/``args.enable_seccomp`` ask.

    ``ns_pid``: a process in the container's network namespace (kept for
    ``--publish-only-when-bound``). Never raises: a part that cannot be
    applied is one warning line naming it. Returns ``{"sandbox": bool,
    "seccomp": bool}``: what is in force."""
    done = {"sandbox": False, "seccomp": False}
    want_sb = getattr(args, "enable_sandbox", False)
    want_sc = getattr(args, "enable_seccomp", False)
    if not (want_sb or want_sc):
        return done
    preload(driver)
    if want_sc:
        try:
            import pyseccomp  # noqa: F401 - dlopens libseccomp.so.2: before the sandbox
        except (ImportError, RuntimeError) as e:
            log.warning("usernet: --enable-seccomp not applied: libseccomp unavailable (%s)", e)
            want_sc = False
    if want_sb:
        from .host.dns import RESOLV_CONF
        uses_rc = (driver is None or getattr(driver, "dns", None) is not None) \
            and not getattr(args, "dns_upstream", None)
        plan = make_plan(resolv_conf=RESOLV_CONF if uses_rc else None,
                         api_socket=getattr(args, "api_socket", None),
                         proc_pid=ns_pid if getattr(args, "publish_only_when_bound", False) else None)
        try:
            for w in enter_sandbox(plan):
                log.warning("usernet: --enable-sandbox: %s", w)
            done["sandbox"] = True
            log.debug("sandbox: root is a tmpfs keeping %s",
                      ", ".join(k.path for k in plan.keep) or "nothing")
        except SandboxError as e:
            log.warning("usernet: --enable-sandbox not applied: %s", e.strerror or e)
    if want_sc:
        try:
            enable_seccomp()
            done["seccomp"] = True
        except SandboxError as e:
            log.warning("usernet: --enable-seccomp not applied: %s", e.strerror or e)
    if os.environ.get(PROBE_ENV) and (done["sandbox"] or done["seccomp"]):
        probe(os.environ[PROBE_ENV])
    return done


def probe(path: str) -> str:
    """Tests only: try what the sandbox must forbid; log and return the result line."""
    target = "/etc/passwd" if path == "1" else path
    try:
        os.close(os.open(target, os.O_RDONLY))
        opened = "ok"
    except OSError as e:
        opened = errno.errorcode.get(e.errno, str(e.errno))
    try:
        os.execv("/bin/true", ["true"])
        executed = "ok"  # not reached
    except OSError as e:
        executed = errno.errorcode.get(e.errno, str(e.errno))
    try:
        from .host.dns import RESOLV_CONF
        with open(RESOLV_CONF, "rb") as f:
            f.read()
        resolv = "ok"
    except OSError as e:
        resolv = errno.errorcode.get(e.errno, str(e.errno))
    line = f"sandbox-probe: open={opened} exec={executed} resolv={resolv} path={target}"
    log.warning("", extra={"event": "sandbox_probe", "fields": {
        "open": opened, "exec": executed, "resolv": resolv, "path": target}})
    return line
