"""Settings from the environment. A missing or malformed one stops start-up with one line
naming the variable, because a bot that half-starts answers people wrongly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from bot.pack.loader import default_pack_name

# Answering threads per process and city: each waits out one LINE call at a time, so a
# process answers at most this many events per LINE latency (16 at 100 ms: 160/s).
ANSWERING_THREADS = 16

DEFAULT_LINE_API = "https://api.line.me"
DEFAULT_SLACK_API = "https://slack.com/api/"


class SettingsError(Exception):
    """One line: which variable, and what is wrong with it."""


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    bot_secret_key: str = ""
    secret_is_ephemeral: bool = False
    municipality: str = field(default_factory=default_pack_name)
    session_ttl: int = 24 * 3600
    key_prefix: str = "tsunagu"
    line_channel_secret: str | None = None
    line_channel_access_token: str | None = None
    line_api_base_url: str = DEFAULT_LINE_API
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_staff_channel: str | None = None
    slack_api_base_url: str = DEFAULT_SLACK_API
    handoff_webhook_url: str | None = None
    handoff_webhook_secret: str | None = None
    log_level: str = "INFO"
    line_dispatch_threads: int = ANSWERING_THREADS
    line_reclaim_idle_ms: int = 30_000
    lock_ms: int = 30_000
    slack_staff_users: tuple[str, ...] = ()
    slack_lead_users: tuple[str, ...] = ()
    # --- Redis Cluster and durability (issue 13) ---
    redis_cluster: bool | None = None    # None: ask the server on connect
    stream_shards: int = 4
    redis_wait_replicas: int | None = None   # None: 1 when the primaries have replicas
    redis_wait_ms: int = 200
    redis_wait_refuse: bool = False      # no replica acknowledged in time: 500 (LINE redelivers)
    staff_report_token: str | None = None
    previous_secret_keys: tuple[str, ...] = ()
    trusted_proxies: int = 0
    metrics_token: str | None = None
    line_max_event_age_s: int = 3600
    web_requests_per_minute: int = 120
    web_new_sessions_per_minute: int = 10
    cases_per_address_per_day: int = 5
    callback_refusals_per_minute: int = 30
    urgent_alert_interval_s: int = 600
    queue_backlog_alert: int = 1000
    tenants_file: str | None = None
    city: str | None = None  # the tenant id under TSUNAGU_TENANTS (bot.tenants)

    @property
    def secret_keys(self) -> tuple[str, ...]:
        """Every key still accepted, newest first: seal and pseudonymise with the first, open
        and look up with any (key rotation)."""
        return (self.bot_secret_key, *self.previous_secret_keys)

    @property
    def city_label(self) -> str:
        """The city in metric labels: the tenant id, or the pack id of a single-city
        deployment, so an operator can tell one city's answers and crises from another's."""
        return self.city or self.municipality

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def handoff_enabled(self) -> bool:
        """Staff are reachable: a Slack channel or a city's own case system."""
        return bool(self.slack_bot_token or self.handoff_webhook_url)

    @property
    def line_enabled(self) -> bool:
        return bool(self.line_channel_secret and self.line_channel_access_token)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def url(name: str, default: str | None = None) -> str | None:
            value = get(name) or default
            if value is None:
                return None
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https", "redis", "rediss", "unix") or not (
                parsed.netloc or parsed.path
            ):
                raise SettingsError(f"{name}: not a URL: {value[:40]!r}")
            return value

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}: not a whole number: {raw[:20]!r}") from None
            if not low <= value <= high:
                raise SettingsError(f"{name}: must be between {low} and {high}, got {value}")
            return value

        redis_url = url("REDIS_URL")
        if redis_url and urlparse(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError("REDIS_URL: must start with redis://, rediss:// or unix://")
        secret = get("BOT_SECRET_KEY")
        ephemeral = False
        if secret is None:
            if redis_url:
                raise SettingsError("BOT_SECRET_KEY: required when REDIS_URL is set "
                                    "(at least 32 characters; e.g. `openssl rand -hex 32`)")
            secret, ephemeral = secrets.token_hex(32), True
        elif len(secret) < 32:
            raise SettingsError("BOT_SECRET_KEY: must be at least 32 characters")
        previous = tuple(k.strip() for k in (get("BOT_SECRET_KEY_PREVIOUS") or "").split(",")
                         if k.strip())
        if previous and ephemeral:
            raise SettingsError("BOT_SECRET_KEY_PREVIOUS: needs BOT_SECRET_KEY (the new key)")
        if any(len(k) < 32 for k in previous):
            raise SettingsError("BOT_SECRET_KEY_PREVIOUS: every key must be at least 32 "
                                "characters (comma-separated, newest first)")
        metrics_token = get("METRICS_TOKEN")
        if metrics_token is not None and len(metrics_token) < 16:
            raise SettingsError("METRICS_TOKEN: must be at least 16 characters")
        municipality = get("MUNICIPALITY") or default_pack_name()
        if not municipality.replace("_", "").replace("-", "").isalnum():
            raise SettingsError(f"MUNICIPALITY: not a content pack name: {municipality[:40]!r}")
        line_secret, line_token = get("LINE_CHANNEL_SECRET"), get("LINE_CHANNEL_ACCESS_TOKEN")
        if bool(line_secret) != bool(line_token):
            missing = "LINE_CHANNEL_ACCESS_TOKEN" if line_secret else "LINE_CHANNEL_SECRET"
            raise SettingsError(f"{missing}: required when the other LINE setting is set")
        tenants = get("TSUNAGU_TENANTS")
        if tenants is not None and not os.path.isfile(tenants):
            raise SettingsError(f"TSUNAGU_TENANTS: no such file: {tenants[:80]!r}")
        def slack_users(name: str) -> tuple[str, ...]:
            ids = tuple(u.strip() for u in (get(name) or "").split(",") if u.strip())
            for user in ids:
                if not (user[:1] in ("U", "W") and user.isalnum() and len(user) <= 20):
                    raise SettingsError(f"{name}: not a Slack user id: {user[:20]!r}")
            return ids

        def flag(name: str, choices: dict[str, bool | None]) -> bool | None:
            raw = (get(name) or "").lower()
            if raw not in choices:
                raise SettingsError(f"{name}: must be one of {', '.join(sorted(choices))}")
            return choices[raw]

        wait_replicas = get("REDIS_WAIT_REPLICAS")
        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL: must be DEBUG, INFO, WARNING or ERROR: {log_level!r}")
        report_token = get("STAFF_REPORT_TOKEN")
        if report_token is not None and len(report_token) < 16:
            raise SettingsError("STAFF_REPORT_TOKEN: must be at least 16 characters "
                                "(e.g. `openssl rand -hex 24`)")
        return cls(
            redis_url=redis_url,
            bot_secret_key=secret,
            secret_is_ephemeral=ephemeral,
            municipality=municipality,
            session_ttl=integer("SESSION_TTL_SECONDS", 24 * 3600, 60, 30 * 24 * 3600),
            key_prefix=get("REDIS_KEY_PREFIX") or "tsunagu",
            line_channel_secret=line_secret,
            line_channel_access_token=line_token,
            line_api_base_url=url("LINE_API_BASE_URL", DEFAULT_LINE_API) or DEFAULT_LINE_API,
            slack_bot_token=get("SLACK_BOT_TOKEN"),
            slack_signing_secret=get("SLACK_SIGNING_SECRET"),
            slack_staff_channel=get("SLACK_STAFF_CHANNEL"),
            slack_api_base_url=url("SLACK_API_BASE_URL", DEFAULT_SLACK_API) or DEFAULT_SLACK_API,
            handoff_webhook_url=url("HANDOFF_WEBHOOK_URL"),
            handoff_webhook_secret=get("HANDOFF_WEBHOOK_SECRET"),
            log_level=log_level,
            line_dispatch_threads=integer("LINE_DISPATCH_THREADS", ANSWERING_THREADS, 1, 64),
            line_reclaim_idle_ms=integer("LINE_RECLAIM_IDLE_MS", 30_000, 100, 3_600_000),
            lock_ms=integer("PERSON_LOCK_MS", 30_000, 500, 600_000),
            slack_staff_users=slack_users("SLACK_STAFF_USERS"),
            slack_lead_users=slack_users("SLACK_LEAD_USERS"),
            redis_cluster=flag("REDIS_CLUSTER", {"": None, "auto": None, "1": True, "yes": True,
                                                 "0": False, "no": False}),
            stream_shards=integer("STREAM_SHARDS", 4, 1, 64),
            redis_wait_replicas=(None if wait_replicas in (None, "auto")
                                 else integer("REDIS_WAIT_REPLICAS", 0, 0, 5)),
            # Below the web process's Redis read timeout (2 s, redisconn.connect): a WAIT that
            # outlasts it fails the webhook's round trip, and redis-py sends it all again.
            redis_wait_ms=integer("REDIS_WAIT_MS", 200, 1, 1500),
            redis_wait_refuse=bool(flag("REDIS_WAIT_TIMEOUT", {"": False, "accept": False,
                                                               "refuse": True})),
            previous_secret_keys=previous,
            trusted_proxies=integer("TRUSTED_PROXIES", 0, 0, 5),
            metrics_token=metrics_token,
            # Below the 24 h de-duplication window, so a replayed event is always caught.
            line_max_event_age_s=integer("LINE_MAX_EVENT_AGE_SECONDS", 3600, 60, 23 * 3600),
            web_requests_per_minute=integer("WEB_REQUESTS_PER_MINUTE", 120, 1, 100_000),
            web_new_sessions_per_minute=integer("WEB_NEW_SESSIONS_PER_MINUTE", 10, 1, 100_000),
            cases_per_address_per_day=integer("CASES_PER_ADDRESS_PER_DAY", 5, 1, 10_000),
            callback_refusals_per_minute=integer("CALLBACK_REFUSALS_PER_MINUTE", 30, 1, 100_000),
            urgent_alert_interval_s=integer("URGENT_ALERT_INTERVAL_SECONDS", 600, 0, 86_400),
            queue_backlog_alert=integer("QUEUE_BACKLOG_ALERT", 1000, 1, 10_000_000),
            tenants_file=tenants,
            staff_report_token=report_token,
        )
