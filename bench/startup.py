"""Start-up time: how long a container waits for its network.

    .venv/bin/python bench/startup.py [--runs N]

Two measures, each the median over N runs (alternating the contenders, so
load on the machine falls on both alike), with the CPU time (user+system,
from wait4, the process and the children it reaped) beside the wall time:

1. ``usernet run -- true``: from starting the process to its exit (CMD is
   started only once the network is up, so this is time-to-ready plus the
   cost of ``true`` and of tearing down). For scale, ``python -c pass``
   (the interpreter alone) and ``unshare --user --net true`` (the namespace
   alone) on the same machine.
2. The slirp4netns entry point beside the real ``/usr/bin/slirp4netns``, the
   same argument vector (``-c -r FD --api-socket PATH PID tap0``) against a
   fresh network namespace made by this script for each run: from exec to the
   ready byte on the ready fd, and to the first answer on the API socket (the
   stack serving). Then SIGTERM, and the CPU time up to the exit. Also the
   entry point handing its link to a ``usernet daemon`` this script starts
   (``--daemon-socket``), as Podman with ``USERNET_DAEMON`` set.

Not a test: figures vary with the machine's load. Prints a table and the
ratios (usernet / slirp4netns).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from daemon_scale import start_daemon  # noqa: E402 - bench/ is the script's directory

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=REPO)
# As installed: byte-compiled modules (pip compiles at install). Without
# this, a shell with PYTHONDONTWRITEBYTECODE set recompiles usernet's ~50
# modules on every start (~60 ms of CPU here), which no installed copy does.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)


def _wait4(pid):
    _pid, status, ru = os.wait4(pid, 0)
    return status, ru.ru_utime + ru.ru_stime


def time_command(argv, env=None):
    """(wall seconds to exit, CPU seconds) of ``argv``; raises if it fails."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env or ENV, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status, cpu = _wait4(p.pid)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if p.returncode != 0:
        raise RuntimeError(f"{argv}: rc={p.returncode} {err[-300:]}")
    return wall, cpu


def _api_answer(path, deadline):
    """Connect to the API socket at ``path`` (retrying until it exists) and wait for the
    reply to one request: the moment the helper's stack is serving."""
    req = b'{"execute": "list_hostfwd"}'
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            s.connect(path)
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)
            if s.recv(4096):
                return
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no API socket at {path}") from None
            time.sleep(0.0005)
        finally:
            s.close()


