"""Several cities in one deployment: `TSUNAGU_TENANTS` names a YAML file listing them.

Each city is the whole single-city application (server.create_app) built from its own Settings:
its content pack, its LINE channel, its Slack channel, and its own Redis key prefix
(`<REDIS_KEY_PREFIX>:<city>`) and secret keys (HMAC of BOT_SECRET_KEY with the city id), so
sessions, cases, figures, queues and pseudonyms never meet. One WSGI dispatcher mounts each city
at `/c/<city>/` (web chat, `/c/<city>/callback` for LINE, `/c/<city>/slack/...` for its Slack
app); `POST /callback` is shared and routed by LINE's `destination` (the bot's user id) — the
city's own channel secret then verifies the signature, so a webhook signed for one city's
channel cannot reach another's sessions. A city whose configuration is bad is left out with
one log line naming it; the others run. Secrets come from the environment, by name.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot import logs
from bot.config import Settings, SettingsError
from bot.pack import PackError, load_pack

log = logs.get("tenants")
CITY_ID = r"^[a-z][a-z0-9_]{0,31}$"
ENV_NAME = r"^[A-Z][A-Z0-9_]{0,99}$"
MAX_BODY = 1024 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineSpec(_Spec):
    secret_env: str = Field(pattern=ENV_NAME)
    token_env: str = Field(pattern=ENV_NAME)
    destination: str | None = Field(default=None, pattern=r"^U[0-9a-f]{32}$")


class SlackSpec(_Spec):
    channel: str = Field(pattern=r"^[CG][A-Z0-9]{2,30}$")
    token_env: str = Field(pattern=ENV_NAME)
    signing_secret_env: str = Field(pattern=ENV_NAME)
    staff_users: tuple[str, ...] = ()   # as SLACK_STAFF_USERS, for this city only
    lead_users: tuple[str, ...] = ()    # as SLACK_LEAD_USERS

    @field_validator("staff_users", "lead_users")
    @classmethod
    def _user_ids(cls, users: tuple[str, ...]) -> tuple[str, ...]:
        for user in users:
            if not (user[:1] in ("U", "W") and user.isalnum() and len(user) <= 20):
                raise ValueError(f"not a Slack user id: {user[:20]!r}")
        return users


class WebhookSpec(_Spec):
    url: str = Field(pattern=r"^https?://")
    secret_env: str = Field(pattern=ENV_NAME)


class CitySpec(_Spec):
    id: str = Field(pattern=CITY_ID)
    pack: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    line: LineSpec | None = None
    slack: SlackSpec | None = None
    handoff_webhook: WebhookSpec | None = None


class TenantsFile(_Spec):
    cities: list[CitySpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        for field in ("id", "line"):
            seen: set[str] = set()
            for city in self.cities:
                value = city.id if field == "id" else (city.line and city.line.destination)
                if value and value in seen:
                    raise ValueError(f"two cities share the {field} {value!r}")
                if value:
                    seen.add(value)
        return self


@dataclass(frozen=True)
class City:
    id: str
    spec: CitySpec
    settings: Settings


def read_tenants(path: str | Path) -> TenantsFile:
    """The file itself must be right: a typo here stops start-up, naming TSUNAGU_TENANTS."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return TenantsFile.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"TSUNAGU_TENANTS: cannot read {path}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SettingsError(f"TSUNAGU_TENANTS: {where}: {err['msg']}") from None


def city_key(key: str, city: str) -> str:
    """The city's own secret: pseudonyms and sealed addresses differ from city to city."""
    return hmac.new(key.encode(), f"tsunagu-city:{city}".encode(), hashlib.sha256).hexdigest()


