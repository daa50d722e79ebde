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
