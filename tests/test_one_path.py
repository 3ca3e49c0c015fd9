"""One path through the service: web, LINE, degraded mode and the staff relay all run
`Conversations.process`, and the same input gives the same side effects in the same order —
step, case effects, delivery — whichever channel it came from."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.channels.line_events import Job
from bot.channels.line_queue import answer_degraded
from bot.engine import Incoming
from bot.handoff.models import Case, CaseRequest, StaffMessage
from bot.handoff.relay import Relay
from bot.ports import Event
from tests import line_helpers as lh
from tests.test_handoff_loop import loop_app, wait  # noqa: F401

USER = "U" + "7b3c" * 8
INPUTS = [("event", "first_contact", None), ("tap", "cmd:human", "welcome"),
          ("tap", "agree", "handoff_consent"), ("text", "兄のことで相談です", None),
          ("text", "夜が怖いです", None), ("text", "もう死にたい", None),
          ("text", "データを消す", None)]
# What every channel must do for INPUTS, in this order.
EXPECTED = [
    "deliver", "deliver", "deliver",
    "open(message=兄のことで相談です)", "deliver",
    "relay(夜が怖いです, urgent=False)", "deliver",
    "relay(もう死にたい, urgent=True)", "deliver",
    "forget", "deliver",
]


class RecordingCases:
    """A bot.ports.Cases that records what the conversation side asks of it, in order."""

    def __init__(self, log: list[str], real: Any):
        self.log = log
        self.real = real  # keeps what bot.phonesafe's notices stand for (not recorded)

    def _case(self, number: str, pid: str) -> Case:
        return Case(number=number, channel="web", pid=pid, created_at=1.0, updated_at=1.0,
                    request=CaseRequest(number=number))

    def open(self, request: CaseRequest, channel: str, pid: str, address: str) -> Case:
        self.log.append(f"open(message={request.message})")
        return self._case(request.number, pid)

    def add_message(self, number: str, who: str, text: str, announce: bool | None = None,
                    key: str | None = None, urgent: bool = False) -> Case:
        self.log.append(f"relay({text}, urgent={urgent})")
        return self._case(number, "pid")

    def mark_urgent(self, number: str) -> None:
        self.log.append("urgent")

    def delete_for(self, pid: str) -> None:
        self.log.append("forget")

    def keep_unseen(self, pid: str, event_id: str, items: list[tuple[str, str]]) -> None:
        self.real.keep_unseen(pid, event_id, items)

    def take_unseen(self, pid: str) -> list[tuple[str, str]]:
        return self.real.take_unseen(pid)


@pytest.fixture
def recorded(loop_app, monkeypatch):  # noqa: F811
    """The app with the case store replaced by a recorder, and every delivery and every call
    of Conversations.process written to one log."""
    app, _, line = loop_app
    log: list[str] = []
    conversations = app.extensions["tsunagu"].conversations
    conversations.cases = RecordingCases(log, conversations.cases)
    processed: list[str] = []
    real_process = conversations.process

    def process(event: Event, turn: Any, deliver: Any):
        processed.append(f"{event.channel}:{event.incoming.kind}:{turn is not None}")

        def logged(step):
            log.append("deliver")
            return deliver(step)

        return real_process(event, turn, logged)

    monkeypatch.setattr(conversations, "process", process)
    return app, line, conversations, log, processed


def test_web_runs_process_with_the_effects_in_order(recorded):
    app, _, _, log, processed = recorded
    web = app.test_client()
    for kind, value, state in INPUTS:
        body = ({"type": "start"} if kind == "event" else
                {"type": kind, "text": value} if kind == "text" else
                {"type": "tap", "value": value, "state": state})
        assert web.post("/api/chat", json=body).status_code == 200
    assert log == EXPECTED
    assert processed == [f"web:{kind}:True" for kind, _, _ in INPUTS]


def test_line_runs_process_with_the_same_effects_in_the_same_order(recorded):
    app, line, _, log, processed = recorded
    client = app.test_client()
    for n, (kind, value, state) in enumerate(INPUTS, start=1):
        event = (lh.event("follow", user=USER) if kind == "event" else
                 lh.text(value, user=USER) if kind == "text" else
                 lh.tap(state, value, user=USER))
        body = lh.body(event)
        client.post("/callback", data=body.encode(), headers={"X-Line-Signature": lh.sign(body)},
                    content_type="application/json")
        assert len(line.wait_for(n)) == n
    assert wait(lambda: len(log) == len(EXPECTED))
    assert log == EXPECTED
    assert processed == [f"line:{kind}:True" for kind, _, _ in INPUTS]


def test_degraded_mode_runs_process_without_effects(recorded):
    app, line, conversations, log, processed = recorded
    api = app.extensions["tsunagu_line"].api
    pid = conversations.pseudonym("line", USER)
    for n, (kind, value, state) in enumerate(INPUTS, start=1):
        job = Job(event_id=f"EV{n}", kind=kind, value=value, state=state, reply_token=None,
                  timestamp_ms=int(time.time() * 1000), sealed_user="")
        answer_degraded(conversations, api, pid, USER, job)
    # Nothing stored, nothing opened, relayed or forgotten: each answered, in order.
    assert log == ["deliver"] * len(INPUTS)
    assert processed == [f"line:{kind}:False" for kind, _, _ in INPUTS]
    assert len(line.delivered()) == len(INPUTS)
    crisis = line.delivered()[5].body["messages"]
    assert any("0120-279-338" in str(m) for m in crisis)


def test_the_staff_relay_runs_process_and_delivers_once(recorded):
    app, _, conversations, log, processed = recorded
    services = app.extensions["tsunagu"]
    web = app.test_client()
    web.post("/api/chat", json={"type": "start"})
    visitor = web.get_cookie("tsunagu_visitor").value.partition(".")[0]  # "<id>.<signature>"
    pid = conversations.pseudonym("web", visitor)
    case = Case(number="K-TEST", channel="web", pid=pid, created_at=1.0, updated_at=1.0,
                request=CaseRequest(number="K-TEST"))
    log.clear()
    processed.clear()
    relay = Relay(conversations, services.outbox, None)
    relay.staff_reply(case, StaffMessage(at=2.0, who="staff", text="こんにちは", id="Ev1"))
    assert log == ["deliver"] and processed == ["web:staff:True"]
    replies, _ = services.outbox.take(pid)
    assert replies[0].text == services.pack.msg("notice.text", "ja")  # phone-safe notice
    # The staff answer changed nothing the resident had stored (the welcome state stays).
    assert services.store.load(pid).state == "welcome"
    assert Incoming(kind="staff", value="x").from_staff
