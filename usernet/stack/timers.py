"""The stack's one timer: a heap of deadlines and one kind-to-handler table.

Theory of operation
-------------------
Every timed thing in the stack (a TCP flow's retransmission or connect
deadline, a datagram flow's idle expiry, a DNS query waiting for upstream, an
ARP retry, the reassembly expiry) pushes ``(deadline, kind, key)`` here. A
kind is a small integer handed out by :meth:`Timers.kind`, which takes the
two functions that know that kind:

* ``live(key, deadline) -> bool``: is this entry still the one its owner
  armed? Entries are invalidated lazily: an owner that re-arms or goes away
  simply leaves its old entry to be skipped when it reaches the top.
* ``fire(key, deadline, now)``: run it.

``next_deadline()`` is the stack's ``get_timer()``; ``run(now)`` its
``handle_timer(now)``. No string kinds, no if-chains: a new timed thing
(NDP's retransmissions, say) registers one more row. Sans-IO: nothing here
reads a clock; ``now`` is an argument.
"""

import heapq


class Timers:
    __slots__ = ("_heap", "_live", "_fire", "pushes")

    def __init__(self):
        self._heap: list = []
        # Entries pushed so far. Only a push can make the next deadline
        # earlier (pops and dead entries only move it later), so an owner
        # that armed its clock for next_deadline() need not ask again
        # until this moves (host/driver.py _arm_timer).
        self.pushes = 0
        self._live: list = []
        self._fire: list = []

    def kind(self, live, fire) -> int:
        """Register a kind of timer; returns its id for :meth:`push`."""
        self._live.append(live)
        self._fire.append(fire)
        return len(self._live) - 1

    def push(self, deadline: float, kind: int, key) -> None:
        self.pushes += 1
        heapq.heappush(self._heap, (deadline, kind, key))

    def __len__(self) -> int:
        return len(self._heap)

    def next_deadline(self) -> float | None:
        """The earliest live deadline (stale entries on top are dropped)."""
        heap = self._heap
        live = self._live
        while heap:
            d, kind, key = heap[0]
            if live[kind](key, d):
                return d
            heapq.heappop(heap)
        return None

    def run(self, now: float) -> None:
        """Fire every live entry due at ``now``."""
        heap = self._heap
        live, fire = self._live, self._fire
        while heap and heap[0][0] <= now:
            d, kind, key = heapq.heappop(heap)
            if live[kind](key, d):
                fire[kind](key, d, now)
