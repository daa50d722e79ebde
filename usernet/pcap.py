"""Packet capture: every frame between the container and usernet, in a pcap file.

Theory of operation
-------------------
``--pcap FILE`` writes the classic pcap format (the libpcap file header,
then one 16-byte record header per frame; link type Ethernet,
``LINKTYPE_ETHERNET`` = 1, microsecond timestamps, little-endian), which
``tcpdump -r`` and Wireshark read.

Where frames are taken: at the TAP, both directions, before anything else
looks at them: what the container's kernel wrote (read) and what usernet
wrote (written), so a capture shows the container's view exactly, including
frames the ``--impair`` hook then drops and frames the stack refuses. The
virtio-net header in front of each frame on an offloading TAP is stripped
(it is not Ethernet). With offloads on, the frames are the TSO super-frames
as they crossed the TAP: TCP segments of up to 64 KiB with an IPv4 total
length (or IPv6 payload length) to match, and, where ``NEEDS_CSUM`` was set,
only the pseudo-header sum in the TCP checksum field, so a reader that
checks checksums flags them (``tcpdump -vv`` says "incorrect"). Use
``--no-offload`` for MTU-sized, fully checksummed frames.

Zero cost when off: the host driver reads the TAP through ``driver._read``
and writes through ``driver._tap_write``; :meth:`PcapWriter.attach` swaps
both for recording versions. With no capture nothing is swapped and the
frame path runs no extra instruction.

Bounds: ``--pcap-snaplen N`` keeps at most N bytes of each frame (the
record's original length stays the frame's). ``--pcap-max-size BYTES``
bounds the disk: when the file would grow past it, it is renamed to
``FILE.1`` (replacing an older ``FILE.1``) and a new ``FILE`` begins with its
own header, so a capture holds the most recent traffic in at most twice the
limit; logged once, at the first rotation, and counted (``rotations``).
Small frames gather in a 64 KiB buffer; a big one (a 64 KiB segment) is
written at once with what is buffered before it (one ``writev``, no copy in
Python); the buffer is also written every :data:`FLUSH_EVERY` seconds and at
exit, so ``tcpdump -r`` on a live capture sees what is at most that old. A write error (disk full) stops the capture with one warning; the
network keeps running.
"""

from __future__ import annotations

import logging
import os
import struct
import time

log = logging.getLogger("usernet")

LINKTYPE_ETHERNET = 1
PCAP_MAGIC = 0xA1B2C3D4          # microsecond timestamps
PCAP_VERSION = (2, 4)
DEFAULT_SNAPLEN = 262144         # tcpdump's default: whole 64 KiB super-frames fit
FLUSH_EVERY = 1.0                # seconds between buffer flushes
BUFFER = 1 << 16                 # small frames gather in a buffer of this size
SMALL = 4096                     # frames this big or bigger are written at once
FILE_HEADER = struct.Struct("<IHHiIII")   # magic, major, minor, thiszone, sigfigs, snaplen, linktype
RECORD_HEADER = struct.Struct("<IIII")   # ts_sec, ts_usec, incl_len, orig_len


