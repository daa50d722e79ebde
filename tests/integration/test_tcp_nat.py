"""TCP through ``usernet run`` end to end (issue 4 "Done when").

Real namespaces, real clients inside (curl, Python), servers on host
127.0.0.1 reached via the gateway 10.0.2.2; as root and as uid 65534. No
packet leaves the machine. Every subprocess is bounded by a timeout.

What each test proves:

* ``test_curl_200mib``: a 200 MiB download and a 200 MiB PUT upload with
  curl, sha256 equal on both ends (root and unprivileged), with TAP offloads
  (the default: the counters show TSO super-frames went both ways) and with
  ``--no-offload`` (none did); prints the throughput.
* ``test_curl_100_parallel``: 100 concurrent 1 MiB downloads and 100
  concurrent 1 MiB uploads (``curl --parallel --parallel-max 100``), all intact.
* ``test_impaired``: the same (20 MiB each way plus 30 concurrent 1 MiB
  each way) with ``--impair loss=0.03,dup=0.01,reorder=0.02``: every byte
  intact, bounded time, and usernet's own retransmissions (counters) carried
  the host-to-container direction; with and without offloads (with them, a
  dropped frame is a whole 64 KiB super-frame).
* ``test_refused``: a closed host port is "connection refused" inside, at
  once (Python ConnectionRefusedError and curl exit 7, each < 1 s).
* ``test_half_close``: shutdown(SHUT_WR) both ways, data after the
  half-close arrives complete in the other direction.
* ``test_rst``: SO_LINGER 0 on either side gives ECONNRESET on the other.
* ``test_slow_reader_*``: 1 GiB toward a slow reader (container, then host):
  usernet's peak RSS (VmHWM) stays bounded and every byte arrives in order.
* ``test_many_flows``: 2000 sequential short connections, then 500 at once,
  both close orders: every flow is forgotten afterwards (no leak).
"""

import contextlib
import hashlib
import json
import os
import random
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import REPO, USERNET, free_port, http_server, need_tun, tool, usernet_run

pytestmark = [pytest.mark.integration, need_tun]

# The clients' interpreter inside the container: one uid 65534 can reach
# (the venv's python may link into a directory only root can enter).
PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
GW = "10.0.2.2"
MiB = 1 << 20
USERS = [None, "nobody"]
IMPAIR = "loss=0.03,dup=0.01,reorder=0.02,seed={seed}"

# Peak RSS bound for usernet's main process while 1 GiB flows to a slow
# reader: per-flow buffers are a few hundred KiB, the interpreter ~40 MiB.
RSS_BOUND_MIB = 150


# ---------------------------------------------------------------- helpers
def _user(request, user):
    if user == "nobody":
        request.getfixturevalue("unprivileged")
    return user


def _out(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-6000:]}"


def counters_of(stderr: str) -> dict:
    """The ``event=counters counters={...}`` line ``usernet --debug`` logs on exit."""
    m = None
    for m in re.finditer(r"^ts=\S+ level=debug event=counters counters=(\{.*\})$", stderr, re.M):
        pass
    assert m is not None, f"no counters line in stderr:\n{stderr[-3000:]}"
    return json.loads(m.group(1))


def run_py(script, *argv, args=(), user=None, timeout=60):
    """Run a Python ``script`` inside ``usernet run --debug``; returns (CompletedProcess, counters)."""
    r = usernet_run(["--debug", *args], [PY, "-c", script, *map(str, argv)], user=user,
                    timeout=timeout)
    assert r.returncode == 0, _out(r)
    return r, counters_of(r.stderr)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    os.chmod(path, 0o644)


