"""Staff → resident: a staff answer, "resolved" or "expired" reaches the person where they wrote
from, through the same `Conversations.process` as every other message.

Web visitors get it in their outbox (the page polls); LINE users by push, with a retry key
derived from the staff message's id (or the case's end), so a retried push is never delivered
twice and no two answers share a key.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.channels.line_render import render
from bot.engine import Incoming, Step
from bot.handoff.models import Case, StaffMessage
from bot.outbox import Outbox
from bot.ports import Event, LineSender
from bot.service import Conversations


class Relay:
    """Implements bot.ports.StaffRelay; raises when the resident was not reached."""

    def __init__(self, conversations: Conversations, outbox: Outbox,
                 line: LineSender | None,
                 address: Callable[[str], str | None] | None = None):
        self.conversations = conversations
        self.outbox = outbox
        self.line = line
        self.address = address  # case number → the sealed-then-opened platform address

    def _run(self, case: Case, incoming: Incoming, key: str) -> Step:
        """One message to the resident, under their lock, with `key` as its event id."""
        conversations = self.conversations
        store = conversations.store
        lock_s = store.lock_ms / 1000
        event = Event(channel=case.channel, pid=case.pid, incoming=incoming, event_id=key)
        with store.turn(case.pid, lock_ms=store.lock_ms) as turn:
            return conversations.process(event, turn,
                                         lambda step: self._send(case, step, key, lock_s))

    def _send(self, case: Case, step: Step, key: str, lock_s: float) -> str:
        if case.channel == "web":
            self.outbox.push(case.pid, step.replies)
            return "outbox"
        if self.line is None:
            raise RuntimeError("LINE is not configured: cannot reach a LINE resident")
        address = self.address(case.number) if self.address is not None else None
        if address is None:
            raise RuntimeError("no address for this case")
        pack = self.conversations.engine.pack
        lang = case.request.lang
        messages = render(step.replies, pack.msg("web.call", lang), pack.msg("web.open_site", lang))
        # Never outlive the lock: a later message of this person must not overtake this one.
        how = self.line.deliver(address, key, None, 0.0, messages,
                                deadline=time.monotonic() + lock_s * 0.8)
        if how == "rejected":
            raise RuntimeError("LINE rejected the push")
        return how

    def staff_reply(self, case: Case, message: StaffMessage) -> None:
        """The prefixed staff answer and the resident's current question, as one answer."""
        self._run(case, Incoming(kind="staff", value=message.text, lang=case.request.lang),
                  f"staff:{case.number}:{message.id}")

    def closed(self, case: Case) -> None:
        """Resolved: tell the resident the conversation ended and how to start again."""
        self._run(case, Incoming(kind="event", value="case_closed", lang=case.request.lang),
                  f"closed:{case.number}")

    def expired(self, case: Case) -> None:
        """Expired unanswered: tell the resident, in words safe on a shared phone."""
        self._run(case, Incoming(kind="event", value="case_expired", lang=case.request.lang),
                  f"expired:{case.number}")
