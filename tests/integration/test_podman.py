"""Real rootless Podman with usernet as its network helper (``network_cmd_path``).

Set-up (module fixture, root only): install ``podman runc uidmap busybox-static`` if missing; a
throw-away user with its own /etc/subuid+/etc/subgid range, home and XDG_RUNTIME_DIR under a
temporary directory; that user's containers.conf (runc: crun 1.8 refuses this machine's cgroup
layout; cgroupfs and file events: there is no systemd user session; ``network_cmd_path`` = the
checkout's ``usernet-slirp4netns``) and storage.conf (vfs: nothing to assume about overlay in a
user namespace); /dev/net/tun mode 0666. No registry is reachable, so the image is
``podman import`` of a rootfs holding busybox and its applet links. Everything is undone
afterwards: the user, its files, the subid lines, /dev/net/tun's mode.

Traffic stays on this machine: the container reaches host loopback through 10.0.2.2 and a DNS
upstream the test runs on 127.0.0.1, handed to usernet with ``$USERNET_DNS_UPSTREAM`` (Podman
starts its network helper with its own environment).
"""

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import REPO, TUN, free_port, http_server

pytestmark = [pytest.mark.integration, pytest.mark.podman]

USER = "usernet-podtest"
ENTRY = os.path.join(REPO, ".venv", "bin", "usernet-slirp4netns")
IMAGE = "localhost/usernet-busybox:test"
APT = ["podman", "runc", "uidmap", "busybox-static"]
T = 120  # seconds: the bound on any one podman command


def _missing_packages():
    out = []
    # Any busybox will do (a dynamic one is copied with its libraries): do not swap packages
    # under a machine that has one.
    want = APT if shutil.which("busybox") is None else [a for a in APT if a != "busybox-static"]
    for p in want:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            out.append(p)
    return out


def _install_packages():
    missing = _missing_packages()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"needs {' '.join(missing)} (no apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0:
        pytest.skip(f"cannot install {' '.join(missing)}: {r.stderr.strip()[-300:]}")


def _subid_start(paths):
    """A start for a 65536-id range above every range already in ``paths``."""
    top = 100000
    for path in paths:
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    top = max(top, int(parts[1]) + int(parts[2]))
    return top + 65536


def _busybox_rootfs(root):
    """A rootfs with busybox (and, should it be a dynamic one, its libraries) and its applets."""
    bb = shutil.which("busybox") or "/bin/busybox"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "www"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(bb, os.path.join(root, "bin", "busybox"))
    ldd = subprocess.run(["ldd", bb], capture_output=True, text=True)
    for line in ldd.stdout.splitlines():
        lib = line.split("=>")[-1].split("(")[0].strip()
        if lib.startswith("/") and os.path.exists(lib):
            dst = os.path.join(root, lib.lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(lib, dst)
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        p = os.path.join(root, "bin", a)
        if a != "busybox" and not os.path.lexists(p):
            os.symlink("busybox", p)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    with open(os.path.join(root, "www", "index.html"), "w") as f:
        f.write("served from inside the container\n")


class PodmanUser:
    """Runs podman as the test user."""

    def __init__(self, name, uid, gid, home, runtime):
        self.name, self.uid, self.gid, self.home, self.runtime = name, uid, gid, home, runtime

    def env(self, extra=None):
        e = {"HOME": self.home, "USER": self.name, "LOGNAME": self.name,
             "XDG_RUNTIME_DIR": self.runtime, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
             "LANG": "C.UTF-8"}
        if extra:
            e.update(extra)
        return e

    def cmd(self, argv, timeout=T, env=None):
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                               "--init-groups", *argv], capture_output=True, text=True,
                              timeout=timeout, env=self.env(env), cwd=self.home)

    def run(self, *args, timeout=T, env=None, check=False):
        # /dev/net/tun may have been put back to 0600 by a concurrent test session.
        with contextlib.suppress(OSError):
            os.chmod(TUN, 0o666)
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "podman", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env=self.env(env), cwd=self.home)
        if check:
            assert r.returncode == 0, f"podman {' '.join(args)}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def popen(self, *args, env=None):
        with contextlib.suppress(OSError):
            os.chmod(TUN, 0o666)
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "podman", *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(env), cwd=self.home)