@pytest.fixture(scope="module")
def wdir():
    """A directory uid 65534 can read and write too (tmp_path is root-only):
    200 MiB ``big.bin``, 20 MiB ``mid.bin`` and 100 x 1 MiB ``s/NN``."""
    d = tempfile.mkdtemp(prefix="usernet-tcp-", dir="/tmp")
    os.chmod(d, 0o777)
    write_random(os.path.join(d, "big.bin"), 200 * MiB)
    write_random(os.path.join(d, "mid.bin"), 20 * MiB)
    os.mkdir(os.path.join(d, "s"))
    os.chmod(os.path.join(d, "s"), 0o755)
    for i in range(100):
        write_random(os.path.join(d, "s", f"{i:02d}"), MiB)
    with open(os.path.join(d, "par.sh"), "w") as f:
        f.write(_PARALLEL_SH)
    os.chmod(os.path.join(d, "par.sh"), 0o644)
    sums = {name: sha256_file(os.path.join(d, name))
            for name in ["big.bin", "mid.bin"] + [f"s/{i:02d}" for i in range(100)]}
    try:
        yield d, sums
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _scratch(d, tag):
    out = os.path.join(d, f"out-{tag}-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(out)
    os.chmod(out, 0o777)
    return out


@contextlib.contextmanager
def tcp_server(handler, backlog=128):
    """A listener on 127.0.0.1 (free port); ``handler(conn)`` runs in a thread
    per connection. Yields (port, errors): errors lists handler exceptions."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    ls.settimeout(0.2)
    stop = threading.Event()
    errors = []

    def serve_one(c):
        try:
            with c:
                c.settimeout(120)
                handler(c)
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors.append(e)

    def accept_loop():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1], errors
    finally:
        stop.set()
        t.join(5)
        ls.close()


def recv_all(sock, limit=1 << 31):
    chunks = []
    while True:
        b = sock.recv(1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def pattern(seed, n):
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------ bulk transfers (curl)
def check_offload(c: dict, offload: bool) -> None:
    """TSO super-frames went both ways with offloads, none without."""
    if offload:
        assert c.get("tcp_tx_gso_segments", 0) > 0 and c.get("rx_gso_frames", 0) > 0, c
    else:
        assert c.get("tcp_tx_gso_segments", 0) == 0 and c.get("rx_gso_frames", 0) == 0, c


OFFLOAD = [pytest.param(True, id="offload"), pytest.param(False, id="no-offload")]


@pytest.mark.parametrize("offload", OFFLOAD)
@pytest.mark.parametrize("user", USERS)
def test_curl_200mib(request, wdir, user, offload):
    """200 MiB down and up with curl; sha256 equal on both ends."""
    tool("curl")
    user = _user(request, user)
    d, sums = wdir
    out = _scratch(d, "big")
    with http_server(d) as port:
        url = f"http://{GW}:{port}"
        script = (f"curl -sS --max-time 100 -o {out}/big.bin -w 'down %{{speed_download}}\\n' "
                  f"{url}/big.bin && "
                  f"curl -sS --max-time 100 -T {d}/big.bin -w '\\nup %{{speed_upload}}\\n' "
                  f"{url}/upload")
        t0 = time.monotonic()
        r = usernet_run(["--debug"] + ([] if offload else ["--no-offload"]),
                        ["sh", "-c", script], user=user, timeout=150)
        took = time.monotonic() - t0
    assert r.returncode == 0, _out(r)
    lines = r.stdout.split()
    down = float(lines[lines.index("down") + 1])
    up = float(lines[lines.index("up") + 1])
    assert sha256_file(f"{out}/big.bin") == sums["big.bin"]
    assert sums["big.bin"] in r.stdout, _out(r)      # the server's sha256 of the upload
    shutil.rmtree(out, ignore_errors=True)
    c = counters_of(r.stderr)
    assert c["tcp_syn_connect"] == 2 and c["tcp_host_connected"] == 2, c
    check_offload(c, offload)
    print(f"\n200 MiB as {user or 'root'}{'' if offload else ' --no-offload'}: down {down / 1e6:.1f} MB/s, up {up / 1e6:.1f} MB/s "
          f"({took:.1f} s total)")


_PARALLEL_SH = r"""
set -e
W="$1"; URL="$2"; OUT="$3"; N="$4"
dl=""; ul=""
i=0
while [ $i -lt $N ]; do
  f=$(printf %02d $i)
  dl="$dl -o $OUT/d$f $URL/s/$f"
  ul="$ul -T $W/s/$f -o $OUT/u$f $URL/up$f"
  i=$((i+1))
done
curl -sS --max-time 100 --parallel --parallel-immediate --parallel-max 100 $dl
curl -sS --max-time 100 --parallel --parallel-immediate --parallel-max 100 $ul
echo ok
"""


def _check_impaired_transfers(out, sums, n):
    """The impaired-link scene's results: mid.bin down and back up intact (the server's
    sha256 of the upload), every parallel transfer intact; then the scratch is removed."""
    assert sha256_file(f"{out}/mid.bin") == sums["mid.bin"]
    with open(f"{out}/mid.up") as fh:
        assert fh.read().strip() == sums["mid.bin"]
    _check_parallel(out, sums, n)
    shutil.rmtree(out, ignore_errors=True)


def _check_parallel(out, sums, n):
    bad = []
    for i in range(n):
        f = f"{i:02d}"
        if sha256_file(f"{out}/d{f}") != sums[f"s/{f}"]:
            bad.append(f"download {f}")
        with open(f"{out}/u{f}") as fh:
            if fh.read().strip() != sums[f"s/{f}"]:
                bad.append(f"upload {f}")
    assert not bad, bad


def test_curl_100_parallel(wdir):
    """100 concurrent 1 MiB downloads, then 100 concurrent 1 MiB uploads."""
    tool("curl")
    d, sums = wdir
    out = _scratch(d, "par")
    with http_server(d) as port:
        r = usernet_run(["--debug"], ["sh", f"{d}/par.sh", d, f"http://{GW}:{port}", out, "100"],
                        timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, _out(r)
    _check_parallel(out, sums, 100)
    shutil.rmtree(out, ignore_errors=True)
    c = counters_of(r.stderr)
    assert c["tcp_host_connected"] == 200, c


# ------------------------------------------------------------ impairment
@pytest.mark.parametrize("offload", OFFLOAD)
def test_impaired(wdir, offload):
    """Loss, duplication and reordering both ways: every byte intact, no hang,
    and usernet's own retransmission recovered the host-to-container losses."""
    tool("curl")
    d, sums = wdir
    out = _scratch(d, "imp")
    n = 30
    script = (f"curl -sS --max-time 80 -o {out}/mid.bin {{url}}/mid.bin && "
              f"curl -sS --max-time 80 -T {d}/mid.bin -o {out}/mid.up {{url}}/upload && "
              f"sh {d}/par.sh {d} {{url}} {out} {n}")
    with http_server(d) as port:
        t0 = time.monotonic()
        r = usernet_run(["--debug", "--impair", IMPAIR.format(seed=4)]
                        + ([] if offload else ["--no-offload"]),
                        ["sh", "-c", script.format(url=f"http://{GW}:{port}")], timeout=170)
        took = time.monotonic() - t0
    assert r.returncode == 0 and "ok" in r.stdout, _out(r)
    _check_impaired_transfers(out, sums, n)
    c = counters_of(r.stderr)
    # Frames toward the container were dropped, and usernet (not the
    # container's kernel) resent them.
    assert c.get("impair_tx_dropped", 0) > 0 and c.get("impair_rx_dropped", 0) > 0, c
    assert c.get("impair_tx_duplicated", 0) > 0 and c.get("impair_tx_reordered", 0) > 0, c
    assert c.get("tcp_retransmit", 0) > 0, c
    assert c.get("tcp_fast_retransmit", 0) > 0, c
    assert c.get("tcp_flows") == 0 or c.get("tcp_flow_closed", 0) > 0, c
    # The container's duplicates/retransmissions toward usernet were absorbed.
    assert c.get("tcp_dup_data_rx", 0) + c.get("tcp_ooo_queued", 0) > 0, c
    check_offload(c, offload)
    print(f"\nimpaired{'' if offload else ' --no-offload'}: {took:.1f} s; retransmit={c['tcp_retransmit']} "
          f"fast={c['tcp_fast_retransmit']} rto={c.get('tcp_retransmit_timeout', 0)} "
          f"tx_dropped={c['impair_tx_dropped']} rx_dropped={c['impair_rx_dropped']}")


