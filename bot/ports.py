"""The seams between the parts, as Protocols: what a fake must offer to stand in for a part.

bot.handoff.cases.CaseStore, bot.service.Conversations, bot.channels.line_api.LineApi and
bot.handoff.relay.Relay are the real implementations; tests may pass anything with these
methods. Nothing here imports an implementation, so every module may import this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bot.engine import Engine, Incoming, Step
    from bot.handoff.models import Case, CaseRequest, Channel, StaffMessage
    from bot.store import Turn

Deliver = Callable[["Step"], str]
"""Send a step's replies to the person; return how ("reply", "push", "response", …). Raise
when they were not taken, so the step is not saved and can run again."""


@dataclass(frozen=True)
class Event:
    """One thing a person (or staff, for them) sent, as every channel hands it to the service.

    `event_id` is unique per received message and stable across retries of it (LINE's
    webhookEventId, a web request id, a staff message id): side effects are keyed by it.
    `address` is the platform address a case needs to answer later (LINE user id, web visitor
    id) — never logged, stored only sealed. `received` is when the platform got it (epoch
    seconds), for the latency metric.
    """

    channel: str
    pid: str
    incoming: Incoming
    event_id: str
    address: str | None = None
    received: float | None = None


class Cases(Protocol):
    """The case store as the conversation side uses it (bot.handoff.cases.CaseStore)."""

    def open(self, request: CaseRequest, channel: Channel, pid: str,
             address: str) -> Case | None:
        """Store and queue a case; the same case again for a retry of the same person's
        request; None when the number belongs to another case (draw another)."""

    def add_message(self, number: str, who: str, text: str, announce: bool | None = None,
                    key: str | None = None) -> Case | None:
        """Append to the thread once per `key`; None if the case is closed or gone."""

    def mark_urgent(self, number: str) -> Case | None: ...

    def delete_for(self, pid: str) -> Case | None: ...

    def keep_unseen(self, pid: str, event_id: str, items: list[tuple[str, str]]) -> None:
        """Keep, sealed, what a neutral notice stands for (bot.phonesafe); kept again with
        the same `event_id` (a retried delivery), it is still shown once."""

    def take_unseen(self, pid: str) -> list[tuple[str, str]]:
        """Everything waiting for the notice's open button, in order; nothing is left
        waiting after."""


class Conversation(Protocol):
    """What channels need from bot.service.Conversations."""

    engine: Engine  # to render answers (content pack) and make an empty session

    def pseudonym(self, channel: str, user_id: str) -> str: ...

    def outage(self, where: str, exc: BaseException) -> None:
        """Redis is unreachable at `where`: count it, log it at most once a minute."""

    def process(self, event: Event, turn: Turn | None, deliver: Deliver) -> Step: ...

    def forget(self, pid: str, turn: Turn) -> None: ...


class LineSender(Protocol):
    """The LINE Messaging API client (bot.channels.line_api.LineApi)."""

    def show_loading(self, user_id: str, seconds: int = 20,
                     deadline: float | None = None) -> None: ...

    def deliver(self, user_id: str, event_id: str, reply_token: str | None, age_s: float,
                messages: list[dict], retrying: bool = False,
                deadline: float | None = None) -> str: ...


class StaffRelay(Protocol):
    """Staff → resident (bot.handoff.relay.Relay): raise when the resident was not reached."""

    def staff_reply(self, case: Case, message: StaffMessage) -> None: ...

    def closed(self, case: Case) -> None: ...

    def expired(self, case: Case) -> None: ...