def _entry_for(pw, base):
    """The checkout's usernet-slirp4netns, if the test user can run it as root of its own user
    namespace (as Podman runs it: the user's other ids are unmapped there). When the venv's base
    interpreter is somewhere that user cannot reach (a pyenv build under /root, here), a wrapper
    runs the system python3 of the same minor version on the checkout and the venv's packages."""
    probe = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                            "--init-groups", "unshare", "--user", "--map-root-user", ENTRY, "--version"], capture_output=True, text=True,
                           timeout=60, cwd="/")
    if probe.returncode == 0:
        return ENTRY
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = os.path.join(REPO, ".venv", "lib", ver, "site-packages")
    wrapper = os.path.join(base, "usernet-slirp4netns")
    with open(ENTRY, "rb") as f:
        compiled = f.read(4) == b"\x7fELF"
    with open(wrapper, "w") as f:
        if compiled:    # the compiled front, told which interpreter to hand over to
            f.write(f'#!/bin/sh\nUSERNET_PYTHON=/usr/bin/{ver} PYTHONPATH="{REPO}:{site}" '
                    f'exec {ENTRY} "$@"\n')
        else:
            f.write(f'#!/bin/sh\nPYTHONPATH="{REPO}:{site}" exec /usr/bin/{ver} -m usernet.slirp4netns "$@"\n')
    os.chmod(wrapper, 0o755)
    probe = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                            "--init-groups", "unshare", "--user", "--map-root-user", wrapper, "--version"], capture_output=True, text=True,
                           timeout=60, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"user {USER} cannot run {ENTRY}: {probe.stderr.strip()[-200:]}")
    return wrapper


@pytest.fixture(scope="module")
def podman():
    if os.geteuid() != 0:
        pytest.skip("needs root (to install Podman and make a test user)")
    if not os.path.exists(TUN):
        pytest.skip("no /dev/net/tun")
    if not os.path.exists(ENTRY):
        pytest.skip(f"{ENTRY} missing (run tools/setup.sh)")
    _install_packages()
    for prog in ("podman", "runc", "newuidmap", "setpriv", "useradd"):
        if shutil.which(prog) is None:
            pytest.skip(f"{prog} not installed")

    # Short: Podman's API socket is $XDG_RUNTIME_DIR/libpod/tmp/<64 hex>.net, and a unix socket
    # path must stay under 108 bytes.
    base = tempfile.mkdtemp(prefix="unpod-", dir="/tmp")
    os.chmod(base, 0o755)
    home, runtime = os.path.join(base, "home"), os.path.join(base, "r")
    saved = {}
    # The id files, and the "-" backups useradd/userdel leave beside them.
    for path in ("/etc/subuid", "/etc/subgid", "/etc/subuid-", "/etc/subgid-", "/etc/passwd-",
                 "/etc/shadow-", "/etc/group-", "/etc/gshadow-"):
        try:
            with open(path) as f:
                saved[path] = f.read()
        except FileNotFoundError:
            saved[path] = None
    old_tun = os.stat(TUN).st_mode & 0o777
    subprocess.run(["userdel", "-f", USER], capture_output=True)  # a leftover of a killed run
    made_user = False
    start = 1 << 31  # the subordinate range, once chosen
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
                        "--no-user-group", "--gid", "nogroup", USER], check=True, capture_output=True)
        made_user = True
        pw = pwd.getpwnam(USER)
        entry = _entry_for(pw, base)
        start = _subid_start(["/etc/subuid", "/etc/subgid"])
        for path in ("/etc/subuid", "/etc/subgid"):
            text = saved[path] or ""
            if text and not text.endswith("\n"):
                text += "\n"
            with open(path, "w") as f:
                f.write(text + f"{USER}:{start}:65536\n")
            os.chmod(path, 0o644)
        conf = os.path.join(home, ".config", "containers")
        os.makedirs(conf)
        os.makedirs(runtime)
        with open(os.path.join(conf, "containers.conf"), "w") as f:
            f.write('[containers]\n'
                    '[engine]\n'
                    'runtime = "runc"\n'
                    'cgroup_manager = "cgroupfs"\n'
                    'events_logger = "file"\n'
                    f'network_cmd_path = "{entry}"\n'
                    '[network]\n')
        with open(os.path.join(conf, "storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "vfs"\n')
        rootfs = os.path.join(base, "rootfs")
        _busybox_rootfs(rootfs)
        tar = os.path.join(base, "rootfs.tar")
        subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
        for dirpath, dirnames, filenames in os.walk(home):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)
        os.chown(runtime, pw.pw_uid, pw.pw_gid)
        os.chmod(runtime, 0o700)
        os.chmod(tar, 0o644)
        os.chmod(TUN, 0o666)
        u = PodmanUser(USER, pw.pw_uid, pw.pw_gid, home, runtime)
        u.entry = entry
        u.run("import", "--change", "CMD=/bin/sh", tar, IMAGE, timeout=300, check=True)
        yield u
    finally:
        if made_user:
            pw = pwd.getpwnam(USER)
            # Podman's processes (the pause process, conmon) and files go with the user.
            subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                            "--init-groups", "podman", "system", "reset", "--force"],
                           capture_output=True, timeout=T, cwd="/",
                           env={"HOME": home, "XDG_RUNTIME_DIR": runtime, "PATH": os.environ["PATH"]})
            # What is left of it (the rootless pause process, a conmon): each by its pid, only
            # processes of the test user and of its subordinate ids.
            for pid in _pids_of(lambda uid: uid == pw.pw_uid or start <= uid < start + 65536):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            subprocess.run(["userdel", "-f", USER], capture_output=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/libpod_rootless_lock_{pw.pw_uid}")
        for path, text in saved.items():
            if text is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                with open(path, "w") as f:  # an existing file keeps its owner and mode
                    f.write(text)
        os.chmod(TUN, old_tun)
        # vfs layers hold files owned by subordinate ids; rm as root takes them all.
        shutil.rmtree(base, ignore_errors=True)


def _pids_of(owner):
    """pids of processes whose owner uid satisfies ``owner(uid)``."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if owner(os.stat(f"/proc/{pid}").st_uid):
                    out.append(int(pid))
    return out


def _usernet_procs(uid):
    """pids of usernet network helpers running as ``uid``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            st = os.stat(f"/proc/{pid}")
        except OSError:
            continue
        if st.st_uid == uid and any(b"usernet-slirp4netns" in c or b"usernet.slirp4netns" in c
                                    for c in cmd[:4]):
            out.append(int(pid))
    return out


def _helper_warnings(stderr):
    """Podman's warnings and errors that are about the network helper (others, such as a
    machine's mount propagation, are not this test's business)."""
    return [ln for ln in stderr.splitlines()
            if ("WARN" in ln or "rror" in ln)
            and any(w in ln.lower() for w in ("slirp4netns", "usernet", "network", "netns"))]


def _api_sockets(runtime):
    out = []
    for dirpath, _dirs, files in os.walk(runtime):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".net")]
    return out


