"""uvicorn HTTP protocols that set TCP_NODELAY on every accepted connection.

With `--workers N`, uvicorn binds the listening socket itself as `socket.socket(family=AF_INET)`,
whose `proto` is 0, and hands it to `loop.create_server(sock=…)`. asyncio's own event loop sets
TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, so the accepted connections keep Nagle's
algorithm on: a response written in two pieces (headers, then body) waits for the client's delayed
ACK, ~40 ms on every reused keep-alive connection. Measured here, digits model, concurrency 1,
`--workers 2 --loop asyncio`: p50 44.0 ms with `--http httptools` or `h11`, 1.1 ms with these
classes. (uvloop, which `uvicorn[standard]` installs and `--loop auto` picks, sets TCP_NODELAY on
every TCP transport itself: 1.0–1.2 ms either way; the benchmark runs uvloop and these classes, so
the peer does not depend on which loop is installed.)

An HTTP middleware cannot fix it (it never sees the socket); the protocol class, chosen with
`--http nodelay:HttpToolsNoDelay` (any import string is accepted there), sees the transport as the
connection is made, before the first byte is read.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HttpToolsNoDelay(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _nodelay(transport)
        super().connection_made(transport)


class H11NoDelay(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _nodelay(transport)
        super().connection_made(transport)