def parse_size(text: str) -> int:
    """BYTES with an optional K/M/G suffix (powers of 1024); ValueError for the user."""
    t = text.strip().upper().removesuffix("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        n = int(t) * mult
    except ValueError:
        raise ValueError(f"not a size: {text!r} (BYTES, or with K, M or G)") from None
    if n < FILE_HEADER.size + RECORD_HEADER.size + 64:
        raise ValueError(f"size too small: {text!r} (at least 128 bytes)")
    return n


def parse_snaplen(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not 14 <= n <= DEFAULT_SNAPLEN:
        raise ValueError(f"snaplen must be 14..{DEFAULT_SNAPLEN}, got {n}")
    return n


class PcapWriter:
    """One capture file. :meth:`record` appends a frame; :meth:`close` flushes."""

    def __init__(self, path: str, *, snaplen: int = DEFAULT_SNAPLEN, max_size: int | None = None,
                 clock=time.time):
        self.path = os.fspath(path)
        self.snaplen = snaplen
        self.max_size = max_size
        self.clock = clock
        self.frames = 0
        self.rotations = 0
        self.failed = False
        self._flush_handle = None
        self._f = None
        self._open()        # an error here (no such directory) is the caller's: a start error

    def _open(self) -> None:
        self._f = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._buf = bytearray(FILE_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, self.snaplen,
                                               LINKTYPE_ETHERNET))
        self.size = FILE_HEADER.size

    def _rotate(self) -> None:
        self._write_out()
        os.close(self._f)
        os.replace(self.path, self.path + ".1")
        if not self.rotations:
            log.warning("pcap: %s reached --pcap-max-size %d bytes: rotating to %s.1 "
                        "(each rotation replaces it; logged once)", self.path, self.max_size,
                        self.path)
        self.rotations += 1
        self._open()

    def record(self, frame) -> None:
        """Append one Ethernet frame (bytes-like), cut to the snap length."""
        if self.failed:
            return
        n = len(frame)
        cut = frame[:self.snaplen] if n > self.snaplen else frame
        rec = RECORD_HEADER.size + len(cut)
        try:
            if self.max_size is not None and self.size + rec > self.max_size \
                    and self.size > FILE_HEADER.size:
                self._rotate()
            t = self.clock()
            sec = int(t)
            buf = self._buf
            buf += RECORD_HEADER.pack(sec, int((t - sec) * 1e6), len(cut), n)
            if len(cut) >= SMALL:
                # A big frame (a 64 KiB segment) goes straight to the file,
                # after what is buffered: one writev, no copy in Python.
                self._write_out(cut)
            else:
                buf += cut
                if len(buf) >= BUFFER:
                    self._write_out()
        except (OSError, ValueError) as e:
            self.failed = True
            log.warning("pcap: writing %s failed (%s): capture stopped, the network keeps running",
                        self.path, getattr(e, "strerror", None) or e)
            return
        self.size += rec
        self.frames += 1

    def _write_out(self, extra=None) -> None:
        """Write the buffer (and ``extra``) to the file, all of it."""
        parts = [self._buf] if extra is None else [self._buf, extra]
        want = sum(len(p) for p in parts)
        done = os.writev(self._f, parts)
        if done < want:                    # a short write (a signal, a full disk)
            rest = b"".join(bytes(p) for p in parts)[done:]
            while rest:
                rest = rest[os.write(self._f, rest):]
        self._buf = bytearray()

    def flush(self) -> None:
        if self._f is not None and not self.failed:
            try:
                self._write_out()
            except OSError as e:
                self.failed = True
                log.warning("pcap: writing %s failed (%s): capture stopped", self.path, e.strerror)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._f is not None:
            self.flush()
            try:
                os.close(self._f)
            except OSError:
                pass
            self._f = None
        log.debug("pcap: %s: %d frames, %d rotations", self.path, self.frames, self.rotations)

    # ---------------------------------------------------- the driver's hooks
    def attach(self, driver) -> None:
        """Record every frame ``driver`` reads from or writes to its TAP: swap
        its read and write functions for recording ones (see the module
        docstring), and flush every :data:`FLUSH_EVERY` seconds on its loop."""
        record = self.record
        strip = driver.vnet_hdr_len if driver.vnet_hdr else 0
        os_read = driver._read
        tap_write = driver._tap_write

        def read(fd, n):
            data = os_read(fd, n)
            if len(data) > strip:
                record(memoryview(data)[strip:] if strip else data)
            return data

        def write(entry):
            tap_write(entry)                 # raises before recording when not written
            # A TSO segment is (header, headers, payload): the frame is both pieces.
            record(entry[1] if len(entry) == 2 else b"".join(entry[1:]))

        driver._read = read
        driver._tap_write = write
        loop = driver.loop

        def tick():
            self.flush()
            self._flush_handle = loop.call_later(FLUSH_EVERY, tick)
        if loop is not None:
            self._flush_handle = loop.call_later(FLUSH_EVERY, tick)
