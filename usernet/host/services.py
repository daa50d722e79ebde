"""Wire the optional services around a running driver: DNS forwarder,
port forwards (-p), the JSON API socket. Each is started here and closed
by :meth:`Services.close`."""

import logging

from ..api import ApiServer
from .dns import DnsForwarder
from .forward import Forwarder

log = logging.getLogger("usernet")


class Services:
    def __init__(self, driver):
        self.driver = driver
        self.closers = []
        self.forwarder = None
        self.api = None

    async def close(self):
        for c in reversed(self.closers):
            try:
                r = c()
                if hasattr(r, "__await__"):
                    await r
            except Exception as e:  # noqa: BLE001 - shutdown must finish
                log.debug("closing a service: %s", e)
        self.closers.clear()


async def setup_services(driver, args, *, ns_pid: int | None = None) -> Services:
    """Start what ``args`` asks for. ``ns_pid`` is a process in the
    container's network namespace (``run``: the child; ``attach``: the target
    PID), needed by ``--publish-only-when-bound``. A port that cannot be
    published raises :class:`~usernet.host.forward.PublishError` (an OSError
    with a one-line message) after closing whatever was already started."""
    s = Services(driver)
    cfg = driver.gw.config
    if cfg.enable_dns:
        driver.dns = DnsForwarder(driver, getattr(args, "dns_upstream", None))
    # The forwarder is always there (the API may add forwards later); it is
    # also the API's backend.
    fwd = Forwarder(driver,
                    real_client_addr=not getattr(args, "publish_from_gateway", False),
                    only_when_bound=getattr(args, "publish_only_when_bound", False),
                    ns_pid=ns_pid)
    s.forwarder = fwd
    s.closers.append(fwd.close)
    try:
        for group in getattr(args, "publish", None) or []:
            for f in group:
                fwd.add(f.proto, f.host_addr, f.host_port, "", f.guest_port)
        path = getattr(args, "api_socket", None)
        if path:
            api = await ApiServer.start(path, fwd)
            s.api = api
            s.closers.append(api.wait_closed)   # closers run in reverse: close, then wait
            s.closers.append(api.close)
    except BaseException:
        await s.close()
        raise
    return s
