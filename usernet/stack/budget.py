"""The memory budget: one count of what the whole stack holds in buffers.

Theory of operation
-------------------
Per-flow bounds (a TCP flow's send queue and window, a datagram's size) keep
one flow small; they do not keep 4,096 of them small (4,096 flows whose host
peers never read once took ~1.2 GB), nor 60,000 idle ones. :class:`MemoryBudget` is the one
accountant the stack owns: every place that keeps bytes for later adds them
to ``used`` when it takes them and subtracts them when it lets them go, as
plain integer adds at points that already exist (no object per packet):

* TCP (stack/tcpnat.py, after every call into a connection): the flow's send
  queue toward the container, its out-of-order pieces, and the bytes the
  host side reported stuck in the host socket's write queue
  (``tcp_host_backlog``, the contract's existing report), plus a fixed
  :data:`~usernet.stack.config.TCP_FLOW_COST` for the flow's own objects
  (the connection, its table entries, the host socket's transport: what an
  idle flow costs, measured), so ten thousand idle flows count too. Each
  flow keeps what it has charged (``TcpFlow.charged``) and pays the
  difference.
* IP reassembly (stack/ipfrag.py): the fragment bytes held.
* Neighbour holds (stack/arp.py): frames waiting for an address to resolve.
* DNS (stack/gateway.py): the queries waiting for upstream.

Past ``limit`` (:meth:`over`) new work is refused the protocol's way -- a new
TCP SYN gets RST, a new UDP or echo flow and a new fragment set are dropped
and counted, a DNS query gets SERVFAIL, a frame to hold is dropped -- and TCP
windows shrink to :data:`~usernet.stack.config.BUDGET_FLOW_WINDOW` (zero for
a flow whose host peer is not reading), so bytes already accepted drain and
existing flows keep moving. ``used`` can pass ``limit`` by at most that
window per flow: the budget is a soft limit with a hard bound.

``used`` and ``peak`` (the most seen when new work was weighed against the
limit) are reported as gauges.
"""


class MemoryBudget:
    __slots__ = ("limit", "used", "peak")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0

    def over(self) -> bool:
        """True when new work must be refused."""
        used = self.used
        if used > self.peak:
            self.peak = used
        return used >= self.limit

    def __repr__(self) -> str:
        return f"<MemoryBudget used={self.used} limit={self.limit} peak={self.peak}>"


class BudgetPool(MemoryBudget):
    """The global budget of many stacks (``usernet daemon``): ``used`` is the
    sum of its members' ``used``, kept by their setters, never recounted."""
    __slots__ = ()


class PooledBudget(MemoryBudget):
    """One stack's budget inside a :class:`BudgetPool`: its own ``limit`` (the
    link's share), and new work is refused when either it or the pool is
    spent -- so one link can neither pass its own limit nor take the whole
    process's memory from the others. Every change of ``used`` moves the
    pool's by the same amount (a property: the charging sites are unchanged
    and still plain ``+=``). :meth:`detach` gives back what is still charged
    when the stack goes away."""
    __slots__ = ("pool", "_used")

    def __init__(self, limit: int, pool: BudgetPool):
        self.pool = pool
        self._used = 0
        super().__init__(limit)

    @property
    def used(self) -> int:
        return self._used

    @used.setter
    def used(self, value: int) -> None:
        self.pool.used += value - self._used
        self._used = value

    def over(self) -> bool:
        used = self._used
        if used > self.peak:
            self.peak = used
        return used >= self.limit or self.pool.over()

    def detach(self) -> None:
        """Leave the pool: what this stack still holds no longer counts there."""
        self.used = 0
        self.pool = BudgetPool(self.limit)
