"""The slirp4netns-compatible JSON API socket.

What this module owns
---------------------
* :func:`handle_request`: the whole slirp4netns API protocol as a pure function (bytes in, bytes
  out, no I/O). It validates a request, calls a :class:`Backend`, and renders the reply.
* :class:`ApiServer`: the asyncio unix-socket server around it (one request per connection).
* :func:`request` / :func:`request_async`: a small client (used by ``usernet`` subcommands and tests).

What it does not own: port-forward listeners, id allocation and the forward table. Those live in
the backend (the host layer implements :class:`Backend`); this module never imports ``usernet.host``
or ``usernet.cli``.

Compatibility
-------------
Replies are byte-for-byte those of slirp4netns 1.2.0 (``api.c``, the Debian 1.2.0-1 binary was
probed over a real API socket): compact JSON, no spaces, **no trailing newline**, the same
``{"error":{"desc":"bad request: ..."}}`` strings. Known clients, all of which must keep working:

* Podman (``port_handler=slirp4netns``): writes ``json.Marshal(...)`` plus ``"\\n"``, ``CloseWrite``,
  then one ``Read`` of at most 2048 bytes; sends ``"guest_addr":""``; only looks for an ``error`` key.
* RootlessKit (``pkg/port/slirp4netns``): ``json.Encoder`` (so a trailing ``"\\n"``), ``CloseWrite``,
  ``ReadAll``; reads ``return.id`` as a float64; ``host_addr``/``guest_addr`` may be ``""``.
* Scripts (``echo ... | nc -U``), some of which never shut down their write side; slirp4netns
  answered after a single ``read(2)``, so :class:`ApiServer` answers as soon as a complete JSON value
  has arrived instead of insisting on EOF.

Deliberate differences from slirp4netns 1.2.0 (each where its behaviour is a crash or nonsense):

* a missing/non-string ``proto`` (slirp4netns dereferences NULL and dies) -> ``bad arguments.proto``;
* ports must be JSON integers 1..65535 (slirp4netns truncates ``8080.7`` to 8080 and accepts ``-1``);
  port 0 is rejected, as slirp4netns does;
* ``host_addr``/``guest_addr`` that are neither a string nor null are rejected (slirp4netns silently
  treats them as absent); an IPv6 literal is accepted and handed to the backend, which may refuse
  it (slirp4netns 1.2.0 says ``bad arguments.host_addr``); ``"::"``/``"::0"`` mean ``"0.0.0.0"``, as in
  later slirp4netns;
* ``remove_hostfwd`` ids must be integers (slirp4netns truncates floats);
* ``list_hostfwd`` answers ``{"entries":[...],"return":{"entries":[...]}}``: slirp4netns 1.2 sends
  the bare ``{"entries":[...]}`` while its manual documents ``{"return":{"entries":[...]}}``; both
  kinds of client work with one object. ``entries`` comes first so the reply starts with the very
  bytes slirp4netns 1.2 sends;
* extension: ``{"execute":"stats"}`` -> ``{"return":{...counters...}}``.
* extension: ``{"execute":"list_flows","arguments":{"limit":N}}`` ->
  ``{"return":{"flows":[...],"total":T}}``, the live flows, busiest first (docs/api.md).

Limits, each a named default with a counter (in the stack's counters when served by usernet):

* a request is at most 4095 bytes (slirp4netns reads into a 4096-byte buffer and a full buffer
  is "too large message"; its manual: "A request must be less than 4096 bytes"):
  ``api_request_too_large``;
* ``API_READ_TIMEOUT`` seconds for a whole request (``api_conn_timeout``);
* ``API_MAX_CONNECTIONS`` connections at once, each served by its own task, so a slow or idle
  client never holds up another; past the cap the *oldest* connection still waiting for its
  request is closed to make room (``api_conn_evicted``): a thousand idle connections cannot make
  a real client, which sends its request at once, get ``busy``. Only when every connection is
  past its request is a newcomer told ``busy`` (``api_conn_busy``). ``API_LISTEN_BACKLOG`` queued
  in the kernel;
* ``API_MAX_FORWARDS`` forwards (each is a listening socket, an fd): more ->
  ``DESC_TOO_MANY_FORWARDS`` (``api_fwd_limit``);
* ``host_addr`` must be a unicast address or the unspecified one: broadcast
  (255.255.255.255), multicast (224.0.0.0/4, ff00::/8) and the reserved 240.0.0.0/4 are refused
  with ``DESC_HOST_ADDR_NOT_UNICAST`` (``api_host_addr_not_unicast``).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import os
import socket
import stat
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ApiError",
    "ApiServer",
    "Backend",
    "MAX_REQUEST",
    "handle_request",
    "request",
    "request_async",
    "DESC_ADD_FAILED",
    "DESC_REMOVE_BAD_ID",
    "DESC_REMOVE_FAILED",
]

log = logging.getLogger("usernet.api")

#: slirp4netns allocates ``ctx->buflen = 4096`` and treats ``len == buflen`` as too large, so the
#: largest accepted request is 4095 bytes.
MAX_REQUEST = 4096
API_READ_TIMEOUT = 5.0       # seconds for a whole request
API_MAX_CONNECTIONS = 64     # served at once; past it the oldest one still reading is closed
API_LISTEN_BACKLOG = 1024    # connections queued in the kernel before accept
API_MAX_FORWARDS = 1024      # forwards in all (-p included): each holds a listening socket

# The error descs, verbatim from slirp4netns 1.2.0's api.c (and `strings /usr/bin/slirp4netns`).
DESC_TOO_LARGE = "bad request: too large message"
DESC_CANNOT_PARSE = "bad request: cannot parse JSON"
DESC_NOT_OBJECT = "bad request: json_object() failed"
DESC_NO_EXECUTE = "bad request: no execute found"
DESC_UNKNOWN_EXECUTE = "bad request: unknown execute"
DESC_BAD_PROTO = "bad request: add_hostfwd: bad arguments.proto"
DESC_BAD_HOST_ADDR = "bad request: add_hostfwd: bad arguments.host_addr"
DESC_BAD_HOST_PORT = "bad request: add_hostfwd: bad arguments.host_port"
DESC_BAD_GUEST_ADDR = "bad request: add_hostfwd: bad arguments.guest_addr"
DESC_BAD_GUEST_PORT = "bad request: add_hostfwd: bad arguments.guest_port"
#: What slirp4netns says when libslirp cannot add the forward (port in use, bind refused, ...).
#: Backends raise ``ApiError(DESC_ADD_FAILED)`` for that.
DESC_ADD_FAILED = "bad request: add_hostfwd: slirp_add_hostfwd failed"
#: What slirp4netns says for an id it does not know. Backends raise ``ApiError(DESC_REMOVE_BAD_ID)``.
DESC_REMOVE_BAD_ID = "bad request: remove_hostfwd: bad arguments.id"
DESC_REMOVE_FAILED = "bad request: remove_hostfwd: slirp_remove_hostfwd failed"
# Ours (slirp4netns has no equivalent: it serves one connection at a time).
DESC_BUSY = "busy: too many API connections"
DESC_HOST_ADDR_NOT_UNICAST = DESC_BAD_HOST_ADDR + ": not a unicast address"
DESC_TOO_MANY_FORWARDS = "bad request: add_hostfwd: too many forwards (limit {})"   # .format(limit)


class ApiError(Exception):
    """A request the backend refuses; ``desc`` goes verbatim into ``{"error":{"desc":...}}``."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


