"""The neighbour cache: guest address -> MAC, and frames held while it resolves.

Theory of operation
-------------------
Frames toward the container need its MAC. :class:`NeighbourCache` maps an
address to a MAC, learned from ARP (RFC 826's "merge" step: any ARP packet
from inside the network teaches its sender) and from the source of the
guest's IP traffic. A frame for an address not yet known is *held* (at most
``hold_max`` per address) and a solicitation goes out; it is retried every
``retry`` seconds, ``tries`` times in all, and then the held frames are
dropped (``drop_arp_unresolved``). When the address is learned, the held
frames get the MAC written in and go out in order.

The cache knows nothing of ARP's packet format: the owner passes
``solicit(ip) -> frame``, which builds the request. IPv6's NDP is the same
structure with a Neighbor Solicitation builder (RFC 4861 7.2) and its own
counters: the gateway keeps a second cache for IPv6 built with
``names=NDP_NAMES`` (a 16-byte key never meets a 4-byte one, but the two
protocols' drops are told apart).

Who may change an entry. ARP (or NDP) may add an address, never move a
known one to another MAC: one forged gratuitous ARP for the container's own
address would otherwise cut it off until it next ARPs (``arp_change_ignored``).
The container's IP traffic is what moves an entry (``confirmed=True``:
``arp_relearned_ip``), at once, so a container whose MAC really changed is
followed on its first packet. The gateway never learns its own addresses
(the address policy's ``may_learn``).

Held frames count against the stack's memory budget (stack/budget.py); past
it a frame is dropped instead of held (``drop_arp_hold_budget``).

Entries are queued as ``(vnet_hdr, frame)`` pairs, the one shape of
``frames_out``. The cache is bounded (``max_entries``): a container cannot
grow it by spoofing sources.

Timers: one per held address (the retry), through :class:`usernet.stack.timers.Timers`.
"""

from .timers import Timers

def _frame_len(entry: tuple) -> int:
    """Bytes of a ``frames_out`` entry's frame: every piece after the virtio-net header."""
    return sum(len(x) for x in entry[1:])


HOLD_MAX = 64           # frames held for one address while its MAC is unknown
RETRY = 1.0             # seconds between solicitations for a held address
TRIES = 3               # solicitations before the held frames are dropped
TABLE_MAX = 256         # addresses learned; a spoofing container cannot grow it further
UNRESOLVED = bytes(6)   # destination MAC of a frame built before its neighbour is known
# Counter names: learned, table full, solicitation sent, hold full, unresolved,
# a change refused, a change from IP traffic, a hold past the memory budget.
ARP_NAMES = ("arp_learned", "arp_table_full", "arp_request_tx", "drop_arp_hold_full",
             "drop_arp_unresolved", "arp_change_ignored", "arp_relearned_ip",
             "drop_arp_hold_budget")
NDP_NAMES = ("ndp_learned", "ndp_table_full", "ndp_ns_tx", "drop_ndp_hold_full",
             "drop_ndp_unresolved", "ndp_change_ignored", "ndp_relearned_ip",
             "drop_ndp_hold_budget")


class _Hold:
    """Frames waiting for one address, and the solicitation state."""

    __slots__ = ("frames", "tries", "deadline")

    def __init__(self):
        self.frames: list = []
        self.tries = 0
        self.deadline = None


class NeighbourCache:
    def __init__(self, counters, frames_out: list, timers: Timers, solicit, vnet_plain: bytes, *,
                 max_entries: int = TABLE_MAX, hold_max: int = HOLD_MAX, retry: float = RETRY,
                 tries: int = TRIES, names: tuple = ARP_NAMES, budget=None):
        self.counters = counters
        (self._c_learned, self._c_full, self._c_solicit, self._c_hold_full,
         self._c_unresolved, self._c_change_ignored, self._c_relearned,
         self._c_hold_budget) = names
        self.budget = budget
        self.frames_out = frames_out
        self.table: dict[bytes, bytes] = {}
        self.held: dict[bytes, _Hold] = {}
        self._timers = timers
        self._solicit = solicit
        self._plain = vnet_plain
        self.max_entries = max_entries
        self.hold_max = hold_max
        self.retry = retry
        self.tries = tries
        self._kind = timers.kind(self._live, self._fire)

    def lookup(self, ip: bytes) -> bytes | None:
        return self.table.get(ip)

    def learn(self, ip: bytes, mac: bytes, confirmed: bool = False) -> None:
        """Record ``ip -> mac`` (bounded) and release the frames waiting for
        it. A known address moves to another MAC only when ``confirmed``
        (seen in the container's IP traffic), never by ARP/NDP alone."""
        known = self.table.get(ip)
        if known == mac:
            return
        if known is None:
            if len(self.table) >= self.max_entries:
                self.counters[self._c_full] += 1
                return
            self.counters[self._c_learned] += 1
        elif not confirmed:
            self.counters[self._c_change_ignored] += 1
            return
        else:
            self.counters[self._c_relearned] += 1
        self.table[ip] = mac
        hold = self.held.pop(ip, None)
        if hold is not None:
            out = self.frames_out
            for entry in hold.frames:
                entry[1][0:6] = mac      # the one place a frame's MAC is written late
                out.append(entry)
            self._release(hold)

    def _release(self, hold: _Hold) -> None:
        if self.budget is not None:
            self.budget.used -= sum(_frame_len(e) for e in hold.frames)

    def output(self, ip: bytes, mac: bytes | None, entry: tuple, now: float) -> None:
        """Queue ``entry`` (a ``(vnet_hdr, frame)`` pair, or ``(vnet_hdr, headers,
        payload)`` for a TSO segment, built for ``mac``,
        the result of :meth:`lookup`), or hold it until ``ip`` resolves."""
        if mac is not None:
            self.frames_out.append(entry)
            return
        hold = self.held.get(ip)
        if hold is None:
            hold = self.held[ip] = _Hold()
            self._send_solicit(ip, hold, now)
        if len(hold.frames) >= self.hold_max:
            self.counters[self._c_hold_full] += 1
            return
        b = self.budget
        if b is not None:
            if b.over():
                self.counters[self._c_hold_budget] += 1
                return
            b.used += _frame_len(entry)
        hold.frames.append(entry)

    def _send_solicit(self, ip: bytes, hold: _Hold, now: float) -> None:
        hold.tries += 1
        self.counters[self._c_solicit] += 1
        self.frames_out.append((self._plain, self._solicit(ip)))
        hold.deadline = now + self.retry
        self._timers.push(hold.deadline, self._kind, ip)

    def _live(self, ip: bytes, deadline: float) -> bool:
        hold = self.held.get(ip)
        return hold is not None and hold.deadline == deadline

    def _fire(self, ip: bytes, deadline: float, now: float) -> None:
        hold = self.held[ip]
        if hold.tries < self.tries:
            self._send_solicit(ip, hold, now)
            return
        del self.held[ip]
        self.counters[self._c_unresolved] += len(hold.frames)
        self._release(hold)
