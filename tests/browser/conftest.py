"""The web chat in a real browser: Playwright driving Debian's chromium against the real app.

The app runs in a server thread on loopback (werkzeug, threaded) against the real Redis, with
staff handoff to the fake Slack; one browser serves the whole session, each test gets its own
context (cookies) and page. Screenshots go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.config import Settings
from tests.conftest import SECRET
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import serve as serve_slack
from tests.test_handoff_backend import CHANNEL, SIGNING

HERE = Path(__file__).parent
AXE = HERE / "vendor" / "axe.min.js"
ARTIFACTS = HERE.parent / "artifacts"
PHONE = {"width": 420, "height": 900}
DESKTOP = {"width": 1280, "height": 800}


def chromium_path() -> str | None:
    """CHROMIUM if set, else Debian's chromium (installed by `make test`)."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        message = "no chromium: `make test` installs Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a missing browser is an error, never a skip
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@dataclass
class Site:
    url: str
    app: Any
    slack: FakeSlack


@pytest.fixture(scope="module")
def site(redis_url: str | None) -> Iterator[Site]:
    """The real app (web chat + handoff to a fake Slack) served on a loopback port."""
    from werkzeug.serving import make_server

    from bot.wiring import build
    from server import create_app

    prefix = f"tsunagu-test-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url) if redis_url else None
    if client is None:
        import fakeredis

        client = fakeredis.FakeRedis()
    slack = FakeSlack()
    slack_server, slack_url = serve_slack(slack)
    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=prefix,
                        slack_bot_token=slack.token, slack_signing_secret=SIGNING,
                        slack_staff_channel=CHANNEL, slack_api_base_url=slack_url + "/",
                        # every page comes from 127.0.0.1: the per-address limits (tested in
                        # test_security_http) would otherwise answer these walks statelessly
                        web_requests_per_minute=100_000, web_new_sessions_per_minute=100_000)
    app = create_app(settings, services=build(settings, client=client))
    handoff = app.extensions["tsunagu_handoff"]
    handoff.start_thread()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(url=f"http://127.0.0.1:{server.server_port}", app=app, slack=slack)
    finally:
        server.shutdown()
        handoff.stop()
        slack_server.shutdown()
        if redis_url:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
            if keys:
                client.delete(*keys)


@pytest.fixture
def pack(site: Site) -> Any:
    """The served city's pack (the browser tests run once, against the default city)."""
    return site.app.extensions["tsunagu"].pack


@pytest.fixture
def open_page(browser, site: Site, request) -> Iterator[Any]:
    """open_page(viewport, path="/") → a page in a fresh context (no cookies yet)."""
    contexts = []

    def _open(viewport: dict[str, int] = PHONE, path: str = "/", **options: Any) -> Any:
        options.setdefault("reduced_motion", "reduce")
        context = browser.new_context(viewport=viewport, **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # type: ignore[attr-defined]
        page.goto(site.url + path)
        wait_for_turns(page, 1)
        return page

    yield _open
    for context in contexts:
        for page in context.pages:
            assert page.js_errors == [], page.js_errors  # type: ignore[attr-defined]
        context.close()


# -- what a resident does -------------------------------------------------------------------


def turns(page: Any) -> int:
    return page.locator("#log .turn").count()


def wait_for_turns(page: Any, n: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#log .turn').length >= n"
        " && !document.getElementById('log').hasAttribute('aria-busy')", arg=n)


def newest_choice(page: Any, value: str) -> Any:
    return page.locator(f'#log .choices button[data-value="{value}"]')


def _answered(page: Any, act: Any) -> None:
    """Do `act` and wait until its answer from /api/chat is drawn."""
    with page.expect_response(lambda r: r.url.endswith("/api/chat")):
        act()
    page.wait_for_function("() => !document.getElementById('log').hasAttribute('aria-busy')")


def tap(page: Any, value: str) -> None:
    """Tap the newest choice with this value and wait for the answer."""
    _answered(page, lambda: newest_choice(page, value).click())


def type_text(page: Any, text: str) -> None:
    page.fill("#text", text)
    _answered(page, lambda: page.press("#text", "Enter"))


def question(page: Any) -> str:
    """The text of the newest question (the message just above the newest choices)."""
    return page.evaluate("""() => {
      const ch = document.querySelector('#log .choices');
      return ch && ch.previousElementSibling ? ch.previousElementSibling.textContent : null;
    }""")


def choice_values(page: Any) -> list[str]:
    return page.eval_on_selector_all("#log .choices button",
                                     "bs => bs.map(b => b.dataset.value)")


# -- what the page must guarantee -----------------------------------------------------------

GEOMETRY = """(sel) => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
  const log = document.getElementById('log'), form = document.getElementById('form');
  const el = typeof sel === 'string' ? document.querySelector(sel) : sel;
  return {el: box(el), log: box(log), form: box(form), vh: window.innerHeight,
          vw: window.innerWidth};
}"""


def visible_in_log(page: Any, selector: str) -> tuple[bool, dict]:
    """Is the element inside the log's visible area, above the input bar, on screen, and
    the topmost thing at its centre (not covered)?"""
    g = page.evaluate(GEOMETRY, selector)
    e, log, form = g["el"], g["log"], g["form"]
    inside = (e["top"] >= log["top"] - 1 and e["bottom"] <= log["bottom"] + 1
              and e["bottom"] <= form["top"] + 1 and e["bottom"] <= g["vh"] + 1
              and e["top"] >= 0)
    if inside:
        on_top = page.evaluate("""(sel) => {
          const e = document.querySelector(sel), r = e.getBoundingClientRect();
          const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
          return hit === e || e.contains(hit);
        }""", selector)
        inside = inside and on_top
    return inside, g


def assert_newest_choices_reachable(page: Any) -> None:
    """Every newest choice can be brought into the log's view, never under the input bar.

    A reply that fits the log must already show whole, choices included, without scrolling.
    """
    fits = page.evaluate("""() => {
      const log = document.getElementById('log');
      const turn = [...log.querySelectorAll('.turn')].pop();
      return turn.getBoundingClientRect().height <= log.clientHeight;
    }""")
    count = page.locator("#log .choices button").count()
    assert count > 0, "the newest answer has no choices"
    for i in range(count):
        selector = f"#log .choices button:nth-of-type({i + 1})"
        if not fits:
            page.locator(selector).scroll_into_view_if_needed()
        ok, g = visible_in_log(page, selector)
        assert ok, (f"choice {i + 1}/{count} hidden (fits={fits}): {g}", question(page))


def assert_reply_start_in_view(page: Any) -> None:
    ok, g = visible_in_log(page, "#log .turn:last-child > :first-child")
    assert ok, f"the start of the newest reply is out of view: {g}"


def axe_scan(page: Any, where: str) -> None:
    """axe-core (vendored, pinned) on the page as it is now: 0 serious or critical."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))  # CDP evaluate: not subject to CSP
    result = page.evaluate("""() => axe.run(document, {
        runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                        'wcag22aa', 'best-practice']},
        resultTypes: ['violations']})""")
    bad = [{"id": v["id"], "impact": v["impact"], "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5]}
           for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert bad == [], f"axe at {where}: {json.dumps(bad, ensure_ascii=False, indent=1)}"


def shoot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
