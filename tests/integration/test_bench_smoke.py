"""bench/whole_path.py and bench/loss.py still run: one cheap test each, against usernet only.

A smoke test, not a timed one: it checks the table has the row, never a figure.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO, need_tun, tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="whole_path.py makes its namespaces as root"),
]


@pytest.mark.timeout(60)
def test_whole_path_quick_rr_usernet():
    tool("unshare")
    tool("nsenter")
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "whole_path.py"), "--quick", "--duration", "1",
         "--only", "rr", "--configs", "usernet"],
        capture_output=True, text=True, timeout=50, cwd=REPO)
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 1-byte request/response")]
    assert rows, r.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] not in ("", "—"), r.stdout  # a figure was measured (whatever it is)


@need_tun
@pytest.mark.timeout(90)
def test_loss_bench_quick():
    """bench/loss.py: one small run with offloads, loss 0 and 0.01; both rows printed."""
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "loss.py"), "--mib", "4", "--runs", "1",
         "--offload", "on"],
        capture_output=True, text=True, timeout=80, cwd=REPO)
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    rows = [line for line in r.stdout.splitlines() if line.startswith("| on ")]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "0.01"], r.stdout


@need_tun
@pytest.mark.timeout(90)
def test_relay_floor_quick():
    """bench/relay_floor.py: both floor relays and usernet relay the UDP echo (a row each, every
    transaction answered), so the floor it reports was measured through a working path."""
    tool("unshare")
    tool("nsenter")
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "relay_floor.py"), "--runs", "1",
         "--duration", "1"],
        capture_output=True, text=True, timeout=80, cwd=REPO)
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| provider")}
    for kind in ("floor-uvloop", "floor-epoll", "usernet"):
        assert kind in rows, r.stdout
        assert int(rows[kind].split("|")[5].strip().replace(",", "")) > 0, r.stdout
    assert "lost 0" in r.stderr, r.stderr
