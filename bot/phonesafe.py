"""Safe on a phone someone else may see (issue 11).

A message that reaches the resident's phone without their having just written — a staff
answer, the end of a conversation — goes as a neutral notice (「新しいメッセージがあります」,
nothing about what it is), and its content comes when the resident opens the chat and taps
「ひらく」: a postback, answered by reply. The staff text is not copied anywhere for this: it
stays in the case thread (which is sealed at rest with the case), and the session only holds
the case number and the time of the last staff message already shown. A resident may choose to
receive staff messages directly instead (`Session.direct`).
"""

from __future__ import annotations

from typing import Any

from bot.engine import Engine, Step
from bot.handoff.models import Case
from bot.replies import Reply
from bot.session import Session


def _last_staff_at(case: Case) -> float:
    return max((m.at for m in case.thread if m.who == "staff"), default=0.0)


def staff_message(engine: Engine, session: Session, case: Case, text: str) -> list[Reply]:
    """What to send the phone for a new staff message (and mark it unseen unless direct)."""
    if session.direct:
        session.seen_at = max(session.seen_at, _last_staff_at(case))
        return engine.staff_reply(session, text)
    session.unseen = case.number
    return engine.notice(session)


def case_closed(engine: Engine, session: Session, case: Case) -> tuple[Session, list[Reply]]:
    """Staff closed the case: the fresh session, and what to send the phone."""
    fresh, replies = engine.close_case(session)
    if session.direct:
        return fresh, replies
    fresh.unseen, fresh.unseen_closed = case.number, True
    return fresh, engine.notice(fresh)


def reveal(cases: Any, engine: Engine, step: Step) -> None:
    """The resident tapped 「ひらく」: put what the notice stood for before the step's replies.

    Staff messages are read from the case record (kept, anonymous, after the case closes);
    a case whose data the resident deleted has empty texts, which are skipped.
    """
    session = step.session
    if not step.reveal or session is None:
        return
    texts: list[str] = []
    if session.unseen and cases is not None:
        case = cases.get(session.unseen)
        if case is not None:
            fresh = [m for m in case.thread
                     if m.who == "staff" and m.at > session.seen_at and m.text]
            texts = [m.text for m in fresh]
            if fresh:
                session.seen_at = fresh[-1].at
    shown = engine.revealed(session, texts, closed=session.unseen_closed)
    session.unseen, session.unseen_closed = None, False
    step.replies = [*shown, engine.ask(session)]  # asked again: nothing is unseen now
    step.events.append("phonesafe:revealed")
