"""The city's figures: exact counts after scripted conversations, against a real Redis."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta

import pytest
import redis

from bot import cli, figures
from bot.service import utcnow
from tests import line_helpers as lh
from tests.conftest import SECRET

TYPED = "ふわりもこもこのぽてと"  # free text nobody may find in the figures


@pytest.fixture
def pack():
    """The pack the test apps serve (the default one): these tests are about the figures of
    one running city, not about every pack's flow."""
    from bot.pack import load_pack
    from bot.pack.loader import default_pack_name

    return load_pack(default_pack_name())


def totals(rows) -> Counter:
    out: Counter = Counter()
    for r in rows:
        out[r.measure, r.key] += r.count
    return out


def settled(figures_store, cell: tuple[str, str], n: int) -> Counter:
    """The totals once `cell` reaches n: a LINE answer is sent just before its session (and
    the counts riding with it) is saved, so a test may look a moment too early."""
    import time

    for _ in range(250):
        got = totals(figures_store.read(*around_today()))
        if got[cell] >= n:
            break
        time.sleep(0.02)
    return got


def around_today() -> tuple[date, date]:
    """Yesterday to tomorrow in Tokyo: a test that runs across midnight still sees its counts."""
    today = date.fromisoformat(figures.tokyo_day(utcnow())[0])
    return today - timedelta(days=1), today + timedelta(days=1)


class Web:
    """One web visitor (own cookie jar), tapping by state and value."""

    def __init__(self, app):
        self.client = app.test_client()
        self.state = None

    def send(self, body: dict) -> dict:
        resp = self.client.post("/api/chat", json=body)
        assert resp.status_code == 200
        questions = [r for r in resp.json["replies"] if r["type"] == "question"]
        if questions:
            self.state = questions[-1]["state"]
        return resp.json

    def start(self):
        return self.send({"type": "start"})

    def tap(self, *values: str):
        for value in values:
            data = self.send({"type": "tap", "value": value, "state": self.state})
        return data

    def text(self, text: str):
        return self.send({"type": "text", "text": text})


def script_web(app, pack) -> list[dict]:
    """Four residents on the web; returns every reply they saw."""
    ward = pack.wards.wards[0].id
    seen = []
    a = Web(app)  # completes: hikikomori first, poverty after, a ward, by phone
    seen.append(a.start())
    seen.append(a.tap("start", "self", "18_39", "hikikomori", "long", "open", "poverty", "no"))
    seen.append(a.tap("none", ward, "phone"))
    b = Web(app)  # family, types an answer, then says stop at the ward question
    seen.append(b.start())
    seen.append(b.tap("start", "family"))
    seen.append(b.text("1"))          # understood: the first age band
    seen.append(b.tap("loneliness"))
    seen.append(b.text(TYPED))        # not understood: asked again
    seen.append(b.tap("none"))
    seen.append(b.text("やめる"))
    c = Web(app)  # starts and goes quiet at the first question
    seen.append(c.start())
    seen.append(c.tap("start"))
    d = Web(app)  # a crisis as first words
    seen.append(d.text("死にたい"))
    return seen


def test_scripted_web_conversations_give_exact_counts(app, services, pack):
    script_web(app, pack)
    got = totals(services.figures.read(*around_today()))
    expected = {
        ("contacts", "web"): 4,
        ("conversations_started", "web"): 2,
        ("started_language", "ja"): 2,
        ("conversations_completed", "web"): 1,
        ("completed_language", "ja"): 1,
        ("whose", "self"): 1, ("whose", "family"): 1,
        ("age", "18_39"): 1, ("age", "u18"): 1,
        ("category", "hikikomori"): 1, ("category_primary", "hikikomori"): 1,
        ("category", "poverty"): 1, ("category_other", "poverty"): 1,
        ("category", "loneliness"): 1, ("category_primary", "loneliness"): 1,
        ("ward", pack.wards.wards[0].id): 1,
        ("contact", "phone"): 1,
        ("text", "understood"): 1, ("text", "not_understood"): 1,
        ("command", "stop"): 1,
        ("quit", "ward"): 1,
        ("stopped_at", "whose"): 1,
        ("stopped_at", "ward"): 1,
        ("reached", "welcome"): 4 + 1,  # four strangers and one after stop
        ("reached", "results"): 1,
        ("reached", "whose"): 3,
        ("left", "whose"): 2,
    }
    for cell, n in expected.items():
        assert got[cell] == n, (cell, got[cell], n)
    crisis = {k: n for (m, k), n in got.items() if m == "crisis"}
    assert sum(crisis.values()) == 1
    assert sum(n for (m, _), n in got.items() if m == "hour") == 2
    shown = {k for (m, k), _ in got.items() if m == "window_shown"}
    assert shown and shown <= set(pack.windows)
    # No other measure than those documented, no typed text anywhere.
    assert {m for m, _ in got} <= set(figures.MEASURES)


