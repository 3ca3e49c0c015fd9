"""Build the running parts from settings, once per process: Redis, pack, flows, engine."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from bot import logs
from bot.config import Settings
from bot.crypto import Sealer
from bot.engine import Engine
from bot.figures import Figures
from bot.flows import load_flows
from bot.outbox import Outbox
from bot.pack import Pack, load_pack
from bot.safety import CrisisDetector
from bot.service import Conversations
from bot.store import SessionStore

log = logs.get("wiring")
FLOW = "handbook"


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    pack: Pack
    engine: Engine
    store: SessionStore
    conversations: Conversations
    outbox: Outbox
    figures: Figures


def redis_client(settings: Settings) -> redis.Redis:
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url, socket_timeout=2.0,
                                    socket_connect_timeout=2.0, health_check_interval=30)
    import fakeredis  # only the embedded default needs it

    logs.event(log, "embedded_redis", note="REDIS_URL is unset: using an in-process Redis "
               "(fakeredis); sessions live only as long as this process")
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def build_engine(pack: Pack, handoff: bool = False) -> Engine:
    flows = load_flows()
    detector = CrisisDetector.from_file(pack.crisis_file)
    return Engine(flows[FLOW], pack, detector, handoff=handoff)


def build(settings: Settings, client: redis.Redis | None = None) -> Services:
    pack = load_pack(settings.municipality)
    engine = build_engine(pack, handoff=settings.handoff_enabled)
    client = client if client is not None else redis_client(settings)
    store = SessionStore(client, ttl_seconds=settings.session_ttl, prefix=settings.key_prefix,
                         lock_ms=settings.lock_ms)
    figures = Figures(client, settings.key_prefix)
    conversations = Conversations(engine, store, settings.secret_keys, figures=figures)
    outbox = Outbox(client, store.key, Sealer(settings.secret_keys, "outbox"))
    return Services(settings=settings, redis=client, pack=pack, engine=engine, store=store,
                    conversations=conversations, outbox=outbox, figures=figures)