# ------------------------------------------------------------ refused
_REFUSED = r"""
import socket, subprocess, sys, time
port = int(sys.argv[1])
t = time.monotonic()
try:
    socket.create_connection(("10.0.2.2", port), timeout=10)
    print("connected?!")
except ConnectionRefusedError:
    print("py refused %.3f" % (time.monotonic() - t))
t = time.monotonic()
rc = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                     "http://10.0.2.2:%d/" % port]).returncode
print("curl %d %.3f" % (rc, time.monotonic() - t))
"""


@pytest.mark.parametrize("user", USERS)
def test_refused(request, user):
    tool("curl")
    user = _user(request, user)
    port = free_port()
    r, c = run_py(_REFUSED, port, user=user, timeout=40)
    m = re.search(r"py refused ([\d.]+)", r.stdout)
    assert m and float(m.group(1)) < 1.0, _out(r)
    m = re.search(r"curl (\d+) ([\d.]+)", r.stdout)
    assert m and m.group(1) == "7" and float(m.group(2)) < 1.0, _out(r)
    assert c.get("tcp_syn_host_refused_rst") == 2, c


# ------------------------------------------------------------ half-close
_HALF_CLOSE = r"""
import hashlib, random, socket, sys
pa, pb, na, nb = map(int, sys.argv[1:5])
# (a) we send, shutdown(SHUT_WR); the host reads to EOF, then answers.
s = socket.create_connection(("10.0.2.2", pa), timeout=30)
s.sendall(random.Random(1).randbytes(na))
s.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
s.close()
print("a", len(got), hashlib.sha256(got).hexdigest())
# (b) the host sends, shutdown(SHUT_WR) first; we read to EOF, then send.
s = socket.create_connection(("10.0.2.2", pb), timeout=30)
got = bytearray()
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
print("b", len(got), hashlib.sha256(got).hexdigest())
s.sendall(random.Random(3).randbytes(nb))
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
s.close()
# Stay until the host has it all (when we exit, the namespace goes, and
# with it whatever is still in flight).
s = socket.create_connection(("10.0.2.2", int(sys.argv[5])), timeout=30)
print("host got", s.recv(64).decode())
"""


