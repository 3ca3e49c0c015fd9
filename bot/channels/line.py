"""Wiring of the LINE channel: parser, API client, durable queue, dispatcher threads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from linebot.v3 import WebhookParser

from bot.channels.line_api import LineApi
from bot.channels.line_queue import Dispatcher, LineQueue
from bot.crypto import Sealer
from bot.engine import Engine
from bot.service import Conversations

if TYPE_CHECKING:
    from bot.wiring import Services


@dataclass
class LineChannel:
    parser: WebhookParser
    api: LineApi
    queue: LineQueue
    dispatcher: Dispatcher
    engine: Engine
    conversations: Conversations
    sealer: Sealer
    clock: Callable[[], datetime]
    max_event_age_s: int = 3600   # older webhook events are ignored (replays)
    refusals_per_minute: int = 30  # unsigned/forged requests per address before 429

    def stop(self) -> None:
        self.dispatcher.stop()
        self.api.close()


def build_line(services: Services, threads: int = 4,
               reclaim_idle_ms: int = 30_000) -> LineChannel:
    """The LINE channel from the built services; the dispatcher threads are not started."""
    settings = services.settings
    sealer = Sealer(settings.secret_keys, "line-address")
    api = LineApi(settings.line_api_base_url, settings.line_channel_access_token or "")
    queue = LineQueue(services.redis, services.store, Sealer(settings.secret_keys, "line-job"))
    clock = services.conversations.clock
    dispatcher = Dispatcher(queue, services.conversations, api, sealer, clock,
                            threads=threads, reclaim_idle_ms=reclaim_idle_ms)
    return LineChannel(parser=WebhookParser(settings.line_channel_secret or ""), api=api,
                       queue=queue, dispatcher=dispatcher, engine=services.engine,
                       conversations=services.conversations, sealer=sealer, clock=clock,
                       max_event_age_s=settings.line_max_event_age_s,
                       refusals_per_minute=settings.callback_refusals_per_minute)
