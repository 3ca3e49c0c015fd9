"""The web chat as a resident sees it, in chromium: layout, continuity, language, a11y."""

from __future__ import annotations

import pytest

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    assert_newest_choices_reachable,
    assert_reply_start_in_view,
    axe_scan,
    choice_values,
    newest_choice,
    question,
    shoot,
    tap,
    turns,
    type_text,
    visible_in_log,
    wait_for_turns,
)

# A walk through the longest screens: the 13-choice worry list, a follow-up, the paged ward
# list, the way to talk, the results and their next actions.
WALK = [("start", "whose"), ("self", "age"), ("40_64", "concern"), ("hikikomori", "hiki"),
        ("long", "hiki_contact"), ("open", "more"), ("loneliness", "more"), ("none", "ward"),
        ("page:1", "ward2"), ("fushimi", "contact"), ("chat", "results")]


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone-420x900", "desktop-1280x800"])
def test_full_walk_keeps_every_newest_choice_in_reach(open_page, viewport, pack):
    page = open_page(viewport)
    name = "phone" if viewport is PHONE else "desktop"
    shoot(page, f"{name}-00-welcome")
    assert_newest_choices_reachable(page)
    axe_scan(page, "welcome")
    for i, (value, label) in enumerate(WALK, start=1):
        tap(page, value)
        shoot(page, f"{name}-{i:02d}-{label}")  # what the resident sees as the answer comes
        assert_reply_start_in_view(page)
        assert_newest_choices_reachable(page)
        axe_scan(page, f"after {value}")
    # The results: windows with a call link, the honest word on "in this chat", next actions.
    assert page.locator("#log .card a.call").count() > 0
    assert pack.msg("results.chat_staff", "ja").split("「")[0] in page.inner_text("#log")
    assert "cmd:human" in choice_values(page)
    # No window twice in one answer.
    names = page.eval_on_selector_all("#log .turn:last-child .card h3",
                                      "hs => hs.map(h => h.textContent)")
    assert len(names) == len(set(names)), names


def test_crisis_typed_mid_flow_shows_its_first_line_and_hotline(open_page, pack):
    page = open_page(PHONE)
    tap(page, "start")
    tap(page, "self")
    type_text(page, "もう死にたい")
    lead = page.locator("#log .turn:last-child .msg.urgent").first
    assert lead.inner_text() == pack.msg("crisis.lead.self_harm", "ja")
    ok, geometry = visible_in_log(page, "#log .turn:last-child .msg.urgent")
    assert ok, geometry
    ok, geometry = visible_in_log(page, "#log .turn:last-child .card a.call")
    assert ok, f"first hotline's call link not visible without scrolling: {geometry}"
    shoot(page, "phone-crisis")
    axe_scan(page, "crisis reply")
    # Typing keeps the focus in the input; the person can carry on where they were.
    assert page.evaluate("document.activeElement.id") == "text"
    assert_newest_choices_reachable(page)
    assert "cmd:human" in choice_values(page)


def test_reload_and_back_forward_return_to_the_current_question(open_page, site):
    page = open_page(PHONE)
    for value in ("start", "family", "18_39"):
        tap(page, value)
    asked, values = question(page), choice_values(page)
    page.reload()
    wait_for_turns(page, 1)
    assert question(page) == asked and choice_values(page) == values
    shoot(page, "phone-reload")
    axe_scan(page, "after reload")
    # Away and back: the same place, drawn from the session.
    page.goto(site.url + "/healthz")
    page.go_back()
    wait_for_turns(page, 1)
    assert question(page) == asked and choice_values(page) == values
    # A new tab in the same browser (same cookie) opens where the person was, too.
    other = page.context.new_page()
    other.goto(site.url + "/")
    wait_for_turns(other, 1)
    assert question(other) == asked
    other.close()


def test_reload_on_results_shows_the_results_again(open_page):
    page = open_page(PHONE)
    for value in ("start", "self", "18_39", "loneliness", "none", "skip", "phone"):
        tap(page, value)
    cards = page.locator("#log .card").count()
    page.reload()
    wait_for_turns(page, 1)
    assert page.locator("#log .card").count() == cards > 0
    assert_newest_choices_reachable(page)


