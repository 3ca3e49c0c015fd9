"""The Flask application factory: `create_app(settings)`, and `app` for gunicorn.

Importing this module builds nothing; gunicorn's `server:app` asks for `app`, and only then is
the application made (PEP 562 module __getattr__).
"""

from __future__ import annotations

import hmac
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from flask import Flask, Response, abort, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

from bot import logs
from bot.config import Settings, SettingsError
from bot.limits import Limits
from bot.pack import PackError
from bot.web.chat import bp as webchat
from bot.web.headers import HSTS, SECURITY_HEADERS
from bot.web.report import bp as staff_report
from bot.wiring import Services, build

MAX_BODY = 1024 * 1024
SHUTDOWN_S = 5.0  # how long `shutdown` waits for answers under way (see gunicorn.conf.py)
# After that wait: claims never started given back (line_queue.GIVE_BACK_S), pools closed.
CLOSING_S = 1.0
# Kept clear of gunicorn's SIGKILL after `shutdown`'s wait: its CLOSING_S, then the exit.
EXIT_MARGIN_S = CLOSING_S + 1.0
MIN_SHUTDOWN_S = 0.25  # even when the SIGKILL is near: long enough to give claims back

LOOPBACK = ("127.0.0.1", "::1")


def secure_headers(resp: Response) -> Response:
    """Every response, whatever produced it (views, errors, static files)."""
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    if request.is_secure:
        resp.headers.setdefault(*HSTS)
    return resp


def metrics_allowed(settings: Settings) -> bool:
    """With METRICS_TOKEN: only `Authorization: Bearer <token>`. Without it: only a loopback
    client that did not come through a proxy (a proxy adds X-Forwarded-For / Forwarded)."""
    if settings.metrics_token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {settings.metrics_token}".encode())
    proxied = "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    return request.remote_addr in LOOPBACK and not proxied


def redis_answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):  # any failure to reach Redis means not ready
        return False


def ops_routes(app: Flask, settings: Settings, ready: Callable[[], dict[str, Any]]) -> None:
    """/metrics, /healthz and /readyz (200 when every check is true, else 503 naming it)."""

    @app.get("/metrics")
    def metrics() -> Any:
        if not metrics_allowed(settings):
            abort(404)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Any:
        checks = ready()
        ok = all(checks.values())
        return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), (
            200 if ok else 503)


def create_cities_app(settings: Settings, env: Mapping[str, str] | None = None,
                      client: Any = None, start_workers: bool = True) -> Flask:
    """TSUNAGU_TENANTS: every city's own app under /c/<city>/, LINE's shared /callback routed
    by destination, and the operations endpoints at the root (bot/tenants.py)."""
    from bot.tenants import CityDispatcher, disabled, load_cities
    from bot.wiring import redis_client

    logs.setup(settings.log_level)
    env = os.environ if env is None else env
    client = client if client is not None else redis_client(settings)
    apps: dict[str, Flask] = {}
    destinations: dict[str, str] = {}
    for city in load_cities(settings, env):
        try:
            apps[city.id] = create_app(city.settings, build(city.settings, client=client),
                                       start_workers)
        except (SettingsError, PackError) as exc:
            disabled(city.id, exc)
            continue
        if city.spec.line and city.spec.line.destination:
            destinations[city.spec.line.destination] = city.id
        logs.event(logs.get("server"), "city_ready", city=city.id, pack=city.settings.municipality)
    root = Flask(__name__, static_folder=None)
    root.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    root.after_request(secure_headers)
    root.extensions["tsunagu_cities"] = apps

    def ready() -> dict[str, Any]:
        return {"redis": redis_answers(client), "cities": bool(apps)}

    ops_routes(root, settings, ready)
    root.wsgi_app = CityDispatcher(root.wsgi_app, apps, destinations)  # type: ignore[method-assign]
    return root


def create_app(settings: Settings | None = None, services: Services | None = None,
               start_workers: bool = True) -> Flask:
    settings = settings or Settings.from_env()
    if settings.tenants_file and services is None:
        return create_cities_app(settings, start_workers=start_workers)
    logs.setup(settings.log_level)
    services = services or build(settings)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.after_request(secure_headers)
    app.extensions["tsunagu"] = services
    limits = Limits(services.redis, settings.key_prefix, settings.bot_secret_key)
    app.extensions["tsunagu_limits"] = limits
    if settings.secret_is_ephemeral:
        logs.event(logs.get("server"), "ephemeral_secret",
                   note="BOT_SECRET_KEY is unset: using a random key for this process")
    app.register_blueprint(webchat)
    app.register_blueprint(staff_report)  # 404 unless STAFF_REPORT_TOKEN is set
    if settings.line_enabled:
        from bot.channels.line import build_line
        from bot.channels.line_webhook import Callback

        line = build_line(services, threads=settings.line_dispatch_threads,
                          reclaim_idle_ms=settings.line_reclaim_idle_ms)
        app.extensions["tsunagu_line"] = line
        app.wsgi_app = Callback(app.wsgi_app, line, limits, MAX_BODY)  # type: ignore[method-assign]
        if start_workers:
            line.dispatcher.start()
    else:
        line = None
        logs.event(logs.get("server"), "line_disabled",
                   note="LINE_CHANNEL_SECRET/LINE_CHANNEL_ACCESS_TOKEN unset: web chat only")
    if settings.handoff_enabled:
        from bot.channels.slack import bp as slack_bp
        from bot.wiring import wire_handoff

        handoff = wire_handoff(services, line.api if line is not None else None)
        app.extensions["tsunagu_handoff"] = handoff
        app.register_blueprint(slack_bp)
        if settings.embedded_redis and start_workers:
            # One process holds the embedded Redis, so the staff queue worker lives here too.
            handoff.start_thread()
    else:
        logs.event(logs.get("server"), "handoff_disabled",
                   note="SLACK_BOT_TOKEN/HANDOFF_WEBHOOK_URL unset: the talk-to-a-person "
                   "command gives phone numbers")

    def ready() -> dict[str, bool]:
        return {"content": bool(services.pack.windows), "redis": redis_answers(services.redis)}

    ops_routes(app, settings, ready)
    if settings.trusted_proxies:
        # remote_addr, scheme and host as the client used them, taken from the headers of
        # exactly that many proxies in front of us (more would let a client forge them).
        # Outermost, so that every path (the LINE webhook's included) sees them.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    return app


