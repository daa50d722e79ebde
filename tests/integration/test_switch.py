"""Named networks: links of one daemon on one network reach each other by name (issue 15).

The daemon runs inside an empty network namespace the test makes (``unshare
--net``): whatever the containers try to reach through NAT ends there
(network unreachable), so nothing can leave the machine, and DNS upstreams
(127.0.0.1:9 there) answer nothing. The containers are ``usernet run
--daemon`` commands: each gets its address from the network, a resolv.conf
naming the network's DNS and search domain, and its link joins the switch.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import NOBODY, REPO, USERNET, free_port, need_root, need_tun, reopen_for_nobody, tool, wait_for

pytestmark = [pytest.mark.integration, need_tun, need_root]

ENV = dict(os.environ, PYTHONPATH=REPO)
ENV.pop("USERNET_DAEMON_SOCKET", None)
TIMEOUT = 60
NOWHERE_DNS = "127.0.0.1:9"      # inside the daemon's empty namespace: nothing listens

GUEST_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(8)
while True:
    c, _ = s.accept(); c.recv(100); c.sendall(sys.argv[1].encode()); c.close()
"""

# A bounded retry inside the container: the server in the other container
# may still be starting.
FETCH = ("for i in $(seq 50); do out=$({cmd}) && {{ printf '%s' \"$out\"; exit 0; }}; "
         "sleep 0.2; done; exit 1")


