"""The staff side in Slack: POST /slack/events (staff replies in a case thread) and
POST /slack/interactions (the claim / resolve buttons), plus `build_handoff`, which assembles the
case store, the notifiers and the queue worker from settings.

Both endpoints verify Slack's signature over the raw body with the 5-minute timestamp window
(slack_sdk's SignatureVerifier) and answer 401 otherwise. The app registers `bp` and puts the
`Handoff` from `build_handoff` in `app.extensions["tsunagu_handoff"]`; nothing is registered at
import time.

Slack expects an answer within 3 seconds: the relay callbacks run inside the request, so they
should be quick (a LINE push or a web-chat store write). Slack retries an event it had no answer
for; the event_id de-duplication makes that harmless.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import redis
from flask import Blueprint, Response, current_app, request
from slack_sdk.signature import SignatureVerifier

from bot import logs
from bot.config import Settings, SettingsError
from bot.crypto import Sealer
from bot.handoff.cases import CaseStore, valid_number
from bot.handoff.models import Case
from bot.handoff.notify import (
    Notifier,
    SlackNotifier,
    WebhookNotifier,
    load_labels,
    names_from_pack,
    slack_client,
)
from bot.handoff.worker import HandoffWorker

log = logs.get("slack")
bp = Blueprint("slack", __name__)

SEEN_TTL_S = 24 * 3600
_EVENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")

Relay = Callable[[Case, str], None]
RelayClosed = Callable[[Case], None]


@dataclass
class Handoff:
    """Everything the staff side needs, built once per process by `build_handoff`."""

    settings: Settings
    cases: CaseStore
    notifiers: list[Notifier]
    worker: HandoffWorker
    slack: SlackNotifier | None = None
    verifier: SignatureVerifier | None = None
    relay: Relay | None = None                # staff reply → the resident (「相談員より: …」)
    relay_closed: RelayClosed | None = None   # 対応完了 → tell the resident it has ended
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

    def seen(self, what: str) -> bool:
        """True if this Slack event was handled before (SET NX EX on its id)."""
        return not self.cases.redis.set(self._seen_key(what), "1", nx=True, ex=SEEN_TTL_S)

    def unsee(self, what: str) -> None:
        """Handling failed before anything was recorded: let Slack's retry through."""
        self.cases.redis.delete(self._seen_key(what))

    def _seen_key(self, what: str) -> str:
        return f"{self.cases.prefix}:slack:seen:{what}"


def build_handoff(settings: Settings, redis_client: redis.Redis, relay: Relay | None = None,
                  relay_closed: RelayClosed | None = None, *, pack: Any = None,
                  labels: dict[str, str] | None = None, consumer_name: str | None = None,
                  reclaim_idle_ms: int = 30_000, block_ms: int = 1000,
                  retry_base_s: float = 0.5, notifier_attempts: int = 3,
                  expire_after_s: int = 7 * 24 * 3600) -> Handoff:
    """Assemble the handoff from settings. `pack` (default: settings.municipality's) gives
    category and ward names for staff; `labels` override staff.ja.yaml wording."""
    cases = CaseStore(redis_client, settings.key_prefix, Sealer(settings.secret_keys),
                      expire_after_s=expire_after_s)
    notifiers: list[Notifier] = []
    slack: SlackNotifier | None = None
    verifier: SignatureVerifier | None = None
    if settings.slack_bot_token:
        if not settings.slack_staff_channel:
            raise SettingsError("SLACK_STAFF_CHANNEL: required when SLACK_BOT_TOKEN is set")
        if not settings.slack_signing_secret:
            raise SettingsError("SLACK_SIGNING_SECRET: required when SLACK_BOT_TOKEN is set")
        if pack is None:
            from bot.pack import load_pack

            pack = load_pack(settings.municipality)
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
    worker = HandoffWorker(redis_client, cases, notifiers, consumer_name=consumer_name,
                           reclaim_idle_ms=reclaim_idle_ms, block_ms=block_ms,
                           retry_base_s=retry_base_s)
    return Handoff(settings=settings, cases=cases, notifiers=notifiers, worker=worker,
                   slack=slack, verifier=verifier, relay=relay, relay_closed=relay_closed)


# -- requests -------------------------------------------------------------------------------

def _handoff() -> Handoff:
    return current_app.extensions["tsunagu_handoff"]


def _plain(status: int, text: str = "") -> Response:
    return Response(text, status=status, mimetype="text/plain")


def _verified(h: Handoff) -> Response | None:
    """None if the request is Slack's; else the response to send (401, or 404 if unset)."""
    if h.verifier is None:
        return _plain(404)
    if not h.verifier.is_valid_request(request.get_data(), dict(request.headers)):
        logs.event(log, "slack_rejected", logging.WARNING, path=request.path,
                   reason="bad or old signature")
        return _plain(401, "invalid signature")
    return None


_LINK = re.compile(r"<((?:https?|mailto|tel):[^|>]+)(?:\|([^>]+))?>")
_SPECIAL = re.compile(r"<[@#!][^>]*>")


