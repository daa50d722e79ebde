"""usernet/log.py: the one key=value format and the warning rate limit."""

import io
import logging
import re

import pytest

from usernet import log as ulog


@pytest.fixture
def logged():
    buf = io.StringIO()
    ulog.setup(logging.DEBUG, stream=buf)
    yield logging.getLogger("usernet"), buf
    ulog.setup(logging.WARNING, stream=io.StringIO())


def test_lines_are_key_value(logged):
    log, buf = logged
    ulog.event(log, logging.INFO, "attached", where="pid 7", tap="tap0", mtu=1500,
               counters={"a": 1, "b": 2}, ok=True, none=None)
    log.warning("usernet: forward %s: cannot serve: %s", "tcp 0.0.0.0:80", "in use")
    log.debug("x=1 and \"quotes\"\nnewline")
    a, w, d = buf.getvalue().splitlines()
    assert re.fullmatch(r'ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info event=attached '
                        r'where="pid 7" tap=tap0 mtu=1500 counters=\{"a":1,"b":2\} ok=true '
                        r'none=null', a), a
    assert w.endswith(' level=warn event=log msg="forward tcp 0.0.0.0:80: cannot serve: in use"')
    assert d.endswith(r' level=debug event=log msg="x=1 and \"quotes\"\nnewline"')


def test_exception_is_one_line(logged):
    log, buf = logged
    try:
        raise KeyError("k")
    except KeyError:
        log.debug("failed", exc_info=True)
    (line,) = buf.getvalue().splitlines()
    assert "exc=" in line and "KeyError" in line


def test_warning_flood_is_limited_and_counted():
    now = [0.0]
    lim = ulog.WarningLimit(limit=3, window=10.0, clock=lambda: now[0])
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(ulog.KeyValueFormatter())
    h.addFilter(lim)
    log = logging.getLogger("usernet.test_flood")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(h)
    try:
        for i in range(100):
            log.warning("bad %d", i)
            log.info("info lines are never limited %d", i)
        lines = buf.getvalue().splitlines()
        warn = [ln for ln in lines if "level=warn" in ln]
        assert len(warn) == 4 and "event=log_suppressed" in warn[3]
        assert sum("level=info" in ln for ln in lines) == 100
        assert lim.suppressed == 97
        now[0] = 10.0                                       # the next window
        log.warning("after")
        last = buf.getvalue().splitlines()[-1]
        assert 'msg=after' in last and last.endswith("suppressed=97")
    finally:
        log.removeHandler(h)


def test_log_file_cannot_be_opened(tmp_path):
    with pytest.raises(OSError, match=r"^--log-file .*/no/x: cannot open it: No such file"):
        ulog.setup(logging.INFO, log_file=str(tmp_path / "no" / "x"))
