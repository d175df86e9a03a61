"""One deadline over a whole HTTP request, and a capped read of its answer: what every HTTP client of ours (the
settings service, the webhooks) needs so that a peer that drips its answer, or sends a huge one, cannot hold a
run for as long as it likes.

httpx's timeouts bound each operation alone (one connect, one read), so a peer answering a byte at a time keeps
a request open indefinitely; `bound(transport)` puts httpcore's network I/O under one deadline that the caller
sets per request (`Deadline.at`)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

WRITE_CHUNK = 64 * 1024  # a request body goes out in pieces, each given what is left of the deadline


class Deadline(httpcore.NetworkBackend):
    """httpcore's network I/O under one deadline for a whole request: each connect, TLS handshake, write and
    read waits at most what is left of it. (Name resolution is not bounded: it happens inside the socket
    library.)"""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner
        self.at: float | None = None  # time.monotonic() by which the request must be over; None: no deadline

    def left(self, timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise late("the request's deadline is over")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.connect_tcp(host, port, self.left(timeout, httpcore.ConnectTimeout),
                                                      local_address, socket_options), self)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.connect_unix_socket(path, self.left(timeout, httpcore.ConnectTimeout),
                                                              socket_options), self)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In pieces: one write call gives the whole buffer a single timeout, however slowly the peer takes it.
        for k in range(0, len(buffer), WRITE_CHUNK):
            self.inner.write(buffer[k:k + WRITE_CHUNK], self.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname,
                                                    self.deadline.left(timeout, httpcore.ConnectTimeout)),
                               self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


def bound(transport: httpx.HTTPTransport) -> Deadline:
    """Put `transport`'s network I/O under a `Deadline` (unset until the caller sets `at`), and return it."""
    # The one way into httpx's I/O: its transport takes no network backend, its connection pool does.
    pool: Any = getattr(transport, "_pool", None)
    if pool is None or not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
        raise RuntimeError("this httpx/httpcore cannot bound a whole request by a deadline: pin httpx to a "
                           "version with HTTPTransport._pool._network_backend")
    deadline = Deadline(pool._network_backend)
    pool._network_backend = deadline
    return deadline


def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most `cap` bytes of the body, and whether that was all of it; a body that says it is longer is not
    read at all. Each read waits at most what is left of the request's deadline."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], False
        chunks.append(chunk)
    return b"".join(chunks), True
