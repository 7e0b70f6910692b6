"""Running the app under uvicorn with a drain that bucketwise owns.

On SIGTERM or SIGINT: the listening socket closes, the batchers stop admitting (a new
request on an open connection gets 503 + ``Retry-After``), every response carries
``Connection: close``, and the admitted requests finish. Rows that have not started when
``drain_timeout`` runs out are answered 503, never computed; the process then exits 0.
uvicorn's own 30 s graceful timeout, which cancelled admitted requests with a 500, is
replaced by this deadline (uvicorn keeps a backstop well past it).
"""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

from .._optional import require

__all__ = ["run_server", "worst_drain_seconds"]

_BACKSTOP = 60.0  # seconds past the drain deadline before uvicorn itself cancels what is left


def worst_drain_seconds(model: Any, max_queue: int) -> float:
    """How long a full queue takes to run: ``max_queue`` rows in runs of the largest batch
    bucket, each as long as that bucket's warm-up run (else another bucket's, scaled by
    volume; else one run timed now): the worst case, every row long."""
    from ..shapes import BATCH

    largest = max(model.router.maximal(), key=lambda b: b.volume)
    build = model.compile_report.builds.get(largest)
    runs = model.builder.warmup_runs
    warmed = [b for b in model.compile_report.builds.values() if b.warmup_seconds > 0]
    if build is not None and runs > 0 and build.warmup_seconds > 0:
        took = build.warmup_seconds / runs  # its warm-up, timed at start
    elif runs > 0 and warmed:
        # Buckets over one shared session warm up once, at one of them: scale the largest
        # warm-up timed by volume, and by 1.5 for attention's cost growing faster than length.
        ref = max(warmed, key=lambda b: b.bucket.volume)
        took = 1.5 * ref.warmup_seconds / runs * largest.volume / ref.bucket.volume
    else:
        artifact = model.artifact(largest)
        example = model.spec.example_inputs(largest)
        if artifact.array_kind == "torch":
            from .. import _arrays

            example = {k: _arrays.convert(v, "torch") for k, v in example.items()}
        start = time.perf_counter()
        artifact.run(example)
        took = time.perf_counter() - start
    rows = largest[BATCH] if BATCH in model.plan.dims else 1
    return math.ceil(max_queue / rows) * took


# Seconds an idle keep-alive connection stays open. Longer than clients' own idle limits
# (httpx 5 s, aiohttp 15 s, an AWS load balancer 60 s), so the client closes first: when
# both sides close at the same moment (uvicorn's default is 5 s, as httpx's), a request
# sent on the connection the server is closing is reset, and lost to the client.
KEEP_ALIVE_SECONDS = 75.0


# A client has this long to send a request's head (request line and headers) once it has
# connected, or started one on a kept-alive connection: a head that never ends (slowloris)
# is closed, as nginx's client_header_timeout does (60 s there). The body has its own
# limit (ServeConfig.request_timeout, a 408).
HEAD_TIMEOUT_SECONDS = 10.0


# On SIGTERM the server stops accepting connections, then keeps the open ones this long
# before uvicorn closes those that are idle: a request a client had already sent on a
# kept-alive connection is read and answered (a 503 with Connection: close once draining)
# instead of being reset with the connection, unread, which the client cannot tell from a
# request lost.
CLOSE_GRACE_SECONDS = 0.5


def head_timeout_protocol(base: type, timeout: float = HEAD_TIMEOUT_SECONDS) -> type:
    """``base`` (uvicorn's h11 or httptools protocol) closing a connection whose request
    head is not complete ``timeout`` seconds after it connected or began sending it.
    uvicorn bounds only the wait between requests (keep-alive), so a head sent a byte at a
    time held its connection open for good."""

    class HeadTimeout(base):  # type: ignore[misc, valid-type]
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            in_request = self.cycle is not None and not self.cycle.response_complete
            if self.cycle is not before or in_request:
                self._stop_head_timer()  # a head arrived whole (or a body is being read)
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    HeadTimeout.__name__ = HeadTimeout.__qualname__ = f"HeadTimeout{base.__name__}"
    return HeadTimeout


def http_protocol(timeout: float = HEAD_TIMEOUT_SECONDS) -> type:
    """uvicorn's HTTP protocol as its ``http="auto"`` picks it (httptools where installed,
    else h11), with the head timeout."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base: type = HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return head_timeout_protocol(base, timeout)


def run_server(app: Any, *, host: str, port: int, drain_timeout: float, log_level: str = "warning",
               keep_alive: float = KEEP_ALIVE_SECONDS) -> int:
    """Serve ``app`` (from :func:`~bucketwise.serve.create_app`) until SIGTERM/SIGINT, drain,
    and return 0 (the exit code of a clean drain), or 1 if the shutdown failed to do its part
    (the traffic file could not be written). Idle connections stay open ``keep_alive``
    seconds."""
    uvicorn = require("uvicorn", "serve", purpose="bucketwise serve")
    service = app.state.service

    class DrainingServer(uvicorn.Server):  # type: ignore[misc, name-defined]
        async def shutdown(self, sockets: Any = None) -> None:
            service.begin_drain(drain_timeout)  # before uvicorn stops listening and waits
            for server in self.servers:
                server.close()  # no new connections
            await asyncio.sleep(CLOSE_GRACE_SECONDS)  # requests already on their way are read and answered
            await super().shutdown(sockets)

        @contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # As uvicorn does, without re-raising the signal afterwards: a drained server
            # exits 0, not -15.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=keep_alive,
                            timeout_graceful_shutdown=drain_timeout + _BACKSTOP, http=http_protocol())
    DrainingServer(config).run()
    return 1 if service.shutdown_failed else 0
