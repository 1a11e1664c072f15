"""How uvicorn serves the API: its own HTTP protocol plus the one rule it lacks, that a peer
which stops reading is dropped, its socket closed.

The edge gate (``app.api.middleware``) gives up on a download whose reader takes nothing for
``send_timeout_seconds``: the route stops, its stream slot and file are released. uvicorn then
closes the transport, and asyncio's ``close()`` waits for the write buffer to drain first: to a
reader that never reads, that is for ever, and the socket (with megabytes of buffers) stays
open. Here a connection whose writes stay paused (transport buffer over its high-water mark) for
``send_timeout_seconds`` plus a short grace is aborted with a reset, whatever the route did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

log = logging.getLogger(__name__)

# After the edge gate's own timeout: it stops the route (and logs why) before the socket goes.
ABORT_GRACE_S = 1.0


def _uvicorn_protocol() -> type[Any]:
    """The protocol uvicorn's ``http="auto"`` would pick: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def stall_guarded_protocol(send_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, aborting a connection whose peer reads nothing for
    ``send_timeout_s`` (+ ``ABORT_GRACE_S``); pass it as ``uvicorn.Config(http=…)``."""
    base = _uvicorn_protocol()
    limit = send_timeout_s + ABORT_GRACE_S

    class StallGuardedProtocol(base):  # type: ignore[misc, valid-type]
        _stall: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(limit, self._drop_stalled_peer)

        def resume_writing(self) -> None:
            self._cancel_stall()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_stall()
            super().connection_lost(exc)

        def _cancel_stall(self) -> None:
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def _drop_stalled_peer(self) -> None:
            self._stall = None
            transport: asyncio.Transport = self.transport
            if transport.is_closing() and transport.get_write_buffer_size() == 0:
                return
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close sends a reset and frees the socket now, instead of queueing
                # a FIN behind data the peer will never take.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            log.warning("connection reset: its reader took nothing for %g s", limit)
            transport.abort()

    return StallGuardedProtocol


def uvicorn_options(send_timeout_s: float) -> dict[str, Any]:
    """What every server of the API passes to uvicorn (``gristmill api``, the tests' servers)."""
    return {"http": stall_guarded_protocol(send_timeout_s), "log_config": None, "access_log": False}