def _wait_gone(uid, runtime, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _usernet_procs(uid) and not _api_sockets(runtime):
            return True
        time.sleep(0.2)
    return False


def test_podman_uses_usernet_and_warns_nothing(podman):
    r = podman.run("info", check=True)
    assert "slirp4netns" in r.stdout and "usernet-slirp4netns" in r.stdout, r.stdout
    # `podman info` lists the helper and its --version: our first line is slirp4netns's shape.
    assert "slirp4netns version 1.2.0" in r.stdout, r.stdout
    assert not _helper_warnings(r.stderr), r.stderr


def test_fetch_from_host_loopback_with_sha256(podman, tmp_path):
    body = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(body)
    os.chmod(tmp_path, 0o755)
    want = hashlib.sha256(body).hexdigest()
    with http_server(tmp_path) as port:
        r = podman.run("run", "--rm", "--network", "slirp4netns:allow_host_loopback=true", IMAGE,
                       "sh", "-c", f"wget -qO /tmp/b http://10.0.2.2:{port}/blob && sha256sum /tmp/b"
                                   " && ip -4 addr show tap0 && ip route", check=True)
    assert r.stdout.split()[0] == want, r.stdout
    assert "10.0.2.100/24" in r.stdout and "default via 10.0.2.2" in r.stdout, r.stdout
    assert not _helper_warnings(r.stderr), r.stderr
    assert _wait_gone(podman.uid, podman.runtime), "a usernet process or API socket outlived the container"


class _DnsServer:
    """A tiny UDP DNS server on 127.0.0.1: every A query gets ``addr``; counts queries."""

    def __init__(self, addr):
        self.addr = socket.inet_aton(addr)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.names = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                q, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(q) < 12:
                continue
            qid, = struct.unpack_from("!H", q)
            i, labels = 12, []
            while i < len(q) and q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
                i += 1 + q[i]
            qend = i + 5
            self.names.append(".".join(labels))
            qtype = struct.unpack_from("!H", q, i + 1)[0] if qend <= len(q) else 0
            question = q[12:qend]
            if qtype == 1:
                ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + self.addr
                hdr = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
            else:
                ans = b""
                hdr = struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0)
            self.sock.sendto(hdr + question + ans, peer)

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