@pytest.mark.parametrize("user", USERS)
def test_half_close(request, user):
    user = _user(request, user)
    na, nb = 3 * MiB + 17, 2 * MiB + 5
    reply = pattern(2, 4 * MiB + 3)
    first = pattern(4, MiB + 11)
    seen = {}

    def server_a(c):
        data = recv_all(c)                   # to the container's FIN
        seen["a"] = data
        c.sendall(reply)                     # the write side is still open
        c.shutdown(socket.SHUT_WR)

    got_b = threading.Event()

    def server_b(c):
        c.sendall(first)
        c.shutdown(socket.SHUT_WR)           # the host half-closes first
        seen["b"] = recv_all(c)
        got_b.set()

    def done(c):
        got_b.wait(30)
        c.sendall(str(len(seen.get("b", b""))).encode())

    with tcp_server(server_a) as (pa, ea), tcp_server(server_b) as (pb, eb), \
            tcp_server(done) as (pd, ed):
        r, c = run_py(_HALF_CLOSE, pa, pb, na, nb, pd, user=user, timeout=60)
    assert not ea and not eb and not ed, (ea, eb, ed)
    assert f"host got {nb}" in r.stdout, _out(r)
    assert seen.get("a") == pattern(1, na), "host did not get the container's data before EOF"
    assert f"a {len(reply)} {hashlib.sha256(reply).hexdigest()}" in r.stdout, _out(r)
    assert f"b {len(first)} {hashlib.sha256(first).hexdigest()}" in r.stdout, _out(r)
    assert seen.get("b") == pattern(3, nb), "host did not get the data sent after its EOF"
    assert c["tcp_fin_rx"] >= 2 and c["tcp_host_eof"] >= 2, c