def test_stats_cli_csv_json_table_and_publish(app, services, pack, settings, monkeypatch,
                                              capsys, redis_client, key_prefix):
    script_web(app, pack)
    since, until = around_today()
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("BOT_SECRET_KEY", SECRET)
    monkeypatch.setenv("REDIS_KEY_PREFIX", key_prefix)
    args = ["stats", "--since", since.isoformat(), "--until", until.isoformat()]
    if not settings.redis_url:
        pytest.skip("the stats CLI needs a Redis server")
    assert cli.main([*args, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "date,measure,key,count"
    today = figures.tokyo_day(utcnow())[0]
    assert f"{today},category,hikikomori,1" in lines or f"{since},category,hikikomori,1" in out
    assert any(line.endswith(",contacts,web,4") for line in lines)
    # Nothing that leads back to a person: no pseudonym, no typed text.
    pseudonyms = {k.decode().split("{")[1].split("}")[0]
                  for k in redis_client.scan_iter(match=f"{key_prefix}:*:session")}
    assert pseudonyms
    for p in pseudonyms:
        assert p not in out and p[:16] not in out
    assert TYPED not in out and "死にたい" not in out

    assert cli.main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"date", "measure", "key", "count"} == set(data[0])
    assert sum(r["count"] for r in data if r["measure"] == "contacts") == 4

    assert cli.main([*args, "--format", "table"]) == 0
    assert "conversations_started" in capsys.readouterr().out

    small = pack.msg("figures.small_cell", "ja")
    assert cli.main([*args, "--format", "csv", "--publish"]) == 0
    published = capsys.readouterr().out.splitlines()[1:]
    assert published
    for line in published:
        count = line.rsplit(",", 1)[1]
        assert count == small or int(count) >= figures.SMALL_CELL, line
    assert any(line.endswith(f",category,hikikomori,{small}") for line in published)
    # A cell of 5 or more is shown as it is.
    services.figures.count(utcnow(), [("category", "elderly")] * 7)
    assert cli.main([*args, "--format", "csv", "--publish"]) == 0
    assert any(line.endswith(",category,elderly,7") for line in capsys.readouterr().out
               .splitlines())


def test_stats_cli_refuses_bad_dates(monkeypatch, settings, capsys):
    if not settings.redis_url:
        pytest.skip("the stats CLI needs a Redis server")
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BOT_SECRET_KEY", SECRET)
    assert cli.main(["stats", "--since", "2026-13-01"]) == 2
    assert cli.main(["stats", "--since", "2026-11-02", "--until", "2026-11-01"]) == 2


def test_counts_are_kept_400_days_under_a_day_hash_tag(app, services, pack, redis_client,
                                                       key_prefix):
    Web(app).start()
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}:{{fig:*}}:counts")]
    assert len(keys) in (1, 2)
    ttl = redis_client.ttl(keys[0])
    assert 399 * 86400 < ttl <= 400 * 86400
    fields = [f.decode() for f in redis_client.hkeys(keys[0])]
    assert all(f.split("|")[0] in figures.MEASURES for f in fields)


def test_line_conversations_are_counted_like_the_web(line_app, pack):
    app, fake = line_app
    client = app.test_client()
    user = "U" + "7" * 32

    def post(ev):
        body = lh.body(ev)
        resp = client.post("/callback", data=body.encode(),
                           headers={"X-Line-Signature": lh.sign(body)},
                           content_type="application/json")
        assert resp.status_code == 200

    post(lh.event("follow", user=user))
    fake.wait_for(1)
    steps = [("welcome", "start"), ("whose", "friend"), ("age", "65_plus"),
             ("concern", "elderly"), ("more", "none"), ("ward", "skip"), ("contact", "visit")]
    for n, (state, value) in enumerate(steps, start=2):
        post(lh.tap(state, value, user=user))
        fake.wait_for(n)
    services = app.extensions["tsunagu"]
    got = settled(services.figures, ("contact", "visit"), 1)
    assert got["contacts", "line"] == 1
    assert got["conversations_started", "line"] == 1
    assert got["conversations_completed", "line"] == 1
    assert got["whose", "friend"] == 1 and got["age", "65_plus"] == 1
    assert got["category_primary", "elderly"] == 1 and got["ward", "skip"] == 1
    assert got["contact", "visit"] == 1
    assert got["contacts", "web"] == 0