def test_forget_clears_the_screen_and_says_so(open_page, pack):
    page = open_page(PHONE)
    for value in ("start", "self"):
        tap(page, value)
    type_text(page, "データを消す")
    text = page.inner_text("#log")
    assert pack.msg("web.cleared", "ja") in text
    assert pack.msg("forget.done", "ja") in text
    assert pack.msg("q.whose", "ja") not in text  # the earlier conversation is gone
    assert turns(page) == 2  # the note and the fresh welcome
    shoot(page, "phone-forget")
    axe_scan(page, "after forget")


def test_lang_en_starts_in_english(open_page, pack):
    page = open_page(PHONE, "/?lang=en")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.title() == pack.msg("web.title", "en")
    assert question(page) == pack.msg("welcome.body", "en")
    assert page.get_attribute("#text", "placeholder") == pack.msg("web.placeholder", "en")
    shoot(page, "phone-english-start")
    axe_scan(page, "english welcome")


def test_choosing_english_turns_the_whole_frame(open_page, pack):
    page = open_page(PHONE)
    assert page.evaluate("document.documentElement.lang") == "ja"
    tap(page, "cmd:lang_switch")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.title() == pack.msg("web.title", "en")
    assert page.inner_text("#title") == pack.msg("web.title", "en")
    assert page.get_attribute("#text", "placeholder") == pack.msg("web.placeholder", "en")
    assert page.inner_text("#send") == pack.msg("web.send", "en")
    assert page.inner_text(".sos") .startswith(pack.msg("web.emergency", "en"))
    assert page.get_attribute("#log", "aria-label") == pack.msg("web.log", "en")
    assert page.get_attribute("#log .turn:last-child", "lang") == "en"
    # Reload: still English (the session's language).
    page.reload()
    wait_for_turns(page, 1)
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.inner_text("#send") == pack.msg("web.send", "en")
    shoot(page, "phone-english-frame")
    axe_scan(page, "english frame")


def test_narrow_and_zoomed_windows_do_not_scroll_sideways(open_page):
    """320 px wide (WCAG reflow) and 1280×800 at 200% zoom (= 640×400 CSS px)."""
    for viewport in ({"width": 320, "height": 640}, {"width": 640, "height": 400}):
        page = open_page(viewport)
        for value in ("start", "self", "40_64"):
            tap(page, value)
            assert_newest_choices_reachable(page)
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= viewport["width"], (viewport, wide)
        axe_scan(page, f"{viewport}")
        shoot(page, f"reflow-{viewport['width']}x{viewport['height']}")


def test_targets_are_44px_and_reduced_motion_is_respected(open_page):
    page = open_page(PHONE)
    tap(page, "start")
    small = page.evaluate("""() => [...document.querySelectorAll(
        '#log .choices button, .sos a, #form button, #text, .card a')]
      .map(e => e.getBoundingClientRect())
      .filter(r => r.width < 44 || r.height < 44).length""")
    assert small == 0
    assert page.evaluate("getComputedStyle(document.querySelector('.turn')).animationName") \
        == "none"
    moving = open_page(PHONE, reduced_motion="no-preference")
    assert moving.evaluate(
        "getComputedStyle(document.querySelector('.turn')).animationName") != "none"