def _out(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


_wait_for = wait_for


def _usernet(args, timeout=TIMEOUT, pre=()):
    return subprocess.run(list(pre) + USERNET + args, capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd="/")


def _pre(user):
    return NOBODY if user == "nobody" else []


@contextlib.contextmanager
def _daemon(user=None):
    """A daemon in a fresh, empty network namespace; its socket in a temp dir
    of the user's."""
    d = tempfile.mkdtemp(prefix="usernet-s18-switch-")
    os.chmod(d, 0o755)
    if user == "nobody":
        os.chown(d, 65534, 65534)
    path = os.path.join(d, "d.sock")
    argv = " ".join(_pre(user) + USERNET + ["daemon", "--socket", path])
    # Loopback up (the forwards listen there); no other interface, no route.
    # As uid 65534 the daemon drops to it inside the namespace root made.
    p = subprocess.Popen(["unshare", "--net", "--", "sh", "-c",
                          f"ip link set lo up && exec {argv}"],
                         env=ENV, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)

    def up():
        assert p.poll() is None, p.stderr.read()
        if not os.path.exists(path):
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return True
            except OSError:
                return False
    try:
        _wait_for(up, 20, "the daemon to listen")
        yield p, path, d
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            _o, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _o, err = p.communicate(timeout=10)
            raise AssertionError("the daemon did not exit after SIGTERM")
        shutil.rmtree(d, ignore_errors=True)
        assert p.returncode == 0 and "Traceback" not in err, err


def _status(path, user=None):
    r = _usernet(["daemon", "status", "--json", "--socket", path], pre=_pre(user))
    assert r.returncode == 0, _out(r)
    return json.loads(r.stdout)


def _run(path, network, *args, name=None, cmd, timeout=TIMEOUT, user=None):
    """``usernet run --daemon`` on ``network``: the command's result."""
    flags = ["run", "--daemon-socket", path, "--network", network, "--dns-upstream", NOWHERE_DNS]
    if name:
        flags += ["--name", name]
    return _usernet(flags + list(args) + ["--"] + cmd, timeout=timeout, pre=_pre(user))


def _start(path, network, *args, name=None, cmd, user=None):
    flags = ["run", "--daemon-socket", path, "--network", network, "--dns-upstream", NOWHERE_DNS]
    if name:
        flags += ["--name", name]
    return subprocess.Popen(_pre(user) + USERNET + flags + list(args) + ["--"] + cmd, env=ENV,
                            cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _links(path, network=None, user=None):
    return [ln for ln in _status(path, user)["links"]
            if network is None or ln["network"] == network]


def _ask_in(pid, port):
    """What the forward on 127.0.0.1:``port`` of the daemon's namespace answers."""
    code = (f"import socket; c = socket.create_connection(('127.0.0.1', {port}), timeout=5); "
            "c.sendall(b'hi'); print(c.recv(100).decode())")
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", code],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_two_networks_by_name_isolation_and_a_killed_container(request, user):
    """On network alpha: ``web`` serves HTTP, ``db`` a TCP service with a -p
    forward; a third container fetches http://web:8080/ (wget and curl, by
    name, by name.alpha) and db:8000. A container on network beta cannot
    reach web, by name or by address (even with an on-link route). Killing
    web frees its link, address and name; db's traffic and forward keep
    working, and a new link may take the name web."""
    for t in ("wget", "curl", "nsenter", "ip"):
        tool(t)
    if user == "nobody":
        request.getfixturevalue("unprivileged")
        reopen_for_nobody()
    u = {"user": user}
    hp = free_port()
    procs = []
    with _daemon(user) as (daemon, path, d):
        www = os.path.join(d, "www")
        os.mkdir(www)
        with open(os.path.join(www, "page.txt"), "w") as f:
            f.write("page of web\n")
        os.chmod(www, 0o755)
        os.chmod(os.path.join(www, "page.txt"), 0o644)
        try:
            for net in ("alpha", "beta"):
                r = _usernet(["network", "create", net, "--socket", path], pre=_pre(user))
                assert r.returncode == 0, _out(r)
            web = _start(path, "alpha", name="web", **u, cmd=[
                "python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory",
                str(www)])
            db = _start(path, "alpha", "-p", f"127.0.0.1:{hp}:8000", name="db", **u,
                        cmd=["python3", "-c", GUEST_SERVER, "from-db"])
            procs = [web, db]
            _wait_for(lambda: len(_links(path, "alpha", user)) == 2, 30, "web and db to be linked")

            # By name, with wget (the words) and curl; by name.alpha; and db.
            r = _run(path, "alpha", **u, cmd=["sh", "-c", FETCH.format(
                cmd="wget -q -T 5 -O - http://web:8080/page.txt")])
            assert r.returncode == 0 and r.stdout == "page of web", _out(r)
            r = _run(path, "alpha", **u, cmd=["sh", "-c", "cat /etc/resolv.conf; "
                                         "ip -4 -o addr show tap0; " + FETCH.format(
                                             cmd="curl -sS -m 5 http://web.alpha:8080/page.txt")])
            assert r.returncode == 0 and r.stdout.endswith("page of web"), _out(r)
            assert "nameserver 10.89.0.3" in r.stdout and "search alpha" in r.stdout, r.stdout
            assert "inet 10.89.0.10" in r.stdout, r.stdout           # the network's
            client_addr = r.stdout.split("inet ")[1].split()[0]
            r = _run(path, "alpha", **u, cmd=["sh", "-c", FETCH.format(
                cmd="echo hi | busybox nc -w 5 db 8000")])
            assert r.returncode == 0 and r.stdout == "from-db", _out(r)

            st = _status(path, user)
            by_name = {ln["name"]: ln for ln in st["links"]}
            assert by_name["web"]["network"] == "alpha"
            web_addr = by_name["web"]["addresses"][0]
            assert {web_addr, by_name["db"]["addresses"][0]} == {"10.89.0.100/24",
                                                                 "10.89.0.101/24"}
            assert client_addr not in (web_addr, by_name["db"]["addresses"][0])
            web_ip = web_addr.split("/")[0]
            assert by_name["web"]["mac"] and by_name["web"]["mac"] != by_name["db"]["mac"]
            nets = {n["name"]: n for n in st["networks"]}
            assert nets["alpha"]["links"] == 2 and nets["alpha"]["names"] == ["db", "web"]

            # Network beta: neither the name nor the address of web.
            r = _run(path, "beta", **u, cmd=["sh", "-c",
                                        "ip -4 -o addr show tap0; "
                                        "curl -sS -m 5 http://web:8080/page.txt; echo name=$?; "
                                        f"curl -sS -m 5 http://{web_ip}:8080/page.txt; "
                                        "echo ip=$?; ip route add 10.89.0.0/24 dev tap0; "
                                        f"curl -sS -m 5 http://{web_ip}:8080/page.txt; "
                                        "echo onlink=$?"])
            assert "inet 10.89.1.100/24" in r.stdout, _out(r)
            assert "page of web" not in r.stdout, _out(r)
            for what in ("name", "ip", "onlink"):
                assert f"{what}=0" not in r.stdout and f"{what}=" in r.stdout, _out(r)
            assert "Could not resolve host: web" in r.stderr, _out(r)

            # The forward into db, from the daemon's namespace.
            r = _ask_in(daemon.pid, hp)
            assert r.stdout.strip() == "from-db", _out(r)

            # NAT to the host as without a network: network+2 is the host's
            # loopback (here, the daemon's namespace's).
            host_port = free_port()
            host_srv = subprocess.Popen(
                ["nsenter", f"--net=/proc/{daemon.pid}/ns/net", "python3", "-m", "http.server",
                 str(host_port), "--bind", "127.0.0.1", "--directory", www],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
            procs.append(host_srv)
            r = _run(path, "alpha", **u, cmd=["sh", "-c", FETCH.format(
                cmd=f"curl -sS -m 5 http://10.89.0.2:{host_port}/page.txt")])
            assert r.returncode == 0 and r.stdout == "page of web", _out(r)

            # Kill web: its link goes, its name and address are free.
            web.send_signal(signal.SIGKILL)
            web.wait(timeout=20)
            _wait_for(lambda: {ln["name"] for ln in _links(path, "alpha", user)} == {"db"}, 20,
                      "web's link to be freed")
            r = _run(path, "alpha", **u, cmd=["sh", "-c", FETCH.format(
                cmd="echo hi | busybox nc -w 5 db 8000")])
            assert r.returncode == 0 and r.stdout == "from-db", _out(r)
            r = _run(path, "alpha", **u, cmd=["sh", "-c",
                                              "curl -sS -m 5 http://web:8080/; echo rc=$?"])
            assert "rc=6" in r.stdout, _out(r)            # no such name any more
            assert _ask_in(daemon.pid, hp).stdout.strip() == "from-db"
            r = _run(path, "alpha", name="web", **u, cmd=["sh", "-c", "ip -4 -o addr show tap0"])
            assert r.returncode == 0 and f"inet {web_addr}" in r.stdout, _out(r)
            assert db.poll() is None and daemon.poll() is None
            assert {n["name"] for n in _status(path, user)["networks"]} == {"alpha"}
        finally:
            _stop(procs)


def test_network_flags_fail_in_one_line(tmp_path):
    """--network without --daemon, an unknown network, a taken name: one line
    with the fix each, and no link or namespace left."""
    r = _usernet(["run", "--network", "alpha", "--", "true"])
    assert r.returncode != 0 and r.stderr.count("\n") == 1, _out(r)
    assert "--network needs the daemon" in r.stderr and "add --daemon" in r.stderr, r.stderr
    with _daemon() as (_d, path, _dir):
        r = _run(path, "nope", cmd=["true"])
        assert r.returncode == 1 and r.stderr.count("\n") == 1, _out(r)
        assert "no network 'nope'" in r.stderr and "usernet network create nope" in r.stderr
        r = _usernet(["network", "create", "alpha", "--socket", path])
        assert r.returncode == 0, _out(r)
        # A client that leases and goes away without attaching frees the
        # address and the name at once.
        from usernet.daemon import DaemonClient

        def lease(name):
            c = DaemonClient(path)
            try:
                return c.request({"op": "network_lease", "network": "alpha", "name": name})
            finally:
                c.close()
        first = lease("gone")
        assert first["ok"] and first["config"]["guest_addr"] == "10.89.0.100", first
        again = _wait_for(lambda: lease("gone").get("ok") and True, 10, "the lease to be freed")
        assert again
        hold = _start(path, "alpha", name="web", cmd=["sleep", "60"])
        try:
            _wait_for(lambda: _links(path, "alpha"), 30, "web to be linked")
            r = _run(path, "alpha", name="web", cmd=["true"])
            assert r.returncode == 1 and r.stderr.count("\n") == 1, _out(r)
            assert "the name 'web' is taken on network alpha" in r.stderr, r.stderr
            r = _usernet(["network", "rm", "alpha", "--socket", path])
            assert r.returncode == 1 and "has 1 link(s)" in r.stderr, _out(r)
            lid = _links(path)[0]["id"]
            r = _usernet(["network", "ls", "--socket", path])
            assert r.stdout.splitlines()[1].split() == ["alpha", "10.89.0.0/24", "fd89::/64",
                                                       f"web({lid})"], _out(r)
            r = _usernet(["daemon", "status", "--socket", path])
            assert "network alpha 10.89.0.0/24: 1 link(s), names web" in r.stdout, _out(r)
            assert len(_links(path)) == 1
        finally:
            _stop([hold])
        _wait_for(lambda: not _links(path), 20, "the link to end")
        r = _usernet(["network", "rm", "alpha", "--socket", path])
        assert r.returncode == 0, _out(r)
        r = _usernet(["network", "ls", "--socket", path, "--json"])
        assert json.loads(r.stdout) == []


def test_ipv6_on_a_network_by_name(tmp_path):
    """With -6, a link's name has an AAAA (its SLAAC address in the network's
    /64) and the two containers talk IPv6 directly through the switch."""
    tool("ping")
    with _daemon() as (_d, path, _dir):
        r = _usernet(["network", "create", "six", "--socket", path])
        assert r.returncode == 0, _out(r)
        prefix = r.stdout.split()[2].split("::")[0]          # fd89 (the network's /64)
        web = _start(path, "six", "-6", name="web", cmd=["sleep", "60"])
        try:
            _wait_for(lambda: _links(path, "six"), 30, "web to be linked")
            r = _run(path, "six", "-6", cmd=["sh", "-c", FETCH.format(
                cmd="ping -6 -c 1 -W 2 web.six >/dev/null && echo reached")])
            assert r.returncode == 0 and r.stdout == "reached", _out(r)
            r = _run(path, "six", "-6", cmd=["sh", "-c", "getent ahostsv6 web | head -1"])
            assert r.stdout.startswith(prefix + ":"), _out(r)
        finally:
            _stop([web])


def test_attach_joins_a_network(tmp_path):
    """``attach --daemon --network --name`` on a running namespace: it gets the
    network's address and name, and a run container on the network reaches
    it by that name."""
    tool("ping")
    tool("nsenter")
    with _daemon() as (_d, path, _dir):
        r = _usernet(["network", "create", "att", "--socket", path])
        assert r.returncode == 0, _out(r)
        target = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep",
                                   "60"], cwd="/")
        try:
            own = os.stat("/proc/self/ns/net").st_ino

            def ready():            # sleep runs: the namespaces and the uid map are made
                with open(f"/proc/{target.pid}/comm") as f:
                    return (f.read().strip() == "sleep"
                            and os.stat(f"/proc/{target.pid}/ns/net").st_ino != own)
            _wait_for(ready, 10, "unshare to start")
            r = _usernet(["attach", "--daemon-socket", path, "--network", "att", "--name",
                          "box", str(target.pid)])
            assert r.returncode == 0, _out(r)
            r = subprocess.run(["nsenter", f"--target={target.pid}", "--user", "--net",
                                "--preserve-credentials", "ip", "-4", "-o", "addr", "show",
                                "tap0"], capture_output=True, text=True, timeout=30)
            assert "inet 10.89.0.100/24" in r.stdout, _out(r)
            r = _run(path, "att", cmd=["sh", "-c", FETCH.format(
                cmd="ping -c 1 -W 2 box >/dev/null && echo reached")])
            assert r.returncode == 0 and r.stdout == "reached", _out(r)
            assert [ln["name"] for ln in _links(path, "att")] == ["box"]
        finally:
            target.kill()
            target.wait(timeout=10)
        _wait_for(lambda: not _links(path), 20, "the attached link to end")