def test_counting_never_costs_an_answer(app, services, pack, monkeypatch):
    """A failure while counting (here: every HINCRBY refused) loses the count, not the answer;
    and a Redis that is down entirely still gives the degraded answer."""
    def broken(*_a, **_k):
        raise RuntimeError("counting bug")

    monkeypatch.setattr(figures, "tally", broken)
    visitor = Web(app)
    data = visitor.start()
    assert any(r["type"] == "question" for r in data["replies"])
    data = visitor.tap("start")
    assert visitor.state == "whose"
    monkeypatch.undo()
    # Redis unreachable: the figures' own writes fail quietly; the conversation still answers.
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    lost = figures.Figures(dead, "x")
    lost.count(utcnow(), [("feedback", "yes")])  # does not raise
    services.conversations.figures = lost
    services.store.redis = dead
    data = Web(app).text("死にたい")
    assert any(r["type"] == "cards" for r in data["replies"])


def test_staff_side_figures_claim_first_answer_resolve_expire(redis_client, key_prefix):
    from datetime import UTC, datetime

    from bot.crypto import Sealer
    from bot.handoff.cases import CaseStore
    from bot.handoff.models import CaseRequest

    start = datetime(2026, 11, 24, 1, 0, tzinfo=UTC).timestamp()  # 10:00 in Tokyo
    now = [start]
    cases = CaseStore(redis_client, key_prefix, Sealer(SECRET), expire_after_s=86400,
                      clock=lambda: now[0])
    cases.open(CaseRequest(number="K-FIG1"), "line", "pid-1", "U-addr")
    cases.open(CaseRequest(number="K-FIG2"), "web", "pid-2", "w-addr")
    cases.open(CaseRequest(number="K-FIG3"), "web", "pid-3", "w-addr")
    assert cases.claim("K-FIG1", "staff-a")[0]
    assert not cases.claim("K-FIG1", "staff-b")[0]    # the loser is not counted
    now[0] += 2 * 3600                                # first answer after two hours
    cases.staff_reply("K-FIG1", "staff-a", "hello")
    cases.staff_reply("K-FIG1", "staff-a", "again")   # only the first answer is timed
    now[0] += 600
    cases.staff_reply("K-FIG2", "staff-b", "hi")      # claims by answering, 2h10m
    cases.resolve("K-FIG1", "staff-a")
    now[0] += 86400
    cases.expire_stale()                              # K-FIG2 and K-FIG3 expire
    day = figures.Figures(redis_client, key_prefix)
    got = totals(day.read(date(2026, 11, 24), date(2026, 11, 25)))
    assert got["handoff_claimed", "line"] == 1 and got["handoff_claimed", "web"] == 1
    assert got["handoff_first_reply", "1h_4h"] == 2
    assert sum(n for (m, _), n in got.items() if m == "handoff_first_reply") == 2
    assert got["handoff_resolved", "line"] == 1
    assert got["handoff_expired", "web"] == 2
    # Only the day: the 10:00 claim and the next day's expiry land on their own Tokyo dates.
    first = totals(day.read(date(2026, 11, 24), date(2026, 11, 24)))
    assert first["handoff_expired", "web"] == 0 and first["handoff_claimed", "line"] == 1


def test_every_measure_is_listed_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for measure in figures.MEASURES:
        assert f"| `{measure}` |" in readme, measure


def test_counting_adds_no_round_trip_per_message(redis_url):
    """Counted in the pipeline that saves the session: the same round trips with or without
    figures (bench/roundtrips.py prints the figures for a larger run)."""
    if not redis_url:
        pytest.skip("needs a Redis server")
    from bench.roundtrips import run

    with_n, with_trips = run(redis_url, 3, counting=True)
    without_n, without_trips = run(redis_url, 3, counting=False)
    assert with_n == without_n > 0
    assert with_trips == without_trips