def city_settings(spec: CitySpec, base: Settings, env: Mapping[str, str]) -> Settings:
    """The settings of one city; raises SettingsError naming the missing variable."""

    def secret(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise SettingsError(f"{name}: unset")
        return value

    line_secret = line_token = None
    if spec.line:
        line_secret, line_token = secret(spec.line.secret_env), secret(spec.line.token_env)
    slack_token = slack_signing = None
    if spec.slack:
        slack_token = secret(spec.slack.token_env)
        slack_signing = secret(spec.slack.signing_secret_env)
    hook_secret = secret(spec.handoff_webhook.secret_env) if spec.handoff_webhook else None
    load_pack(spec.pack)  # an unknown or broken pack stops this city, not the others
    return replace(
        city_view(base, spec.id),
        bot_secret_key=city_key(base.bot_secret_key, spec.id),
        previous_secret_keys=tuple(city_key(k, spec.id) for k in base.previous_secret_keys),
        line_channel_secret=line_secret, line_channel_access_token=line_token,
        slack_bot_token=slack_token, slack_signing_secret=slack_signing,
        slack_staff_channel=spec.slack.channel if spec.slack else None,
        slack_staff_users=spec.slack.staff_users if spec.slack else (),
        slack_lead_users=spec.slack.lead_users if spec.slack else (),
        handoff_webhook_url=spec.handoff_webhook.url if spec.handoff_webhook else None,
        handoff_webhook_secret=hook_secret, tenants_file=None)


def city_view(base: Settings, city: str) -> Settings:
    """A city's pack and key prefix, without its secrets: for reading its figures."""
    if not base.tenants_file:
        raise SettingsError("TSUNAGU_TENANTS: unset (--city needs the tenants file)")
    spec = next((c for c in read_tenants(base.tenants_file).cities if c.id == city), None)
    if spec is None:
        raise SettingsError(f"--city: not in TSUNAGU_TENANTS: {city[:40]!r}")
    return replace(base, municipality=spec.pack, key_prefix=f"{base.key_prefix}:{spec.id}",
                   city=spec.id)


def load_cities(base: Settings, env: Mapping[str, str]) -> list[City]:
    """Every city whose configuration is whole; each other city is logged once, by name."""
    assert base.tenants_file is not None
    cities = []
    for spec in read_tenants(base.tenants_file).cities:
        try:
            cities.append(City(spec.id, spec, city_settings(spec, base, env)))
        except (SettingsError, PackError) as exc:
            disabled(spec.id, exc)
    return cities


def disabled(city: str, exc: Exception) -> None:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    logs.event(log, "city_disabled", logging.ERROR, city=city, reason=reason)


class CityDispatcher:
    """WSGI: `/c/<city>/…` to that city's app (SCRIPT_NAME carries the prefix, so its links
    and the page's relative API calls stay inside the city); `POST /callback` to the city whose
    LINE `destination` the body names; anything else to the root app."""

    def __init__(self, root: WSGIApp, apps: Mapping[str, WSGIApp],
                 destinations: Mapping[str, str]):
        self.root = root
        self.apps = dict(apps)
        self.destinations = dict(destinations)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "") or "/"
        parts = path.split("/", 3)
        if len(parts) >= 3 and parts[1] == "c" and parts[2] in self.apps:
            if len(parts) == 3:  # /c/<city> → /c/<city>/ (the page's links are relative)
                start_response("308 Permanent Redirect",
                               [("Location", environ.get("SCRIPT_NAME", "") + path + "/"),
                                ("Content-Length", "0")])
                return [b""]
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/c/" + parts[2]
            environ["PATH_INFO"] = "/" + parts[3]
            return self.apps[parts[2]](environ, start_response)
        if path == "/callback" and environ.get("REQUEST_METHOD") == "POST":
            city = self._by_destination(environ)
            if city is not None:
                return self.apps[city](environ, start_response)
        return self.root(environ, start_response)

    def _by_destination(self, environ: dict[str, Any]) -> str | None:
        """Read the body once (bounded), put it back, and name the city it is for."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        if not 0 < length <= MAX_BODY:
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            destination = json.loads(body).get("destination")
        except (ValueError, AttributeError):
            return None
        return self.destinations.get(destination) if isinstance(destination, str) else None


def run_city_workers(base: Settings, env: Mapping[str, str],
                     run_worker: Callable[[Settings, threading.Event], int],
                     stop: threading.Event | None = None) -> int:
    """`python -m bot worker` for every city with staff connected, one thread each."""
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return _run_workers(base, env, run_worker, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_workers(base: Settings, env: Mapping[str, str],
                 run_worker: Callable[[Settings, threading.Event], int],
                 stop: threading.Event) -> int:
    threads = []
    for city in load_cities(base, env):
        if not city.settings.handoff_enabled:
            continue
        thread = threading.Thread(target=run_worker, args=(city.settings, stop),
                                  name=f"handoff-{city.id}", daemon=True)
        thread.start()
        threads.append(thread)
    if not threads:
        logs.event(log, "no_city_with_staff", logging.ERROR)
        return 2
    try:
        while any(t.is_alive() for t in threads) and not stop.wait(1.0):
            pass
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return 0
