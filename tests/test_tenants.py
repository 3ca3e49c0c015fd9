"""Several cities in one deployment (TSUNAGU_TENANTS): each city's web path, LINE channel and
Slack channel reach only that city's pack, sessions and cases; a bad city stops only itself."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.config import Settings, SettingsError
from bot.tenants import read_tenants
from tests import line_helpers as lh
from tests.conftest import SECRET
from tests.fakes.line_api import FakeLine
from tests.fakes.line_api import serve as serve_line
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import serve as serve_slack
from tests.test_handoff_backend import signed

KYOTO_BOT, NAGA_BOT = "U" + "1" * 32, "U" + "2" * 32
SECRETS = {"KYOTO_LINE_SECRET": "kyoto-line-secret-0123456789",
           "NAGA_LINE_SECRET": "nagaokakyo-line-secret-0123456789",
           "KYOTO_SIGNING": "kyoto-slack-signing-0123456789",
           "NAGA_SIGNING": "nagaokakyo-slack-signing-0123456789"}
CHANNELS = {"kyoto": "CKYOTO001", "nagaokakyo": "CNAGAOKA1"}


def tenants_yaml(path: Path, **broken: str) -> Path:
    cities = []
    for city, bot, secret, signing in (("kyoto", KYOTO_BOT, "KYOTO_LINE_SECRET", "KYOTO_SIGNING"),
                                       ("nagaokakyo", NAGA_BOT, "NAGA_LINE_SECRET",
                                        "NAGA_SIGNING")):
        cities.append({
            "id": city, "pack": broken.get(city, city),
            "line": {"secret_env": secret, "token_env": "LINE_TOKEN", "destination": bot},
            "slack": {"channel": CHANNELS[city], "token_env": "SLACK_TOKEN",
                      "signing_secret_env": signing}})
    path.write_text(yaml.safe_dump({"cities": cities}), encoding="utf-8")
    return path


@pytest.fixture
def fakes():
    line, slack = FakeLine(), FakeSlack()
    line_server, line_url = serve_line(line)
    slack_server, slack_url = serve_slack(slack)
    yield line, line_url, slack, slack_url
    line_server.shutdown()
    slack_server.shutdown()


def make_app(tmp_path, redis_url, key_prefix, redis_client, fakes, env=None, **broken):
    from server import create_cities_app

    _line, line_url, slack, slack_url = fakes
    settings = Settings(redis_url=redis_url, bot_secret_key=SECRET, key_prefix=key_prefix,
                        line_api_base_url=line_url, slack_api_base_url=slack_url + "/",
                        line_reclaim_idle_ms=500, lock_ms=5000,
                        tenants_file=str(tenants_yaml(tmp_path / "tenants.yaml", **broken)))
    env = {**SECRETS, "LINE_TOKEN": "tok", "SLACK_TOKEN": slack.token} if env is None else env
    return create_cities_app(settings, env=env, client=redis_client)


@pytest.fixture
def cities(tmp_path, redis_url, key_prefix, redis_client, fakes):
    app = make_app(tmp_path, redis_url, key_prefix, redis_client, fakes)
    yield app, fakes
    for city_app in app.extensions["tsunagu_cities"].values():
        city_app.extensions["tsunagu_line"].stop()
        handoff = city_app.extensions.get("tsunagu_handoff")
        if handoff is not None:
            handoff.stop()


def chat(web, city: str, **body):
    resp = web.post(f"/c/{city}/api/chat", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.json["replies"]


def walk_to_results(web, city: str, concern: str) -> list[dict]:
    replies = chat(web, city, type="start")
    for value in ("start", "self", "40_64", concern, "none", "skip", "phone"):
        question = replies[-1]
        if value == "skip" and question["state"] != "ward":
            continue
        replies = chat(web, city, type="tap", value=value, state=question["state"])
    assert replies[-1]["state"] == "results"
    return [c for r in replies if r["type"] == "cards" for c in r["cards"]]


def test_each_city_has_its_own_page_and_windows(cities):
    app, _ = cities
    web = app.test_client()
    kyoto, naga = web.get("/c/kyoto/"), web.get("/c/nagaokakyo/")
    assert "京都市" in kyoto.get_data(as_text=True)
    assert "長岡京市" in naga.get_data(as_text=True)
    assert "京都市" not in naga.get_data(as_text=True)
    assert web.get("/c/kyoto").status_code == 308
    assert web.get("/c/kyoto").headers["Location"].endswith("/c/kyoto/")
    assert web.get("/c/nagaokakyo/static/chat.js").status_code == 200
    assert "/c/nagaokakyo/static/chat.js" in naga.get_data(as_text=True)
    assert web.get("/c/osaka/").status_code == 404
    assert web.get("/").status_code == 404  # no city at the root: nothing to guess
    assert web.get("/readyz").json["checks"] == {"redis": True, "cities": True}
    naga_ids = {c["id"] for c in walk_to_results(web, "nagaokakyo", "reoffending")}
    kyoto_ids = {c["id"] for c in walk_to_results(web, "kyoto", "reoffending")}
    assert "fukushi_nandemo" in naga_ids and "fukushi_nandemo" not in kyoto_ids
    assert naga_ids.isdisjoint(kyoto_ids - {"yorisoi_hotline"})


def test_one_resident_in_two_cities_has_two_separate_sessions(cities, redis_client,
                                                              key_prefix):
    app, _ = cities
    web = app.test_client()  # one browser, two cities: a cookie for each city's path
    first = web.post("/c/kyoto/api/chat", json={"type": "start"})
    assert "Path=/c/kyoto/" in first.headers["Set-Cookie"]
    chat(web, "kyoto", type="tap", value="start", state="welcome")
    chat(web, "kyoto", type="tap", value="self", state="whose")
    naga = chat(web, "nagaokakyo", type="start")
    assert naga[-1]["state"] == "welcome" and "長岡京市" in naga[-1]["text"]
    kyoto_again = chat(web, "kyoto", type="tap", value="skip", state="age")
    assert kyoto_again[-1]["state"] == "concern"
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}:*", count=500)]
    assert keys
    assert all(k.startswith((f"{key_prefix}:kyoto:", f"{key_prefix}:nagaokakyo:"))
               for k in keys), keys
    # Two conversations, two pseudonyms (each city keys its own).
    pids = {k.split("{")[1].split("}")[0] for k in keys if ":session" in k}
    assert len(pids) == 2, keys
    # And the same platform id has a different pseudonym in each city.
    services = {c: a.extensions["tsunagu"] for c, a in app.extensions["tsunagu_cities"].items()}
    user = "U" + "ab" * 16
    assert (services["kyoto"].conversations.pseudonym("line", user)
            != services["nagaokakyo"].conversations.pseudonym("line", user))


def scrape(web) -> dict[tuple[str, frozenset], float]:
    """Every sample the root /metrics shows, by name and labels."""
    resp = web.get("/metrics")
    assert resp.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.get_data(as_text=True))
            for s in family.samples}


def test_metrics_tell_the_cities_apart(cities):
    """One deployment, two cities: an operator reads each city's answers, crisis replies and
    latency under its own `city` label, and nothing about the person."""
    app, _ = cities
    web = app.test_client()

    def value(before: dict, after: dict, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    before = scrape(web)
    chat(web, "kyoto", type="start")
    chat(web, "kyoto", type="text", text="死にたい")
    chat(web, "nagaokakyo", type="start")
    after = scrape(web)
    events = "tsunagu_events_total"
    assert value(before, after, events, city="kyoto", channel="web", kind="event") == 1
    assert value(before, after, events, city="kyoto", channel="web", kind="text") == 1
    assert value(before, after, events, city="nagaokakyo", channel="web", kind="event") == 1
    assert value(before, after, events, city="nagaokakyo", channel="web", kind="text") == 0
    crisis = "tsunagu_crisis_replies_total"
    assert value(before, after, crisis, city="kyoto", kind="self_harm") == 1
    assert value(before, after, crisis, city="nagaokakyo", kind="self_harm") == 0
    answers = "tsunagu_answers_total"
    assert value(before, after, answers, city="kyoto", channel="web", via="response") == 2
    assert value(before, after, answers, city="nagaokakyo", channel="web", via="response") == 1
    latency = "tsunagu_answer_seconds_count"
    assert value(before, after, latency, city="kyoto", channel="web") == 2
    assert value(before, after, latency, city="nagaokakyo", channel="web") == 1
    shown = json.dumps([sorted(labels) for _, labels in after], ensure_ascii=False)
    assert "死にたい" not in shown


def line_post(web, path: str, events: list[dict], secret: str, destination: str):
    body = json.dumps({"destination": destination, "events": events}, ensure_ascii=False)
    return web.post(path, data=body.encode(), content_type="application/json",
                    headers={"X-Line-Signature": lh.sign(body, secret)})


def test_a_signed_webhook_reaches_only_its_own_city(cities, redis_client, key_prefix):
    app, (line, *_) = cities
    web = app.test_client()
    kyoto_secret, naga_secret = SECRETS["KYOTO_LINE_SECRET"], SECRETS["NAGA_LINE_SECRET"]
    user = "U" + "ab" * 16
    # Kyoto's channel, signed with Kyoto's secret, on another city's path or destination: 400.
    assert line_post(web, "/c/nagaokakyo/callback", [lh.event("follow", user=user)],
                     kyoto_secret, KYOTO_BOT).status_code == 400
    assert line_post(web, "/callback", [lh.event("follow", user=user)],
                     kyoto_secret, NAGA_BOT).status_code == 400
    assert line_post(web, "/callback", [lh.event("follow", user=user)],
                     kyoto_secret, "U" + "9" * 32).status_code == 404
    def people(city: str) -> list[bytes]:  # keys of a person: sessions, inboxes, de-dup
        return list(redis_client.scan_iter(match=f"{key_prefix}:{city}:{{*", count=500))

    assert people("nagaokakyo") == []
    # Each city's own: answered with its own pack, by path or by destination.
    assert line_post(web, "/c/kyoto/callback", [lh.event("follow", user=user)],
                     kyoto_secret, KYOTO_BOT).status_code == 200
    assert line_post(web, "/callback", [lh.event("follow", user=user)],
                     naga_secret, NAGA_BOT).status_code == 200
    got = line.wait_for(2)
    welcomes = [r.body["messages"][0]["text"] for r in got]
    assert any("京都市" in w for w in welcomes) and any("長岡京市" in w for w in welcomes)
    assert people("nagaokakyo") and people("kyoto")


def click(web, city: str, action: str, number: str, secret: str):
    payload = {"type": "block_actions", "user": {"id": "U0STAFFAAA"},
               "channel": {"id": CHANNELS[city]},
               "container": {"type": "message", "channel_id": CHANNELS[city]},
               "actions": [{"type": "button", "action_id": action, "value": number,
                            "block_id": f"case:{number}"}]}
    body = urlencode({"payload": json.dumps(payload)})
    return web.post(f"/c/{city}/slack/interactions", data=body, headers={
        **signed(body, secret=secret), "Content-Type": "application/x-www-form-urlencoded"})


def test_a_case_reaches_only_its_own_citys_staff(cities):
    app, (_, _, slack, _) = cities
    web = app.test_client()
    before = scrape(web)
    walk_to_results(web, "nagaokakyo", "loneliness")
    chat(web, "nagaokakyo", type="tap", value="cmd:human", state="results")
    chat(web, "nagaokakyo", type="tap", value="agree", state="handoff_consent")
    receipt = " ".join(r.get("text", "") for r in chat(web, "nagaokakyo", type="text",
                                                       text="話を聞いてほしいです"))
    number = next(w for w in receipt.replace("。", " ").split() if w.startswith("N-"))
    after = scrape(web)
    opened = {city: after.get(key, 0.0) - before.get(key, 0.0) for city in CHANNELS
              for key in [("tsunagu_handoff_cases_opened_total",
                           frozenset({"city": city, "channel": "web"}.items()))]}
    assert opened == {"kyoto": 0, "nagaokakyo": 1}
    naga = app.extensions["tsunagu_cities"]["nagaokakyo"].extensions["tsunagu_handoff"]
    kyoto = app.extensions["tsunagu_cities"]["kyoto"].extensions["tsunagu_handoff"]
    naga.start_thread()
    kyoto.start_thread()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and naga.cases.get(number).slack_ts is None:
        time.sleep(0.05)
    posted = slack.posts(thread=False)
    assert [p.body["channel"] for p in posted] == [CHANNELS["nagaokakyo"]]
    assert kyoto.cases.get(number) is None
    # Kyoto's staff cannot claim it: not through Kyoto's app, not with Kyoto's secret on
    # Nagaokakyo's app.
    click(web, "kyoto", "claim", number, SECRETS["KYOTO_SIGNING"])
    assert click(web, "nagaokakyo", "claim", number,
                 SECRETS["KYOTO_SIGNING"]).status_code == 401
    assert naga.cases.get(number).status == "new"
    assert click(web, "nagaokakyo", "claim", number,
                 SECRETS["NAGA_SIGNING"]).status_code == 200
    assert naga.cases.get(number).status == "claimed"


def test_a_city_with_bad_configuration_stops_alone(tmp_path, redis_url, key_prefix,
                                                   redis_client, fakes, caplog):
    caplog.set_level(logging.INFO, logger="tsunagu")
    _, _, slack, _ = fakes
    env = {**SECRETS, "LINE_TOKEN": "tok", "SLACK_TOKEN": slack.token}
    del env["NAGA_LINE_SECRET"]
    app = make_app(tmp_path, redis_url, key_prefix, redis_client, fakes, env=env)
    try:
        web = app.test_client()
        assert web.get("/c/nagaokakyo/").status_code == 404
        assert "京都市" in web.get("/c/kyoto/").get_data(as_text=True)
        lines = [r for r in caplog.records if r.getMessage() == "city_disabled"]
        assert len(lines) == 1
        fields = json.dumps(lines[0].__dict__, default=str)
        assert "nagaokakyo" in fields and "NAGA_LINE_SECRET" in fields
    finally:
        for city_app in app.extensions["tsunagu_cities"].values():
            city_app.extensions["tsunagu_line"].stop()


def test_an_unknown_pack_stops_only_that_city(tmp_path, redis_url, key_prefix, redis_client,
                                              fakes, caplog):
    caplog.set_level(logging.INFO, logger="tsunagu")
    app = make_app(tmp_path, redis_url, key_prefix, redis_client, fakes, kyoto="atlantis")
    try:
        assert list(app.extensions["tsunagu_cities"]) == ["nagaokakyo"]
        lines = [r for r in caplog.records if r.getMessage() == "city_disabled"]
        assert len(lines) == 1 and "kyoto" in json.dumps(lines[0].__dict__, default=str)
    finally:
        for city_app in app.extensions["tsunagu_cities"].values():
            city_app.extensions["tsunagu_line"].stop()


def test_a_malformed_tenants_file_stops_start_up_naming_the_variable(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("cities:\n  - id: Kyoto City\n    pack: kyoto\n", encoding="utf-8")
    assert Settings.from_env({"TSUNAGU_TENANTS": str(path)}).tenants_file == str(path)
    with pytest.raises(SettingsError, match=r"^TSUNAGU_TENANTS: cities\.0\.id"):
        read_tenants(path)
    with pytest.raises(SettingsError, match=r"^TSUNAGU_TENANTS: no such file"):
        Settings.from_env({"TSUNAGU_TENANTS": str(tmp_path / "missing.yaml")})


def test_the_worker_runs_one_staff_queue_per_city_with_staff(tmp_path):
    """`python -m bot worker` with TSUNAGU_TENANTS: each city's own queue (its key prefix and
    keys); a city without staff gets no worker."""
    import threading

    from bot.tenants import run_city_workers

    path = tenants_yaml(tmp_path / "tenants.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cities"].append({"id": "otokuni", "pack": "nagaokakyo"})  # no staff connected
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    base = Settings(redis_url="redis://127.0.0.1:6379/0", bot_secret_key=SECRET,
                    key_prefix="tsunagu", tenants_file=str(path))
    env = {**SECRETS, "LINE_TOKEN": "tok", "SLACK_TOKEN": "xoxb-test"}
    started: list[Settings] = []
    stop = threading.Event()

    def fake_worker(settings: Settings, stop_event: threading.Event) -> int:
        started.append(settings)
        if len(started) == 2:
            stop_event.set()
        stop_event.wait(5)
        return 0

    assert run_city_workers(base, env, fake_worker, stop) == 0
    assert sorted(s.key_prefix for s in started) == ["tsunagu:kyoto", "tsunagu:nagaokakyo"]
    assert {s.slack_staff_channel for s in started} == set(CHANNELS.values())
    assert len({s.bot_secret_key for s in started} | {SECRET}) == 3


def test_each_city_has_its_own_figures(cities, tmp_path, redis_url, key_prefix, monkeypatch,
                                      capsys):
    """`python -m bot stats --city <id>` reads that city's figures, and only those."""
    from bot import cli

    if not redis_url:
        pytest.skip("the stats CLI needs a Redis server")
    app, _ = cities
    walk_to_results(app.test_client(), "nagaokakyo", "loneliness")
    app.test_client().post("/c/kyoto/api/chat", json={"type": "start"})
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("BOT_SECRET_KEY", SECRET)
    monkeypatch.setenv("REDIS_KEY_PREFIX", key_prefix)
    monkeypatch.setenv("TSUNAGU_TENANTS", str(tmp_path / "tenants.yaml"))
    counts = {}
    for city in ("nagaokakyo", "kyoto"):
        assert cli.main(["stats", "--city", city, "--format", "json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        counts[city] = {(r["measure"], r["key"]): r["count"] for r in rows}
    assert counts["nagaokakyo"].get(("category", "loneliness")) == 1
    assert ("category", "loneliness") not in counts["kyoto"]
    assert cli.main(["stats", "--city", "osaka"]) == 2
