"""Container to container through a named network's switch, beside container to host through NAT.

One daemon (in an empty network namespace this script makes: nothing leaves the machine), one
network, two ``usernet run --daemon`` containers. A sender streams SIZE bytes per connection;
the receiver reads to EOF and reports its wall time. Two paths, back to back, REPEAT times each:

  switch   receiver container -> sender container, through the switch (TSO frames pass whole)
  nat      receiver container -> sender in the daemon's namespace at 10.89.N.2, through NAT

Prints MB/s (the receiver's wall clock: noisy on a shared machine) and the daemon's CPU seconds
per GB moved (utime+stime from /proc: the steadier figure), with the switch/nat ratios.
Needs root (the outer namespace).

    sudo .venv/bin/python bench/switch_throughput.py [SIZE_MB] [REPEAT]
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USERNET = [sys.executable, "-m", "usernet"]
ENV = dict(os.environ, PYTHONPATH=REPO)
ENV.pop("USERNET_DAEMON_SOCKET", None)

SENDER = r"""
import socket, sys
n = int(sys.argv[1]); chunk = b"x" * (1 << 20)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], 9000)); s.listen(8)
while True:
    c, _ = s.accept(); left = n
    while left:
        k = c.send(chunk[:min(left, len(chunk))]); left -= k
    c.close()
"""

RECEIVER = r"""
import socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
for i in range(100):
    try:
        c = socket.create_connection((host, 9000), timeout=10); break
    except OSError:
        time.sleep(0.1)
t = time.monotonic(); got = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    got += len(b)
print(got, time.monotonic() - t)
"""


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    nbytes = size << 20
    d = tempfile.mkdtemp(prefix="usernet-switch-bench-")
    path = os.path.join(d, "d.sock")
    argv = " ".join(USERNET + ["daemon", "--socket", path])
    daemon = subprocess.Popen(["unshare", "--net", "--", "sh", "-c",
                               f"ip link set lo up && exec {argv}"], env=ENV, cwd="/",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [daemon]
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        r = subprocess.run(USERNET + ["network", "create", "bench", "--socket", path],
                           env=ENV, capture_output=True, text=True, check=True)
        subnet = r.stdout.split()[1]
        gateway = subnet.rsplit(".", 1)[0] + ".2"
        run = USERNET + ["run", "--daemon-socket", path, "--network", "bench",
                         "--dns-upstream", "127.0.0.1:9"]
        procs.append(subprocess.Popen(run + ["--name", "sender", "--", sys.executable, "-c",
                                             SENDER, str(nbytes), "0.0.0.0"], env=ENV, cwd="/"))
        procs.append(subprocess.Popen(["nsenter", f"--net=/proc/{daemon.pid}/ns/net",
                                       sys.executable, "-c", SENDER, str(nbytes), "127.0.0.1"],
                                      cwd="/"))
        time.sleep(1.0)
        results = {"switch": [], "nat": []}
        for _ in range(repeat):
            for path_name, host in (("switch", "sender"), ("nat", gateway)):
                c0 = cpu(daemon.pid)
                r = subprocess.run(run + ["--", sys.executable, "-c", RECEIVER, host,
                                          str(nbytes)], env=ENV, capture_output=True, text=True,
                                   timeout=300)
                c1 = cpu(daemon.pid)
                got, secs = r.stdout.split()
                assert int(got) == nbytes, r.stdout + r.stderr
                results[path_name].append((nbytes / float(secs) / 1e6, (c1 - c0) / (nbytes / 1e9)))
        best = {k: (max(x[0] for x in v), min(x[1] for x in v)) for k, v in results.items()}
        print(f"{size} MiB per transfer, best of {repeat}")
        print(f"{'path':8s} {'MB/s':>8s} {'daemon CPU s/GB':>16s}")
        for k in ("switch", "nat"):
            print(f"{k:8s} {best[k][0]:8.0f} {best[k][1]:16.2f}")
        print(f"{'ratio':8s} {best['switch'][0] / best['nat'][0]:8.2f} "
              f"{best['switch'][1] / best['nat'][1]:16.2f}   (switch / nat)")
        print(json.dumps({"switch": best["switch"], "nat": best["nat"]}))
    finally:
        for p in reversed(procs[1:]):
            p.send_signal(signal.SIGTERM)
        for p in procs[1:]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
