"""Memory per idle TCP flow: usernet (uvloop, plain asyncio) beside slirp4netns.

    .venv/bin/python bench/many_flows.py [--flows N] [--no-slirp4netns]

For each contender, a client in a fresh network namespace opens N TCP
connections (default 10,000) to a host loopback server reached as 10.0.2.2,
each echoes a few bytes and stays open; the contender's RSS
(``/proc/PID/status``) is read before the client starts and once every flow
is open. Prints the RSS growth per flow, the time to open them all, and the
ratios to slirp4netns (which must be installed, and is given the same
namespace shape: ``unshare --user --map-root-user --net``, ``slirp4netns
--configure PID tap0``).

usernet runs as ``usernet run --memory-budget 1G --max-tcp-flows N+16``, so
neither limit acts. The client and the host server are those of
``tests/integration/test_many_flows.py``. Not a test: memory figures are
steady, timings vary with the machine's load.
"""

import argparse
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import test_many_flows as t  # noqa: E402  (the client script and the host server)

WINDOW = 128


def _rss(pid):
    return t.rss_mib(pid)


def run_usernet(n, asyncio_only=False):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="usernet-bench-flows-"))
    env_path = t.REPO
    if asyncio_only:
        # A uvloop that cannot be imported: serve.new_loop falls back to asyncio.
        shim = tmp / "no-uvloop"
        shim.mkdir()
        (shim / "uvloop.py").write_text("raise ImportError('benchmark: plain asyncio')\n")
        env_path = f"{shim}:{t.REPO}"
    old = t.REPO
    t.REPO = env_path
    srv = t.HoldServer()
    try:
        u = t.Client(tmp, ["--memory-budget", "1G", "--max-tcp-flows", str(n + 16)],
                     [srv.port, n, WINDOW, 600])
    finally:
        t.REPO = old
    try:
        u.expect("baseline")
        time.sleep(0.5)
        base = _rss(u.p.pid)
        u.say()
        opened = u.expect("opened", timeout=660).split()
        time.sleep(1.0)
        held = _rss(u.p.pid)
        u.say()
        u.expect("new", timeout=60)
        u.say()
        u.finish()
    finally:
        u.kill()
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return base, held, int(opened[1]), float(opened[3])


def run_slirp4netns(n):
    srv = t.HoldServer()
    rfd, wfd = os.pipe()
    client = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", t.PY, "-c", t.CLIENT,
                               str(srv.port), str(n), str(WINDOW), "600"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/")
    slirp = None
    try:
        assert client.stdout.readline().startswith(b"baseline")
        slirp = subprocess.Popen(["slirp4netns", "--configure", "--ready-fd", str(wfd),
                                  str(client.pid), "tap0"], pass_fds=(wfd,),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(wfd)
        wfd = -1
        assert os.read(rfd, 1) == b"1", "slirp4netns did not become ready"
        time.sleep(0.5)
        base = _rss(slirp.pid)
        client.stdin.write(b"\n")
        client.stdin.flush()
        opened = client.stdout.readline().decode().split()
        assert opened and opened[0] == "opened", opened
        time.sleep(1.0)
        held = _rss(slirp.pid)
        client.stdin.write(b"\n\n")
        client.stdin.close()
        client.wait(60)
    finally:
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)
        for p in (client, slirp):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        srv.close()
    return base, held, int(opened[1]), float(opened[3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--no-slirp4netns", action="store_true")
    a = ap.parse_args()
    need = a.flows + 64
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < need:
        sys.exit(f"RLIMIT_NOFILE hard limit below {need}")
    rows = {}
    rows["usernet (uvloop)"] = run_usernet(a.flows)
    rows["usernet (asyncio)"] = run_usernet(a.flows, asyncio_only=True)
    if not a.no_slirp4netns and shutil.which("slirp4netns"):
        rows["slirp4netns"] = run_slirp4netns(a.flows)
    print(f"{a.flows} idle TCP flows, one namespace, host loopback server")
    print(f"{'':20} {'RSS before':>11} {'with flows':>11} {'per flow':>10} {'open':>5} {'secs':>6}")
    per = {}
    for name, (base, held, ok, secs) in rows.items():
        per[name] = (held - base) * 1024 / max(1, ok)
        print(f"{name:20} {base:8.1f} MiB {held:8.1f} MiB {per[name]:6.2f} KiB {ok:5d} {secs:6.1f}")
    if "slirp4netns" in per and per["slirp4netns"] > 0:
        for name in per:
            if name != "slirp4netns":
                print(f"ratio {name} / slirp4netns, per flow: {per[name] / per['slirp4netns']:.2f}")


if __name__ == "__main__":
    main()
