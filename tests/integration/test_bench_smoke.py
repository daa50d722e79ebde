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