def slack_to_plain(text: str) -> str:
    """Staff text as the resident should read it: links as text, no Slack mentions."""
    text = _LINK.sub(lambda m: f"{m.group(2)} {m.group(1)}" if m.group(2) else m.group(1), text)
    text = _SPECIAL.sub("", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def _say_in_thread(h: Handoff, case: Case, key: str) -> None:
    if h.slack is None:
        return
    try:
        h.slack.post_thread(case, h.slack.labels[key], attempts=1)
    except Exception as exc:
        logs.event(log, "slack_notice_failed", logging.WARNING, number=case.number,
                   error=type(exc).__name__)


def _show(h: Handoff, case: Case, kind: str) -> None:
    """Show the new state in Slack at once, and queue it for the other notifiers (and for
    Slack again if the immediate update failed)."""
    done: tuple[str, ...] = ()
    if h.slack is not None and case.slack_ts:
        try:
            h.slack.update_case(case, attempts=1)
            done = ("slack",)
        except Exception as exc:
            logs.event(log, "slack_update_deferred", logging.WARNING, number=case.number,
                       error=type(exc).__name__)
    if kind != "resolved":  # CaseStore.resolve queues "resolved" itself
        h.cases.enqueue(case.number, kind, done=done)  # type: ignore[arg-type]


@bp.post("/slack/events")
def events() -> Response:
    h = _handoff()
    refused = _verified(h)
    if refused is not None:
        return refused
    try:
        data = json.loads(request.get_data())
    except ValueError:
        return _plain(400, "malformed body")
    if not isinstance(data, dict):
        return _plain(400, "malformed body")
    if data.get("type") == "url_verification":
        challenge = data.get("challenge")
        if not isinstance(challenge, str):
            return _plain(400, "malformed body")
        return _plain(200, challenge)
    if data.get("type") != "event_callback":
        return _plain(200)
    event, event_id = data.get("event"), data.get("event_id")
    if not isinstance(event, dict) or not isinstance(event_id, str) \
            or not _EVENT_ID.fullmatch(event_id):
        return _plain(400, "malformed body")
    _staff_message(h, event, event_id)
    return _plain(200)


def _staff_message(h: Handoff, event: dict, event_id: str) -> None:
    """A staff member wrote in a case's thread: record it and relay it to the resident."""
    if event.get("type") != "message" or event.get("bot_id") or event.get("subtype"):
        return  # our own posts, edits, joins, files: not a staff reply
    channel, thread_ts, ts = event.get("channel"), event.get("thread_ts"), event.get("ts")
    user, raw = event.get("user"), event.get("text")
    if not (isinstance(channel, str) and isinstance(thread_ts, str) and isinstance(user, str)
            and isinstance(raw, str)) or thread_ts == ts:
        return
    number = h.cases.case_for_thread(channel, thread_ts)
    if number is None:
        return
    text = slack_to_plain(raw)
    if not text or h.seen(event_id):
        return
    try:
        case, claimed_now = h.cases.staff_reply(number, user, text)
    except Exception:
        h.unsee(event_id)  # nothing recorded: Slack retries (it got no 200) and we try again
        raise
    if case is None:
        return
    if case.forgotten_at is not None:
        _say_in_thread(h, case, "cannot_reach")
        return
    if case.status not in ("new", "claimed"):
        _say_in_thread(h, case, "case_closed")
        return
    if claimed_now:
        _show(h, case, "claimed")
    if h.relay is None:
        logs.event(log, "relay_missing", logging.ERROR, number=number)
        _say_in_thread(h, case, "not_delivered")
        return
    try:
        h.relay(case, text)
        logs.event(log, "staff_reply_relayed", number=number, channel=case.channel)
    except Exception as exc:
        logs.event(log, "relay_failed", logging.ERROR, number=number, error=type(exc).__name__)
        _say_in_thread(h, case, "not_delivered")


@bp.post("/slack/interactions")
def interactions() -> Response:
    h = _handoff()
    refused = _verified(h)
    if refused is not None:
        return refused
    try:
        form = parse_qs(request.get_data(as_text=True), strict_parsing=True)
        payload = json.loads(form["payload"][0])
        user = payload["user"]["id"]
        actions = payload.get("actions", [])
        if not isinstance(user, str) or not isinstance(actions, list):
            raise TypeError("user or actions")
    except (ValueError, KeyError, IndexError, TypeError):
        return _plain(400, "malformed payload")
    if payload.get("type") != "block_actions":
        return _plain(200)
    channel = (payload.get("channel") or {}).get("id") or \
        (payload.get("container") or {}).get("channel_id")
    for action in actions:
        if not isinstance(action, dict):
            return _plain(400, "malformed payload")
        kind, number = action.get("action_id"), action.get("value")
        if kind not in ("claim", "resolve"):
            continue
        if not isinstance(number, str) or not valid_number(number):
            return _plain(400, "malformed payload")
        if kind == "claim":
            _claim(h, number, user, channel)
        else:
            _resolve(h, number, user)
    return _plain(200)


def _claim(h: Handoff, number: str, user: str, channel: str | None) -> None:
    won, case = h.cases.claim(number, user)
    if case is None:
        logs.event(log, "claim_unknown_case", logging.WARNING, number=number)
        return
    if won:
        _show(h, case, "claimed")
        return
    if h.slack is not None and channel and case.claimed_by and case.claimed_by != user:
        try:
            h.slack.tell(channel, user, h.slack.label("already_claimed", case,
                                                   user=f"<@{case.claimed_by}>"))
        except Exception as exc:
            logs.event(log, "slack_notice_failed", logging.WARNING, number=number,
                       error=type(exc).__name__)


def _resolve(h: Handoff, number: str, user: str) -> None:
    case = h.cases.resolve(number, user, before_forget=h.relay_closed)
    if case is None:
        logs.event(log, "resolve_unknown_case", logging.WARNING, number=number)
        return
    if h.slack is not None and case.slack_ts:
        try:
            h.slack.update_case(case, attempts=1)
        except Exception as exc:  # the queued "resolved" event updates it later
            logs.event(log, "slack_update_deferred", logging.WARNING, number=number,
                       error=type(exc).__name__)
