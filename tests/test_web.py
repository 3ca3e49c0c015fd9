"""The web chat over Flask's test client, against a real Redis."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from bot.replies import offers_a_way_on


def _values(data):
    q = [r for r in data["replies"] if r["type"] == "question"][-1]
    return q, [c["value"] for c in q["choices"]]


def test_page_is_served_with_pack_texts(client, services):
    pack = services.pack
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert pack.msg("web.title", "ja") in html
    assert 'name="viewport"' in html and 'aria-live="polite"' in html
    assert client.get("/static/chat.js").status_code == 200


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"] == {"content": True, "redis": True}


def test_chat_round_trip_to_results(client):
    resp = client.post("/api/chat", json={"type": "start"})
    assert resp.status_code == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "tsunagu_visitor=" in cookie
    q, values = _values(resp.json)
    assert q["state"] == "welcome"
    for value in ("start", "self", "18_39", "loneliness", "none", "skip", "info"):
        q, values = _values(resp.json)
        assert value in values, (q["state"], values)
        resp = client.post("/api/chat", json={"type": "tap", "value": value,
                                              "state": q["state"]})
        assert resp.status_code == 200
    q, _ = _values(resp.json)
    assert q["state"] == "results"
    cards = [c for r in resp.json["replies"] if r["type"] == "cards" for c in r["cards"]]
    assert cards and all(c["name"] for c in cards)
    assert any(c["tel"] for c in cards)


def test_typing_works_like_tapping(client):
    client.post("/api/chat", json={"type": "start"})
    resp = client.post("/api/chat", json={"type": "text", "text": "1"})
    q, _ = _values(resp.json)
    assert q["state"] == "whose"


def test_malformed_requests_get_400_and_nothing_is_stored(client, redis_client, key_prefix):
    bad = [
        ("not json", "text/plain"),
        ("[1,2]", "application/json"),
        ('{"type": "text"}', "application/json"),
        ('{"type": "text", "text": ""}', "application/json"),
        ('{"type": "text", "text": "' + "あ" * 2001 + '"}', "application/json"),
        ('{"type": "tap"}', "application/json"),
        ('{"type": "nope"}', "application/json"),
    ]
    for body, ctype in bad:
        resp = client.post("/api/chat", data=body, content_type=ctype)
        assert resp.status_code == 400, body[:40]
        assert "error" in resp.json
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*")) == []


def test_every_web_reply_offers_a_way_on(client):
    from pydantic import TypeAdapter

    from bot.replies import Reply

    adapter = TypeAdapter(list[Reply])
    for body in ({"type": "start"}, {"type": "text", "text": "???"},
                 {"type": "tap", "value": "bogus", "state": "welcome"}):
        resp = client.post("/api/chat", json=body)
        assert offers_a_way_on(adapter.validate_python(resp.json["replies"]))


def test_two_visitors_have_separate_sessions(app):
    a, b = app.test_client(), app.test_client()
    a.post("/api/chat", json={"type": "start"})
    a.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    resp = b.post("/api/chat", json={"type": "text", "text": "1"})
    q, _ = _values(resp.json)
    assert q["state"] == "welcome"  # b is new: the stranger gets the welcome


def test_metrics_count_without_personal_data(client, settings):
    client.post("/api/chat", json={"type": "start"})
    client.post("/api/chat", json={"type": "text", "text": "死にたい"})
    text = client.get("/metrics").get_data(as_text=True)
    city = settings.municipality  # a single-city deployment: its pack id
    shown = {(s.name, tuple(sorted(s.labels.items())))
             for family in text_string_to_metric_families(text) for s in family.samples}
    assert ("tsunagu_events_total",
            (("channel", "web"), ("city", city), ("kind", "text"))) in shown
    assert ("tsunagu_crisis_replies_total", (("city", city), ("kind", "self_harm"))) in shown
    assert "tsunagu_answer_seconds_bucket" in text
    assert "死にたい" not in text and "tsunagu_visitor" not in text


def test_free_text_is_confirmed_with_ordinary_buttons(client):
    """Issue 9 on the web: a sentence → 「…のことですね？」 with はい/ちがう as normal choices."""
    resp = client.post("/api/chat", json={"type": "text",
                                          "text": "40代の息子が10年以上ひきこもっています"})
    q, values = _values(resp.json)
    assert q["state"] == "triage" and values[:2] == ["yes", "no"]
    resp = client.post("/api/chat", json={"type": "tap", "value": "yes", "state": "triage"})
    q, _ = _values(resp.json)
    assert q["state"] == "hiki_contact"  # whose, age, worry and duration came from the text


# --- the page opened again, language, データを消す (issue 10) ---


def test_open_starts_in_the_asked_language_then_returns_to_the_place(client, services):
    pack = services.pack
    resp = client.post("/api/chat", json={"type": "open", "lang": "en"})
    assert resp.json["lang"] == "en" and not resp.json["resumed"]
    q, _ = _values(resp.json)
    assert q["text"] == pack.msg("welcome.body", "en")
    client.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    again = client.post("/api/chat", json={"type": "open"})
    q, _ = _values(again.json)
    assert q["state"] == "whose" and again.json["resumed"] and again.json["lang"] == "en"


def test_open_with_an_unknown_language_is_malformed(client):
    assert client.post("/api/chat", json={"type": "open", "lang": "fr"}).status_code == 400


def test_forget_tells_the_page_to_clear(client):
    client.post("/api/chat", json={"type": "start"})
    resp = client.post("/api/chat", json={"type": "text", "text": "データを消す"})
    assert resp.json["cleared"] is True
    assert client.post("/api/chat", json={"type": "open"}).json["cleared"] is False


def test_page_frame_follows_lang_and_carries_both_languages(client, services):
    pack = services.pack
    html = client.get("/?lang=en").get_data(as_text=True)
    assert '<html lang="en">' in html and pack.msg("web.title", "en") in html
    frame = json.loads(html.split('<script id="frame" type="application/json">')[1]
                       .split("</script>")[0])
    assert frame["ja"]["placeholder"] == pack.msg("web.placeholder", "ja")  # switch, no reload
    ja = client.get("/").get_data(as_text=True)
    assert '<html lang="ja">' in ja
    # A strict Content-Security-Policy works: no inline script or style, no handlers.
    assert "style=" not in ja and "<style" not in ja and " onclick" not in ja
    scripts = [part.split(">")[0] for part in ja.split("<script")[1:]]
    assert all("src=" in s or 'type="application/json"' in s for s in scripts), scripts
    # The emergency bar names 110, 119 and one 24-hour line from the pack.
    assert 'href="tel:110"' in ja and 'href="tel:119"' in ja
