"""Staff → resident: a staff reply or "resolved" reaches the person where they wrote from.

Web visitors get it in their outbox (the page polls); LINE users by push, with a retry key
derived from the case and the message's place in the thread, so a retried push is not
delivered twice.
"""

from __future__ import annotations

from typing import Any

from bot.channels.line_render import render
from bot.handoff.models import Case
from bot.phonesafe import case_closed, staff_message
from bot.replies import Reply


class Relay:
    def __init__(self, services: Any, line: Any | None):
        self.services = services
        self.line = line

    def _send(self, case: Case, replies: list[Reply], key: str) -> None:
        if case.channel == "web":
            self.services.outbox.push(case.pid, replies)
            return
        if self.line is None:
            raise RuntimeError("LINE is not configured: cannot reach a LINE resident")
        address = self.services.conversations.cases.address(case.number)
        if address is None:
            raise RuntimeError("no address for this case")
        pack = self.services.pack
        lang = case.request.lang
        messages = render(replies, pack.msg("web.call", lang), pack.msg("web.open_site", lang))
        how = self.line.api.deliver(address, key, None, 0.0, messages)
        if how == "rejected":
            raise RuntimeError("LINE rejected the push")

    def staff_reply(self, case: Case, text: str) -> None:
        """A neutral notice (phone-safe), or the staff answer itself if the resident chose so."""
        conversations = self.services.conversations
        with conversations.store.turn(case.pid) as turn:
            session = turn.session or conversations.engine.new_session(case.request.lang)
            replies = staff_message(conversations.engine, session, case, text)
            turn.keep(session)
        self._send(case, replies, f"staff:{case.number}:{len(case.thread)}")

    def closed(self, case: Case) -> None:
        """Resolved: tell the resident the conversation ended and how to start again."""
        conversations = self.services.conversations
        with conversations.store.turn(case.pid) as turn:
            session = turn.session or conversations.engine.new_session(case.request.lang)
            fresh, replies = case_closed(conversations.engine, session, case)
            turn.keep(fresh)
        self._send(case, replies, f"closed:{case.number}")