@runtime_checkable
class Backend(Protocol):
    """What the API needs from the rest of usernet (:class:`ForwarderBackend` implements it).

    Methods are synchronous and called on the event loop thread: they must not block (binding a
    listening socket is fine). The backend owns the forward table and its ids: ids start at 1, are
    never reused, and a failed add must not consume one.
    """

    def add_hostfwd(self, proto: str, host_addr: str, host_port: int,
                    guest_addr: str, guest_port: int) -> int:
        """Start forwarding; return the new id.

        ``proto`` is "tcp" or "udp". ``host_addr`` is a canonical IPv4 (never empty: "" already
        became "0.0.0.0") or IPv6 literal; refuse IPv6 with ``ApiError(DESC_BAD_HOST_ADDR)`` if
        unsupported. ``guest_addr`` is a canonical IP literal or ``""`` meaning the default guest
        address (network + 100, what ``--configure`` assigns). Raise ``ApiError(DESC_ADD_FAILED)``
        when the host port cannot be bound (in use, permission).
        """
        ...

    def list_hostfwd(self) -> list[dict]:
        """Entries with keys id, proto, host_addr, host_port, guest_addr (resolved), guest_port."""
        ...

    def remove_hostfwd(self, id: int) -> None:
        """Stop forward ``id``; ``ApiError(DESC_REMOVE_BAD_ID)`` if there is no such id."""
        ...

    def stats(self) -> dict:
        """Named counters (JSON-serialisable), our extension."""
        ...


