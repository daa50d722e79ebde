"""usernet's log: one format, one place.

Theory of operation
-------------------
Every line usernet logs is ``key=value`` pairs, so ``grep event=flow_close``
and a log shipper both work::

    ts=2026-11-30T21:20:01.123Z level=info event=attached where="pid 4242" tap=tap0 ...
    ts=... level=debug event=flow_open proto=tcp id=7 container=10.0.2.100:40000 ...
    ts=... level=warn event=log msg="forward tcp 0.0.0.0:8080: cannot serve: ..."

``ts`` (UTC, milliseconds), ``level`` (debug, info, warn, error) and ``event``
come first; a structured line names its event and passes its fields as
``extra={"event": NAME, "fields": {...}}`` (:func:`event` does it); a plain
``log.warning("...")`` becomes ``event=log msg="..."``. A value with a space,
a quote, an ``=`` or a control character is written as a JSON string; a dict
or list as compact JSON. Modules below the top layer log through the stdlib
``logging.getLogger("usernet")`` with that ``extra`` and never import this
module: the format is chosen once, here, by :func:`setup`.

Levels: ``usernet run`` is quiet on success (warnings only; ``-v`` adds the
info lines), ``attach`` and the slirp4netns entry point print their one start
line (info), ``--debug`` adds each flow's open and close (the events the host
driver already dispatches) and the counters that moved.

A flood cannot fill a disk: warning and error lines pass at most
:data:`WARN_LIMIT` per :data:`WARN_WINDOW` seconds (:class:`WarningLimit`);
the first line over the limit in a window says so, the rest are dropped and
counted (``log_warnings_suppressed`` in the API's ``stats``), and the first
line of the next window carries ``suppressed=N``. Debug lines are not limited:
``--debug`` asks for every flow.

``--log-file PATH`` appends the lines to PATH instead of stderr. Errors that
stop usernet at start are one line on stderr whatever the log says (the
command lines print them themselves).
"""

from __future__ import annotations

import json
import logging
import sys
import time

WARN_LIMIT = 20          # warning/error lines let through per window
WARN_WINDOW = 60.0       # seconds

_LEVELS = {"WARNING": "warn", "CRITICAL": "crit"}
_BARE_BAD = frozenset(' "=\\')

_limit: "WarningLimit | None" = None


def quote(v) -> str:
    """One value as it appears after ``key=``."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (dict, list, tuple)):
        v = json.dumps(v, separators=(",", ":"), sort_keys=isinstance(v, dict))
        return v if not any(c in v for c in " \n") else json.dumps(v)
    s = str(v)
    if not s or any(c in _BARE_BAD or c < " " for c in s):
        return json.dumps(s)
    return s


class KeyValueFormatter(logging.Formatter):
    """The one format (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = _LEVELS.get(record.levelname, record.levelname.lower())
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={level}",
                 f"event={quote(getattr(record, 'event', None) or 'log')}"]
        msg = record.getMessage()
        if msg.startswith("usernet: "):
            msg = msg[len("usernet: "):]      # the event says whose line it is
        if msg:
            parts.append("msg=" + quote(msg))
        fields = getattr(record, "fields", None)
        if fields:
            parts.extend(f"{k}={quote(v)}" for k, v in fields.items())
        n = getattr(record, "suppressed", 0)
        if n:
            parts.append(f"suppressed={n}")
        if record.exc_info:
            parts.append("exc=" + quote(self.formatException(record.exc_info)))
        return " ".join(parts)


class WarningLimit(logging.Filter):
    """At most ``limit`` warning/error lines per ``window`` seconds (module docstring)."""

    def __init__(self, limit: int = WARN_LIMIT, window: float = WARN_WINDOW, clock=time.monotonic):
        super().__init__()
        self.limit, self.window, self.clock = limit, window, clock
        self.suppressed = 0         # all lines dropped so far
        self._start = None
        self._n = 0
        self._held = 0              # dropped in the current window

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        if self._start is None or now - self._start >= self.window:
            if self._held:
                record.suppressed = self._held
            self._start, self._n, self._held = now, 0, 0
        self._n += 1
        if self._n <= self.limit:
            return True
        if self._n == self.limit + 1:
            # Say it once, in this line's place.
            record.msg, record.args = (f"more than {self.limit} warnings in "
                                       f"{self.window:g} s: the rest of this window's are "
                                       "dropped (counted: log_warnings_suppressed)"), ()
            record.event, record.fields = "log_suppressed", None
            self.suppressed += 1
            self._held += 1
            return True
        self.suppressed += 1
        self._held += 1
        return False


def suppressed() -> int:
    """Warning lines dropped by the rate limit so far (the API's ``log_warnings_suppressed``)."""
    return _limit.suppressed if _limit is not None else 0


def setup(level: int = logging.INFO, log_file: str | None = None, stream=None) -> None:
    """Send the ``usernet`` logger's lines (key=value, warnings limited) to
    ``log_file`` (appended) or ``stream`` (stderr). Raises OSError with a
    one-line message when the file cannot be opened."""
    global _limit
    if log_file:
        try:
            handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as e:
            raise OSError(f"--log-file {log_file}: cannot open it: {e.strerror}") from None
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    _limit = WarningLimit()
    handler.addFilter(_limit)
    logger = logging.getLogger("usernet")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def event(logger: logging.Logger, level: int, name: str, msg: str = "", **fields) -> None:
    """One structured line: ``event=NAME`` and ``fields`` as key=value."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"event": name, "fields": fields})
