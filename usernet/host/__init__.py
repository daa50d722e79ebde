"""usernet.host: the asyncio side. Host sockets for NAT flows, the TAP reader
and writer, port-forward listeners, the DNS upstream. The one place that reads
the clock (``loop.time()``) and owns the one timer."""
