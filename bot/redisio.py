"""How our Redis connections use their socket: fewer system calls that let go of the GIL.

Every system call CPython makes on a socket releases the GIL and takes it back. In a process
whose threads all want it — gunicorn's request threads and the answering threads under load —
taking it back means waiting for another thread: a context switch, often two, for a call that
did not block at all. redis-py adds such calls to every round trip on top of the `send` and
`recv` themselves:
- a socket with a Python-level timeout is non-blocking underneath, so CPython `poll`s before
  each `send` and each `recv`;
- the pool `poll`s every connection it hands out (`can_read`) to find one the server closed or
  left with unread data.
Measured under `make bench` load (N = 50; the same code with and without this module, two
servers side by side in four alternating rounds of 12 s, counted from their `/proc`): on one
Redis 30 against 35 voluntary context switches per event and 4.07 against 4.48 ms of server
CPU (-9%); on the local 3+3 cluster 37 against 45 and 4.77 against 5.36 ms (-11%). The
random draws of the LINE queue's lock tokens and call stamps went the same way
(`line_queue.drainer_token`).

`QuietConnection` therefore keeps the socket blocking and puts the same timeout in the kernel
(SO_RCVTIMEO, SO_SNDTIMEO): a `recv` or `send` that waits longer than `socket_timeout` fails
as before — as a `redis.ConnectionError` ("Resource temporarily unavailable") where redis-py
raised `redis.TimeoutError`; the bot treats both alike (`redisconn.UNAVAILABLE`). Connecting
keeps redis-py's Python-level connect timeout. And it skips the pool's check for a connection
that read a reply less than `WARM_S` ago: a server that closed it since (a restart, a failover)
makes that one command fail, as a command in flight then would anyway; a connection idle for
longer is checked as before. Nothing here is used for TLS or Unix sockets (redis-py's own
connection classes stay there).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import redis

from bot.redispack import PACKER

# A connection that read a reply this recently is handed out without the pool's poll.
WARM_S = 1.0


def kernel_timeouts(sock: socket.socket, timeout: float | None) -> None:
    """Blocking socket; `timeout` (s) enforced by the kernel on each send and receive."""
    sock.settimeout(None)
    if timeout:
        seconds = int(timeout)
        value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class QuietConnection(redis.Connection):
    """redis-py's TCP connection, with our packer (bot.redispack), a blocking socket with
    kernel timeouts and no pool check while warm (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("command_packer", PACKER)
        super().__init__(*args, **kwargs)
        self._warm_until = 0.0

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        kernel_timeouts(sock, self.socket_timeout)
        return sock

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().read_response(*args, **kwargs)
        self._warm_until = time.monotonic() + WARM_S
        return response

    def can_read(self, timeout: float = 0) -> bool:
        if timeout == 0 and time.monotonic() < self._warm_until:
            return False
        try:
            return super().can_read(timeout)
        finally:
            # redis-py's check leaves a Python-level timeout behind: blocking again (the
            # kernel timeouts stay set).
            sock = self._sock
            if sock is not None and sock.gettimeout() is not None:
                sock.settimeout(None)

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._warm_until = 0.0
        super().disconnect(*args, **kwargs)


__all__ = ["WARM_S", "QuietConnection", "kernel_timeouts"]
