"""Same argv, same outcome: usernet-slirp4netns against the real slirp4netns 1.2 (Debian's).

Each argument vector -- the ones Podman 4.3 and 5.x produce, and bad ones -- is given to both
programs; they must agree on the exit status (and, where slirp4netns says why, the first line of
the reason), on the addresses, routes and MTU inside the namespace, on the ready/exit fd protocol
(ready fd: the byte ``1`` then EOF; exit fd closed: status 0, API socket removed), and on the
API socket's replies. Namespaces are made here (``unshare --net=FILE``), one per run; no packet
leaves them.
"""

import json
import os
import select
import shutil
import socket
import subprocess
import time

import pytest

from conftest import REPO, free_port, need_root, need_tun

ENTRY = os.path.join(REPO, ".venv", "bin", "usernet-slirp4netns")
SLIRP = shutil.which("slirp4netns") or "/usr/bin/slirp4netns"

pytestmark = [
    pytest.mark.integration, need_root, need_tun,
    pytest.mark.skipif(not os.path.exists(SLIRP), reason="slirp4netns not installed"),
    pytest.mark.skipif(not os.path.exists(ENTRY), reason="usernet-slirp4netns not installed (tools/setup.sh)"),
]

PROGS = {"slirp4netns": SLIRP, "usernet": ENTRY}


def _run(prog, argv, timeout=30):
    return subprocess.run([PROGS[prog], *argv], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd="/")