def test_keyboard_only_walk_moves_focus_to_each_new_choice(open_page):
    page = open_page(PHONE)
    # From the top of the page, Tab reaches the first choice (after the emergency bar).
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("!!document.activeElement.closest('#log .choices')"):
            break
    assert page.evaluate("document.activeElement.dataset.value") == "start"
    for value in ("start", "family", "u18", "children_youth"):
        # Tab along the choices to the one wanted, then Enter.
        for _ in range(20):
            if page.evaluate("document.activeElement.dataset.value") == value:
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.dataset.value") == value
        ring = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert ring != "none", "no visible focus ring"
        with page.expect_response(lambda r: r.url.endswith("/api/chat")):
            page.keyboard.press("Enter")
        page.wait_for_function("() => !document.getElementById('log').hasAttribute('aria-busy')")
        # Focus went to the first new choice, not to the page body.
        first = page.evaluate("document.querySelector('#log .choices button').dataset.value")
        assert page.evaluate("document.activeElement.dataset.value") == first
        ok, geometry = visible_in_log(page, "#log .choices button:first-of-type")
        assert ok or page.evaluate("""() => { const log = document.getElementById('log');
            const t = [...log.querySelectorAll('.turn')].pop();
            return t.getBoundingClientRect().height > log.clientHeight; }"""), geometry
    shoot(page, "phone-keyboard")
    axe_scan(page, "keyboard walk")
    # Typing: Enter sends, and focus stays in the input.
    page.focus("#text")
    page.keyboard.type("school")
    with page.expect_response(lambda r: r.url.endswith("/api/chat")):
        page.keyboard.press("Enter")
    page.wait_for_function("() => !document.getElementById('log').hasAttribute('aria-busy')")
    assert page.evaluate("document.activeElement.id") == "text"


def test_one_announcement_per_message(open_page):
    """The live log carries the question; the choice group is not labelled with it again."""
    page = open_page(PHONE)
    tap(page, "start")
    assert page.get_attribute("#log", "role") == "log"
    assert page.get_attribute("#log", "aria-live") == "polite"
    label = page.get_attribute("#log .choices", "aria-label")
    assert label and label not in question(page)
    assert page.locator("[aria-live]").count() == 1


def test_axe_scan_is_not_blind(open_page):
    """The scan used everywhere above does find a real violation when there is one."""
    page = open_page(PHONE)
    page.evaluate("""() => { const b = document.createElement('button');
        b.style.color = '#bbb'; b.style.background = '#fff'; b.textContent = 'faint';
        document.getElementById('log').appendChild(b);
        const i = document.createElement('img'); i.src = '/nothing.png';
        document.getElementById('log').appendChild(i); }""")
    with pytest.raises(AssertionError, match=r"color-contrast|image-alt"):
        axe_scan(page, "planted faults")


@pytest.mark.parametrize("how", ["button", "typed"])
def test_quick_exit_leaves_for_a_neutral_site_and_forgets(open_page, site, pack, how):
    page = open_page(PHONE)
    neutral = pack.msg("web.exit_url", "ja")
    page.context.route(neutral + "**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<html lang=ja><title>x</title></html>"))
    for value in ("start", "family", "18_39"):
        tap(page, value)
    services = site.app.extensions["tsunagu"]
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "tsunagu_visitor")
    pid = services.conversations.pseudonym("web", cookie.split(".")[0])
    assert services.store.load(pid) is not None
    if how == "button":
        page.click("#exit")
    else:
        page.fill("#text", pack.msg("quick_exit.words", "ja")[0])
        page.press("#text", "Enter")
    page.wait_for_url(neutral + "**")
    # The chat page is replaced in the history: Back does not return to the conversation.
    assert page.evaluate("history.length") <= 2
    # The server forgot it (the request outlives the page: keepalive) ...
    for _ in range(100):
        if services.store.load(pid) is None:
            break
        page.wait_for_timeout(50)
    assert services.store.load(pid) is None
    # ... so the chat opened again starts afresh, with no "continued" note.
    page.goto(site.url + "/")
    wait_for_turns(page, 1)
    assert question(page) == pack.msg("welcome.body", "ja")
    assert pack.msg("web.resumed", "ja") not in page.inner_text("#log")


def test_a_failed_request_says_so_in_view_and_the_page_goes_on(open_page, pack):
    page = open_page(PHONE)
    page.route("**/api/chat", lambda route: route.abort())
    with page.expect_event("requestfailed"):
        newest_choice(page, "start").click()
    page.wait_for_function("() => !document.getElementById('log').hasAttribute('aria-busy')")
    note = "#log .turn:last-child .msg.urgent"
    assert page.inner_text(note) == pack.msg("web.error", "ja")
    ok, geometry = visible_in_log(page, note)
    assert ok, geometry
    axe_scan(page, "error note")
    page.unroute("**/api/chat")
    tap(page, "start")  # the earlier choices were kept: the person can try again
    assert "self" in choice_values(page)
