"""usernet's command line: every bad value is one line naming the flag and exit status 1,
never a traceback; good values reach NetConfig unchanged. The checks are NetConfig's own
(stack/config.py), so the command line and the stack cannot disagree."""

import pytest

from usernet.cli import build_parser, main, make_config
from usernet.stack.config import DEFAULT_CIDR, DEFAULT_MTU, MAX_MTU, MIN_MTU, NetConfig


@pytest.mark.parametrize("args, flag, text", [
    (["--mtu", str(MIN_MTU - 1)], "--mtu", f"MTU must be {MIN_MTU}..{MAX_MTU}"),
    (["--mtu", str(MAX_MTU + 1)], "--mtu", f"MTU must be {MIN_MTU}..{MAX_MTU}"),
    (["--mtu", "x"], "--mtu", "not a number"),
    (["--cidr", "10.0.2.1/24"], "--cidr", "host bits set"),
    (["--cidr", "10.0.0.0"], "--cidr", "give a prefix length"),
    (["--cidr", "10.0.0.0/26"], "--cidr", "prefix length must be 1..25"),
    (["--cidr", "10.0.0.0/8x"], "--cidr", "not a valid netmask"),
    (["--macaddress", "01:00:00:00:00:01"], "--macaddress", "multicast"),
    (["--macaddress", "zz"], "--macaddress", "not a MAC address"),
    (["-p", "99999:80"], "--publish", "out of range"),
    (["--impair", "loss=5"], "--impair", "loss must be"),
    (["--max-tcp-flows", "0"], "--max-tcp-flows", "must be 1..1048576"),
    (["--max-tcp-flows", "1e4"], "--max-tcp-flows", "must be 1..1048576"),
    (["--max-tcp-flows", str((1 << 20) + 1)], "--max-tcp-flows", "must be 1..1048576"),
])
def test_bad_value_is_one_line_naming_the_flag(args, flag, text, capsys):
    assert main(["run", *args, "--", "true"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and flag in lines[0] and text in lines[0], err


def test_defaults_and_values_reach_the_config():
    p = build_parser()
    cfg = make_config(p.parse_args(["run", "--", "true"]))
    assert (cfg.cidr, cfg.mtu) == (DEFAULT_CIDR, DEFAULT_MTU) == (NetConfig().cidr, NetConfig().mtu)
    cfg = make_config(p.parse_args(["run", "--mtu", "9000", "--cidr", "10.9.0.0/16",
                                    "--macaddress", "02:00:00:00:00:07", "--", "true"]))
    assert (cfg.mtu, cfg.cidr, cfg.guest_mac) == (9000, "10.9.0.0/16", bytes.fromhex("020000000007"))
    assert cfg.guest_str == "10.9.0.100"


def test_max_tcp_flows_reaches_the_config():
    from usernet.stack.config import MAX_TCP_FLOWS
    p = build_parser()
    assert make_config(p.parse_args(["run", "--", "true"])).max_tcp_flows == MAX_TCP_FLOWS
    args = p.parse_args(["attach", "--max-tcp-flows", "10000", "123"])
    assert make_config(args).max_tcp_flows == 10000


@pytest.mark.parametrize("soft, want, explicit, expect, warned", [
    (1 << 20, 65536, False, 65536, False),           # room enough: unchanged
    (20000, 65536, False, 20000 - 1024 - 1024 - 256, False),
    (20000, 30000, True, 20000 - 1024 - 1024 - 256, True),   # asked for: a warning
    (20000, 10000, True, 10000, False),
    (1024, 65536, False, 512, False),                # never below half the fds
])
def test_fit_flow_limit_keeps_tcp_flows_within_the_fd_limit(monkeypatch, caplog, soft, want,
                                                            explicit, expect, warned):
    import logging
    import resource
    from usernet import serve
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, soft))
    cfg = NetConfig(max_tcp_flows=want)
    with caplog.at_level(logging.DEBUG, logger="usernet"):
        serve.fit_flow_limit(cfg, explicit)
    assert cfg.max_tcp_flows == expect
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warnings) == warned, caplog.records
    if warned:
        assert "open-file limit is 20000" in warnings[0].getMessage()
