"""IPv4 reassembly (RFC 791 section 3.2, RFC 815's hole idea, simplified).

Owns: partially received datagrams keyed by (src, dst, proto, ident).
Limits: at most ``max_datagrams`` in progress and ``max_bytes`` buffered in
all; a datagram's fragments must all arrive within ``timeout`` seconds of the
first. A new datagram past ``max_datagrams`` evicts the oldest one in
progress (``frag_evicted_oldest``: a flood of incomplete sets cannot lock out
a valid datagram); a fragment past ``max_bytes`` evicts the oldest sets
before it, or drops its own datagram when that is the oldest. Bytes
held are charged to the stack's memory budget (stack/budget.py); past the
budget a new datagram is not started (``frag_drop_budget``). Nothing grows
without bound. Overlapping fragments (RFC 5722's
lesson for v6, and a classic v4 evasion trick) drop the whole datagram.

Timer: the earliest datagram deadline, exposed through :meth:`next_deadline`.
"""

MAX_DATAGRAM = 65535


class _Partial:
    __slots__ = ("pieces", "total", "size", "deadline", "header")

    def __init__(self, deadline):
        self.pieces = {}       # offset -> bytes
        self.total = None      # datagram payload length once the last fragment is in
        self.size = 0          # bytes held
        self.deadline = deadline
        self.header = None     # the offset-0 fragment's parse tuple fields we need


class Reassembler:
    def __init__(self, counters, timeout: float, max_datagrams: int, max_bytes: int,
                 budget=None):
        self.counters = counters
        self.budget = budget
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.partials: dict[tuple, _Partial] = {}
        self.bytes_held = 0

    def add(self, key: tuple, offset: int, more: bool, data, now: float):
        """Add one fragment; return the whole payload as bytes when complete."""
        c = self.counters
        part = self.partials.get(key)
        if part is None:
            b = self.budget
            if b is not None and b.over():
                c["frag_drop_budget"] += 1
                return None
            if len(self.partials) >= self.max_datagrams:
                # Evict the oldest set (dicts keep insertion order): incomplete
                # sets sent to fill the table must not lock out a valid one.
                c["frag_evicted_oldest"] += 1
                self._forget(next(iter(self.partials)))
            part = self.partials[key] = _Partial(now + self.timeout)
        n = len(data)
        end = offset + n
        if end > MAX_DATAGRAM or (more and n % 8) or n == 0:
            c["frag_drop_bad_fragment"] += 1
            self._forget(key)
            return None
        while self.bytes_held + n > self.max_bytes:
            oldest = next(iter(self.partials))
            if oldest == key:
                # This datagram alone is past the bound.
                c["frag_drop_memory_limit"] += 1
                self._forget(key)
                return None
            c["frag_evicted_oldest"] += 1
            self._forget(oldest)
        if not more:
            if part.total is not None and part.total != end:
                c["frag_drop_inconsistent"] += 1
                self._forget(key)
                return None
            part.total = end
        old = part.pieces.get(offset)
        if old is not None:
            if bytes(old) == bytes(data):
                c["frag_duplicate"] += 1
                return None
            c["frag_drop_overlap"] += 1
            self._forget(key)
            return None
        for o, piece in part.pieces.items():
            if o < end and offset < o + len(piece):
                c["frag_drop_overlap"] += 1
                self._forget(key)
                return None
        part.pieces[offset] = bytes(data)
        part.size += n
        self.bytes_held += n
        if self.budget is not None:
            self.budget.used += n
        c["frag_received"] += 1
        if part.total is None or part.size != part.total:
            if part.total is not None and part.size > part.total:
                c["frag_drop_inconsistent"] += 1
                self._forget(key)
            return None
        # No overlaps and the sizes add up: the pieces tile [0, total).
        whole = b"".join(part.pieces[o] for o in sorted(part.pieces))
        self._forget(key)
        c["frag_reassembled"] += 1
        return whole

    def _forget(self, key):
        part = self.partials.pop(key, None)
        if part is not None:
            self.bytes_held -= part.size
            if self.budget is not None:
                self.budget.used -= part.size

    def next_deadline(self):
        if not self.partials:
            return None
        return min(p.deadline for p in self.partials.values())

    def expire(self, now: float):
        for key in [k for k, p in self.partials.items() if p.deadline <= now]:
            self.counters["frag_drop_timeout"] += 1
            self._forget(key)
