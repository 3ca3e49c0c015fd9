"""The web chat channel: a page and a JSON endpoint, translating requests into engine input.

The visitor is anonymous: a random id in an HttpOnly cookie stands in for a platform user id
and is pseudonymised like any other before it reaches Redis.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, current_app, jsonify, make_response, render_template, request

from bot.engine import Incoming
from bot.replies import Reply
from bot.service import REDIS_DOWN

COOKIE = "tsunagu_visitor"
MAX_TEXT = 2000
COOKIE_AGE = 30 * 24 * 3600

bp = Blueprint("webchat", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


def _services() -> Any:
    return current_app.extensions["tsunagu"]


@bp.get("/")
def index() -> Any:
    services = _services()
    lang = "en" if request.args.get("lang") == "en" else "ja"
    texts = {key.split(".", 1)[1]: services.pack.msg(key, lang)
             for key in services.pack.messages[lang] if key.startswith("web.")}
    return render_template("index.html", t=texts, lang=lang)


def _bad(reason: str) -> Any:
    return jsonify({"error": reason}), 400


def parse(body: Any) -> Incoming | str:
    """JSON body → Incoming, or the reason it is malformed."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    kind = body.get("type")
    if kind == "start":
        return Incoming(kind="event", value="first_contact")
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
    return "type must be start, text or tap"


def _visitor() -> str | None:
    visitor = request.cookies.get(COOKIE)
    if not visitor or len(visitor) != 32 or not visitor.isalnum():
        return None
    return visitor


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
    visitor = _visitor()
    if visitor is None:
        return jsonify({"replies": [], "cursor": ack})
    services = _services()
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
    visitor = _visitor() or secrets.token_hex(16)
    step = _services().conversations.handle("web", visitor, incoming)
    replies: list[Reply] = step.replies
    resp = make_response(jsonify({"replies": [r.model_dump() for r in replies]}))
    resp.set_cookie(COOKIE, visitor, max_age=COOKIE_AGE, httponly=True, samesite="Strict",
                    secure=request.is_secure)  # is_secure sees the TLS proxy via ProxyFix
    resp.headers["Cache-Control"] = "no-store"
    return resp
