"""usernet.stack: the protocol machines, sans-IO.

Fed frames and host-side notifications with an explicit ``now``; hands back
frames for the TAP and events for the host side. Never imports asyncio,
socket, os or time (``tests/unit/test_layers.py`` checks). The entry point is
:class:`usernet.stack.gateway.Gateway`.
"""
