"""The web chat channel: a page and a JSON endpoint, translating requests into engine input.

The visitor is anonymous: a random id in an HttpOnly cookie stands in for a platform user id
and is pseudonymised like any other before it reaches Redis. The cookie is signed (HMAC with
BOT_SECRET_KEY), so a script cannot mint visitors of its own: a request without a valid cookie
is a new conversation, and new conversations per client address are limited (bot.limits); over
the limit the answer is stateless — crisis lines, 24-hour lines, the window list — and nothing
is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, current_app, jsonify, make_response, render_template, request

from bot.engine import Incoming, Step
from bot.limits import ORIGIN, Limits
from bot.pack.models import LANGS, Lang
from bot.replies import Reply
from bot.service import REDIS_DOWN

COOKIE = "tsunagu_visitor"
MAX_TEXT = 2000
COOKIE_AGE = 30 * 24 * 3600

bp = Blueprint("webchat", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


def _services() -> Any:
    return current_app.extensions["tsunagu"]


def frame_texts(pack: Any) -> dict[str, dict[str, str]]:
    """The page's own words (title, placeholder, send, emergency bar) in every language, so
    the frame can follow the conversation's language without a reload."""
    return {lang: {**{key.split(".", 1)[1]: pack.msg(key, lang)
                      for key in pack.messages[lang] if key.startswith("web.")},
                   "exit": pack.msg("quick_exit.label", lang),
                   "wrong_number": pack.msg("wrong_number.button", lang)}
            for lang in LANGS}


def emergency_lines(services: Any, lang: Lang) -> list[dict[str, str]]:
    """110/119 and the first 24-hour line, from the pack's hotlines, for the always-visible
    bar: a number to tap, and the line's name for screen readers."""
    urgent = sorted((w for w in services.pack.hotlines if w.only_when and w.tel),
                    key=lambda w: (-w.rank, w.id))
    anyone = [w for w in services.engine.general_lines(10) if w.hours and w.hours.always]
    lines = [*urgent, *anyone[:1]]
    return [{"id": w.id, "phone": w.phone, "tel": w.tel, "name": w.name.get(lang),
             "kind": "emergency" if w.only_when else "line24"} for w in lines if w.tel]


@bp.get("/")
def index() -> Any:
    services = _services()
    asked = request.args.get("lang")
    lang: Lang = asked if asked in LANGS else "ja"  # type: ignore[assignment]
    frame = frame_texts(services.pack)
    sos = {code: emergency_lines(services, code) for code in LANGS}
    return render_template("index.html", t=frame[lang], frame=frame, lang=lang,
                           asked_lang=asked if asked in LANGS else "", sos=sos[lang],
                           sos_names={code: {line["id"]: line["name"] for line in lines}
                                      for code, lines in sos.items()})


def _bad(reason: str) -> Any:
    return jsonify({"error": reason}), 400


