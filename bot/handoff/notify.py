"""Notifiers: how a case reaches staff. Slack (Block Kit, buttons, a thread per case) and a
signed generic webhook for a city's own case system.

Each notifier retries a few times with backoff, then raises: the worker keeps the queue entry
pending and tries again later, so a notifier that stays down delays a case but never loses it.
`NotifierDown` means "down, try later" (the worker stops calling that notifier for the rest of a
pass); any other exception concerns that one event only.

Payloads carry only the case number and its anonymous summary: never the pseudonym, never the
platform address. Staff-facing wording comes from bot/content/<city>/staff.ja.yaml.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import yaml
from flask import has_request_context
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from bot import logs
from bot.handoff.models import Case, StaffMessage
from bot.pack.loader import COMMON, CONTENT_ROOT, flatten

if TYPE_CHECKING:
    from bot.handoff.cases import CaseStore
    from bot.pack import Pack

log = logs.get("handoff")
T = TypeVar("T")
TOKYO = ZoneInfo("Asia/Tokyo")
STAFF_LABELS = "staff.ja.yaml"

# slack_sdk logs request bodies (the anonymous summary and the resident's message) at DEBUG.
# Its own logger, capped at WARNING, keeps typed text out of the logs whatever the root level.
_sdk_log = logging.getLogger("tsunagu.handoff.slack_sdk")
_sdk_log.setLevel(logging.WARNING)

_TRANSIENT_SLACK = {"service_unavailable", "internal_error", "fatal_error", "request_timeout",
                    "ratelimited", "rate_limited"}


# Everything `transient` below may call passing: Slack's API errors, network and HTTP errors
# (urllib's URLError and HTTPError are OSErrors). Anything else is a bug and propagates.
_MAYBE_TRANSIENT = (SlackApiError, OSError, http.client.HTTPException)


class NotifierError(Exception):
    """This event could not be delivered by this notifier (the reason is in str())."""


class NotifierDown(NotifierError):
    """The notifier's service did not answer or failed after retries: try again later."""


class NotReady(NotifierError):
    """The event needs something not there yet (a thread before its case message)."""


class Notifier(Protocol):
    name: str

    def notify(self, kind: str, case: Case, message: StaffMessage | None = None,
               delivery: str | None = None) -> None:
        """Deliver one queue event about `case`; raise to have it retried later."""


def load_labels(municipality: str | None = None, overrides: Mapping[str, str] | None = None,
                root: Path = CONTENT_ROOT) -> dict[str, str]:
    """Staff wording, flat dotted keys: the common file, the city's own keys, then overrides."""
    labels: dict[str, str] = {}
    paths = [root / COMMON / STAFF_LABELS] + ([root / municipality / STAFF_LABELS]
                                              if municipality else [])
    for path in paths:
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                labels.update({k: str(v) for k, v in flatten(yaml.safe_load(fh) or {}).items()})
    labels.update(overrides or {})
    return labels


def names_from_pack(pack: Pack) -> tuple[dict[str, str], dict[str, str]]:
    """Category and ward display names (Japanese) for staff summaries."""
    categories = {c.id: (c.short or c.label).ja for c in pack.categories.values()}
    wards = {w.id: w.name.ja for w in pack.wards.wards}
    return categories, wards


def public_view(case: Case) -> dict[str, Any]:
    """The case as staff systems may see it: no pseudonym, no Slack bookkeeping."""
    return case.model_dump(mode="json", exclude={"pid", "slack_channel", "slack_ts"})


