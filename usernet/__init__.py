"""usernet: a userspace TCP/IP stack and NAT proxy for rootless containers.

Layers (imports point one way, a test keeps it so):

    wire  <-  stack  <-  host  <-  top layer (cli.py, slirp4netns.py, serve.py, services.py,
                                          api.py, sandbox.py, netns.py, tap.py)

Importing this package imports nothing heavy: no asyncio, no scapy, no dpkt.
"""

__version__ = "0.1.0"