def time_to_ready(helper):
    """(wall seconds from exec to the ready byte, wall seconds from exec to the first answer
    on the API socket, CPU seconds to exit) of ``helper -c -r FD --api-socket PATH PID tap0``
    against a namespace made for this run. The ready byte is what Podman waits for; the API
    answer is when the helper's stack serves (they differ for usernet's compiled front, which
    writes the ready byte before the Python stack has started: the container's first frames
    wait in the TAP's queue until then)."""
    if os.geteuid() == 0:
        target_argv = ["unshare", "--net", "sleep", "60"]
    else:
        target_argv = ["unshare", "--user", "--map-root-user", "--net", "sleep", "60"]
    target = subprocess.Popen(target_argv)
    api = f"/tmp/usernet-startup-{os.getpid()}.sock"
    try:
        # Wait until the target is in its own network namespace.
        deadline = time.monotonic() + 10
        me = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{target.pid}/ns/net") == me:
            if time.monotonic() > deadline:
                raise RuntimeError("the target namespace did not appear")
            time.sleep(0.002)
        r, w = os.pipe()
        t0 = time.perf_counter()
        p = subprocess.Popen([*helper, "-c", "-r", str(w), "--api-socket", api, str(target.pid),
                              "tap0"], pass_fds=(w,),
                             env=ENV, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(w)
        byte = os.read(r, 1)
        ready = time.perf_counter() - t0
        os.close(r)
        if byte == b"1":
            _api_answer(api, time.monotonic() + 10)
        answered = time.perf_counter() - t0
        p.send_signal(signal.SIGTERM)
        status, cpu = _wait4(p.pid)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        if byte != b"1":
            raise RuntimeError(f"{helper[0]}: no ready byte (status {status}): {err[-300:]}")
        return ready, answered, cpu
    finally:
        target.kill()
        target.wait()
        try:
            os.unlink(api)
        except FileNotFoundError:
            pass


def row(name, samples):
    walls = [x[0] for x in samples]
    cpus = [x[-1] for x in samples]
    return name, statistics.median(walls), statistics.median(cpus), min(walls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--compare", metavar="DIR",
                    help="also time `usernet run -- true` from another checkout (e.g. an older "
                         "commit: git archive COMMIT | tar -x -C DIR), alternating with this one")
    a = ap.parse_args()
    usernet_s4 = shutil.which("usernet-slirp4netns", path=os.path.dirname(PY))
    s4 = [usernet_s4] if usernet_s4 else [PY, "-m", "usernet", "slirp4netns"]
    plan = {
        "python -c pass": lambda: time_command([PY, "-c", "pass"]),
        "unshare --user --net true": lambda: time_command(
            ["unshare", "--user", "--map-root-user", "--net", "true"]),
        "usernet run -- true": lambda: time_command([PY, "-m", "usernet", "run", "--", "true"]),
        "usernet-slirp4netns: exec to ready": lambda: time_to_ready(s4),
    }
    if a.compare:
        other = dict(ENV, PYTHONPATH=os.path.abspath(a.compare))
        plan[f"  ... from {a.compare}"] = lambda: time_command(
            [PY, "-m", "usernet", "run", "--", "true"], env=other)
    # The same entry point handing its links to a running `usernet daemon` (USERNET_DAEMON in
    # Podman's environment; here --daemon-socket): the compiled front sends the attach itself.
    ddir = tempfile.mkdtemp(prefix="usernet-startup-")
    dsock = os.path.join(ddir, "d.sock")
    daemon = start_daemon([PY, "-m", "usernet"], dsock, ENV)
    plan["usernet-slirp4netns + daemon: exec to ready"] = lambda: time_to_ready(
        [*s4, f"--daemon-socket={dsock}"])
    if shutil.which("slirp4netns"):
        plan["slirp4netns: exec to ready"] = lambda: time_to_ready([shutil.which("slirp4netns")])
    res = {k: [] for k in plan}
    try:
        for _ in range(a.runs):
            for name, fn in plan.items():
                res[name].append(fn())
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(ddir, ignore_errors=True)
    print(f"start-up, median of {a.runs} runs (load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'':38} {'wall ms':>8} {'cpu ms':>8} {'min wall':>9}")
    rows = {}
    for name, samples in res.items():
        _n, wall, cpu, best = rows[name] = row(name, samples)
        print(f"{name:38} {wall * 1e3:8.1f} {cpu * 1e3:8.1f} {best * 1e3:9.1f}")
        if name.endswith("exec to ready"):
            # The same runs' exec-to-first-API-answer (CPU is per run, shown once above).
            served = name.replace("exec to ready", "exec to first API answer")
            _n, wall, _c, best = rows[served] = row(served, [(x[1], x[2]) for x in samples])
            print(f"{served:38} {wall * 1e3:8.1f} {'':>8} {best * 1e3:9.1f}")
    if "slirp4netns: exec to ready" in rows:
        for helper in ("usernet-slirp4netns", "usernet-slirp4netns + daemon"):
            for what in ("exec to ready", "exec to first API answer"):
                u, s = rows[f"{helper}: {what}"], rows[f"slirp4netns: {what}"]
                print(f"{helper} / slirp4netns, {what}: wall {u[1] / s[1]:.2f}x")
        u, s = rows["usernet-slirp4netns: exec to ready"], rows["slirp4netns: exec to ready"]
        print(f"usernet/slirp4netns, CPU to exit: {u[2] / max(s[2], 1e-6):.2f}x")


if __name__ == "__main__":
    main()