def _reason(r, prog):
    """The first stderr line, with the program name taken out (glibc prefixes argv[0])."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    return lines[0].replace(PROGS[prog], "PROG") if lines else ""


# Fails found while parsing: status and message must match.
BAD = [
    [],
    ["1"],
    ["--bogus", "1", "tap0"],
    ["-x", "1", "tap0"],
    ["-m"],
    ["--mtu"],
    ["--conf=1", "1", "tap0"],
    ["--disable", "1", "tap0"],
    ["-m", "0", "1", "tap0"],
    ["-m", "65522", "1", "tap0"],
    ["-m", "abc", "1", "tap0"],
    ["-e", "abc", "1", "tap0"],
    ["-e", "-1", "1", "tap0"],
    ["-r", "x", "1", "tap0"],
    ["--macaddress", "02:00:00:00:00:01", "1", "tap0"],
    ["-c", "--macaddress", "zz", "1", "tap0"],
    ["--cidr", "10.0.2.0/26", "1", "tap0"],
    ["--cidr", "10.0.2.1/24", "1", "tap0"],
    ["--cidr", "foo", "1", "tap0"],
    ["--cidr", "10.0.2.0", "1", "tap0"],
    ["--outbound-addr=1.2.3", "1", "tap0"],
    ["--outbound-addr=nosuchif0", "1", "tap0"],
    ["--outbound-addr6=1.2.3.4", "1", "tap0"],
    ["abc", "tap0"],
    ["0", "tap0"],
    ["--netns-type=path", "/nonexistent/netns", "tap0"],
    ["--userns-path=/nonexistent", "--netns-type=path", "/nonexistent", "tap0"],
    ["--target-type=foo", "1", "tap0"],
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a) or "(none)")
def test_bad_argv_same_status_and_reason(argv):
    s, u = _run("slirp4netns", argv), _run("usernet", argv)
    assert (u.returncode, _reason(u, "usernet")) == (s.returncode, _reason(s, "slirp4netns")), (s, u)
    assert u.returncode == 1
    assert "Traceback" not in u.stderr
    # Both print the usage on stdout, or neither does.
    assert ("Usage:" in u.stdout) == ("Usage:" in s.stdout), (s.stdout[:200], u.stdout[:200])


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["-h", "--bogus"], ["--help", "1", "tap0"]])
def test_help_same_status(argv):
    s, u = _run("slirp4netns", argv), _run("usernet", argv)
    assert u.returncode == s.returncode == 0
    # Every flag name of slirp4netns's help is in ours (Podman and RootlessKit grep for them).
    for word in s.stdout.split():
        if word.startswith("--"):
            assert word.split("=")[0] in u.stdout, word


def test_version_first_line_shape():
    s, u = _run("slirp4netns", ["--version"]), _run("usernet", ["-v"])
    assert s.returncode == u.returncode == 0
    first = u.stdout.splitlines()[0]
    assert first.startswith("slirp4netns version 1.2.") and first.split()[2].count(".") == 2
    assert "usernet" in u.stdout.splitlines()[1]


def test_missing_target_same_status():
    argv = ["-c", "999999999", "tap0"]
    s, u = _run("slirp4netns", argv), _run("usernet", argv)
    assert u.returncode == s.returncode == 1
    assert "Traceback" not in u.stderr and u.stderr.strip()


# ----------------------------------------------------------------- real runs
class Helper:
    """One helper started the way Podman starts it: ready and exit pipes on chosen fds."""

    def __init__(self, prog, argv_tmpl, netns, exit_fd_no, ready_fd_no, api, env=None):
        self.ready_r, ready_w = os.pipe()
        self.exit_r, self.exit_w = os.pipe() if exit_fd_no is not None else (None, None)
        argv = [a.format(netns=netns, api=api, e=exit_fd_no, r=ready_fd_no) for a in argv_tmpl]
        moves = [(ready_w, ready_fd_no)] + ([(self.exit_r, exit_fd_no)] if exit_fd_no is not None else [])

        def place():
            tmp = [(os.dup(src), dst) for src, dst in moves]  # out of the way of the targets
            for src, dst in tmp:
                os.dup2(src, dst)
                os.close(src)
        cmd = [PROGS[prog]] if isinstance(prog, str) else list(prog)   # a name, or an argv
        self.proc = subprocess.Popen([*cmd, *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=place, pass_fds=[dst for _s, dst in moves], cwd="/",
                                     env=env)
        os.close(ready_w)
        if self.exit_r is not None:
            os.close(self.exit_r)

    def ready(self, timeout=20.0):
        """What arrived on the ready fd before EOF (bounded)."""
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.ready_r], [], [], 0.2)
            if r:
                chunk = os.read(self.ready_r, 16)
                if not chunk:
                    return got
                got += chunk
            elif self.proc.poll() is not None:
                return got
        return got + b"<timeout>"

    def close_exit_fd(self):
        os.close(self.exit_w)
        self.exit_w = None

    def wait(self, timeout=20):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return "timeout"

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for fd in (self.ready_r, self.exit_w):
            if fd is not None:
                os.close(fd)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _netns(tmp_path, name):
    path = str(tmp_path / name)
    open(path, "w").close()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True, timeout=10)
    return path


def _drop_netns(path):
    subprocess.run(["umount", path], capture_output=True, timeout=10)
    os.unlink(path)


def _inside(netns):
    """Addresses (IPv4), routes (IPv4) and link MTU/state of tap0 and lo, as JSON-ish tuples."""
    def ip(*a):
        r = subprocess.run(["nsenter", f"--net={netns}", "ip", "-j", *a], capture_output=True,
                           text=True, timeout=10, check=True)
        return json.loads(r.stdout or "[]")
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"]) for a in ip("-4", "addr")
                   for i in a.get("addr_info", []))
    routes = sorted((r.get("dst"), r.get("gateway"), r.get("dev"), r.get("protocol"))
                    for r in ip("-4", "route"))
    links = sorted((ln["ifname"], ln["mtu"], "UP" in ln["flags"]) for ln in ip("link"))
    return addrs, routes, links


def _ipv6_inside(netns, tap, timeout=10.0):
    """With -6: tap's global IPv6 addresses, each reduced to (prefix, "eui64" if its interface
    id is the modified EUI-64 of tap's own MAC), and the gateway of the IPv6 default route.
    slirp4netns's address comes by SLAAC after its first router advertisement, usernet's at
    once: wait (bounded) for one to appear."""
    import ipaddress

    def ip(*a):
        r = subprocess.run(["nsenter", f"--net={netns}", "ip", "-j", *a], capture_output=True,
                           text=True, timeout=10, check=True)
        return json.loads(r.stdout or "[]")
    deadline = time.monotonic() + timeout
    while True:
        (link,) = ip("link", "show", tap)
        mac = bytes.fromhex(link["address"].replace(":", ""))
        eui = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:]
        addrs = sorted(
            (str(ipaddress.IPv6Network(f"{i['local']}/{i['prefixlen']}", strict=False)),
             "eui64" if ipaddress.IPv6Address(i["local"]).packed[8:] == eui else i["local"])
            for a in ip("-6", "addr", "show", "dev", tap) for i in a.get("addr_info", [])
            if i.get("scope") == "global")
        gws = sorted(r.get("gateway") for r in ip("-6", "route", "show", "default"))
        if (addrs and gws) or time.monotonic() > deadline:
            return addrs, gws
        time.sleep(0.2)


def _api(path, req):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(req + b"\n")
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            c = s.recv(4096)
            if not c:
                return out
            out += c


PODMAN_43 = ["--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
             "--enable-ipv6", "-c", "-e", "{e}", "-r", "{r}", "--api-socket", "{api}",
             "--netns-type=path", "{netns}", "tap0"]
PODMAN_5 = ["--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
            "--enable-ipv6", "-c", "-r", "{r}", "-e", "{e}", "--netns-type=path", "{netns}", "tap0"]
CIDR = ["--cidr=10.0.5.0/24", "-c", "--mtu", "1400", "-e", "{e}", "-r", "{r}",
        "--netns-type", "path", "{netns}", "tap1"]
NOCONF = ["-r", "{r}", "-e", "{e}", "--netns-type=path", "{netns}", "tap0"]


@pytest.mark.parametrize("argv,e,r", [
    (PODMAN_43, 3, 4), (PODMAN_5, 4, 3), (CIDR, 5, 6), (NOCONF, 4, 3),
], ids=["podman-4.3", "podman-5", "cidr-mtu", "no-configure"])
def test_same_network_and_fd_protocol(tmp_path, argv, e, r):
    seen = {}
    for prog in ("slirp4netns", "usernet"):
        netns = _netns(tmp_path, f"ns-{prog}")
        api = str(tmp_path / f"{prog}.sock")
        h = Helper(prog, argv, netns, e, r, api)
        try:
            ready = h.ready()
            inside = _inside(netns)
            if "--enable-ipv6" in argv:
                inside += (_ipv6_inside(netns, argv[-1]),)
            replies = None
            if "--api-socket" in argv:
                hp = free_port()
                add = ('{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1",'
                       '"host_port":%d,"guest_addr":"","guest_port":80}}' % hp).encode()
                replies = [
                    _api(api, add),
                    _api(api, add),  # the same port again: "add_hostfwd failed"
                    _api(api, b'{"execute":"remove_hostfwd","arguments":{"id":1}}'),
                    _api(api, b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1",'
                              b'"host_port":0,"guest_addr":"","guest_port":80}}'),
                    _api(api, b'{"execute":"remove_hostfwd","arguments":{"id":42}}'),
                    _api(api, b'{"execute":"nosuch"}'),
                    _api(api, b'not json'),
                ]
            h.close_exit_fd()
            status = h.wait()
            seen[prog] = (ready, inside, replies, status, os.path.exists(api))
        finally:
            h.cleanup()
            _drop_netns(netns)
    s, u = seen["slirp4netns"], seen["usernet"]
    assert s[0] == b"1" and u[0] == b"1", (s[0], u[0])
    assert u[1] == s[1], f"inside differs:\nslirp4netns {s[1]}\nusernet     {u[1]}"
    assert u[2] == s[2]
    assert u[3] == s[3] == 0
    # Deliberate: usernet removes its API socket on the way out; slirp4netns 1.2 leaves it
    # when stopped through the exit fd (and unlinks a stale one at the next start).
    assert u[4] is False


def _peer_seen(kind, netns, port, timeout=10):
    """From inside ``netns``, reach 10.0.2.2:PORT over ``kind`` (tcp/udp); the peer address the
    host-side server (on 127.0.0.1) saw."""
    typ = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, typ) as srv:
        srv.bind(("127.0.0.1", port))
        srv.settimeout(timeout)
        if kind == "tcp":
            srv.listen(1)
        code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_%s); s.settimeout(5); "
                "s.connect(('10.0.2.2', %d)); s.send(b'x'); s.close()"
                % ("STREAM" if kind == "tcp" else "DGRAM", port))
        subprocess.run(["nsenter", f"--net={netns}", "python3", "-c", code], check=True, timeout=timeout)
        if kind == "tcp":
            conn, peer = srv.accept()
            conn.close()
        else:
            _data, peer = srv.recvfrom(16)
        return peer[0]


@pytest.mark.parametrize("flag,want", [("127.0.0.2", "127.0.0.2"), ("lo", "127.0.0.1")])
def test_outbound_addr_binds_tcp_and_udp_like_slirp4netns(tmp_path, flag, want):
    from conftest import free_port
    argv = ["-c", f"--outbound-addr={flag}", "-e", "{e}", "-r", "{r}", "--netns-type=path",
            "{netns}", "tap0"]
    seen = {}
    for prog in ("slirp4netns", "usernet"):
        netns = _netns(tmp_path, f"ns-{prog}")
        h = Helper(prog, argv, netns, 3, 4, "")
        try:
            assert h.ready() == b"1"
            seen[prog] = (_peer_seen("tcp", netns, free_port()),
                          _peer_seen("udp", netns, free_port(socket.SOCK_DGRAM)))
            h.close_exit_fd()
            assert h.wait() == 0
        finally:
            h.cleanup()
            _drop_netns(netns)
    assert seen["usernet"] == seen["slirp4netns"] == (want, want)


READY_ONLY = ["-c", "-r", "{r}", "--api-socket", "{api}", "--netns-type=path", "{netns}", "tap0"]


@pytest.mark.parametrize("argv,e", [(PODMAN_43, 3), (READY_ONLY, None)], ids=["exit-fd", "ready-only"])
def test_sigterm_is_a_clean_exit(tmp_path, argv, e):
    """Podman 4.6+ may pass only -r and stop the helper (of its rootless netns) with SIGTERM."""
    netns = _netns(tmp_path, "ns")
    api = str(tmp_path / "u.sock")
    h = Helper("usernet", argv, netns, e, 4 if e == 3 else 3, api)
    try:
        assert h.ready() == b"1"
        assert os.path.exists(api)
        h.proc.terminate()
        assert h.wait() == 0
        assert not os.path.exists(api)
    finally:
        h.cleanup()
        _drop_netns(netns)


def test_ready_only_after_api_socket_listens(tmp_path):
    """The byte arrives when the API already answers (Podman connects right after it)."""
    netns = _netns(tmp_path, "ns")
    api = str(tmp_path / "u.sock")
    h = Helper("usernet", PODMAN_43, netns, 3, 4, api)
    try:
        assert h.ready() == b"1"
        assert _api(api, b'{"execute":"list_hostfwd"}').startswith(b'{"entries":[]')
    finally:
        h.close_exit_fd()
        assert h.wait() == 0
        h.cleanup()
        _drop_netns(netns)


def test_usernet_run_reads_dns_upstream_env():
    """$USERNET_DNS_UPSTREAM works for `usernet run` (and attach) too, not only for Podman."""
    from conftest import usernet_run
    from test_podman import _DnsServer
    dns = _DnsServer("10.0.2.77")
    try:
        r = usernet_run([], ["busybox", "nslookup", "env-upstream.example", "10.0.2.3"],
                        env={"USERNET_DNS_UPSTREAM": f"127.0.0.1:{dns.port}"}, check=True)
    finally:
        dns.close()
    assert "env-upstream.example" in dns.names
    assert "10.0.2.77" in r.stdout, r.stdout
    bad = usernet_run([], ["true"], env={"USERNET_DNS_UPSTREAM": "not-an-address"})
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "usernet: USERNET_DNS_UPSTREAM: bad address 'not-an-address' (want ADDR[:PORT])"]
