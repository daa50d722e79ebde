"""bench/bytecodes.py keeps working, and the path it measures is the predicted
one: through the real driver, host glue and gateway, every request and every
answer of a request/response flow takes header prediction (one hit each way per
transaction) and costs the container exactly one frame; with 50 flows too."""

import os
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bytecodes.py")


@pytest.mark.parametrize("flows", [1, 50])
def test_bytecodes_bench_takes_the_predicted_path(flows):
    n, warm = 40, 5
    out = subprocess.run([sys.executable, BENCH, "--n", str(n), "--warm", str(warm),
                          "--flows", str(flows)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "1.00 frames to the container per transaction" in out, out
    m = re.search(r"tcp_fast_path_rx (\d+)\s+tcp_fast_path_tx (\d+)", out)
    assert m, out
    # every transaction counted and warmed up, on every flow, hit both ways
    assert int(m.group(1)) >= n and int(m.group(2)) >= n, out
