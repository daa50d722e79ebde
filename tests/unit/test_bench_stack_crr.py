"""bench/stack_crr.py keeps working, and what it counts holds: a short
connection (SYN to last ACK, as Linux and an echo server drive it) costs the
container exactly three frames (SYN-ACK, the answer, our FIN), four host
events (connect, data, shutdown, close) and leaves no flow behind."""

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "stack_crr.py")


@pytest.mark.parametrize("offload", [True, False])
def test_stack_crr_counts(offload):
    out = subprocess.run([sys.executable, BENCH, "--n", "300"] + ([] if offload else ["--no-offload"]),
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "3.00 frames to the container and 4.00 events to the host per connection" in out, out
    assert "flows left 0" in out, out
