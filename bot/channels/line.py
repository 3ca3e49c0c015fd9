"""Wiring of the LINE channel: parser, API client, durable queue, dispatcher threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot import logs
from bot.channels.line_api import LineApi
from bot.channels.line_events import EventParser
from bot.channels.line_queue import GIVE_BACK_S, Dispatcher, LineQueue
from bot.config import ANSWERING_THREADS
from bot.crypto import Sealer
from bot.engine import Engine
from bot.redisconn import ReplicaWait
from bot.service import Conversations
from bot.workers import Workers

if TYPE_CHECKING:
    from bot.wiring import Services

log = logs.get("line")


class DegradedAnswers:
    """Answers LINE events while Redis is down, off the webhook's thread — but bounded: at
    most `workers` threads, at most `backlog` webhooks waiting. Past that the webhook's own
    thread answers (the server's thread count bounds those), never a new thread per webhook."""

    def __init__(self, workers: int = ANSWERING_THREADS, backlog: int = 64):
        self._workers = Workers("line-degraded", workers, backlog)

    def submit(self, answer: Callable[..., None], *args: Any) -> None:
        if not self._workers.offer(answer, *args):
            answer(*args)

    def close(self, timeout: float = 5.0) -> bool:
        """No new work; what was handed over still runs, waited for up to `timeout`: a
        degraded answer is the only copy of its event (Redis never stored it). Returns
        whether every thread has ended. A webhook still in flight then answers on its own
        thread (`submit`): an offer racing the close is refused or queued ahead of the
        threads' ends (bot.workers), never stranded.

        What the threads have not reached when `timeout` runs out stays queued for them
        rather than being taken out (`take_waiting`) and run here: the budget is spent, and
        a pool still busy gets bot.workers' EXIT_WAIT_S at interpreter exit, where this
        (daemon) calling thread would get nothing."""
        return self._workers.finish(timeout)


@dataclass
class LineChannel:
    parser: EventParser
    api: LineApi
    queue: LineQueue
    dispatcher: Dispatcher
    engine: Engine
    conversations: Conversations
    sealer: Sealer
    clock: Callable[[], datetime]
    max_event_age_s: int = 3600   # older webhook events are ignored (replays)
    refusals_per_minute: int = 30  # unsigned/forged requests per address before 429
    degraded: DegradedAnswers = field(default_factory=DegradedAnswers)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background work, letting answers under way finish, and only then close
        the HTTP pool and the replica probes those answers use.

        The dispatcher's answers and the degraded ones are waited for side by side, each
        with the whole `timeout`: one after the other, the dispatcher's wait could take it
        all and leave the degraded answers — the only copy of their events — to meet a
        closed pool. The pool and probes are closed only once every answering thread has
        ended; otherwise they stay open (the process is exiting: the OS closes the sockets).
        A call that comes later anyway (a webhook still in flight answering in degraded
        mode, a staff answer relayed) is not refused: `LineApi.close` is not final.
        """
        ended: list[bool] = []  # the dispatcher's outcome, once its stop returned

        def stop_dispatcher() -> None:
            ended.append(self.dispatcher.stop(timeout))

        waiter = threading.Thread(target=stop_dispatcher, name="line-stop", daemon=True)
        deadline = time.monotonic() + timeout + GIVE_BACK_S  # its give-back, after its wait
        waiter.start()
        degraded = self.degraded.close(timeout)
        waiter.join(max(0.0, deadline - time.monotonic()))
        dispatcher = ended == [True]
        if not (degraded and dispatcher):
            logs.event(log, "line_left_open", logging.WARNING, degraded_ended=degraded,
                       dispatcher_ended=dispatcher)
            return
        self.api.close()
        if self.queue.wait is not None:
            self.queue.wait.close()


def build_line(services: Services, threads: int = ANSWERING_THREADS,
               reclaim_idle_ms: int = 30_000) -> LineChannel:
    """The LINE channel from the built services; the dispatcher threads are not started."""
    settings = services.settings
    sealer = Sealer(settings.secret_keys, "line-address")
    # One ticket reader with the in-process Redis: it wakes every blocked reader on each
    # write (fakeredis), and one XREADGROUP there reads every shard anyway.
    readers = 1 if settings.embedded_redis else threads
    # Kept connections: every thread that may call LINE at once — readers (at least one per
    # shard on a cluster), answering threads, degraded answers — and a few for staff relays.
    calls = max(readers, settings.stream_shards) + 2 * threads + 8
    api = LineApi(settings.line_api_base_url, settings.line_channel_access_token or "",
                  connections=calls)
    queue = LineQueue(services.redis, services.store, Sealer(settings.secret_keys, "line-job"),
                      shards=settings.stream_shards,
                      wait=ReplicaWait(services.redis, settings.redis_wait_replicas,
                                       settings.redis_wait_ms),
                      refuse_unreplicated=settings.redis_wait_refuse,
                      backlog_alert_at=settings.queue_backlog_alert)
    clock = services.conversations.clock
    dispatcher = Dispatcher(queue, services.conversations, api, sealer, clock,
                            threads=threads, reclaim_idle_ms=reclaim_idle_ms,
                            hands_over=not settings.embedded_redis, readers=readers)
    return LineChannel(parser=EventParser(settings.line_channel_secret or ""), api=api,
                       queue=queue, dispatcher=dispatcher, engine=services.engine,
                       conversations=services.conversations, sealer=sealer, clock=clock,
                       max_event_age_s=settings.line_max_event_age_s,
                       refusals_per_minute=settings.callback_refusals_per_minute,
                       # As many as the dispatcher's: a degraded answer waits out a LINE call
                       # too, and while Redis is down the dispatcher's threads are idle.
                       degraded=DegradedAnswers(workers=threads))
