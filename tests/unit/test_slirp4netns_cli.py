"""The slirp4netns 1.2 command-line dialect (usernet/slirp4netns.py), without namespaces."""

import os
import socket

import pytest

from usernet import slirp4netns as s4
from usernet.serve import dns_upstream_from_env


def parse(*argv):
    return s4.parse(list(argv), prog="PROG")


def fails(*argv):
    with pytest.raises(s4.Exit) as ei:
        parse(*argv)
    return ei.value


def test_podman_43_argv(tmp_path):
    ns = tmp_path / "netns-1"
    ns.touch()
    o = parse("--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
              "--enable-ipv6", "-c", "-e", "3", "-r", "4", "--api-socket", "/run/x.net",
              "--netns-type=path", str(ns), "tap0")
    assert (o.disable_host_loopback, o.mtu, o.enable_sandbox, o.enable_seccomp, o.enable_ipv6,
            o.configure, o.exit_fd, o.ready_fd, o.api_socket, o.netns_path, o.tapname) == \
        (True, 65520, True, True, True, True, 3, 4, "/run/x.net", str(ns), "tap0")
    assert o.target_pid is None


def test_podman_5_fd_order_and_short_clusters():
    o = parse("-cr3", "-e", "4", "-m1400", "1234", "tap0")
    assert (o.configure, o.ready_fd, o.exit_fd, o.mtu, o.target_pid) == (True, 3, 4, 1400, 1234)


def test_gnu_permutation_prefixes_and_double_dash():
    o = parse("1234", "--conf", "tap9", "--disable-h", "--", "-x")
    assert (o.target_pid, o.tapname, o.configure, o.disable_host_loopback) == (1234, "tap9", True, True)
    assert o.warnings == ["WARNING: too many arguments"]


@pytest.mark.parametrize("argv,err", [
    (["--bogus", "1", "t"], "PROG: unrecognized option '--bogus'\n"),
    (["-x", "1", "t"], "PROG: invalid option -- 'x'\n"),
    (["-m"], "PROG: option requires an argument -- 'm'\n"),
    (["--mtu"], "PROG: option '--mtu' requires an argument\n"),
    (["--configure=1", "1", "t"], "PROG: option '--configure' doesn't allow an argument\n"),
    (["--disable", "1", "t"], "PROG: option '--disable' is ambiguous; possibilities: "
                              "'--disable-host-loopback' '--disable-dns'\n"),
    (["-m", "0", "1", "t"], "MTU must be a positive integer (< 65522)\n"),
    (["-m", "65522", "1", "t"], "MTU must be a positive integer (< 65522)\n"),
    (["-e", "-1", "1", "t"], "exit-fd must be a non-negative integer\n"),
    (["-r", "3x", "1", "t"], "ready-fd must be a non-negative integer\n"),
    (["--macaddress", "02:00:00:00:00:01", "1", "t"],
     "--macaddr cannot be specified when --configure or -c is not specified\n"),
    (["abc", "t"], "PID must be a positive integer\n"),
    (["--netns-type=path", "/nonexistent", "t"],
     "existing path expected when --netns-type=path: No such file or directory\n"),
    (["--userns-path=/nonexistent", "1", "t"], "userns path doesn't exist: /nonexistent\n"),
    (["--target-type=x", "1", "t"], '--target-type must be either "netns" or "bess"\n'),
    (["1"], ""),
])
def test_parse_errors_are_slirp4netns_texts_with_usage(argv, err):
    e = fails(*argv)
    assert (e.status, e.err) == (1, err)
    assert e.out.startswith("Usage: PROG [OPTION]... PID|PATH [TAPNAME]")


def test_help_and_version_exit_0_and_name_every_probed_flag():
    e = fails("-h", "--bogus")
    assert e.status == 0 and not e.err
    for flag in ("--disable-host-loopback", "--mtu", "--enable-sandbox", "--enable-seccomp", "--cidr",
                 "--outbound-addr", "--enable-ipv6", "--netns-type", "--api-socket", "--macaddress",
                 "--configure", "--exit-fd", "--ready-fd", "--userns-path", "--outbound-addr6",
                 "--disable-dns", "--help", "--version"):
        assert flag in e.out, flag
    v = fails("--version")
    assert v.status == 0
    assert v.out.splitlines()[0] == "slirp4netns version 1.2.0"
    assert v.out.splitlines()[1].startswith("usernet version ")


@pytest.mark.parametrize("cidr,err", [
    ("10.0.2.0/26", "prefix length needs to be 1-25\n"),
    ("10.0.0.0/0", "prefix length needs to be 1-25\n"),
    ("10.0.2.1/24", "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24\n"),
    ("foo", "invalid CIDR: foo\n"),
    ("10.0.2.0", "invalid CIDR: 10.0.2.0\n"),
])
def test_cidr_checks(cidr, err):
    o = parse("--cidr", cidr, "1", "tap0")
    with pytest.raises(s4.Exit) as ei:
        s4.network_config(o)
    assert (ei.value.status, ei.value.err, ei.value.out) == (1, err, "")


def test_addressing_follows_cidr_like_slirp4netns():
    cfg = s4.network_config(parse("-c", "--cidr=10.0.5.0/24", "--disable-dns", "--macaddress",
                                  "02:00:00:00:00:07", "1", "tap0"))
    assert (cfg.guest_str, cfg.gateway_str, cfg.dns_str, cfg.enable_dns, cfg.guest_mac) == \
        ("10.0.5.100", "10.0.5.2", "10.0.5.3", False, bytes.fromhex("020000000007"))


