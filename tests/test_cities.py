"""A second city on the same code: Nagaokakyo's pack served end to end by MUNICIPALITY alone,
and no city's name left in the Python code."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from bot.config import Settings
from bot.pack import load_pack
from tests.conftest import SECRET
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import serve as serve_slack

REPO = Path(__file__).resolve().parents[1]
CITY_NAMES = re.compile(r"京都|kyoto", re.IGNORECASE)


def test_no_city_name_in_python_code():
    """Cities are data: the default pack is named in bot/content/default.yaml."""
    found = []
    for path in sorted([*(REPO / "bot").rglob("*.py"), REPO / "server.py"]):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CITY_NAMES.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


def test_the_nagaokakyo_pack_sends_every_worry_to_the_all_purpose_window_too():
    """断らない相談: 福祉なんでも相談室 serves every category, first where none is narrower."""
    from bot.pack.matching import Answers, match

    pack = load_pack("nagaokakyo")
    assert not pack.wards.wards
    for category in pack.categories:
        ids = [m.window.id for m in match(pack, Answers(concerns=(category,))).windows]
        assert "fukushi_nandemo" in ids, category
        narrower = [w for w in ids if w != "fukushi_nandemo"
                    and pack.windows[w].categories != pack.windows["fukushi_nandemo"].categories
                    and len(pack.windows[w].categories) < 3]
        if not narrower:
            assert ids[0] == "fukushi_nandemo", (category, ids)
    hiki = [m.window.id for m in match(pack, Answers(concerns=("hikikomori",))).windows]
    assert hiki[0] == "hikikomori_window"


def test_national_lines_are_the_same_as_in_the_kyoto_pack():
    kyoto, nagaokakyo = load_pack("kyoto"), load_pack("nagaokakyo")
    shared = set(kyoto.windows) & set(nagaokakyo.windows)
    assert {"police_110", "yorisoi_hotline", "jisou_189", "dv_soudan_plus"} <= shared
    for wid in shared - {"hikikomori_window"}:
        assert kyoto.windows[wid].phone == nagaokakyo.windows[wid].phone, wid
        assert kyoto.windows[wid].source == nagaokakyo.windows[wid].source, wid


@pytest.fixture
def nagaokakyo_app(redis_url, key_prefix, redis_client):
    """The server as `MUNICIPALITY=nagaokakyo make run` builds it, with a fake Slack."""
    from bot.wiring import build
    from server import create_app

    slack = FakeSlack()
    server, url = serve_slack(slack)
    env = {"MUNICIPALITY": "nagaokakyo", "BOT_SECRET_KEY": SECRET, "REDIS_KEY_PREFIX": key_prefix,
           "SLACK_BOT_TOKEN": slack.token, "SLACK_SIGNING_SECRET": "s" * 32,
           "SLACK_STAFF_CHANNEL": "CNAGAOKA1", "SLACK_API_BASE_URL": url + "/"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    settings = Settings.from_env(env)
    app = create_app(settings, services=build(settings, client=redis_client))
    handoff = app.extensions["tsunagu_handoff"]
    handoff.start_thread()
    yield app, slack
    handoff.stop()
    server.shutdown()


def _replies(resp) -> list[dict]:
    assert resp.status_code == 200
    return resp.json["replies"]


def test_municipality_nagaokakyo_serves_questionnaire_results_crisis_and_handoff(
        nagaokakyo_app):
    app, slack = nagaokakyo_app
    pack = load_pack("nagaokakyo")
    web = app.test_client()
    page = web.get("/").get_data(as_text=True)
    assert "長岡京市" in page and "京都市" not in page
    welcome = _replies(web.post("/api/chat", json={"type": "start"}))
    assert "長岡京市" in welcome[-1]["text"]
    # Crisis words at once, with the 24-hour lines.
    crisis = _replies(web.post("/api/chat", json={"type": "text", "text": "死にたい"}))
    phones = {c["phone"] for r in crisis if r["type"] == "cards" for c in r["cards"]}
    assert {"075-864-4343", "0120-279-338"} <= phones
    # The questionnaire, without a ward question, to results led by the city's windows.
    state = crisis[-1]["state"]
    for value in ("start", "self", "40_64", "reoffending", "none"):
        replies = _replies(web.post("/api/chat", json={"type": "tap", "value": value,
                                                       "state": state}))
        state = replies[-1]["state"]
    assert state == "contact"
    results = _replies(web.post("/api/chat", json={"type": "tap", "value": "phone",
                                                   "state": "contact"}))
    cards = [c for r in results if r["type"] == "cards" for c in r["cards"]]
    assert cards[0]["id"] == "fukushi_nandemo"
    assert cards[0]["phone"] == pack.windows["fukushi_nandemo"].phone
    # Handoff: consent, a message, a receipt numbered for this city, the case in its channel.
    web.post("/api/chat", json={"type": "tap", "value": "cmd:human", "state": "results"})
    web.post("/api/chat", json={"type": "tap", "value": "agree", "state": "handoff_consent"})
    receipt = " ".join(r.get("text", "") for r in _replies(
        web.post("/api/chat", json={"type": "text", "text": "やり直したいです"})))
    number = re.search(r"N-[0-9A-Z]{4}", receipt)
    assert number, receipt
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not slack.posts(thread=False):
        time.sleep(0.05)
    root = slack.posts(thread=False)[0]
    assert root.body["channel"] == "CNAGAOKA1"
    assert number.group(0) in json.dumps(root.body, ensure_ascii=False)