class ForwarderBackend:
    """The :class:`Backend` over a :class:`usernet.host.forward.Forwarder`:
    its plain errors become the API's replies. ``stats`` is a callable
    giving the whole stack's counters (``usernet.services.stack_stats``)."""

    def __init__(self, forwarder, stats, flows=None, *, max_forwards: int = API_MAX_FORWARDS) -> None:
        self.forwarder = forwarder
        self._stats = stats
        self._flows = flows
        self.max_forwards = max_forwards

    def add_hostfwd(self, proto: str, host_addr: str, host_port: int, guest_addr: str,
                    guest_port: int) -> int:
        if ":" in host_addr and not self.forwarder.cfg.enable_ipv6:
            raise ApiError(DESC_BAD_HOST_ADDR)   # IPv6 forwards need --enable-ipv6
        if len(self.forwarder.forwards) >= self.max_forwards:
            self.forwarder.counters["api_fwd_limit"] += 1
            raise ApiError(DESC_TOO_MANY_FORWARDS.format(self.max_forwards))
        try:
            return self.forwarder.add(proto, host_addr, host_port, guest_addr, guest_port)
        except OSError as e:                     # PublishError: the port cannot be bound
            log.info("add_hostfwd: %s", e)
            raise ApiError(DESC_ADD_FAILED) from None
        except ValueError as e:
            log.info("add_hostfwd: %s", e)
            raise ApiError(DESC_BAD_GUEST_ADDR) from None

    def list_hostfwd(self) -> list[dict]:
        return self.forwarder.entries()

    def remove_hostfwd(self, id: int) -> None:  # noqa: A002 - the API's name
        try:
            self.forwarder.remove(id)
        except KeyError:
            raise ApiError(DESC_REMOVE_BAD_ID) from None

    def stats(self) -> dict:
        return self._stats()

    def list_flows(self) -> list[dict]:
        if self._flows is None:
            raise ApiError(DESC_UNKNOWN_EXECUTE)
        return self._flows()


# --------------------------------------------------------------------------------------------
# The protocol, as a pure function.


def _dumps(obj: Any) -> bytes:
    # parson's json_serialize_to_string: compact, insertion order, no trailing newline.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _error(desc: str) -> bytes:
    return _dumps({"error": {"desc": desc}})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # parson refuses an object with a repeated key ("cannot parse JSON", probed on 1.2.0);
    # Python's json would silently keep the last one.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")  # NaN, Infinity: parson refuses them too


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_BOM = b"\xef\xbb\xbf"
_JSON_WS = b" \t\n\r"


