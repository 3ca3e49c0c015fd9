"""Delivering an answer through the LINE Messaging API: exactly one answer per event.

Reply while the reply token is fresh; otherwise, or when LINE refuses the token, push with an
`X-Line-Retry-Key` derived from the event id, so a retried push — from this process or another
after a crash — is never delivered twice (LINE answers 409 to a repeated key). Every call has
an explicit timeout. Messages arrive as ready JSON (see line_render); any non-2xx raises the
SDK's ApiException with its status; the response body is not parsed: a 2xx means LINE took
the message, and a change in LINE's response must never turn a delivered answer into a
"failure" that we would send again.

Why not line-bot-sdk's ApiClient on this path (the SDK still defines the API — paths,
fields, ApiException — and its models check our messages in the tests): for our three fixed
POSTs its REST layer went through a PoolManager and rebuilt headers and timeouts per call,
and, the answer never being read, never gave a connection back: each call opened a new one (to
LINE, a TCP and TLS handshake per message). Here one urllib3 pool for LINE's host, built once
with its headers, sends the same bytes and headers with the same TLS verification and connect
retries (tests/test_line_api.py), and each answer is read so its connection is reused. CPU
per reply call (`python -m bench.lineio calls`, noisy 2-core machine): ~510 → ~450 µs with a
new connection per call (the bench's fake LINE), ~540 → ~250 µs when connections are kept.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import linebot
import urllib3
from linebot.v3.messaging.exceptions import (
    ApiException,
    ForbiddenException,
    NotFoundException,
    ServiceException,
    UnauthorizedException,
)

from bot import logs

log = logs.get("line")
RETRY_NAMESPACE = uuid.UUID("6f1c1e52-8a55-4d0e-9f57-7d1b1b0c2a11")
REPLY_TOKEN_TTL_S = 50.0  # LINE's tokens expire; stay well inside their life
TIMEOUT = (2.0, 5.0)      # connect, read
LOADING_TIMEOUT = (1.0, 1.0)
USER_AGENT = f"line-bot-sdk-python/{linebot.__version__}"  # what the SDK's client sends
# As the SDK's PoolManager did: a connection that could not be made is tried 3 more times at
# once (nothing was sent); a sent POST is never repeated (read errors raise). The tries are
# made here, one urllib3 call each (`ONCE`), not by urllib3's Retry: its tries all get the
# timeout the call began with, so under a deadline 4 connects could each wait the time left.
# Redirects are not followed: LINE does not redirect, and a 3xx raises like any non-2xx.
CONNECT_TRIES = 4
ONCE = urllib3.Retry(0, redirect=False)
MIN_LEFT_S = 0.05  # less time than this under the lock: no call is started
RETRYABLE = {429, 500, 502, 503, 504}
# What a call may raise besides ApiException: urllib3's timeouts and connection errors.
NETWORK = (urllib3.exceptions.HTTPError, OSError)


# getaddrinfo has no timeout (the system resolver's own: ~5 s per try and server, often
# 10 s or more), and urllib3 calls it before the connect, outside every timeout: a slow DNS
# stretched a call past its deadline (the person lock's expiry). Names are looked up on a
# thread of their own and waited for at most the connect's time (see `_connect`).
Address = tuple[Any, ...]  # one getaddrinfo answer: family, type, proto, canonname, sockaddr


class Resolver:
    """Name lookups waited for at most a given time. One lookup per name at a time, shared by
    the callers that need it meanwhile (every city's LineApi names the same host), so a hung
    resolver holds one thread, not one per call. When the name was found before, a lookup
    gets half the wait, then its last answer is used and the connect has the other half (a
    resolver that hangs does not stop new connections to LINE; one that answers with an error
    is believed, as before)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], Future[list[Address]]] = {}
        self._last: dict[tuple[str, int], list[Address]] = {}

    def addresses(self, host: str, port: int, wait: float) -> list[Address]:
        """getaddrinfo's answer, or its last one; TimeoutError after `wait` s with neither."""
        key = (host, port)
        with self._lock:
            last = self._last.get(key)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = Future()
                try:
                    threading.Thread(target=self._lookup, args=(key, pending), daemon=True,
                                     name="line-dns").start()
                except RuntimeError:  # no thread (a limit, the interpreter exiting)
                    del self._pending[key]
                    raise
        try:
            return pending.result(wait if last is None else wait / 2)
        except TimeoutError:
            if last is None:
                raise
            return last

    def _lookup(self, key: tuple[str, int], pending: Future[list[Address]]) -> None:
        try:
            found = socket.getaddrinfo(key[0], key[1], urllib3.util.connection.allowed_gai_family(),
                                       socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:  # not found (gaierror), a name it cannot encode
            pending.set_exception(exc)
        else:
            with self._lock:
                self._last[key] = found
            pending.set_result(found)
        finally:  # whatever happened, the next caller starts a lookup of its own
            with self._lock:
                self._pending.pop(key, None)


NAMES = Resolver()


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _connect(conn: urllib3.connection.HTTPConnection,
             plain: Callable[[], socket.socket]) -> socket.socket:
    """urllib3's `_new_conn` with the name lookup inside the connect timeout: `conn.timeout`
    (the connect timeout, at most the time left under a deadline: urllib3 sets it per call)
    bounds the lookup and the connects together. Errors as urllib3 raises them: a lookup that
    did not answer in time is a connect timeout (nothing was sent; tried again by `_post`)."""
    wait = conn.timeout
    host = conn._dns_host
    if _numeric(host) or not isinstance(wait, int | float):
        return plain()  # an address (no lookup), or no timeout to keep
    started = time.monotonic()
    try:
        found = NAMES.addresses(host, conn.port, wait)
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise urllib3.exceptions.ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out: name lookup (timeout={wait})") from exc
    except RuntimeError as exc:
        raise urllib3.exceptions.NewConnectionError(conn, "no thread for the name lookup") \
            from exc
    error: Exception = urllib3.exceptions.ConnectTimeoutError(
        conn, f"Connection to {conn.host} timed out. (connect timeout={wait})")
    for *_, sockaddr in found:
        left = wait - (time.monotonic() - started)
        if left <= 0:
            break
        try:
            sock = urllib3.util.connection.create_connection(
                (sockaddr[0], conn.port), left, source_address=conn.source_address,
                socket_options=conn.socket_options)
        except TimeoutError as exc:
            error = urllib3.exceptions.ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={left:.3f})")
            error.__cause__ = exc
        except OSError as exc:
            error = urllib3.exceptions.NewConnectionError(
                conn, f"Failed to establish a new connection: {exc}")
            error.__cause__ = exc
        else:
            sys.audit("http.client.connect", conn, conn.host, conn.port)
            return sock
    raise error


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _connect(self, super()._new_conn)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _connect(self, super()._new_conn)


