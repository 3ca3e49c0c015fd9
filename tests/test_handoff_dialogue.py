"""The resident's side of the handoff, in the engine: consent, message, receipt, open case."""

from __future__ import annotations

from datetime import datetime

import pytest

from bot.engine import Incoming
from bot.replies import Cards, Question, Text
from bot.wiring import build_engine
from tests.conftest import TOKYO, WEEKDAY_MORNING, Walker

NIGHT = datetime(2026, 11, 24, 23, 0, tzinfo=TOKYO)      # Tuesday night
HOLIDAY = datetime(2026, 11, 23, 10, 0, tzinfo=TOKYO)    # 勤労感謝の日


@pytest.fixture(scope="module")
def hengine(pack):
    return build_engine(pack, handoff=True)


def to_results(walker: Walker) -> None:
    walker.start()
    for value in ("start", "family", "40_64", "hikikomori", "long", "not_open", "none"):
        walker.tap(value)
    walker.tap_ward("sakyo")
    walker.tap("chat")


def texts(replies) -> list[str]:
    return [r.text for r in replies if isinstance(r, Text)]


def test_consent_says_what_staff_see_and_when(hengine, pack):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    assert walker.question.state == "handoff_consent"
    said = "\n".join(texts(walker.replies))
    assert pack.msg("handoff.when_open", "ja") in said
    assert "ID" in said
    assert [c.value for c in walker.question.choices] == ["agree", "cmd:resume"]


@pytest.mark.parametrize("moment", [NIGHT, HOLIDAY])
def test_at_night_and_on_holidays_the_24h_lines_come_with_the_consent(hengine, moment):
    walker = Walker(hengine, moment)
    to_results(walker)
    walker.text("人と話したい")
    said = "\n".join(texts(walker.replies))
    assert "11月24日" in said or "11月25日" in said
    assert "翌開庁日" in said
    phones = {c.phone for r in walker.replies if isinstance(r, Cards) for c in r.cards}
    assert "0120-279-338" in phones


def test_message_then_receipt_with_case_number(hengine, pack):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    walker.tap("agree")
    assert walker.question.state == "handoff_message"
    step = walker.text("息子が10年部屋から出てきません")
    assert step.handoff is not None
    req = step.handoff
    assert req.message == "息子が10年部屋から出てきません"
    ward = "sakyo" if pack.wards.wards else None
    assert req.categories == ["hikikomori"] and req.ward == ward and not req.urgent
    assert any(q.startswith("どなた") and a == "家族のこと" for q, a in req.summary)
    assert req.number.startswith(pack.info.case_prefix + "-") and len(req.number) == 6
    assert any(req.number in t for t in texts(step.replies))
    assert walker.session.case == req.number
    assert walker.question.state == "handoff_open"


def test_no_message_is_fine(hengine):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    walker.tap("agree")
    step = walker.tap("send")
    assert step.handoff is not None and step.handoff.message is None


def test_cancel_returns_to_where_the_person_was(hengine):
    walker = Walker(hengine, WEEKDAY_MORNING)
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.text("相談員")
    walker.tap("cmd:resume")
    assert walker.question.state == "age"


def test_in_an_open_case_text_goes_to_staff(hengine):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    walker.tap("agree")
    walker.tap("send")
    step = walker.text("まだ返事はありますか")
    assert step.relay == "まだ返事はありますか"
    assert step.handoff is None
    # Even after 最初から, free text still reaches the open case; taps drive the questions.
    walker.text("最初から")
    assert walker.session.case is not None
    assert walker.text("もう一つ相談です").relay == "もう一つ相談です"


def test_crisis_in_an_open_case_is_answered_and_relayed_urgent(hengine):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    walker.tap("agree")
    walker.tap("send")
    step = walker.text("もう死にたい")
    assert step.replies[0].urgent
    assert step.relay == "もう死にたい"
    assert "handoff:urgent" in step.events


def test_danger_answers_make_the_case_urgent(hengine):
    walker = Walker(hengine, WEEKDAY_MORNING)
    walker.start()
    for value in ("start", "self", "18_39", "dv_abuse", "yes"):
        walker.tap(value)
    walker.tap("cmd:human")
    walker.tap("agree")
    assert walker.tap("send").handoff.urgent


def test_staff_reply_and_close(hengine, pack):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    walker.tap("agree")
    walker.tap("send")
    replies = hengine.staff_reply(walker.session, "お話を聞かせてください")
    assert replies[0].text == "相談員より: お話を聞かせてください"
    assert isinstance(replies[-1], Question)
    session, replies = hengine.close_case(walker.session)
    assert session.case is None
    assert replies[0].text == pack.msg("handoff.closed", "ja")
    assert {c.value for c in replies[-1].choices} == {"cmd:restart", "cmd:directory"}


def test_without_staff_the_human_command_gives_phones(engine):
    walker = Walker(engine, WEEKDAY_MORNING)
    to_results(walker)
    walker.tap("cmd:human")
    assert walker.question.state == "results"
    assert any(isinstance(r, Cards) and r.cards for r in walker.replies)
    assert walker.steps[-1].handoff is None


def test_a_tap_never_opens_a_case_without_consent(hengine):
    walker = Walker(hengine, WEEKDAY_MORNING)
    to_results(walker)
    step = walker.send(Incoming("tap", "send", "handoff_message"))
    assert step.handoff is None
    assert walker.session.case is None
