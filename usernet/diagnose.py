"""Start-up failures as one line a person can act on: what is wrong, and the fix.

Theory of operation
===================

usernet needs a handful of things from the machine before it can serve a
container: ``/dev/net/tun`` (present, and readable and writable by the user),
user namespaces (for ``usernet run``), the container's namespace (for
``attach``: a live PID or an existing path), a directory for the API socket
and a path short enough for ``sun_path``, free host ports for ``-p``, and,
for ping, ``net.ipv4.ping_group_range`` covering the user's group. When one
is missing, the kernel's answer (``ENOENT``, ``EACCES``, ``ENOSPC``...) does
not say which of these it was, nor what to do.

So each is named here, once, for both command lines (``usernet run/attach/
fwd`` and the slirp4netns dialect):

* **checks before anything is made** (:func:`check_tun`,
  :func:`check_api_socket_path`): a ``stat``/``access`` each, cheap enough
  for every start, so a bad set-up fails before a namespace or a child
  exists;
* **explanations after the fact** (:func:`userns_error`, :func:`message`):
  where the only reliable test is to try (``unshare`` may be refused by a
  sysctl, an LSM or a seccomp filter), the error is turned into the line,
  reading the sysctls to name the one that is off;
* **a warning**, not an error, for what only degrades the network
  (:func:`ping_warning`: ping from the container answers "administratively
  prohibited").

Every line has the form ``THING: PROBLEM; fix: WHAT TO DO``, and the caller
prints it with its ``usernet:`` prefix and exits with status 1, no traceback.
docs/troubleshooting.md lists them all.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

TUN_PATH = "/dev/net/tun"
#: sizeof(sun_path): an AF_UNIX socket path must be shorter than this.
SUN_PATH_MAX = 108

MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"
UNPRIVILEGED_USERNS_CLONE = "/proc/sys/kernel/unprivileged_userns_clone"  # Debian, older Ubuntu
APPARMOR_RESTRICT_USERNS = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"  # Ubuntu 23.10+
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


class StartError(Exception):
    """A start-up failure; ``str()`` is one line naming the thing and the fix."""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# ------------------------------------------------------------------ /dev/net/tun
def tun_problem(exc_errno: int | None = None, path: str = TUN_PATH) -> str | None:
    """What is wrong with ``path`` (or with the errno opening it gave), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (f"{path} does not exist; fix: load the tun module (modprobe tun), or in a "
                f"container pass the device in (podman/docker run --device {path})")
    except OSError as e:
        return f"{path}: {e.strerror}; fix: check that the user can reach /dev/net"
    if not stat.S_ISCHR(st.st_mode):
        return f"{path} is not a character device; fix: as root, mknod {path} c 10 200"
    # effective ids: what open(2) checks (os.access alone uses the real ones)
    usable = os.access(path, os.R_OK | os.W_OK, effective_ids=os.access in os.supports_effective_ids)
    if exc_errno in (errno.EACCES, errno.EPERM) or not usable:
        mode = stat.S_IMODE(st.st_mode)
        return (f"{path}: permission denied (mode {mode:04o}, owner uid {st.st_uid}); fix: as root, "
                f"chmod 0666 {path} (the usual mode: making a device still takes CAP_NET_ADMIN)")
    if exc_errno in (errno.ENODEV, errno.ENXIO):
        return f"{path}: no tun driver in this kernel; fix: load the tun module (modprobe tun)"
    return None


def check_tun(path: str = TUN_PATH) -> None:
    """Raise StartError if ``path`` is missing or not usable by this user."""
    why = tun_problem(None, path)
    if why:
        raise StartError(why)


# ------------------------------------------------------------------ user namespaces
def userns_error(exc_errno: int) -> str:
    """Why ``unshare(CLONE_NEWUSER)`` failed with ``exc_errno``, and the fix."""
    head = f"cannot create a user namespace ({os.strerror(exc_errno)})"
    limit = _read(MAX_USER_NAMESPACES)
    if limit == "0":
        return (f"{head}: user namespaces are disabled (user.max_user_namespaces = 0); "
                "fix: as root, sysctl -w user.max_user_namespaces=15000")
    if exc_errno == errno.ENOSPC:
        return (f"{head}: the limit user.max_user_namespaces ({limit}) is reached; "
                "fix: as root, raise it (sysctl -w user.max_user_namespaces=N) or end unused containers")
    if _read(UNPRIVILEGED_USERNS_CLONE) == "0" and os.geteuid() != 0:
        return (f"{head}: unprivileged user namespaces are disabled "
                "(kernel.unprivileged_userns_clone = 0); "
                "fix: as root, sysctl -w kernel.unprivileged_userns_clone=1")
    if _read(APPARMOR_RESTRICT_USERNS) == "1" and os.geteuid() != 0:
        return (f"{head}: AppArmor restricts unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns = 1); fix: as root, give usernet's "
                "python an AppArmor profile with 'userns,' or sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0")
    return (f"{head}: refused by the kernel or a security policy (seccomp, LSM); fix: inside a "
            "container, allow user namespaces (e.g. podman run --security-opt seccomp=unconfined); "
            "or use 'usernet attach' on a namespace made elsewhere")


