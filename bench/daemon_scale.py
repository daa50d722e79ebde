"""Many namespaces: one ``usernet daemon`` beside one slirp4netns per namespace.

    .venv/bin/python bench/daemon_scale.py [--counts 1,10,100] [--per-process-max 10]

For each N, N fresh network namespaces (``unshare`` children sleeping) get a
network three ways, one after another, and each namespace fetches a page from
a host loopback HTTP server through 10.0.2.2 (curl in the namespace):

1. ``usernet daemon``: one daemon; each namespace attached with
   ``usernet attach --daemon`` (the client process exits once the daemon has
   the TAP).
2. ``slirp4netns --configure --mtu=65520 PID tap0``: one process per namespace.
3. (for N up to ``--per-process-max``) ``usernet attach PID``: one usernet
   process per namespace, as without the daemon.

Measured per contender: the resident memory once all N are attached and have
fetched (the daemon's VmRSS, or the sum of the N processes' VmRSS; VmHWM
beside), and the start latency of each namespace: from starting the attach
command to the first successful fetch (curl retried every 20 ms), median and
max over the N. Not a test: figures vary with the machine's load. Prints a
table and the ratios (daemon / slirp4netns).
"""

import argparse
import resource
import http.server
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=REPO)
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
USERNET = [PY, "-m", "usernet"]
CLIENT_CPU = {}          # N -> CPU seconds of each `attach --daemon` client (user+system)


def vm(pid):
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in out:
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def make_targets(n):
    userns = os.geteuid() != 0
    argv = (["unshare", "--user", "--map-root-user", "--net", "sleep", "600"] if userns
            else ["unshare", "--net", "sleep", "600"])
    me = os.readlink("/proc/self/ns/net")
    ts = [subprocess.Popen(argv) for _ in range(n)]
    deadline = time.monotonic() + 30
    for t in ts:
        while True:
            try:
                if os.readlink(f"/proc/{t.pid}/ns/net") != me:
                    with open(f"/proc/{t.pid}/comm") as f:
                        if f.read().strip() == "sleep":
                            break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("namespaces did not appear")
            time.sleep(0.005)
    return ts, userns


def kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def fetch_argv(pid, userns, port):
    pre = (["nsenter", f"--target={pid}", "--user", "--net", "--preserve-credentials"] if userns
           else ["nsenter", f"--net=/proc/{pid}/ns/net"])
    return pre + ["curl", "-s", "-o", "/dev/null", "-m", "2", f"http://10.0.2.2:{port}/"]


def first_fetch(pid, userns, port, t0, timeout=30.0):
    """Seconds from ``t0`` to the first successful fetch from ``pid``'s namespace."""
    argv = fetch_argv(pid, userns, port)
    while True:
        if subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"no fetch from {pid} within {timeout}s")
        time.sleep(0.02)


def start_daemon(usernet, path, env):
    """``usernet daemon --socket PATH`` (``usernet``: the argv that runs usernet), once its
    socket exists (bounded: 20 s)."""
    d = subprocess.Popen(usernet + ["daemon", "--socket", path], env=env, cwd="/",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if d.poll() is not None or time.monotonic() > deadline:
            d.kill()
            raise RuntimeError("the daemon did not start")
        time.sleep(0.01)
    return d


def run_daemon(n, port, sockdir):
    path = os.path.join(sockdir, f"d{n}.sock")
    d = start_daemon(USERNET, path, ENV)
    ts, userns = make_targets(n)
    lat = []
    cpu = []
    try:
        for t in ts:
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            r = subprocess.run(USERNET + ["attach", "--daemon-socket", path, str(t.pid)], env=ENV,
                               cwd="/", capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"attach --daemon: {r.stderr}")
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
            lat.append(first_fetch(t.pid, userns, port, t0))
        CLIENT_CPU[n] = cpu
        m = vm(d.pid)
        return m["VmRSS"], m["VmHWM"], lat, 1
    finally:
        kill_all(ts)
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=60)


def run_per_process(n, port, argv_for):
    ts, userns = make_targets(n)
    helpers = []
    lat = []
    try:
        for t in ts:
            t0 = time.perf_counter()
            helpers.append(subprocess.Popen(argv_for(t.pid), env=ENV, cwd="/",
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            lat.append(first_fetch(t.pid, userns, port, t0))
        ms = [vm(h.pid) for h in helpers]
        return sum(m["VmRSS"] for m in ms), sum(m["VmHWM"] for m in ms), lat, len(helpers)
    finally:
        for h in helpers:
            if h.poll() is None:
                h.send_signal(signal.SIGTERM)
        for h in helpers:
            try:
                h.wait(timeout=20)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait()
        kill_all(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1,10,100", help="comma-separated N (default 1,10,100)")
    ap.add_argument("--per-process-max", type=int, default=10,
                    help="largest N for one usernet process per namespace (default 10)")
    a = ap.parse_args()
    counts = [int(x) for x in a.counts.split(",")]
    for tool in ("curl", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            sys.exit(f"daemon_scale: {tool} is needed")
    s4 = shutil.which("slirp4netns")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    www = tempfile.mkdtemp(prefix="usernet-bench-www-")
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("hello\n")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          lambda *x: Quiet(*x, directory=www))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    sockdir = tempfile.mkdtemp(prefix="usernet-bench-daemon-")
    rows = []
    try:
        for n in counts:
            res = {"usernet daemon": run_daemon(n, port, sockdir)}
            if s4:
                res["slirp4netns"] = run_per_process(
                    n, port, lambda pid: [s4, "--configure", "--mtu=65520", str(pid), "tap0"])
            if n <= a.per_process_max:
                res["usernet attach (1 process each)"] = run_per_process(
                    n, port, lambda pid: USERNET + ["attach", str(pid)])
            rows.append((n, res))
    finally:
        srv.shutdown()
        shutil.rmtree(www, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)

    print(f"many namespaces, one after another (load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'N':>4}  {'':34} {'procs':>5} {'RSS MiB':>8} {'HWM MiB':>8} {'MiB/ns':>7} "
          f"{'start ms med':>12} {'max':>7}")
    for n, res in rows:
        for name, (rss, hwm, lat, procs) in res.items():
            print(f"{n:>4}  {name:34} {procs:>5} {rss / 2**20:8.1f} {hwm / 2**20:8.1f} "
                  f"{rss / 2**20 / n:7.2f} {statistics.median(lat) * 1e3:12.0f} "
                  f"{max(lat) * 1e3:7.0f}")
    for n, cpu in CLIENT_CPU.items():
        print(f"N={n}: each `usernet attach --daemon` client used {statistics.median(cpu) * 1e3:.0f} ms "
              "of CPU (median; its Python start and imports are most of the start latency)")
    print("ratios usernet daemon / slirp4netns (RSS; median start latency):")
    for n, res in rows:
        if "slirp4netns" in res:
            d, s = res["usernet daemon"], res["slirp4netns"]
            print(f"  N={n:<4} RSS {d[0] / s[0]:.2f}x   start {statistics.median(d[2]) / statistics.median(s[2]):.2f}x")


if __name__ == "__main__":
    main()
