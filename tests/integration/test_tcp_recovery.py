"""Loss recovery toward the container under ``--impair loss=0.01`` (issue 12).

A host server on 127.0.0.1 (reached as 10.0.2.2) sends random bytes to a
Python client inside ``usernet run``; the client checks the sha256. The
impairment hook drops 1 % of the frames usernet writes to the TAP (and 1 %
of what the container sends), so usernet's own TCP must repair the losses:
SACK-scoreboard recovery (RFC 6675) with RACK-TLP (RFC 8985). The counters
must show the repairs were fast recoveries and loss probes, with
retransmission timeouts under a tenth of them. With offloads on, a dropped
frame is a whole 64 KiB segment (more bytes are moved so that enough of them
are dropped); with them off, an MSS-sized one. No packet leaves the machine.
"""

import hashlib
import os
import socket
import threading

import pytest

from conftest import need_tun, usernet_run
from test_tcp_nat import OFFLOAD, PY, _out, counters_of

pytestmark = [pytest.mark.integration, need_tun]

MiB = 1 << 20

CLIENT = r"""
import hashlib, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("10.0.2.2", port), timeout=60)
h = hashlib.sha256()
got = 0
buf = bytearray(1 << 20)
while got < n:
    k = s.recv_into(buf)
    if not k:
        break
    h.update(memoryview(buf)[:k])
    got += k
print("got", got, h.hexdigest())
"""


def _server(data: bytes):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ls.settimeout(60)

    def run():
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            c.settimeout(60)
            try:
                c.sendall(data)
                c.shutdown(socket.SHUT_WR)
                c.recv(1)
            except OSError:
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls, t


@pytest.mark.parametrize("offload", OFFLOAD)
def test_loss_repaired_without_rtos(offload):
    n = (96 if offload else 20) * MiB
    data = os.urandom(n)
    ls, t = _server(data)
    try:
        port = ls.getsockname()[1]
        r = usernet_run(["--debug", "--impair", "loss=0.01,seed=12"]
                        + ([] if offload else ["--no-offload"]),
                        [PY, "-c", CLIENT, str(port), str(n)], timeout=240)
    finally:
        ls.close()
        t.join(5)
    assert r.returncode == 0, _out(r)
    assert f"got {n} {hashlib.sha256(data).hexdigest()}" in r.stdout, _out(r)
    c = counters_of(r.stderr)
    dropped = c["impair_tx_dropped"]
    repairs = c["tcp_fast_recoveries"] + c["tcp_tlp_probes"]
    rto = c["tcp_retransmit_timeout"]
    print(f"\nloss=0.01{'' if offload else ' --no-offload'}: tx dropped {dropped}, fast recoveries "
          f"{c['tcp_fast_recoveries']}, RACK retransmits {c['tcp_rack_retransmits']}, TLP probes "
          f"{c['tcp_tlp_probes']}, RTOs {rto}, D-SACKs {c['tcp_dsack_rx']}")
    assert dropped >= 5, c                      # enough losses to mean something
    assert c["tcp_rack_retransmits"] > 0 and c["tcp_fast_recoveries"] > 0, c
    assert rto < 0.1 * repairs, c