# ------------------------------------------------------------ RST
_RST = r"""
import socket, struct, sys, time
pa, pb = int(sys.argv[1]), int(sys.argv[2])
# (a) the host aborts: we must see ECONNRESET.
s = socket.create_connection(("10.0.2.2", pa), timeout=20)
s.sendall(b"x")
try:
    while s.recv(65536):
        pass
    print("a eof")
except ConnectionResetError:
    print("a reset")
s.close()
# (b) we abort (SO_LINGER 0): the host must see ECONNRESET.
s = socket.create_connection(("10.0.2.2", pb), timeout=20)
s.sendall(b"hello")
assert s.recv(5) == b"ready"
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
time.sleep(0.5)
"""


@pytest.mark.parametrize("user", USERS)
def test_rst(request, user):
    user = _user(request, user)
    seen = {}
    linger0 = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)

    def server_a(c):
        c.sendall(b"some data first")
        assert c.recv(1) == b"x"
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        # the with-block in tcp_server closes it: an abortive close (RST)

    def server_b(c):
        assert c.recv(5) == b"hello"
        c.sendall(b"ready")
        try:
            while c.recv(65536):
                pass
            seen["b"] = "eof"
        except ConnectionResetError:
            seen["b"] = "reset"

    with tcp_server(server_a) as (pa, ea), tcp_server(server_b) as (pb, eb):
        r, c = run_py(_RST, pa, pb, user=user, timeout=40)
        deadline = time.monotonic() + 5
        while "b" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not ea and not eb, (ea, eb)
    assert "a reset" in r.stdout, _out(r)
    assert seen.get("b") == "reset", seen
    assert c.get("tcp_host_reset", 0) >= 1 and c.get("tcp_rst_rx", 0) >= 1, c


# ------------------------------------------------------------ slow readers
PAT_SEED, PAT_LEN = 99, MiB + 13     # a repeated random block with an odd length


class PatternStream:
    """Checks a byte stream against PAT repeated, cheaply (memcmp per chunk)."""

    def __init__(self, pat):
        self.pat2 = pat + pat
        self.n = len(pat)
        self.off = 0
        self.bad_at = None

    def feed(self, b):
        o = self.off % self.n
        if self.bad_at is None and self.pat2[o:o + len(b)] != b:
            self.bad_at = self.off
        self.off += len(b)


_SLOW_PROLOGUE = r"""
import random, socket, sys, time
port, total, chunk, nap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
pat = random.Random(%d).randbytes(%d)
""" % (PAT_SEED, PAT_LEN)

# The container reads slowly (chunk, sleep); it checks the stream in place.
_SLOW_CONTAINER_READER = _SLOW_PROLOGUE + r"""
pat2 = pat + pat; n = len(pat)
s = socket.create_connection(("10.0.2.2", port), timeout=60)
off = 0; bad = None; t = time.monotonic()
while True:
    b = s.recv(chunk)
    if not b:
        break
    o = off % n
    if bad is None and pat2[o:o + len(b)] != b:
        bad = off
    off += len(b)
    time.sleep(nap)
print("got", off, "bad", bad, "secs %.1f" % (time.monotonic() - t), flush=True)
sys.stdin.readline()        # let the test read usernet's VmHWM first
"""