def mrkdwn_escape(text: str) -> str:
    """Slack's three control characters, so typed text cannot become <!channel> or a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry(call: Callable[[], T], attempts: int, backoff_s: float,
           transient: Callable[[Exception], bool], name: str) -> T:
    """Call with exponential backoff on transient failures; NotifierDown when they persist."""
    last: Exception | None = None
    for attempt in range(max(1, attempts)):
        try:
            return call()
        except NotifierError:
            raise
        except _MAYBE_TRANSIENT as exc:
            if not transient(exc):
                raise
            last = exc
            if attempt + 1 < attempts:
                time.sleep(backoff_s * (2 ** attempt))
    raise NotifierDown(f"{name}: {type(last).__name__}") from last


def _slack_transient(exc: Exception) -> bool:
    if isinstance(exc, SlackApiError):
        status = getattr(exc.response, "status_code", 200)
        return status >= 500 or status == 429 or exc.response.get("error") in _TRANSIENT_SLACK
    return isinstance(exc, urllib.error.URLError | OSError | http.client.HTTPException)


class WorkerRateLimitRetry(RateLimitErrorRetryHandler):
    """Wait out Slack's 429 (Retry-After) in the queue worker, never in a request thread: a
    staff click must be answered within Slack's 3 seconds, and a sleeping request thread is one
    fewer for residents. In a request the 429 surfaces, and the change goes by the queue."""

    def _can_retry(self, **kwargs: Any) -> bool:
        return not has_request_context() and super()._can_retry(**kwargs)


def slack_client(token: str, base_url: str, timeout: int = 10) -> WebClient:
    """A WebClient for the staff workspace; `base_url` points tests at a local fake."""
    return WebClient(token=token, base_url=base_url, timeout=timeout, logger=_sdk_log,
                     retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=1),
                                     WorkerRateLimitRetry(max_retry_count=2)])


class SlackNotifier:
    """One channel message per case (Block Kit, buttons), its thread the conversation."""

    name = "slack"

    def __init__(self, client: WebClient, channel: str, labels: Mapping[str, str] | None = None,
                 category_names: Mapping[str, str] | None = None,
                 ward_names: Mapping[str, str] | None = None, cases: CaseStore | None = None,
                 attempts: int = 3, backoff_s: float = 0.5):
        self.client = client
        self.channel = channel
        self.labels = dict(labels) if labels is not None else load_labels()
        self.category_names = dict(category_names or {})
        self.ward_names = dict(ward_names or {})
        self.cases = cases
        self.attempts = attempts
        self.backoff_s = backoff_s

    # -- the queue's events ------------------------------------------------------------------

    def notify(self, kind: str, case: Case, message: StaffMessage | None = None,
               delivery: str | None = None) -> None:
        if kind == "opened":
            if case.slack_ts:  # posted before a crash, not acknowledged: do not post twice
                self.update_case(case)
            else:
                self.post_case(case)
        elif kind == "message":
            if message is not None and message.text:
                self.post_thread(case, self.labels["resident_prefix"] + mrkdwn_escape(message.text),
                                 delivery=delivery)
        elif kind == "urgent":
            self.post_thread(case, self.label("urgent_again"), broadcast=True,
                             delivery=delivery)
            self.update_case(case)
        elif kind == "undelivered":  # a staff answer the relay gave up on
            self.post_thread(case, self.labels["not_delivered"], delivery=delivery)
        else:  # claimed, resolved, expired, forgotten: the message shows the new state
            self.update_case(case)

    # -- Slack calls ---------------------------------------------------------------------------

    def _call(self, method: str, attempts: int | None, **kwargs: Any) -> Any:
        def call() -> Any:
            try:
                return getattr(self.client, method)(**kwargs)
            except SlackApiError as exc:
                if _slack_transient(exc):
                    raise
                raise NotifierError(f"slack {method}: {exc.response.get('error')}") from None

        return _retry(call, self.attempts if attempts is None else attempts, self.backoff_s,
                      _slack_transient, f"slack {method}")

    def _posted_before(self, case: Case, delivery: str, thread_ts: str | None = None,
                       channel: str | None = None) -> str | None:
        """The ts of our message for `delivery` if an earlier try posted it and died before
        recording so (a crash between Slack's answer and our write); None to post now.

        Each post carries its delivery id in Slack's message metadata. The first try notes
        the attempt; only a retry after an attempt asks Slack (conversations.history, or
        .replies in a thread) whether the message is there."""
        if self.cases is None or self.cases.note_attempt(case.number, delivery):
            return None
        ts = self._find_post(delivery, thread_ts, channel)
        if ts is not None:
            logs.event(log, "slack_post_found", number=case.number)
        return ts

    def _find_post(self, delivery: str, thread_ts: str | None = None,
                   channel: str | None = None) -> str | None:
        """The ts of our message carrying `delivery` in its metadata, among the channel's (or
        the thread's) latest 100; None when there is none."""
        where = {"channel": channel or self.channel, "limit": 100, "include_all_metadata": True}
        if thread_ts:
            found = self._call("conversations_replies", None, ts=thread_ts, **where)
        else:
            found = self._call("conversations_history", None, **where)
        for msg in found.get("messages") or []:
            payload = (msg.get("metadata") or {}).get("event_payload") or {}
            if payload.get("delivery") == delivery:
                return msg.get("ts")
        return None

    @staticmethod
    def _metadata(delivery: str) -> dict[str, Any]:
        return {"event_type": "tsunagu_delivery", "event_payload": {"delivery": delivery}}

    def post_case(self, case: Case, attempts: int | None = None) -> Case:
        """chat.postMessage with the summary and buttons; remembers the message's ts. A retry
        after a crash finds the first post instead of posting again (`_posted_before`)."""
        title = "urgent_fallback" if case.request.urgent else "fallback"
        # Unique to this case, not only its number (a number may be drawn again months later).
        delivery = f"case:{case.number}:{case.created_at!r}"
        found = self._posted_before(case, delivery)
        if found is not None:
            channel, ts = self.channel, found
            case.slack_channel, case.slack_ts = channel, ts
            if self.cases is not None:
                self.cases.set_slack_message(case.number, channel, ts)
            self.update_case(case)
            return case
        response = self._call("chat_postMessage", attempts, channel=self.channel,
                              text=self.label(title, case), blocks=self.blocks(case),
                              metadata=self._metadata(delivery),
                              unfurl_links=False, unfurl_media=False)
        channel, ts = response.get("channel") or self.channel, response["ts"]
        case.slack_channel, case.slack_ts = channel, ts
        if self.cases is not None:
            self.cases.set_slack_message(case.number, channel, ts)
        logs.event(log, "slack_case_posted", number=case.number)
        return case

    def update_case(self, case: Case, attempts: int | None = None) -> None:
        """chat.update: who claimed it; no buttons once it is closed."""
        if not case.slack_ts:
            raise NotReady(f"slack: case {case.number} not posted yet")
        self._call("chat_update", attempts, channel=case.slack_channel or self.channel,
                   ts=case.slack_ts, text=self.label("update_fallback", case),
                   blocks=self.blocks(case))

    def post_thread(self, case: Case, text: str, broadcast: bool = False,
                    attempts: int | None = None, delivery: str | None = None) -> None:
        """A message in the case's thread (resident messages, urgent notices, delivery notes).
        With a `delivery` id, a retry after a crash finds the first post instead of posting
        the message twice."""
        if not case.slack_ts:
            raise NotReady(f"slack: case {case.number} not posted yet")
        channel = case.slack_channel or self.channel
        if delivery and self._posted_before(case, delivery, case.slack_ts, channel):
            return
        extra = {"metadata": self._metadata(delivery)} if delivery else {}
        self._call("chat_postMessage", attempts, channel=channel,
                   thread_ts=case.slack_ts, text=_cut(text, 3900),
                   reply_broadcast=broadcast or None, unfurl_links=False, unfurl_media=False,
                   **extra)

    def content_problem(self, report: Mapping[str, str], delivery: str | None = None) -> None:
        """A resident says a window's number did not work or was wrong: tell the channel, so
        the content pack gets checked (no case, nothing about the person).

        Posted once per `delivery` (the queue entry), as a case is: a retry because another
        notifier failed finds it marked posted; a retry after a post whose answer was lost
        finds the post by the delivery id in its metadata (`_find_post`)."""
        text = self.label("wrong_number", **{k: report.get(k, "") for k in
                                             ("window", "name", "phone")})
        key = f"wrong_number:{report.get('window', '')}:{delivery}" if delivery else None
        if key is not None and self.cases is not None:
            if self.cases.content_delivered(key):
                return
            if not self.cases.note_content_attempt(key) and self._find_post(key) is not None:
                logs.event(log, "slack_post_found", kind="wrong_number")
                self.cases.mark_content_delivered(key)
                return
        extra = {"metadata": self._metadata(key)} if key is not None else {}
        self._call("chat_postMessage", None, channel=self.channel, text=_cut(text, 3900),
                   **extra)
        if key is not None and self.cases is not None:
            self.cases.mark_content_delivered(key)

    def tell(self, channel: str, user: str, text: str) -> None:
        """An ephemeral note to one staff member (e.g. the case is already taken)."""
        self._call("chat_postEphemeral", 1, channel=channel, user=user, text=_cut(text, 3900))

    # -- rendering -----------------------------------------------------------------------------

    def label(self, key: str, case: Case | None = None, **values: str) -> str:
        """A staff label with {number}, {status}, {mention} and `values` filled in."""
        fill = {"mention": self.labels.get("mention", ""), **values}
        if case is not None:
            fill.setdefault("number", case.number)
            fill.setdefault("status", self.labels.get(f"status.{case.status}", case.status))
        return self.labels[key].format(**fill).strip()

    def blocks(self, case: Case) -> list[dict[str, Any]]:
        """Block Kit for a case: header (urgent marker), facts, answers, message, state."""
        req, none = case.request, self.labels["none"]
        title = self.label("urgent_title" if req.urgent else "title", case)
        cats = self.labels["list_separator"].join(self.category_names.get(c, c)
                                                  for c in req.categories) or none
        ward = self.ward_names.get(req.ward, req.ward) if req.ward else none
        received = datetime.fromtimestamp(case.created_at, TOKYO).strftime("%Y-%m-%d %H:%M")
        facts = [("categories", cats), ("ward", ward),
                 ("status", self.labels.get(f"status.{case.status}", case.status)),
                 ("received", received)]
        if req.lang != "ja":
            facts.append(("lang", self.labels.get(f"lang_name.{req.lang}", req.lang)))
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150),
                                        "emoji": True}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{self.labels['field.' + k]}*\n"
                                                f"{mrkdwn_escape(v)}", 2000)}
                for k, v in facts]},
        ]
        if req.summary:
            lines = "\n".join(f"• {mrkdwn_escape(q)} — *{mrkdwn_escape(a)}*"
                              for q, a in req.summary)
            blocks.append({"type": "section", "text": {
                "type": "mrkdwn",
                "text": _cut(f"*{self.labels['field.summary']}*\n{lines}", 3000)}})
        if req.message:
            quoted = "\n".join("> " + line for line in mrkdwn_escape(req.message).splitlines())
        else:
            quoted = self.labels["no_message"]
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _cut(f"*{self.labels['field.message']}*\n{quoted}", 3000)}})
        state = []
        if case.claimed_by:
            state.append(self.label("claimed_by", case, user=f"<@{case.claimed_by}>"))
        if case.status == "resolved" and case.resolved_by:
            state.append(self.label("resolved_by", case, user=f"<@{case.resolved_by}>"))
        if case.forgotten_at is not None:
            state.append(self.labels["forgotten"])
        if case.status in ("new", "claimed") and case.forgotten_at is None:
            state.append(self.labels["note"])
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": _cut(s, 2000)} for s in state]})
        buttons = []
        if case.status == "new" and case.forgotten_at is None:
            buttons.append({"type": "button", "action_id": "claim", "value": case.number,
                            "style": "primary",
                            "text": {"type": "plain_text", "text": self.labels["button.claim"]}})
        if case.status in ("new", "claimed"):
            buttons.append({
                "type": "button", "action_id": "resolve", "value": case.number,
                "text": {"type": "plain_text", "text": self.labels["button.resolve"]},
                "confirm": {
                    "title": {"type": "plain_text", "text": self.labels["confirm.title"]},
                    "text": {"type": "plain_text", "text": self.labels["confirm.text"]},
                    "confirm": {"type": "plain_text", "text": self.labels["confirm.ok"]},
                    "deny": {"type": "plain_text", "text": self.labels["confirm.deny"]}}})
        if buttons:
            blocks.append({"type": "actions", "block_id": f"case:{case.number}",
                           "elements": buttons})
        return blocks