def parse(body: Any) -> Incoming | str:
    """JSON body → Incoming, or the reason it is malformed."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    kind = body.get("type")
    lang = body.get("lang")
    if lang is not None and lang not in LANGS:
        return "lang must be one of " + ", ".join(LANGS)
    if kind in ("start", "open"):
        # start: a new conversation; open: the page was (re)opened — show where it stands.
        return Incoming(kind="event", value="first_contact" if kind == "start" else "open",
                        lang=lang)
    if kind == "text":
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return "text must be a non-empty string"
        if len(text) > MAX_TEXT:
            return f"text longer than {MAX_TEXT} characters"
        return Incoming(kind="text", value=text)
    if kind == "tap":
        value, state = body.get("value"), body.get("state")
        if not isinstance(value, str) or not value or len(value) > 100:
            return "value must be a short string"
        if state is not None and (not isinstance(state, str) or len(state) > 100):
            return "state must be a short string"
        return Incoming(kind="tap", value=value, state=state)
    return "type must be start, open, text or tap"


def _signature(secret: str, visitor: str) -> str:
    return hmac.new(secret.encode(), f"visitor:{visitor}".encode(), hashlib.sha256
                    ).hexdigest()[:32]


def _visitor(keys: Sequence[str]) -> str | None:
    """The visitor id of a cookie this server signed (with any accepted key), else None."""
    raw = request.cookies.get(COOKIE, "")
    visitor, _, signature = raw.partition(".")
    if len(visitor) != 32 or not visitor.isalnum() or len(signature) != 32:
        return None
    if any(hmac.compare_digest(signature, _signature(k, visitor)) for k in keys):
        return visitor
    return None


def _limits() -> Limits | None:
    return current_app.extensions.get("tsunagu_limits")


@contextmanager
def _origin(tag: str | None) -> Iterator[None]:
    """Let a case opened by this request count against the client address (bot.limits)."""
    token = ORIGIN.set(tag)
    try:
        yield
    finally:
        ORIGIN.reset(token)


@bp.get("/api/chat/poll")
def poll() -> Any:
    """Staff answers that arrived since the page last asked (the web has no push).

    `?ack=<cursor>`: the cursor of the previous poll's answer — those replies reached the page
    and are deleted now; the answer repeats any not acknowledged yet, with a new cursor.
    """
    raw_ack = request.args.get("ack", "0")
    if not raw_ack.isascii() or not raw_ack.isdigit() or len(raw_ack) > 18:
        return _bad("ack must be a cursor from a previous poll")
    ack = int(raw_ack)
    services = _services()
    visitor = _visitor(services.settings.secret_keys)
    if visitor is None:
        return jsonify({"replies": [], "cursor": ack})
    pid = services.conversations.pseudonym("web", visitor)
    try:
        replies, cursor = services.outbox.take(pid, ack)
    except REDIS_DOWN:
        replies, cursor = [], ack
    resp = make_response(jsonify({"replies": [r.model_dump() for r in replies],
                                  "cursor": cursor}))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/api/chat")
def chat() -> Any:
    body = request.get_json(silent=True)
    incoming = parse(body)
    if isinstance(incoming, str):
        return _bad(incoming)
    services = _services()
    settings = services.settings
    visitor = _visitor(settings.secret_keys)
    limits, tag = _limits(), None
    if limits is not None:
        tag = limits.tag(request.remote_addr)
        allowed = limits.hit("web", tag, settings.web_requests_per_minute)
        if allowed and visitor is None:
            allowed = limits.hit("web_new", tag, settings.web_new_sessions_per_minute)
        if not allowed:
            return _answer(services.engine.degraded_step(
                incoming, services.conversations.clock(), notice="limited.notice"))
    visitor = visitor or secrets.token_hex(16)
    with _origin(tag):
        step = services.conversations.handle("web", visitor, incoming)
    return _answer(step, f"{visitor}.{_signature(settings.secret_keys[0], visitor)}")


def _answer(step: Step, cookie: str | None = None) -> Any:
    """The replies as JSON; the visitor cookie (re-signed with the newest key) when one is
    kept — an over-limit answer sets none, since nothing was stored for it."""
    replies: list[Reply] = step.replies
    answer: dict[str, Any] = {"replies": [r.model_dump() for r in replies],
                              # the page clears its screen after `cmd.forget`
                              "cleared": step.forget, "resumed": step.resumed}
    if step.session is not None:
        answer["lang"] = step.session.lang
    if step.quick_exit:  # quick exit: the page leaves for a neutral site and clears itself
        answer["exit"] = True
    resp = make_response(jsonify(answer))
    if cookie is not None:
        # Scoped to the city's path (/c/<city>/ when one server hosts several cities): each
        # city signs its own cookie, so one city's must not overwrite another's.
        resp.set_cookie(COOKIE, cookie, max_age=COOKIE_AGE, httponly=True, samesite="Strict",
                        secure=request.is_secure,  # is_secure sees the TLS proxy via ProxyFix
                        path=request.script_root + "/")
    resp.headers["Cache-Control"] = "no-store"
    return resp
