"""``podman run`` time to first byte, usernet vs slirp4netns as Podman's network helper.

Run as root: ``.venv/bin/python bench/podman_ttfb.py [RUNS]``. It sets up the same throw-away
rootless Podman user and busybox image as tests/integration/test_podman.py (and removes them
afterwards), then, alternating the helper in that user's containers.conf ``network_cmd_path``,
times RUNS of

    podman run --rm --network slirp4netns:allow_host_loopback=true IMG wget -qO- http://10.0.2.2:PORT/

against an HTTP server on host 127.0.0.1: the time from starting podman to the first byte of
the page on its stdout, and to podman's exit, for usernet-slirp4netns with and without its
compiled front (USERNET_FRONT=0) and for slirp4netns. Prints the medians. Not a test: figures vary
with the machine's load.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import test_podman as tp  # noqa: E402
from conftest import http_server  # noqa: E402


def one(user, port):
    argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "podman",
            "run", "--rm", "--network", "slirp4netns:allow_host_loopback=true", tp.IMAGE,
            "wget", "-qO-", f"http://10.0.2.2:{port}/page"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user.env(),
                         cwd=user.home)
    first = p.stdout.read(1)
    t1 = time.monotonic()
    rest = p.stdout.read()
    err = p.stderr.read()
    rc = p.wait(120)
    t2 = time.monotonic()
    if rc != 0 or not first:
        raise RuntimeError(f"podman run failed: rc={rc} {err.decode(errors='replace')[-300:]}")
    assert (first + rest).startswith(b"hello")
    return t1 - t0, t2 - t0


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    gen = tp.podman.__wrapped__() if hasattr(tp.podman, "__wrapped__") else tp.podman.__pytest_wrapped__.obj()
    user = next(gen)
    conf = os.path.join(user.home, ".config", "containers", "containers.conf")
    with open(conf) as f:
        base = f.read()
    res = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            # The same entry point with its compiled front switched off: the ready byte then
            # comes after the whole Python start (what usernet-slirp4netns was without it).
            no_front = os.path.join(d, "usernet-no-front")
            with open(no_front, "w") as f:
                f.write(f'#!/bin/sh\nUSERNET_FRONT=0 exec {user.entry} "$@"\n')
            os.chmod(no_front, 0o755)
            helpers = {"usernet": user.entry, "usernet, no front": no_front,
                       "slirp4netns": "/usr/bin/slirp4netns"}
            res = {k: [] for k in helpers}
            with open(os.path.join(d, "page"), "w") as f:
                f.write("hello\n")
            os.chmod(d, 0o755)
            with http_server(d) as port:
                for i in range(runs + 1):
                    for name, path in helpers.items():
                        with open(conf, "w") as f:
                            f.write(base.replace(user.entry, path))
                        t = one(user, port)
                        if i:  # the first round warms caches
                            res[name].append(t)
    finally:
        with open(conf, "w") as f:
            f.write(base)
        try:
            next(gen)
        except StopIteration:
            pass
    print(f"podman run --rm --network slirp4netns:allow_host_loopback=true IMG wget -qO- "
          f"http://10.0.2.2:PORT/page   ({runs} runs each, alternating, medians)")
    for name, ts in res.items():
        print(f"  {name:18s} first byte {statistics.median(t[0] for t in ts):.3f} s   "
              f"exit {statistics.median(t[1] for t in ts):.3f} s   "
              f"(first byte min {min(t[0] for t in ts):.3f} max {max(t[0] for t in ts):.3f})")


if __name__ == "__main__":
    main()