def sent_maybe(exc: BaseException) -> bool:
    """Whether a failed call may still have reached LINE: not when no connection was made."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib3.exceptions.MaxRetryError) \
        else exc
    return not isinstance(reason, (urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError))


def _refusal(resp: urllib3.BaseHTTPResponse) -> ApiException:
    """The exception the SDK's REST client raised for this status (all are ApiException)."""
    status = resp.status
    kind = {401: UnauthorizedException, 403: ForbiddenException, 404: NotFoundException}.get(
        status, ServiceException if 500 <= status <= 599 else ApiException)
    exc = kind(status=status, reason=resp.reason)
    exc.body = resp.data
    return exc


def encode(body: dict[str, Any]) -> bytes:
    """`json.dumps(body)` as bytes; messages rendered once (line_render.Rendered) bring their
    JSON along, which is spliced in as `json.dumps` would have written it (same bytes)."""
    text = getattr(body.get("messages"), "json", None)
    if text is None or len(body) < 2 or next(reversed(body)) != "messages":
        return json.dumps(body).encode()
    head = json.dumps({k: v for k, v in body.items() if k != "messages"})
    return f"{head[:-1]}, \"messages\": {text}}}".encode()


class DeliveryPending(Exception):
    """LINE did not take the answer yet (down, throttling): keep the job and retry later."""