# ------------------------------------------------------------------ targets
def no_process(pid: int) -> str:
    return (f"no such process: {pid}; fix: give the PID of a running process in the "
            "container's network namespace (podman inspect -f '{{.State.Pid}}' NAME)")


def netns_open_error(path: str, exc: OSError, pid: int | None = None) -> str:
    if pid is not None and exc.errno == errno.ENOENT:
        return no_process(pid)
    if exc.errno == errno.ENOENT:
        return (f"network namespace {path} does not exist; fix: give an existing one "
                "(/run/netns/NAME, /proc/PID/ns/net), with --netns-type=path")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot open network namespace {path}: permission denied; fix: run usernet as "
                "the user who owns the container (or as root)")
    return f"cannot open network namespace {path}: {exc.strerror}"


def userns_open_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return (f"user namespace {path} does not exist; fix: give the container's "
                "(/proc/PID/ns/user of a process in it), or leave --userns-path out")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot open user namespace {path}: permission denied; fix: run usernet as the "
                "user who owns the container (or as root)")
    return f"cannot open user namespace {path}: {exc.strerror}"


# ------------------------------------------------------------------ API socket
def api_socket_problem(path: str) -> str | None:
    """Why an API socket cannot be made at ``path``, or None."""
    n = len(os.fsencode(path))
    if n >= SUN_PATH_MAX:
        return (f"API socket path too long ({n} bytes; the limit is {SUN_PATH_MAX - 1}): {path}; "
                "fix: a shorter path, e.g. under $XDG_RUNTIME_DIR or /tmp")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        return (f"API socket directory {d} does not exist; fix: create it (mkdir -p {d}) "
                "or give another --api-socket path")
    if not os.access(d, os.W_OK | os.X_OK):
        return (f"API socket directory {d} is not writable by uid {os.geteuid()}; "
                "fix: give a path in a directory of yours (e.g. $XDG_RUNTIME_DIR)")
    return None


def check_api_socket_path(path: str | None) -> None:
    if path:
        why = api_socket_problem(path)
        if why:
            raise StartError(why)


def api_client_error(path: str, exc: OSError) -> str:
    """A client (``usernet fwd``) could not talk to the API socket at ``path``."""
    if exc.errno == errno.ENOENT:
        return (f"API socket {path} does not exist; fix: give the --api-socket path that usernet "
                "was started with (is it running?)")
    if exc.errno == errno.ECONNREFUSED:
        return (f"nothing listens on API socket {path} (usernet exited, or not a socket); "
                "fix: start usernet with --api-socket, or give the path of a running one")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"API socket {path}: permission denied; fix: run as the user who started usernet"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"API socket {path}: no answer in time; fix: check that usernet is not stopped (kill -CONT)"
    return f"API socket {path}: {exc.strerror or exc}"


# ------------------------------------------------------------------ the daemon
def daemon_not_running(path: str) -> str:
    from .daemon import default_socket_path
    start = "usernet daemon" if path == default_socket_path() else f"usernet daemon --socket {path}"
    return f"daemon: not running at {path}; fix: start `{start}`"


def daemon_client_error(path: str, exc: OSError) -> str:
    """A client (``--daemon``, ``usernet daemon status``) could not talk to the daemon."""
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return daemon_not_running(path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"daemon: {path}: permission denied; fix: run as the user who started the "
                "daemon, or start your own")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return (f"daemon: {path} did not answer in time; fix: check that it is not stopped "
                "(kill -CONT), or restart it")
    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
        return f"daemon: {path} closed the connection; fix: see the daemon's log"
    return f"daemon: {path}: {exc.strerror or exc}"


# ------------------------------------------------------------------ ping
def ping_warning() -> str | None:
    """A warning if the container's pings will be answered "administratively
    prohibited": neither a ping socket (net.ipv4.ping_group_range) nor a raw
    socket (CAP_NET_RAW) can be had in this network namespace."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
        return None
    except OSError:
        pass
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        return None
    except OSError:
        pass
    rng = " ".join((_read(PING_GROUP_RANGE) or "?").split())
    return (f"warning: ping from the container will answer \"prohibited\": "
            f"net.ipv4.ping_group_range ({rng}) excludes gid {os.getegid()}; "
            f"fix: as root, sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"")


# ------------------------------------------------------------------ any error
def message(e: BaseException) -> str:
    """The one line for a fatal error ``e`` (without the ``usernet:`` prefix)."""
    from .host.forward import PublishError
    if isinstance(e, PublishError):
        text = str(e)
        if e.errno == errno.EADDRINUSE:
            return (f"{text}; fix: choose another host port (-p OTHER:GUEST), or stop what "
                    "listens there (ss -ltnup)")
        if e.errno == errno.EACCES:
            return (f"{text}; fix: a host port >= 1024 (or, as root, lower "
                    "net.ipv4.ip_unprivileged_port_start)")
        if e.errno == errno.EADDRNOTAVAIL:
            return f"{text}; fix: a host address this machine has (or 0.0.0.0)"
        return text
    if isinstance(e, OSError) and e.strerror and not e.filename:
        return e.strerror          # str() would say "[Errno N] ..."
    return str(e).splitlines()[0] if str(e) else type(e).__name__
