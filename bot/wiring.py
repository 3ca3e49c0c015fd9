"""Build the running parts from settings, once per process: Redis, pack, flows, engine, and
the staff handoff (case store, notifiers, queue worker, staff logic, relay to residents).

Everything is assembled here, so no part imports another only to build it (bot/ has no import
cycle: tests/test_imports.py).
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field

import redis
from slack_sdk.signature import SignatureVerifier

from bot import logs
from bot.config import Settings, SettingsError
from bot.crypto import Sealer
from bot.engine import Engine
from bot.figures import Figures
from bot.flows import load_flows
from bot.followup import Followups
from bot.handoff.cases import CaseStore
from bot.handoff.notify import (
    Notifier,
    SlackNotifier,
    WebhookNotifier,
    load_labels,
    names_from_pack,
    slack_client,
)
from bot.handoff.relay import Relay
from bot.handoff.staff import Staff, StaffPolicy
from bot.handoff.worker import HandoffWorker
from bot.outbox import Outbox
from bot.pack import Pack, load_pack
from bot.ports import LineSender, StaffRelay
from bot.redisconn import connect
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
        return connect(settings.redis_url, settings.redis_cluster)
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
    followups = Followups(client, settings.key_prefix, Sealer(settings.secret_keys, "followup"))
    conversations = Conversations(engine, store, settings.secret_keys, figures=figures,
                                  followups=followups, city=settings.city_label)
    outbox = Outbox(client, store.key, Sealer(settings.secret_keys, "outbox"))
    return Services(settings=settings, redis=client, pack=pack, engine=engine, store=store,
                    conversations=conversations, outbox=outbox, figures=figures)


# -- the staff handoff --------------------------------------------------------------------------


@dataclass
class Handoff:
    """Everything the staff side needs, built once per process by `build_handoff`."""

    settings: Settings
    cases: CaseStore
    notifiers: list[Notifier]
    worker: HandoffWorker
    staff: Staff
    slack: SlackNotifier | None = None
    verifier: SignatureVerifier | None = None
    relay: StaffRelay | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start_thread(self) -> threading.Thread:
        """Run the queue worker inside this process (the embedded-Redis set-up)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.worker.run, args=(self._stop,),
                                            name="handoff-worker", daemon=True)
            self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def build_handoff(settings: Settings, client: redis.Redis, relay: StaffRelay | None = None,
                  *, pack: Pack | None = None, labels: dict[str, str] | None = None,
                  consumer_name: str | None = None, reclaim_idle_ms: int = 30_000,
                  block_ms: int = 1000, retry_base_s: float = 0.5, notifier_attempts: int = 3,
                  expire_after_s: int = 7 * 24 * 3600, relay_tries: int = 5) -> Handoff:
    """Assemble the handoff from settings. `relay` carries staff answers to residents (see
    `wire_handoff`); `pack` (default: settings.municipality's) gives category and ward names
    for staff; `labels` override staff.ja.yaml wording."""
    cases = CaseStore(client, settings.key_prefix, Sealer(settings.secret_keys),
                      expire_after_s=expire_after_s,
                      cases_per_origin_per_day=settings.cases_per_address_per_day,
                      urgent_alert_interval_s=settings.urgent_alert_interval_s,
                      shards=settings.stream_shards,
                      backlog_alert_at=settings.queue_backlog_alert,
                      city=settings.city_label)
    notifiers: list[Notifier] = []
    slack: SlackNotifier | None = None
    verifier: SignatureVerifier | None = None
    if settings.slack_bot_token:
        if not settings.slack_staff_channel:
            raise SettingsError("SLACK_STAFF_CHANNEL: required when SLACK_BOT_TOKEN is set")
        if not settings.slack_signing_secret:
            raise SettingsError("SLACK_SIGNING_SECRET: required when SLACK_BOT_TOKEN is set")
        pack = pack if pack is not None else load_pack(settings.municipality)
        categories, wards = names_from_pack(pack)
        slack = SlackNotifier(
            slack_client(settings.slack_bot_token, settings.slack_api_base_url),
            settings.slack_staff_channel, load_labels(settings.municipality, labels),
            categories, wards, cases=cases, attempts=notifier_attempts, backoff_s=retry_base_s)
        notifiers.append(slack)
    if settings.slack_signing_secret:
        verifier = SignatureVerifier(settings.slack_signing_secret)
    if settings.handoff_webhook_url:
        if not settings.handoff_webhook_secret:
            raise SettingsError("HANDOFF_WEBHOOK_SECRET: required when HANDOFF_WEBHOOK_URL is set")
        notifiers.append(WebhookNotifier(settings.handoff_webhook_url,
                                         settings.handoff_webhook_secret,
                                         attempts=notifier_attempts, backoff_s=retry_base_s))
    worker = HandoffWorker(client, cases, notifiers, consumer_name=consumer_name,
                           reclaim_idle_ms=reclaim_idle_ms, block_ms=block_ms,
                           retry_base_s=retry_base_s, relay=relay, relay_tries=relay_tries)
    policy = StaffPolicy(staff=frozenset(settings.slack_staff_users),
                         leads=frozenset(settings.slack_lead_users))
    staff = Staff(cases, policy, slack, relay)
    return Handoff(settings=settings, cases=cases, notifiers=notifiers, worker=worker,
                   staff=staff, slack=slack, verifier=verifier, relay=relay)


def wire_handoff(services: Services, line: LineSender | None, **options: object) -> Handoff:
    """The handoff of a running process: staff answers reach residents through the same
    `Conversations.process` as everything else; the conversation side opens cases."""
    relay = Relay(services.conversations, services.outbox, line)
    handoff = build_handoff(services.settings, services.redis, relay, pack=services.pack,
                            **options)  # type: ignore[arg-type]
    relay.address = handoff.cases.address
    services.conversations.cases = handoff.cases
    return handoff


def run_worker(settings: Settings, stop: threading.Event | None = None) -> int:
    """`python -m bot worker`: deliver cases to staff and staff answers to residents, until
    SIGTERM/SIGINT."""
    logs.setup(settings.log_level)
    if settings.embedded_redis:
        print("REDIS_URL: required for `python -m bot worker` (with the embedded Redis the "
              "web process runs the handoff worker itself)", file=sys.stderr)
        return 2
    assert settings.redis_url is not None
    client = connect(settings.redis_url, settings.redis_cluster, socket_timeout=10.0)
    line = None
    if settings.line_enabled:
        from bot.channels.line_api import LineApi

        line = LineApi(settings.line_api_base_url, settings.line_channel_access_token or "")
    handoff = wire_handoff(build(settings, client=client), line)
    if not handoff.notifiers:
        print("SLACK_BOT_TOKEN or HANDOFF_WEBHOOK_URL: set at least one to notify staff",
              file=sys.stderr)
        return 2
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log = logs.get("handoff")
    logs.event(log, "handoff_worker_started", consumer=handoff.worker.consumer,
               notifiers=[n.name for n in handoff.notifiers])
    handoff.worker.run(stop)
    logs.event(log, "handoff_worker_stopped", consumer=handoff.worker.consumer)
    return 0