def _started(app: Flask) -> list[tuple[str, str, Any]]:
    """(city, part, object) for what may run threads: each app's LINE channel (dispatcher,
    degraded answers) and handoff (its queue worker, with the embedded Redis) — the app's
    own, or each city's (create_cities_app keeps them in `tsunagu_cities`)."""
    apps = {"": app, **app.extensions.get("tsunagu_cities", {})}
    return [(city, part, one.extensions[key])
            for city, one in apps.items()
            for part, key in (("line", "tsunagu_line"), ("handoff", "tsunagu_handoff"))
            if one.extensions.get(key) is not None]


def shutdown(app: object, timeout: float = SHUTDOWN_S) -> None:
    """Stop the background threads `create_app` started, letting answers under way finish.

    Why: those threads are daemons, and a gunicorn worker that is stopped or restarted ends
    with `sys.exit` once its last request is out. A dispatcher thread still answering a
    person would die mid-answer, leaving their lock and inbox to the sweeper, which answers
    the event again — as a retry — only after the lock expired. gunicorn.conf.py's
    `worker_exit` calls this in the worker, after its last request.

    Every part (each city's, for the multi-city app) stops at once, on its own thread, within
    `timeout` in all, plus CLOSING_S for what follows the wait (claims given back, pools
    closed): a slow answer in one city takes nothing from another's wait, and no city goes
    on reading new work meanwhile. Pools whose threads all ended here cost nothing at
    interpreter exit; one still busy gets bot.workers' EXIT_WAIT_S there (see
    `shutdown_budget` for how gunicorn.conf.py sizes `timeout`).
    Idempotent: the app is marked stopped. Never raises — a part that fails to stop is
    logged by name, and the others stop; anything not built by this module (gunicorn's
    error app) is left alone.
    """
    try:
        if not isinstance(app, Flask) or app.extensions.get("tsunagu_stopped"):
            return
        app.extensions["tsunagu_stopped"] = True
        log = logs.get("server")

        def stop(city: str, part: str, running: Any) -> None:
            try:
                running.stop(timeout)
            except Exception as exc:
                logs.failure("server.shutdown", exc, part=part, city=city)

        threads = [threading.Thread(target=stop, args=started, name=f"shutdown-{i}",
                                    daemon=True) for i, started in enumerate(_started(app))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout + CLOSING_S  # each stop's closing, after its wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        logs.event(log, "background_stopped", parts=len(threads), timeout=round(timeout, 2),
                   unfinished=sum(thread.is_alive() for thread in threads))
    except Exception as exc:  # at exit, a failure to stop must not become one to exit
        logs.failure("server.shutdown", exc)


def shutdown_budget(graceful_timeout: float, since_sigterm: float | None) -> float:
    """How long `shutdown` may wait in a gunicorn worker, given gunicorn's graceful_timeout
    and the seconds since the worker got SIGTERM (None: it did not — a max_requests restart,
    a SIGQUIT/SIGINT).

    Why: the master SIGKILLs its workers graceful_timeout after sending SIGTERM, and by the
    time `worker_exit` runs the worker has already spent part of that draining its
    connections (up to 2 s for kept-alive ones, 8-15 s for requests stuck on a stalled
    Redis). A SIGKILL landing inside `shutdown` kills the degraded answers it waits for —
    the only copy of their events — and the claims it would give back. So: what is left
    before the SIGKILL, less EXIT_MARGIN_S (CLOSING_S and the interpreter's exit), at least
    MIN_SHUTDOWN_S, at most half the graceful_timeout (the budget without a SIGTERM, when
    nothing will SIGKILL the worker soon; pools still busy get bot.workers' EXIT_WAIT_S at
    interpreter exit on top)."""
    half = graceful_timeout / 2
    if since_sigterm is None:
        return half
    left = graceful_timeout - since_sigterm - EXIT_MARGIN_S
    return max(MIN_SHUTDOWN_S, min(half, left))


def _app_or_exit() -> Flask:
    try:
        return create_app()
    except SettingsError as exc:
        print(f"tsunagu: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except PackError as exc:
        print(f"tsunagu: content pack error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def __getattr__(name: str) -> Any:
    if name == "app":
        app = _app_or_exit()
        globals()["app"] = app
        return app
    raise AttributeError(name)
