"""Safe on a phone someone else may see (issue 11).

A message that reaches the resident's phone without their having just written — a staff
answer, the end of a conversation — goes as a neutral notice (`notice.text`, nothing about
what it is), and its content comes when the resident opens the chat and taps its open button
(`notice.open`): a postback, answered by reply. A resident may choose to receive staff messages
directly instead (`Session.direct`).

What a notice stands for waits with the case store, through the `Cases` port (keep_unseen /
take_unseen; bot.handoff.cases.Unseen): one list per person, under their hash tag, each item
sealed (Fernet, the case store's key) — never a plain-text key — until it is shown, for as long
as a case may stay open, and deleted with the session (the forget command, quick exit,
unfollow). It cannot wait in the case itself: the case's texts are erased the moment staff
close it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.engine import Engine, Step
    from bot.ports import Cases


def effects(cases: Cases | None, engine: Engine, pid: str, event_id: str, step: Step) -> None:
    """Keep what a neutral notice stands for; on its open button, put it before the step's
    replies."""
    if cases is None:  # no staff connected: nothing is ever waiting
        if step.reveal and step.session is not None:
            step.replies = [*engine.revealed(step.session, []), engine.ask(step.session)]
        return
    if step.unseen:
        cases.keep_unseen(pid, event_id, step.unseen)
    if step.reveal and step.session is not None:
        session = step.session
        session.unseen = False
        step.replies = [*engine.revealed(session, cases.take_unseen(pid)), engine.ask(session)]
        step.events.append("phonesafe:revealed")
