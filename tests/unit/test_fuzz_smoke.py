"""The stack fuzzer's CI smoke run (``tools/fuzz.py``; the long runs are in
docs/reliability.md): 20,000 mutated and crafted frames through the driver's
entry point with a fake host side, clock jumps and the invariants checked
after every step; then proof that the invariants can fail.
"""

import gc
import importlib.util
import os
import random
import tracemalloc

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("usernet_fuzz",
                                                  os.path.join(ROOT, "tools", "fuzz.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._import_stack()
    mod.SEEDS = mod.build_seeds()
    return mod


def test_smoke_20000_frames_hold_every_invariant(fuzz):
    stats = fuzz.run_random(20000, 1, fuzz.SEEDS, epoch=5000, settle_every=1000,
                            crash_dir=None, report_every=0, quiet=True)
    assert stats["frames"] >= 20000
    assert stats["settles"] >= 20
    # The run went deep: it reached TCP data both ways and frames came out.
    assert stats["host_rx_bytes"] > 0 and stats["tx_frames"] > 5000


def test_programs_from_arbitrary_bytes(fuzz):
    """The libFuzzer path: any byte string is a program that runs clean."""
    rng = random.Random(5)
    stats = fuzz.new_stats()
    for n in (0, 1, 7, 100, 2000):
        fuzz.run_program(rng.randbytes(n), fuzz.SEEDS, stats)
    assert stats["programs"] == 5


def test_recorded_program_replays_the_same_run(fuzz):
    """A failing random run is saved as bytes; replaying them repeats it."""
    stats1, stats2 = fuzz.new_stats(), fuzz.new_stats()
    src = fuzz.RandomSource(3)
    h = fuzz.Harness(src, fuzz.SEEDS, stats1)
    for _ in range(300):
        h.step()
    replay = fuzz.ByteSource(bytes(src.record))
    h2 = fuzz.Harness(replay, fuzz.SEEDS, stats2)
    for _ in range(300):
        h2.step()
    assert stats1 == stats2 and dict(h.gw.counters) == dict(h2.gw.counters)


def test_memory_returns_after_each_gateway(fuzz):
    """Gateways fuzzed one after another leave nothing behind (tracemalloc)."""
    fuzz.run_random(2000, 2, fuzz.SEEDS, epoch=2000, report_every=0, quiet=True)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fuzz.run_random(3000, 3, fuzz.SEEDS, epoch=1000, report_every=0, quiet=True)
        gc.collect()
        grew = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grew < 1 << 20, grew


def test_invariants_catch_a_flow_that_never_expires(fuzz, monkeypatch):
    """The checks can fail: a datagram flow whose idle timer is never armed
    is reported."""
    from usernet.stack import datagrams
    monkeypatch.setattr(datagrams.DatagramNat, "_arm", lambda self, flow, kind: None)
    with pytest.raises(fuzz.InvariantError):
        fuzz.run_random(20000, 1, fuzz.SEEDS, epoch=5000, report_every=0, quiet=True)


def test_an_escaping_exception_is_not_swallowed(fuzz, monkeypatch):
    """The checks can fail: an exception inside the stack reaches the fuzzer."""
    from usernet.stack import gateway

    def boom(self, p, now):
        raise IndexError("bug")
    monkeypatch.setattr(gateway.Gateway, "_arp_input", boom)
    with pytest.raises(IndexError):
        fuzz.run_random(5000, 1, fuzz.SEEDS, report_every=0, quiet=True)