# The container sends as fast as it can; the host reads slowly.
_SLOW_CONTAINER_WRITER = _SLOW_PROLOGUE + r"""
s = socket.create_connection(("10.0.2.2", port), timeout=60)
mv = memoryview(pat); sent = 0; t = time.monotonic()
while sent < total:
    n = min(len(pat), total - sent)
    s.sendall(mv[:n])
    sent += n
s.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
print("sent", sent, "secs %.1f" % (time.monotonic() - t), flush=True)
sys.stdin.readline()
"""


def _vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024      # kB -> MiB
    raise AssertionError(f"{key} missing for {pid}")


def _run_slow(tmp_path, script, argv, timeout):
    """Run ``script`` in usernet; when it prints its result line, read the
    usernet process's VmHWM, then let it exit. Returns (line, hwm MiB, counters)."""
    err = open(tmp_path / "usernet.stderr", "w+")
    argvv = USERNET + ["run", "--debug", "--", PY, "-c", script, *map(str, argv)]
    p = subprocess.Popen(argvv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                         env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
    try:
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), f"no result within {timeout} s"
        line = p.stdout.readline().decode()
        hwm = _vm(p.pid, "VmHWM")
        p.stdin.write(b"\n")
        p.stdin.close()
        p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    err.seek(0)
    stderr = err.read()
    assert p.returncode == 0, f"rc={p.returncode} line={line!r}\n{stderr[-3000:]}"
    return line, hwm, counters_of(stderr)


@pytest.mark.slow
def test_slow_reader_in_container(tmp_path):
    """The host sends 1 GiB as fast as it can; the container reads 64 KiB per
    ~1.5 ms. usernet's peak RSS stays bounded; the stream arrives intact."""
    total = 1 << 30
    pat = pattern(PAT_SEED, PAT_LEN)

    def server(c):
        mv = memoryview(pat)
        sent = 0
        while sent < total:
            n = min(len(pat), total - sent)
            c.sendall(mv[:n])
            sent += n
        c.shutdown(socket.SHUT_WR)

    with tcp_server(server) as (port, errors):
        t0 = time.monotonic()
        line, hwm, c = _run_slow(tmp_path, _SLOW_CONTAINER_READER, [port, total, 65536, 0.0015],
                                 timeout=120)
        took = time.monotonic() - t0
    assert not errors, errors
    assert line.split()[:4] == ["got", str(total), "bad", "None"], line
    print(f"\nslow container reader: 1 GiB in {took:.1f} s ({total / took / 1e6:.1f} MB/s), "
          f"usernet VmHWM {hwm} MiB, pause_reading={c.get('tcp_pause_reading', 0)}")
    # Backpressure really happened: usernet stopped reading the host socket.
    assert c.get("tcp_pause_reading", 0) > 0, c
    assert hwm < RSS_BOUND_MIB, f"usernet peak RSS {hwm} MiB"


@pytest.mark.slow
def test_slow_reader_on_host(tmp_path):
    """The container sends 1 GiB as fast as it can; the host reads 40 KiB per
    ~1.5 ms (slower than usernet forwards). usernet's peak RSS stays bounded; the stream arrives intact."""
    total = 1 << 30
    pat = pattern(PAT_SEED, PAT_LEN)
    result = {}

    def server(c):
        check = PatternStream(pat)
        while True:
            b = c.recv(40960)
            if not b:
                break
            check.feed(b)
            time.sleep(0.0015)
        result["n"], result["bad"] = check.off, check.bad_at

    with tcp_server(server) as (port, errors):
        t0 = time.monotonic()
        line, hwm, c = _run_slow(tmp_path, _SLOW_CONTAINER_WRITER, [port, total, 0, 0],
                                 timeout=120)
        took = time.monotonic() - t0
    assert not errors, errors
    assert line.split()[:2] == ["sent", str(total)], line
    assert result == {"n": total, "bad": None}, result
    print(f"\nslow host reader: 1 GiB in {took:.1f} s ({total / took / 1e6:.1f} MB/s), "
          f"usernet VmHWM {hwm} MiB, zero_window_tx={c.get('tcp_zero_window_tx', 0)} "
          f"window_update={c.get('tcp_window_update_tx', 0)}")
    # Backpressure reached the container: usernet closed its window.
    assert c.get("tcp_zero_window_tx", 0) > 0, c
    assert hwm < RSS_BOUND_MIB, f"usernet peak RSS {hwm} MiB"