def test_bad_mac_and_mtu_usernet_cannot_do():
    with pytest.raises(s4.Exit) as ei:
        s4.network_config(parse("-c", "--macaddress", "zz", "1", "tap0"))
    assert ei.value.err.startswith('"zz" is an invalid MAC address.\n')
    with pytest.raises(s4.Exit) as ei:
        s4.network_config(parse("-m", "67", "1", "tap0"))
    assert "68..65520" in ei.value.err


def test_outbound_addresses():
    o = parse("--outbound-addr=127.0.0.2", "--outbound-addr6=::1", "1", "tap0")
    assert s4.outbound_addresses(o) == {socket.AF_INET: "127.0.0.2", socket.AF_INET6: "::1"}
    assert s4.outbound_addresses(parse("--outbound-addr=lo", "1", "t")) == {socket.AF_INET: "127.0.0.1"}
    for flag in ("--outbound-addr=1.2.3", "--outbound-addr=nosuchif0", "--outbound-addr6=1.2.3.4"):
        with pytest.raises(s4.Exit) as ei:
            s4.outbound_addresses(parse(flag, "1", "t"))
        assert ei.value.status == 1 and "outbound-addr has to be valid" in ei.value.err


def test_long_api_socket_path_is_refused_before_attaching(capsys):
    rc = s4.main(["-a", "/" + "x" * 107, "1", "tap0"], prog="PROG")
    assert rc == 1
    assert "API socket path too long (108 bytes" in capsys.readouterr().err


def test_dns_upstream_env():
    env = {"USERNET_DNS_UPSTREAM": "127.0.0.1:5353, [::1]:53 10.0.0.1"}
    assert dns_upstream_from_env(env) == [("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53)]
    assert dns_upstream_from_env({}) == []
    with pytest.raises(ValueError, match="USERNET_DNS_UPSTREAM"):
        dns_upstream_from_env({"USERNET_DNS_UPSTREAM": "resolver.example"})


def test_usernet_slirp4netns_subcommand(capsys):
    from usernet.cli import main
    assert main(["slirp4netns", "--version"]) == 0
    assert capsys.readouterr().out.startswith("slirp4netns version 1.2.0\n")
    assert main(["slirp4netns", "--bogus"]) == 1
    assert "usernet slirp4netns: unrecognized option '--bogus'" in capsys.readouterr().err


def test_daemon_choice_from_the_option_and_the_environment(tmp_path):
    """--daemon-socket and USERNET_DAEMON say whether the link goes to a daemon, which
    socket, and whether a missing daemon is an error (1, PATH, the option) or means serving
    here (auto); anything else is one line naming the variable."""
    xdg = str(tmp_path)
    base = {"XDG_RUNTIME_DIR": xdg}
    default = str(tmp_path / "usernet" / "daemon.sock")
    o = parse("1", "tap0")
    assert s4.daemon_choice(o, base) == (None, False)
    assert s4.daemon_choice(o, dict(base, USERNET_DAEMON="0")) == (None, False)
    assert s4.daemon_choice(o, dict(base, USERNET_DAEMON="1")) == (default, True)
    assert s4.daemon_choice(o, dict(base, USERNET_DAEMON="auto")) == (default, False)
    assert s4.daemon_choice(o, dict(base, USERNET_DAEMON="/run/d.sock")) == ("/run/d.sock", True)
    o = parse("--daemon-socket=/x/d.sock", "1", "tap0")
    assert s4.daemon_choice(o, dict(base, USERNET_DAEMON="0")) == ("/x/d.sock", True)
    with pytest.raises(s4.Exit) as ei:
        s4.daemon_choice(parse("1", "tap0"), dict(base, USERNET_DAEMON="yes"))
    assert ei.value.status == 1 and "USERNET_DAEMON='yes'" in ei.value.err


def test_a_required_daemon_that_is_not_running_is_one_line_and_no_tap(tmp_path, capsys):
    # Checked before any namespace is touched: PID 1's namespace is never entered.
    import os
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        pytest.skip("the TUN check comes first and needs /dev/net/tun")
    sock = str(tmp_path / "none.sock")
    r, w = os.pipe()
    try:
        rc = s4.main(["-c", "-e", str(r), f"--daemon-socket={sock}", "1", "tap0"], prog="PROG")
    finally:
        os.close(r)
        os.close(w)
    err = capsys.readouterr().err
    assert rc == 1 and "not running" in err and sock in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


# ------------------------------------------------------------- the compiled front's hand-over
def test_take_front_absent_is_none():
    assert s4.take_front({}) is None


def test_take_front_reads_and_removes_the_variable():
    r, w = os.pipe()
    try:
        env = {s4.FRONT_ENV: f"tap={r},ifname=tap0,api={w},pidfd=-1", "OTHER": "x"}
        f = s4.take_front(env)
        assert (f.tap, f.ifname, f.api, f.pidfd) == (r, "tap0", w, None)
        assert env == {"OTHER": "x"}       # nothing we start inherits it
        assert not os.get_inheritable(r) and not os.get_inheritable(w)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("value", ["", "tap=x,ifname=t,api=-1,pidfd=-1", "tap=3,api=-1,pidfd=-1",
                                   "garbage"])
def test_take_front_refuses_what_the_front_never_writes(value):
    with pytest.raises(s4.Exit) as e:
        s4.take_front({s4.FRONT_ENV: value})
    assert e.value.status == 1 and s4.FRONT_ENV in e.value.err


def test_take_front_refuses_a_closed_fd():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(s4.Exit) as e:
        s4.take_front({s4.FRONT_ENV: f"tap={r},ifname=tap0,api=-1,pidfd=-1"})
    assert e.value.status == 1 and "not open" in e.value.err
