"""usernet/pcap.py's writer: the file format byte for byte, the snap length,
rotation at the size cap, and the driver hooks."""

import os
import struct

import pytest

from usernet.pcap import PcapWriter, parse_size, parse_snaplen


def _records(path):
    data = open(path, "rb").read()
    magic, major, minor, _tz, _sig, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    out, off = [], 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        out.append((sec + usec / 1e6, orig, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    assert off == len(data)
    return snaplen, out


def test_records_snaplen_and_timestamps(tmp_path):
    p = tmp_path / "c.pcap"
    w = PcapWriter(p, snaplen=20, clock=lambda: 1700000000.25)
    w.record(b"a" * 14)
    w.record(memoryview(b"b" * 100))
    w.close()
    snaplen, recs = _records(p)
    assert snaplen == 20
    assert recs == [(1700000000.25, 14, b"a" * 14), (1700000000.25, 100, b"b" * 20)]


def test_rotation_keeps_the_newest_within_the_cap(tmp_path):
    p = tmp_path / "c.pcap"
    w = PcapWriter(p, max_size=24 + 3 * (16 + 50), clock=lambda: 1.0)
    for i in range(10):
        w.record(bytes([i]) * 50)
    w.close()
    assert w.rotations == 3 and w.frames == 10
    assert os.path.getsize(p) <= 24 + 3 * 66 and os.path.getsize(str(p) + ".1") <= 24 + 3 * 66
    assert [r[2][0] for r in _records(p)[1]] == [9]
    assert [r[2][0] for r in _records(str(p) + ".1")[1]] == [6, 7, 8]


def test_driver_hooks_record_both_ways_and_strip_the_vnet_header(tmp_path):
    class Driver:
        vnet_hdr, vnet_hdr_len, loop = True, 10, None
        written = []

        def _read(self, fd, n):
            return b"\x01" * 10 + b"frame-in"

        def _tap_write(self, entry):
            if entry[1] == b"blocked":
                raise BlockingIOError
            self.written.append(entry)

    d = Driver()
    w = PcapWriter(tmp_path / "c.pcap")
    w.attach(d)
    assert d._read(3, 100) == b"\x01" * 10 + b"frame-in"
    d._tap_write((b"\0" * 10, b"frame-out"))
    with pytest.raises(BlockingIOError):
        d._tap_write((b"\0" * 10, b"blocked"))       # not written: not recorded (yet)
    w.close()
    assert [r[2] for r in _records(tmp_path / "c.pcap")[1]] == [b"frame-in", b"frame-out"]


def test_option_values():
    assert parse_size("4K") == 4096 and parse_size("2m") == 2 << 20 and parse_size("1000") == 1000
    for bad in ("lots", "", "10", "-5K"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_snaplen("96") == 96
    for bad in ("5", "x", "300000"):
        with pytest.raises(ValueError):
            parse_snaplen(bad)