# ------------------------------------------------------------ many flows
_MANY = r"""
import socket, sys, time, threading
port, seq_n, par_n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def one(i, socks=None):
    s = socket.create_connection(("10.0.2.2", port), timeout=30)
    # odd: the host closes first (usernet in TIME-WAIT); even: we do.
    s.sendall(b"%d\n" % i)
    assert s.recv(64) == b"ok %d\n" % i
    if socks is None:
        if i % 2:
            assert s.recv(1) == b""
        s.close()
    else:
        socks.append(s)
t = time.monotonic()
for i in range(seq_n):
    one(i)
print("sequential %d %.1f" % (seq_n, time.monotonic() - t), flush=True)
socks = []; errs = []
def worker(k):
    try:
        for i in range(k, par_n, 50):
            one(i, socks)
    except Exception as e:
        errs.append(repr(e))
t = time.monotonic()
ths = [threading.Thread(target=worker, args=(k,)) for k in range(50)]
for th in ths: th.start()
for th in ths: th.join()
assert not errs, errs[:3]
print("open", len(socks), flush=True)     # all par_n are open at once now
for s in socks:
    s.close()
print("parallel %d %.1f" % (par_n, time.monotonic() - t), flush=True)
time.sleep(3)                            # > usernet's 2 s TIME-WAIT
"""


def test_many_flows():
    """2000 sequential short connections, then 500 open at once; afterwards
    every flow has been forgotten (tcp_flows 0, closed == opened)."""
    seq_n, par_n = 2000, 500

    def server(c):
        line = b""
        while not line.endswith(b"\n"):
            b = c.recv(64)
            assert b, "EOF before the request"
            line += b
        i = int(line)
        c.sendall(b"ok %d\n" % i)
        if i < seq_n and i % 2 == 0:
            assert c.recv(1) == b""          # the container closes first
        # else: return, and tcp_server closes first

    with tcp_server(server, backlog=1024) as (port, errors):
        r, c = run_py(_MANY, port, seq_n, par_n, timeout=120)
    assert not errors, errors[:3]
    assert f"open {par_n}" in r.stdout, _out(r)
    opened = seq_n + par_n
    assert c["tcp_host_connected"] == opened, c
    assert c["tcp_flows"] == 0 and c["tcp_connecting"] == 0, c
    assert c["tcp_flow_closed"] == c["tcp_syn_connect"] == opened, c
    print("\n" + r.stdout.strip().replace("\n", "; "))


def test_data_in_flight_when_the_command_exits_still_arrives():
    """The command sends 32 MiB and exits at once (its kernel keeps sending
    for the closed socket): usernet drains before tearing down, so the host
    receives every byte."""
    got = {}
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def sink():
        conn, _ = srv.accept()
        h, n = hashlib.sha256(), 0
        conn.settimeout(60)
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        got["n"], got["sha"] = n, h.hexdigest()
        conn.close()

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    block = bytes(range(256)) * 4096  # 1 MiB
    client = (f"import socket; s = socket.create_connection(('{GW}', {port}));"
              f"b = bytes(range(256)) * 4096\n"
              f"for _ in range(32): s.sendall(b)\n"
              f"s.close()")
    r = usernet_run([], [PY, "-c", client], timeout=120)
    t.join(60)
    srv.close()
    assert r.returncode == 0, _out(r)
    assert got.get("n") == 32 * MiB, got
    assert got["sha"] == hashlib.sha256(block * 32).hexdigest()