@dataclass
class LineApi:
    base_url: str
    access_token: str
    backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
    timeout: tuple[float, float] = TIMEOUT  # connect, read
    # Connections kept for reuse: at least the threads that call LINE at once (build_line
    # sizes it from the dispatcher's readers and answering threads and the degraded answers);
    # more are opened when needed and closed after use.
    connections: int = 128

    def __post_init__(self) -> None:
        self.host = self.base_url.rstrip("/")
        url = urllib3.util.parse_url(self.host)
        self._prefix = url.path or ""
        self._tls = url.scheme == "https"
        self._pool = self._new_pool()
        self._headers = {"Authorization": f"Bearer {self.access_token}",
                         "Content-Type": "application/json", "User-Agent": USER_AGENT}
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}

    def _new_pool(self) -> urllib3.HTTPConnectionPool:
        tls = {"cert_reqs": "CERT_REQUIRED"} if self._tls else {}  # as the SDK
        pool = urllib3.connection_from_url(
            self.host, maxsize=self.connections, block=False, retries=ONCE, **tls)
        pool.ConnectionCls = _HTTPSConnection if self._tls else _HTTPConnection
        return pool

    def worst_case_s(self) -> float:
        """How long one delivery can take at most without a deadline: two replies and every
        push attempt timing out, each after its connect tries, plus the backoff pauses (~95 s
        with the defaults)."""
        connect, read = self.timeout
        return (CONNECT_TRIES * connect + read) * (3 + len(self.backoff)) + sum(self.backoff)

    def _post(self, path: str, body: dict[str, Any], timeout: tuple[float, float],
              retry_key: str | None = None, deadline: float | None = None) -> None:
        """POST JSON; raise ApiException (with .status) on a non-2xx, urllib3's errors on
        network failures, DeliveryPending when `deadline` leaves no time. The bytes are the
        SDK's (`json.dumps` defaults, ASCII): compact or UTF-8 JSON measured no cheaper
        (~12 µs a body either way) and ASCII can never fail to encode.

        A connection that could not be made is tried again (`CONNECT_TRIES`), each try with
        at most the time left: with a deadline, connect (its name lookup included, see
        `_connect`), send and read end before it."""
        headers = self._headers
        if retry_key:
            headers = {**headers, "X-Line-Retry-Key": retry_key}
        data = encode(body)
        for tries in range(CONNECT_TRIES, 0, -1):
            try:
                resp = self._pool.urlopen("POST", self._prefix + path, body=data,
                                          headers=headers,
                                          timeout=self._timeout_of(timeout, deadline),
                                          retries=ONCE, redirect=False, preload_content=True)
                break
            except urllib3.exceptions.MaxRetryError as exc:
                if tries == 1 or sent_maybe(exc):
                    raise
            except urllib3.exceptions.ClosedPoolError:
                # `close` swapped the pool as this call picked it: nothing was sent (no
                # connection taken), the next try takes the new pool.
                if tries == 1:
                    raise
        if not 200 <= resp.status <= 299:
            raise _refusal(resp)

    def _timeout_of(self, timeout: tuple[float, float],
                    deadline: float | None = None) -> urllib3.Timeout:
        """One Timeout per fixed value; under a deadline one whose total (connect, send and
        read together) is the time left — not kept."""
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= MIN_LEFT_S:
                raise DeliveryPending("no time left under the lock")
            return urllib3.Timeout(connect=timeout[0], read=timeout[1], total=left)
        found = self._timeouts.get(timeout)
        if found is None:
            found = urllib3.Timeout(connect=timeout[0], read=timeout[1])
            if timeout in (self.timeout, LOADING_TIMEOUT):
                self._timeouts[timeout] = found
        return found

    def close(self) -> None:
        """Close the kept connections (at shutdown). Not final: a call after this — a webhook
        still in flight when its worker stopped, answering in degraded mode on its own
        thread, or a staff answer being relayed — goes out on a new connection instead of
        failing with ClosedPoolError, which for a degraded answer (the only copy of its
        event) meant losing it. A call under way keeps its connection, closed when done."""
        old, self._pool = self._pool, self._new_pool()
        old.close()

    def retry_key(self, event_id: str) -> str:
        return str(uuid.uuid5(RETRY_NAMESPACE, event_id))

    def deliver(self, user_id: str, event_id: str, reply_token: str | None, age_s: float,
                messages: list[dict], retrying: bool = False,
                deadline: float | None = None) -> str:
        """Send the answer once; return how ('reply', 'push', 'already'). Raise
        DeliveryPending when LINE does not take it now.

        `retrying`: a process died while answering this event. A fresh token that LINE now
        refuses (400) was then used by that process, so the answer was delivered: pushing
        would say it twice. A token that still works means it was not.
        `deadline` (time.monotonic()): no call or pause runs past it — the caller's person
        lock expires then, and another process must not answer the same person meanwhile.
        `event_id` is the idempotency key: the push's X-Line-Retry-Key derives from it.
        """
        if not messages:
            return "none"
        if reply_token and age_s < REPLY_TOKEN_TTL_S:
            # A reply whose answer never came (read timeout, connection cut) may have been
            # delivered: it is tried once more with the same single-use token, and LINE's 400
            # then means it was. Pushing at once would say it twice.
            unsure = retrying
            for _attempt in (1, 2):
                try:
                    self._post("/v2/bot/message/reply",
                               {"replyToken": reply_token, "messages": messages},
                               timeout=self.timeout, deadline=deadline)
                    return "reply"
                except ApiException as exc:
                    if exc.status == 400 and unsure:
                        logs.event(log, "reply_already_used", event_hint=event_id[:6])
                        return "already"
                    if exc.status in RETRYABLE:
                        logs.event(log, "reply_failed", logging.WARNING, status=exc.status)
                    # 400 (token used or expired) or a server error: push, whose retry key
                    # makes it safe to repeat.
                    break
                except NETWORK as exc:
                    logs.event(log, "reply_failed", logging.WARNING, error=type(exc).__name__)
                    if not sent_maybe(exc):
                        break
                    if unsure:
                        # Twice without an answer: keep the event; its retry (marked as one)
                        # tries the token again rather than risk saying it twice.
                        raise DeliveryPending(event_id) from exc
                    unsure = True
        return self._push(user_id, event_id, messages, deadline)

    def _push(self, user_id: str, event_id: str, messages: list[dict],
              deadline: float | None = None) -> str:
        key = self.retry_key(event_id)
        for attempt, pause in enumerate((*self.backoff, None)):
            try:
                self._post("/v2/bot/message/push", {"to": user_id, "messages": messages},
                           retry_key=key, timeout=self.timeout, deadline=deadline)
                return "push"
            except ApiException as exc:
                if exc.status == 409:  # this retry key was accepted before: delivered
                    return "push"
                if exc.status not in RETRYABLE:
                    logs.event(log, "push_rejected", logging.ERROR, status=exc.status)
                    return "rejected"
                logs.event(log, "push_retry", logging.WARNING, status=exc.status,
                           attempt=attempt)
            except NETWORK as exc:
                logs.event(log, "push_retry", logging.WARNING, error=type(exc).__name__,
                           attempt=attempt)
            if pause is None or (deadline is not None
                                 and time.monotonic() + pause + 0.1 > deadline):
                break
            time.sleep(pause)
        raise DeliveryPending(event_id)

    def show_loading(self, user_id: str, seconds: int = 20,
                     deadline: float | None = None) -> None:
        """Best effort: the animation is a courtesy, never a reason to fail. Under the
        caller's lock it ends before `deadline` like every call."""
        try:
            self._post("/v2/bot/chat/loading/start",
                       {"chatId": user_id, "loadingSeconds": seconds}, timeout=LOADING_TIMEOUT,
                       deadline=deadline)
        except (ApiException, DeliveryPending, *NETWORK) as exc:
            logs.event(log, "loading_failed", logging.INFO, error=type(exc).__name__)