def _decode(raw: bytes) -> tuple[bool, Any]:
    """Parse like slirp4netns does: ``(True, value)`` or ``(False, None)``.

    slirp4netns hands the buffer to parson as a C string, so a NUL ends the request; parson skips
    a UTF-8 BOM and leading whitespace and ignores anything after the first complete value
    (``{"execute":"list_hostfwd"} trailing`` is answered normally; all probed on 1.2.0).
    """
    nul = raw.find(b"\x00")
    if nul >= 0:
        raw = raw[:nul]
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    raw = raw.lstrip(_JSON_WS)
    try:
        text = raw.decode("utf-8")
        value, _end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the C limit
        return False, None
    return True, value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _port(v: Any) -> int | None:
    return v if _is_int(v) and 1 <= v <= 65535 else None


def _ip(v: str) -> str | None:
    """Canonical text of an IPv4 or IPv6 literal, or None.

    Like inet_pton: no leading zeros in IPv4 octets (Python refuses them too), no zone ids.
    """
    if "%" in v:
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None


def _addr_arg(v: Any, empty: str) -> str | None:
    """An address argument: ``empty`` for NULL or "", its canonical text, or None if bad."""
    if v is None or v == "":
        return empty
    if not isinstance(v, str):
        return None
    return _ip(v)


