"""How our Redis connections use their socket: fewer system calls that let go of the GIL.

Every system call CPython makes on a socket releases the GIL and takes it back. In a process
whose threads all want it — gunicorn's request threads and the answering threads under load —
taking it back means waiting for another thread: a context switch, often two, for a call that
did not block at all. A socket with a Python-level timeout, as redis-py's are, is non-blocking
underneath, so CPython adds a `poll` before each `send` and each `recv`: four such calls per
round trip where two would do.

`QuietConnection` therefore keeps the socket blocking and puts the same timeout in the kernel
(SO_RCVTIMEO, SO_SNDTIMEO): a `recv` or `send` that waits longer than `socket_timeout` fails
as before, as a `redis.TimeoutError` — the kernel's EAGAIN is reported as Python's own
timeout (`_KernelTimedSocket`), since redis-py would call it a `redis.ConnectionError` and
its cluster client treats a node that hangs and one that refuses differently. Connecting
keeps redis-py's Python-level connect timeout. Nothing here is used for TLS or Unix sockets
(redis-py's own connection classes stay there).

Tried and dropped: skipping the pool's `poll` of every connection it hands out (`can_read`)
for one that read a reply within the last second. On one Redis a server gone since fails one
command, but on a cluster a pipeline whose node had died sent on its dead, unchecked
connections, and redis-py's cluster pipeline then retried each command alone with a fresh
slot map: 68 s for one request against 3.5 s with the check (`tests/test_report.py`'s node
taken down while its replica hangs).

Measured under `make bench` load: see README, "Where the rest went: context switches".
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import redis

from bot.redispack import PACKER


class _KernelTimedSocket(socket.socket):
    """A blocking socket whose kernel timeout is reported as a Python-level one would be:
    `socket.timeout` rather than the kernel's EAGAIN (`BlockingIOError`). While the socket is
    non-blocking (redis-py's `can_read` sets a timeout of 0 for a moment), EAGAIN means "no
    data yet" and passes unchanged."""

    __slots__ = ()

    def _timed_out(self, exc: BlockingIOError) -> Exception:
        return TimeoutError("timed out") if self.gettimeout() is None else exc

    def recv_into(self, *args: Any) -> int:
        try:
            return super().recv_into(*args)
        except BlockingIOError as exc:
            raise self._timed_out(exc) from None

    def recv(self, *args: Any) -> bytes:
        try:
            return super().recv(*args)
        except BlockingIOError as exc:
            raise self._timed_out(exc) from None

    def sendall(self, *args: Any) -> None:
        try:
            super().sendall(*args)
        except BlockingIOError as exc:
            raise self._timed_out(exc) from None


def kernel_timeouts(sock: socket.socket, timeout: float | None) -> None:
    """Blocking socket; `timeout` (s) enforced by the kernel on each send and receive, and
    reported as `socket.timeout` (`_KernelTimedSocket`: the same object, its class swapped)."""
    sock.settimeout(None)
    if timeout:
        seconds = int(timeout)
        value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        if type(sock) is socket.socket:
            sock.__class__ = _KernelTimedSocket


class QuietConnection(redis.Connection):
    """redis-py's TCP connection, with our packer (bot.redispack) and a blocking socket with
    kernel timeouts (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("command_packer", PACKER)
        super().__init__(*args, **kwargs)

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        kernel_timeouts(sock, self.socket_timeout)
        return sock

    def can_read(self, timeout: float = 0) -> bool:
        try:
            return super().can_read(timeout)
        finally:
            # redis-py's check leaves a Python-level timeout behind: blocking again (the
            # kernel timeouts stay set).
            sock = self._sock
            if sock is not None and sock.gettimeout() is not None:
                sock.settimeout(None)


__all__ = ["QuietConnection", "kernel_timeouts"]