def test_name_resolves_through_10_0_2_3_to_test_upstream(podman):
    dns = _DnsServer("10.0.2.2")
    try:
        r = podman.run("run", "--rm", "--network", "slirp4netns", IMAGE, "sh", "-c",
                       "cat /etc/resolv.conf; nslookup usernet-test.example 10.0.2.3",
                       env={"USERNET_DNS_UPSTREAM": f"127.0.0.1:{dns.port}"}, check=True)
    finally:
        dns.close()
    assert "nameserver 10.0.2.3" in r.stdout, r.stdout
    assert not _helper_warnings(r.stderr), r.stderr
    assert "usernet-test.example" in dns.names, (dns.names, r.stdout, r.stderr)
    assert "Address: 10.0.2.2" in r.stdout or "Address 1: 10.0.2.2" in r.stdout, r.stdout


@pytest.mark.parametrize("handler", ["rootlesskit", "slirp4netns"])
def test_publish_serves_from_inside(podman, handler):
    port = free_port()
    name = f"usernet-pub-{handler}"
    net = "slirp4netns" if handler == "rootlesskit" else "slirp4netns:port_handler=slirp4netns"
    r = podman.run("run", "-d", "--name", name, "--network", net, "-p", f"127.0.0.1:{port}:8080",
                   IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www", check=True)
    try:
        got, err = None, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                    s.settimeout(5)
                    chunks = []
                    while True:
                        c = s.recv(65536)
                        if not c:
                            break
                        chunks.append(c)
                    got = b"".join(chunks)
                if b"served from inside" in got:
                    break
            except OSError as e:
                err = e
            time.sleep(0.3)
        assert got is not None and b"served from inside the container" in got, (got, err)
        assert not _helper_warnings(r.stderr), r.stderr
        (helper,) = _usernet_procs(podman.uid)
        # Podman always passes --enable-sandbox --enable-seccomp: both are in force, and
        # the published port (the API socket under port_handler=slirp4netns) still works.
        # With rootlesskit's port handler the page may come before usernet's Python has
        # started (the compiled front makes the network ready first): wait, bounded.
        deadline = time.monotonic() + 15
        while True:
            with open(f"/proc/{helper}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            if status["Seccomp"].strip() == "2" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", status
        with open(ENTRY, "rb") as f:
            if f.read(4) == b"\x7fELF":
                # Podman's start went through the compiled front (it hands the TAP over in
                # the environment the helper's Python was exec'd with).
                with open(f"/proc/{helper}/environ", "rb") as f:
                    assert b"_USERNET_FRONT=tap=" in f.read()
        with open(f"/proc/{helper}/mountinfo") as f:
            # Its root is the sandbox's read-only tmpfs, not the host's file system.
            roots = [ln for ln in f.read().splitlines() if ln.split()[4] == "/"]
        assert roots and all(" - tmpfs " in ln and " ro" in ln.split(" - ")[0] for ln in roots), roots
    finally:
        rm = podman.run("rm", "-f", name)
    assert rm.returncode == 0, rm.stderr
    assert _wait_gone(podman.uid, podman.runtime), "a usernet process or API socket outlived podman rm -f"
    # No TAP left: the container's netns is gone with it, and no helper holds a TAP fd.
    assert not _usernet_procs(podman.uid)


def test_recipe_script_points_podman_at_usernet_and_undoes_it(podman):
    conf = os.path.join(podman.home, ".config", "containers", "containers.conf")
    with open(conf) as f:
        original = f.read()
    script = os.path.join(REPO, "tools", "podman-usernet.sh")
    fmt = "{{.Host.Slirp4NetNS.Executable}}"
    try:
        with open(conf, "w") as f:
            f.write("".join(ln for ln in original.splitlines(True) if "network_cmd_path" not in ln))
        before = podman.run("info", "--format", fmt, check=True).stdout.strip()
        assert "usernet" not in before
        r = podman.cmd([script, "install"], env={"USERNET_SLIRP4NETNS": podman.entry})
        assert r.returncode == 0, r.stderr
        assert podman.run("info", "--format", fmt, check=True).stdout.strip() == podman.entry
        r = podman.cmd([script, "undo"])
        assert r.returncode == 0, r.stderr
        assert podman.run("info", "--format", fmt, check=True).stdout.strip() == before
    finally:
        with open(conf, "w") as f:
            f.write(original)
        for leftover in (conf + ".usernet-backup", conf + ".usernet-backup.absent"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def test_network_options_cidr_mtu_outbound_addr(podman):
    """cidr, mtu and outbound_addr of `--network slirp4netns:...` reach usernet and take effect:
    the container gets network+100 and the MTU, and the host server sees the outbound address."""
    peers = []
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(60)
    port = srv.getsockname()[1]

    def serve():
        with contextlib.suppress(OSError):
            conn, peer = srv.accept()
            peers.append(peer[0])
            with conn:
                conn.settimeout(10)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        opts = "allow_host_loopback=true,cidr=10.0.5.0/24,mtu=1400,outbound_addr=127.0.0.2"
        r = podman.run("run", "--rm", "--network", f"slirp4netns:{opts}", IMAGE, "sh", "-c",
                       f"ip -4 addr show tap0; cat /sys/class/net/tap0/mtu; ip route; "
                       f"grep nameserver /etc/resolv.conf; wget -qO- http://10.0.5.2:{port}/",
                       check=True)
    finally:
        srv.close()
        t.join(5)
    assert "inet 10.0.5.100/24" in r.stdout and "\n1400\n" in r.stdout, r.stdout
    assert "default via 10.0.5.2" in r.stdout and "nameserver 10.0.5.3" in r.stdout, r.stdout
    assert r.stdout.rstrip().endswith("ok"), r.stdout
    assert peers == ["127.0.0.2"], peers


def test_rootless_bridge_network_helper_stops_on_sigterm(podman):
    """`--network podman` (netavark) runs inside Podman's rootless network namespace, whose
    network helper Podman starts the same way and stops with SIGTERM when the last container
    is gone: usernet must be that helper, carry the traffic, and then leave nothing behind."""
    name = "usernet-bridge"
    conf = os.path.join(podman.home, ".config", "containers", "containers.conf")
    with open(conf) as f:
        original = f.read()
    # The rootless netns's helper takes its options from containers.conf only (Podman passes
    # --disable-host-loopback otherwise, and usernet then refuses 10.0.2.2, as slirp4netns does).
    with open(conf, "w") as f:
        f.write(original.replace("[engine]\n", '[engine]\nnetwork_cmd_options = ["allow_host_loopback=true"]\n'))
    try:
        _bridge_run(podman, name)
    finally:
        with open(conf, "w") as f:
            f.write(original)


def _bridge_run(podman, name):
    r = podman.run("run", "-d", "--name", name, "--network", "podman", IMAGE, "sleep", "600")
    if r.returncode != 0 and ("netavark" in r.stderr or "iptables" in r.stderr or "CNI" in r.stderr):
        pytest.skip(f"bridge networking unavailable here: {r.stderr.strip()[-200:]}")
    try:
        assert r.returncode == 0, r.stderr
        assert len(_usernet_procs(podman.uid)) == 1, "usernet is not the rootless netns's helper"
        # Out through the bridge, netavark's NAT in the rootless netns, its tap0 and usernet.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "page"), "w") as f:
                f.write("through the bridge\n")
            os.chmod(d, 0o755)
            with http_server(d) as port:
                e = podman.run("exec", name, "wget", "-qO-", f"http://10.0.2.2:{port}/page")
        assert "through the bridge" in e.stdout, (e.stdout, e.stderr)
    finally:
        rm = podman.run("rm", "-f", "-t", "0", name)
    assert rm.returncode == 0, rm.stderr
    assert _wait_gone(podman.uid, podman.runtime), "the rootless netns helper outlived its last container"


# ------------------------------------------------------------- one daemon for every container
def _daemon_argv(podman):
    """``usernet daemon`` as the test user can run it: the venv's script when the user can run
    the venv, else (the wrapper case of _entry_for) the system python on the checkout."""
    if podman.entry == ENTRY:
        return [os.path.join(REPO, ".venv", "bin", "usernet"), "daemon"], {}
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = os.path.join(REPO, ".venv", "lib", ver, "site-packages")
    return [f"/usr/bin/{ver}", "-m", "usernet", "daemon"], {"PYTHONPATH": f"{REPO}:{site}"}


def _daemon_status(sock):
    """The daemon's links, asked as root (the daemon answers its own user and root)."""
    import json
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(sock)
        s.sendall(b'{"op": "status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            b = s.recv(65536)
            if not b:
                break
            buf += b
    finally:
        s.close()
    reply = json.loads(buf)
    assert reply.get("ok"), reply
    return reply["links"]


def _until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_daemon_serves_concurrent_containers_with_no_process_each(podman, tmp_path):
    """`usernet daemon` runs as the Podman user; Podman's environment says USERNET_DAEMON=1.
    Two `podman run` at once: each helper hands its TAP and exit fd to the daemon and exits, so
    while both containers run no usernet-slirp4netns process exists (/proc), the daemon lists
    two links, and both containers fetch a page from the host through 10.0.2.2. When they exit
    (conmon closes the exit pipe) their links end. Then port_handler=slirp4netns, with
    USERNET_DAEMON set in containers.conf instead: the API socket Podman sends add_hostfwd to is
    the daemon's, the published port serves from inside, and `podman rm -f` ends the link."""
    (tmp_path / "page").write_text("page for the daemon's containers\n")
    os.chmod(tmp_path, 0o755)
    sock = os.path.join(podman.runtime, "usernet", "daemon.sock")
    argv, extra = _daemon_argv(podman)
    with contextlib.suppress(OSError):
        os.chmod(TUN, 0o666)
    daemon = subprocess.Popen(["setpriv", f"--reuid={podman.uid}", f"--regid={podman.gid}",
                               "--init-groups", *argv], env=podman.env(extra), cwd=podman.home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    env = {"USERNET_DAEMON": "1"}
    runs = []
    name = "usernet-daemon-pub"
    conf = os.path.join(podman.home, ".config", "containers", "containers.conf")
    with open(conf) as f:
        original = f.read()
    try:
        _until(lambda: daemon.poll() is None and os.path.exists(sock), 30, "the daemon's socket")
        net = "slirp4netns:allow_host_loopback=true"
        with http_server(tmp_path) as port:
            for _ in range(2):
                runs.append(podman.popen("run", "--rm", "--network", net, IMAGE, "sh", "-c",
                                         f"wget -qO- http://10.0.2.2:{port}/page && sleep 6",
                                         env=env))
            # Both containers up, served by the daemon; their helpers gone already.
            _until(lambda: len(_daemon_status(sock)) == 2 and not _usernet_procs(podman.uid),
                   60, "two links and no helper process")
            assert all(p.poll() is None for p in runs), "a container ended early"
            links = _daemon_status(sock)
            assert sorted(ln["addresses"][0] for ln in links) == ["10.0.2.100/24"] * 2, links
            assert not _usernet_procs(podman.uid)
            outs = [p.communicate(timeout=T) for p in runs]
        for p, (out, err) in zip(runs, outs):
            assert p.returncode == 0, err
            assert out == "page for the daemon's containers\n", (out, err)
            assert not _helper_warnings(err), err
        _until(lambda: not _daemon_status(sock), 30, "the links to end with their containers")

        # port_handler=slirp4netns: Podman's add_hostfwd goes to the API socket the daemon made.
        # USERNET_DAEMON this time from containers.conf ([engine] env: Podman's own
        # environment, which its helpers inherit), as docs/podman.md says to set it.
        hport = free_port()
        with open(conf, "w") as f:
            f.write(original.replace("[engine]\n", '[engine]\nenv = ["USERNET_DAEMON=1"]\n'))
        r = podman.run("run", "-d", "--name", name, "--network",
                       "slirp4netns:port_handler=slirp4netns", "-p", f"127.0.0.1:{hport}:8080",
                       IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www", check=True)
        assert not _helper_warnings(r.stderr), r.stderr
        got = b""
        deadline = time.monotonic() + 30
        while b"served from inside" not in got and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", hport), timeout=5) as s:
                    s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                    s.settimeout(5)
                    got = b"".join(iter(lambda: s.recv(65536), b""))
            time.sleep(0.2)
        assert b"served from inside the container" in got, got
        (link,) = _daemon_status(sock)
        assert link["forwards"] == [f"tcp/127.0.0.1:{hport}"], link
        _until(lambda: not _usernet_procs(podman.uid), 10, "the helper to exit")
        rm = podman.run("rm", "-f", name)
        assert rm.returncode == 0, rm.stderr
        _until(lambda: not _daemon_status(sock), 30, "the link to end with podman rm")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", hport), timeout=5).close()
    finally:
        with open(conf, "w") as f:
            f.write(original)
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
        podman.run("rm", "-f", name)
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            _o, derr = daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _o, derr = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, derr
    assert "Traceback" not in derr, derr
    assert not os.path.exists(sock), "the daemon left its socket behind"