def _unicast_or_any(addr: str) -> bool:
    """An address a listener may be bound to: a unicast one or the unspecified one. Broadcast,
    multicast and reserved (240/4) ones would bind on Linux, and nobody could ever connect."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return not (ip.is_multicast or int(ip) >= 0xF0000000)
    return not ip.is_multicast


def _add_hostfwd(args: dict, backend: Backend, counters=None) -> bytes:
    # Checked in slirp4netns 1.2.0's order: proto, host_addr, host_port, guest_addr, guest_port.
    proto = args.get("proto")
    if proto not in ("tcp", "udp"):
        # slirp4netns 1.2.0 refuses "tcp4"/"sctp" with this text; a missing proto crashes it.
        return _error(DESC_BAD_PROTO)

    # slirp4netns: a NULL or "" host_addr is "0.0.0.0". Later slirp4netns (IPv6 forwarding)
    # maps "::"/"::0" to "0.0.0.0" (plus IPv6 when enabled); doing so here keeps
    # `-p [::]:8080:80` working on an IPv4-only backend.
    host_addr = _addr_arg(args.get("host_addr"), "0.0.0.0")
    if host_addr is None:
        return _error(DESC_BAD_HOST_ADDR)
    if host_addr == "::":
        host_addr = "0.0.0.0"
    if not _unicast_or_any(host_addr):
        if counters is not None:
            counters["api_host_addr_not_unicast"] += 1
        return _error(DESC_HOST_ADDR_NOT_UNICAST)

    host_port = _port(args.get("host_port"))
    if host_port is None:
        return _error(DESC_BAD_HOST_PORT)

    # "" (or NULL): the backend resolves it to the recommended guest address.
    guest_addr = _addr_arg(args.get("guest_addr"), "")
    if guest_addr is None:
        return _error(DESC_BAD_GUEST_ADDR)

    guest_port = _port(args.get("guest_port"))
    if guest_port is None:
        return _error(DESC_BAD_GUEST_PORT)

    try:
        fwd_id = backend.add_hostfwd(proto, host_addr, host_port, guest_addr, guest_port)
    except ApiError as e:
        return _error(e.desc)
    except OSError as e:
        # A bind failure that the backend did not wrap: slirp4netns reports every libslirp
        # failure (EADDRINUSE, EACCES, ...) with this one text, so clients expect it.
        log.info("add_hostfwd %s %s:%d failed: %s", proto, host_addr, host_port, e)
        return _error(DESC_ADD_FAILED)
    if not _is_int(fwd_id):
        raise TypeError(f"backend returned id {fwd_id!r}")
    # slirp4netns: snprintf("{\"return\":{\"id\":%d}}")
    return b'{"return":{"id":%d}}' % fwd_id


_ENTRY_KEYS = ("id", "proto", "host_addr", "host_port", "guest_addr", "guest_port")


def _list_hostfwd(backend: Backend) -> bytes:
    entries = []
    for e in backend.list_hostfwd():
        # slirp4netns's key order, whatever order the backend built its dicts in; extra keys
        # (e.g. a future host_addr6) follow.
        entry = {k: e[k] for k in _ENTRY_KEYS}
        entry.update((k, v) for k, v in e.items() if k not in entry)
        entries.append(entry)
    return _dumps({"entries": entries, "return": {"entries": entries}})


def _remove_hostfwd(args: dict, backend: Backend) -> bytes:
    fwd_id = args.get("id")
    if not _is_int(fwd_id) or fwd_id < 1:
        return _error(DESC_REMOVE_BAD_ID)  # missing/"2"/0 all say this in slirp4netns
    try:
        backend.remove_hostfwd(fwd_id)
    except ApiError as e:
        return _error(e.desc)
    return b'{"return":{}}'


def _stats(backend: Backend) -> bytes:
    return _dumps({"return": dict(backend.stats())})


#: list_flows answers at most this many flows unless asked (the client reads up to 1 MiB).
LIST_FLOWS_DEFAULT = 1000
LIST_FLOWS_MAX = 2500


def _list_flows(args: dict, backend: Backend) -> bytes:
    """The busiest ``limit`` flows (the backend sorts them) and how many there are."""
    limit = args.get("limit", LIST_FLOWS_DEFAULT)
    if not _is_int(limit) or not 0 <= limit <= LIST_FLOWS_MAX:
        return _error(f"bad request: list_flows: bad arguments.limit (0..{LIST_FLOWS_MAX})")
    lister = getattr(backend, "list_flows", None)
    if lister is None:
        return _error(DESC_UNKNOWN_EXECUTE)
    flows = lister()
    return _dumps({"return": {"flows": flows[:limit], "total": len(flows)}})


def handle_request(raw: bytes, backend: Backend, counters=None) -> bytes:
    """Answer one API request; never raises.

    ``raw`` is everything the client sent (a trailing newline is fine). Returns the reply bytes,
    exactly as slirp4netns would write them (no trailing newline). ``counters`` (a mapping of
    counts, optional) gets ``api_*`` decisions.
    """
    raw = bytes(raw)
    if counters is not None:
        counters["api_request"] += 1
    if len(raw) >= MAX_REQUEST:
        if counters is not None:
            counters["api_request_too_large"] += 1
        return _error(DESC_TOO_LARGE)
    ok, req = _decode(raw)
    if not ok:
        return _error(DESC_CANNOT_PARSE)
    if not isinstance(req, dict):
        return _error(DESC_NOT_OBJECT)
    execute = req.get("execute")
    if not isinstance(execute, str):
        return _error(DESC_NO_EXECUTE)
    args = req.get("arguments")
    if not isinstance(args, dict):
        # parson's dotget on a missing/non-object "arguments" yields NULL for every field.
        args = {}
    try:
        if execute == "add_hostfwd":
            return _add_hostfwd(args, backend, counters)
        if execute == "list_hostfwd":
            return _list_hostfwd(backend)
        if execute == "remove_hostfwd":
            return _remove_hostfwd(args, backend)
        if execute == "stats":
            return _stats(backend)
        if execute == "list_flows":
            return _list_flows(args, backend)
    except ApiError as e:
        return _error(e.desc)
    except Exception as e:  # the API must answer, whatever the backend does
        log.exception("API %s failed", execute)
        return _error(f"internal error: {execute}: {type(e).__name__}")
    return _error(DESC_UNKNOWN_EXECUTE)


def _complete(buf: bytes) -> bool:
    """True when ``buf`` already holds a whole JSON value (so a client that never shuts down its
    write side still gets an answer, as it did from slirp4netns's single read(2))."""
    tail = buf.rstrip(_JSON_WS + b"\x00")
    if not tail.endswith((b"}", b"]", b'"')) and b"\x00" not in buf:
        return False  # cheap pre-check; numbers/literals wait for EOF
    return _decode(buf)[0]


# --------------------------------------------------------------------------------------------
# The server.


def _bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 from birth.

    A stale *socket* at ``path`` is replaced (slirp4netns unlinks unconditionally "to avoid
    EADDRINUSE"); anything else there is refused rather than clobbered.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(
                f"API socket path {path!r} exists and is not a socket; refusing to replace it")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # On Linux bind(2) creates the file with the socket inode's mode & ~umask, so fchmod
        # before bind gives 0600 with no window and without touching the process-wide umask
        # (other threads may be creating files).
        try:
            os.fchmod(sock.fileno(), 0o600)
        except OSError:  # pragma: no cover - not Linux
            pass
        try:
            sock.bind(path)
        except OSError as e:
            raise OSError(e.errno, f"cannot bind API socket {path!r}: {e.strerror}") from None
        # Belt and braces, still before listen(2): nobody can connect yet.
        os.chmod(path, 0o600)
        sock.listen(API_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ApiServer:
    """The API socket: one JSON request per connection, one reply, close.

    Bounded in every dimension: ``MAX_REQUEST`` - 1 bytes per request (more -> the "too large"
    reply at once, as slirp4netns does, without waiting for EOF), ``read_timeout`` seconds for
    the whole request (a silent client gets whatever it sent answered, usually "cannot parse
    JSON"), ``max_connections`` served at once, each in its own task; a connection past that
    makes room by closing the oldest one still waiting for its request, and is told "busy" only
    when none is (see the module's "Limits").

    A reply is sent as soon as a complete JSON value has arrived or at EOF, whichever is first;
    then the connection lingers up to ``linger`` seconds for the client's EOF before closing.
    The socket file is 0600 and is removed by :meth:`close`. ``counters``: where ``api_*``
    decisions are counted (the stack's counters under usernet; a plain Counter by default).
    """

    def __init__(self, path: str, backend: Backend, *, read_timeout: float,
                 max_connections: int, linger: float, counters=None) -> None:
        self.path = path
        self.linger = linger
        self.backend = backend
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.counters = counters if counters is not None else collections.Counter()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        # Connections still reading their request, oldest first (dicts keep insertion order).
        self._reading: dict[asyncio.Task, None] = {}
        self._ino: tuple[int, int] | None = None
        self.requests = 0  # handled requests (for tests and stats)

    @classmethod
    async def start(cls, path: str | os.PathLike, backend: Backend, *,
                    read_timeout: float = API_READ_TIMEOUT,
                    max_connections: int = API_MAX_CONNECTIONS, linger: float = 0.25,
                    counters=None, listen_fd: int | None = None) -> "ApiServer":
        """Listen on ``path`` (see :func:`_bind_unix` for what happens to an existing file), or
        serve ``listen_fd``, a socket already bound there and listening (the compiled
        slirp4netns front's: clients that connected before we started are in its backlog)."""
        self = cls(os.fspath(path), backend, read_timeout=read_timeout,
                   max_connections=max_connections, linger=linger, counters=counters)
        if listen_fd is None:
            sock = _bind_unix(self.path)
        else:
            sock = socket.socket(fileno=listen_fd)
            sock.setblocking(False)
        st = os.stat(self.path)
        self._ino = (st.st_dev, st.st_ino)
        try:
            self._server = await asyncio.start_unix_server(self._on_client, sock=sock,
                                                           backlog=API_LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        return self

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if len(self._tasks) >= self.max_connections:
                # Room for this one: the oldest connection still waiting for its request goes
                # (an idle hog, or a client far slower than any real one).
                if self._reading:
                    oldest = next(iter(self._reading))
                    del self._reading[oldest]
                    self._tasks.discard(oldest)
                    oldest.cancel()
                    self.counters["api_conn_evicted"] += 1
                else:
                    self.counters["api_conn_busy"] += 1
                    await self._reply(writer, _error(DESC_BUSY))
                    return
            if task is not None:
                self._tasks.add(task)
                self._reading[task] = None
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            if task is not None and task.cancelling() and self._server is not None:
                # Evicted, not shut down: end quietly (the task was ours to cancel).
                task.uncancel()
                return
            raise
        except Exception:  # a client problem must never take the server down
            log.debug("API connection failed", exc_info=True)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)
                self._reading.pop(task, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        buf = b""
        eof = timed_out = False
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    chunk = await reader.read(MAX_REQUEST)
                    if not chunk:
                        eof = True
                        break
                    buf += chunk
                    if len(buf) >= MAX_REQUEST or _complete(buf):
                        break
        except TimeoutError:
            timed_out = True
            self.counters["api_conn_timeout"] += 1
            log.debug("API client sent %d bytes and then nothing for %.1fs", len(buf),
                      self.read_timeout)
        task = asyncio.current_task()
        self._reading.pop(task, None)       # past its request: no longer evictable
        reply = handle_request(buf[:MAX_REQUEST], self.backend, self.counters)
        self.requests += 1
        await self._reply(writer, reply, deadline=deadline + self.read_timeout)
        if not (eof or timed_out) and len(buf) < MAX_REQUEST:
            # Answered before EOF (the client may never shut down its write side, like
            # `echo ... | nc -U`): give it a short linger to finish writing (a lone "\n", say)
            # and shut down, so it does not see EPIPE/ECONNRESET; bounded in bytes and time.
            try:
                async with asyncio.timeout(min(self.linger, self.read_timeout)):
                    drained = 0
                    while drained < MAX_REQUEST:
                        chunk = await reader.read(MAX_REQUEST)
                        if not chunk:
                            break
                        drained += len(chunk)
            except TimeoutError:
                pass

    async def _reply(self, writer: asyncio.StreamWriter, reply: bytes, *,
                     deadline: float | None = None) -> None:
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.read_timeout
        try:
            writer.write(reply)
            async with asyncio.timeout_at(deadline):
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # client went away or stopped reading: nothing to tell it

    def _unlink(self) -> None:
        # Remove the socket file only if it is still the one we created.
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ino and stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Stop listening, abort connections in progress, remove the socket file."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        self._unlink()

    async def wait_closed(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> "ApiServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


# --------------------------------------------------------------------------------------------
# The client.

_MAX_REPLY = 1 << 20


def _encode(obj_or_bytes: dict | bytes | str) -> bytes:
    if isinstance(obj_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(obj_or_bytes)
    if isinstance(obj_or_bytes, str):
        return obj_or_bytes.encode()
    return _dumps(obj_or_bytes) + b"\n"  # as Podman and RootlessKit send it


def _parse_reply(data: bytes) -> dict:
    try:
        reply = json.loads(data)
    except ValueError as e:
        raise ValueError(f"API reply is not JSON: {data[:200]!r}") from e
    if not isinstance(reply, dict):
        raise ValueError(f"API reply is not an object: {data[:200]!r}")
    return reply


def request(path: str | os.PathLike, obj_or_bytes: dict | bytes | str,
            timeout: float = 5.0) -> dict:
    """Send one request to the API socket at ``path`` and return the decoded reply (blocking).

    Speaks the protocol as Podman does: write, ``shutdown(SHUT_WR)``, read to EOF.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        s.sendall(_encode(obj_or_bytes))
        s.shutdown(socket.SHUT_WR)
        chunks = []
        size = 0
        while size <= _MAX_REPLY:
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                break  # slirp4netns closes with unread input (too large): the reply came first
            if not d:
                break
            chunks.append(d)
            size += len(d)
    return _parse_reply(b"".join(chunks))


async def request_async(path: str | os.PathLike, obj_or_bytes: dict | bytes | str,
                        timeout: float = 5.0) -> dict:
    """:func:`request` for use inside an event loop."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        try:
            writer.write(_encode(obj_or_bytes))
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            data = bytearray()
            while len(data) <= _MAX_REPLY:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    break  # see request()
                if not chunk:
                    break
                data += chunk
        finally:
            writer.close()
    return _parse_reply(bytes(data))
