"""What staff can do with a case — claim it, answer in its thread, resolve it — and who may.

Plain values in (case number, Slack user id, text, an event id), an outcome out; no Flask, no
request (the Slack webhook in bot/channels/slack.py only translates). Slack notes to staff
(ephemeral explanations, thread notes, the updated case message) go through the SlackNotifier.

Claim semantics staff can rely on:
- Only staff act on cases: `SLACK_STAFF_USERS` (and `SLACK_LEAD_USERS`) list the Slack user
  ids; when both are unset, every member of the (private) staff channel is staff.
- A new case may be claimed, answered (which claims it) or resolved by any staff member.
- A claimed case is answered and resolved only by the staff member who claimed it, or by a
  lead (`SLACK_LEAD_USERS`: shift leads who take over when someone is away). Anyone else gets
  an ephemeral note saying who has it; their message is not sent to the resident.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from bot import logs
from bot.handoff.cases import CaseStore
from bot.handoff.models import Case
from bot.handoff.notify import NotifierError, SlackNotifier
from bot.ports import StaffRelay

log = logs.get("slack")

Outcome = Literal["queued", "claimed", "resolved", "not_staff", "not_yours", "taken", "mine",
                  "closed", "forgotten", "unknown"]


@dataclass(frozen=True)
class StaffPolicy:
    """Who is staff, and who may act on a case another has claimed."""

    staff: frozenset[str] = frozenset()
    leads: frozenset[str] = frozenset()

    def is_staff(self, user: str) -> bool:
        return (not self.staff and not self.leads) or user in self.staff or user in self.leads

    def may_act(self, user: str, case: Case) -> bool:
        """Answer or resolve: an unclaimed case, one's own, or any as a lead."""
        return case.status != "claimed" or case.claimed_by == user or user in self.leads


class Staff:
    """The staff side's decisions; `relay` reaches the resident (bot.ports.StaffRelay)."""

    def __init__(self, cases: CaseStore, policy: StaffPolicy | None = None,
                 slack: SlackNotifier | None = None, relay: StaffRelay | None = None):
        self.cases = cases
        self.policy = policy or StaffPolicy()
        self.slack = slack
        self.relay = relay

    # -- the three acts ------------------------------------------------------------------------

    def message(self, number: str, user: str, text: str, message_id: str,
                channel: str | None = None) -> Outcome:
        """A staff member wrote `text` in the case's thread (Slack event `message_id`).

        Recorded in the case thread once per `message_id` and queued for the resident (the
        worker relays it); returns "queued" once that is durable — also for a retry of the same
        message. Otherwise says why nothing reaches the resident (and tells staff in Slack).
        """
        if not self.policy.is_staff(user):
            self._tell(channel, user, "not_staff", None)
            return "not_staff"
        result = self.cases.staff_reply(number, user, text, message_id,
                                        lead=user in self.policy.leads)
        case = result.case
        if case is None:
            return "unknown"
        if result.refused:
            self._tell(channel, user, "not_yours", case)
            return "not_yours"
        if not result.recorded:
            if case.forgotten_at is not None:
                self._say_in_thread(case, "cannot_reach")
                return "forgotten"
            self._say_in_thread(case, "case_closed")
            return "closed"
        if result.claimed_now:
            self._show(case, "claimed")
        # The text rides along, sealed: closing the case erases the record's copy, yet an
        # answer written just before must still reach the resident.
        self.cases.enqueue(number, "reply", m=message_id, t=self.cases.sealer.seal(text))
        return "queued"

    def claim(self, number: str, user: str, channel: str | None = None) -> Outcome:
        if not self.policy.is_staff(user):
            self._tell(channel, user, "not_staff", None)
            return "not_staff"
        won, case = self.cases.claim(number, user)
        if case is None:
            logs.event(log, "claim_unknown_case", logging.WARNING, number=number)
            return "unknown"
        if won:
            self._show(case, "claimed")
            return "claimed"
        if case.claimed_by and case.claimed_by != user:
            self._tell(channel, user, "already_claimed", case)
            return "taken"
        return "mine" if case.claimed_by == user else "closed"

    def resolve(self, number: str, user: str, channel: str | None = None) -> Outcome:
        if not self.policy.is_staff(user):
            self._tell(channel, user, "not_staff", None)
            return "not_staff"
        # The resident is told by the worker ("farewell"), after the staff answers already
        # queued, and only then is their address released: Slack gets its answer at once.
        case = self.cases.resolve(number, user, may=lambda c: self.policy.may_act(user, c),
                                  farewell=self.relay is not None)
        if case is None:
            logs.event(log, "resolve_unknown_case", logging.WARNING, number=number)
            return "unknown"
        if case.status in ("new", "claimed"):
            self._tell(channel, user, "not_yours", case)
            return "not_yours"
        if self.slack is not None and case.slack_ts:
            try:
                self.slack.update_case(case, attempts=1)
            except NotifierError as exc:  # the queued "resolved" event updates it later
                logs.event(log, "slack_update_deferred", logging.WARNING, number=number,
                           error=type(exc).__name__)
        return "resolved" if case.resolved_by == user else "closed"

    # -- notes to staff --------------------------------------------------------------------------

    def _tell(self, channel: str | None, user: str, key: str, case: Case | None) -> None:
        """An ephemeral note to one staff member (only they see it)."""
        if self.slack is None or not channel:
            return
        claimer = f"<@{case.claimed_by}>" if case is not None and case.claimed_by else ""
        try:
            self.slack.tell(channel, user, self.slack.label(key, case, user=claimer))
        except NotifierError as exc:
            logs.event(log, "slack_notice_failed", logging.WARNING, error=type(exc).__name__)

    def _say_in_thread(self, case: Case, key: str) -> None:
        if self.slack is None:
            return
        try:
            self.slack.post_thread(case, self.slack.labels[key], attempts=1)
        except NotifierError as exc:
            logs.event(log, "slack_notice_failed", logging.WARNING, number=case.number,
                       error=type(exc).__name__)

    def _show(self, case: Case, kind: str) -> None:
        """Show the new state in Slack at once, and queue it for the other notifiers (and for
        Slack again if the immediate update failed)."""
        done: tuple[str, ...] = ()
        if self.slack is not None and case.slack_ts:
            try:
                self.slack.update_case(case, attempts=1)
                done = ("slack",)
            except NotifierError as exc:
                logs.event(log, "slack_update_deferred", logging.WARNING, number=case.number,
                           error=type(exc).__name__)
        self.cases.enqueue(case.number, kind, done=done)  # type: ignore[arg-type]
