"""The TAP-offload switch of the command line: on by default, --no-offload,
and a kernel that refuses TUNSETOFFLOAD costs one debug line, not the run."""

import logging
import os

import pytest

from usernet.cli import UsageError, build_parser
from usernet.serve import set_tap_offload


@pytest.mark.parametrize("cmd", [["run", "--", "true"], ["attach", "1"]])
def test_offload_flag_defaults_on_and_no_offload_turns_it_off(cmd):
    p = build_parser()
    assert p.parse_args(cmd[:1] + cmd[1:]).offload is True
    assert p.parse_args(cmd[:1] + ["--no-offload"] + cmd[1:]).offload is False
    assert p.parse_args(cmd[:1] + ["--offload"] + cmd[1:]).offload is True
    with pytest.raises(UsageError):
        p.parse_args(cmd[:1] + ["--offload", "--no-offload"] + cmd[1:])


def test_refused_offload_ioctl_falls_back_with_one_debug_line(caplog):
    r, w = os.pipe()                     # not a TAP: TUNSETOFFLOAD fails
    try:
        with caplog.at_level(logging.DEBUG, logger="usernet"):
            assert set_tap_offload(r, True) is False
            assert set_tap_offload(r, False) is False   # asked off: silent
    finally:
        os.close(r)
        os.close(w)
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 1 and "offloads unavailable" in lines[0], lines
