"""In a real browser: a resident asks for a person, and the staff answer arrives by poll."""

from __future__ import annotations

import re

from tests.browser.conftest import (
    PHONE,
    assert_newest_choices_reachable,
    axe_scan,
    choice_values,
    shoot,
    tap,
    type_text,
)
from tests.test_handoff_backend import CHANNEL, STAFF_A, post_event


def test_handoff_staff_answer_arrives_on_the_page(open_page, site, pack):
    page = open_page(PHONE)
    for value in ("start", "self", "18_39", "loneliness", "none", "skip", "chat"):
        tap(page, value)
    # "In this chat" is answered honestly: who answers, when, and the button to press.
    assert pack.msg("cmd.human", "ja") in page.inner_text("#log .turn:last-child")
    assert "cmd:human" in choice_values(page)
    tap(page, "cmd:human")
    assert "agree" in choice_values(page)
    shoot(page, "phone-handoff-consent")
    axe_scan(page, "handoff consent")
    tap(page, "agree")
    type_text(page, "夜になると不安です")
    receipt = page.inner_text("#log .turn:last-child")
    number = re.search(r"[A-Z]-[A-Z0-9]{4}", receipt).group(0)
    handoff = site.app.extensions["tsunagu_handoff"]
    for _ in range(200):  # the handoff worker posts the case to the staff channel
        case = handoff.cases.get(number)
        if case and case.slack_ts:
            break
        page.wait_for_timeout(50)
    assert case.slack_ts, "the case never reached the staff channel"
    event = {"type": "message", "channel": CHANNEL, "user": STAFF_A,
             "text": "お話を聞かせてください", "ts": "1700000001.000001",
             "thread_ts": case.slack_ts}
    assert post_event(site.app.test_client(), event, event_id=f"Ev{number}1").status_code == 200
    # The page polls every few seconds; without any action of the resident a neutral notice
    # comes (phone-safe, issue 11), and 「ひらく」 shows the answer.
    page.locator("#log .msg", has_text=pack.msg("notice.text", "ja")).wait_for(timeout=20_000)
    shoot(page, "phone-handoff-notice")
    assert_newest_choices_reachable(page)
    axe_scan(page, "neutral notice")
    tap(page, "cmd:reveal")
    staff = pack.msg("handoff.staff_prefix", "ja") + "お話を聞かせてください"
    assert staff in page.inner_text("#log .turn:last-child")
    shoot(page, "phone-handoff-staff-answer")
    assert_newest_choices_reachable(page)
    axe_scan(page, "staff answer")