class WebhookError(NotifierError):
    """The receiver refused the event (a 4xx): retried later, but likely needs a fix there."""


def _webhook_transient(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, urllib.error.URLError | OSError | http.client.HTTPException)


class WebhookNotifier:
    """POST each event as JSON, signed: X-Tsunagu-Signature: sha256=<HMAC-SHA256(secret, body)>.

    The body also carries `sent_at` (the X-Tsunagu-Timestamp value), so a receiver can reject
    replays using signed data only; `delivery` is stable across retries, for de-duplication.
    """

    name = "webhook"

    def __init__(self, url: str, secret: str, timeout: float = 5.0, attempts: int = 3,
                 backoff_s: float = 0.5, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("a webhook needs a secret to sign with")
        self.url = url
        self.secret = secret.encode()
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.clock = clock

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def body(self, kind: str, case: Case, message: StaffMessage | None, delivery: str | None,
             sent_at: int) -> bytes:
        payload: dict[str, Any] = {"event": kind, "delivery": delivery, "sent_at": sent_at,
                                   "case": public_view(case)}
        if message is not None:
            payload["message"] = message.model_dump(mode="json")
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    def notify(self, kind: str, case: Case, message: StaffMessage | None = None,
               delivery: str | None = None) -> None:
        self._send(kind, delivery, lambda sent_at: self.body(kind, case, message, delivery,
                                                            sent_at))

    def content_problem(self, report: Mapping[str, str], delivery: str | None = None) -> None:
        """A resident says a window's number did not work or was wrong (no case, no person)."""
        def body(sent_at: int) -> bytes:
            return json.dumps({"event": "wrong_number", "delivery": delivery,
                               "sent_at": sent_at, "report": dict(report)},
                              ensure_ascii=False, separators=(",", ":")).encode()
        self._send("wrong_number", delivery, body)

    def _send(self, kind: str, delivery: str | None, make: Callable[[int], bytes]) -> None:
        def post() -> None:
            sent_at = int(self.clock())
            body = make(sent_at)
            req = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "tsunagu-handoff/1",
                "X-Tsunagu-Signature": self.sign(body),
                "X-Tsunagu-Timestamp": str(sent_at),
                "X-Tsunagu-Event": kind,
                "X-Tsunagu-Delivery": delivery or "",
            })
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                if _webhook_transient(exc):
                    raise
                raise WebhookError(f"webhook: HTTP {exc.code}") from None
            if not 200 <= status < 300:
                raise WebhookError(f"webhook: HTTP {status}")

        _retry(post, self.attempts, self.backoff_s, _webhook_transient, "webhook")
