"""Security review, finding 11: headers, /metrics, the cookie behind a TLS proxy, the LINE
webhook's age check and key rotation — over the app's test client against a real Redis."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import Settings
from bot.crypto import Sealer
from bot.handoff.cases import CaseStore
from bot.handoff.models import CaseRequest
from bot.store import pseudonym
from bot.wiring import build
from server import create_app
from tests import line_helpers as lh
from tests.conftest import SECRET

WEB = Path(__file__).resolve().parents[1] / "bot" / "web"
NEW_KEY = "new-secret-" + "n" * 32


def _app(settings: Settings, redis_client):
    app = create_app(settings, services=build(settings, client=redis_client))
    app.config["TESTING"] = True
    return app


def test_every_response_carries_the_security_headers(client):
    responses = [client.get("/"), client.get("/static/chat.js"), client.get("/healthz"),
                 client.post("/api/chat", json={"type": "start"}),
                 client.post("/api/chat", data="not json"), client.get("/no-such-page")]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 400, 404]
    for resp in responses:
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, resp.request.path
        assert "default-src 'none'" in csp
        assert resp.headers.get("X-Frame-Options") == "DENY"
        assert resp.headers.get("Referrer-Policy") == "no-referrer"
        assert resp.headers.get("X-Content-Type-Options") == "nosniff"
        assert "camera=()" in resp.headers.get("Permissions-Policy", "")


def test_the_page_needs_nothing_the_policy_forbids(client):
    """No inline script to run, no inline style or event handler, nothing from elsewhere."""
    html = client.get("/").get_data(as_text=True)
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert "src=" in attrs or 'type="application/json"' in attrs, attrs
        assert "src=" not in attrs or not body.strip()
    assert not re.search(r"\sstyle=", html) and not re.search(r"\son[a-z]+=", html)
    assert "<style" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    js = "".join(p.read_text(encoding="utf-8") for p in (WEB / "static").glob("*.js"))
    assert "eval(" not in js and "new Function" not in js
    assert not re.search(r"setAttribute\(\s*[\"']style", js)


def test_metrics_without_a_token_only_for_loopback_not_through_a_proxy(client):
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 404
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 404


def test_metrics_with_a_token_need_it(settings, redis_client):
    token = "m" * 24
    client = _app(replace(settings, metrics_token=token), redis_client).test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {token}"},
                    environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert ok.status_code == 200 and b"tsunagu_" in ok.data


def _cookie(resp) -> str:
    return next(v for k, v in resp.headers.items() if k == "Set-Cookie"
                and v.startswith("tsunagu_visitor="))


def test_cookie_is_secure_behind_a_trusted_tls_proxy(settings, redis_client):
    behind = _app(replace(settings, trusted_proxies=1), redis_client).test_client()
    resp = behind.post("/api/chat", json={"type": "start"},
                       headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.4"})
    cookie = _cookie(resp)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert resp.headers.get("Strict-Transport-Security", "").startswith("max-age=")
    # Without a trusted proxy the same header is a client's claim and changes nothing.
    direct = _app(settings, redis_client).test_client()
    resp = direct.post("/api/chat", json={"type": "start"},
                       headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in _cookie(resp) and "HttpOnly" in _cookie(resp)


def test_old_line_event_is_not_answered(line_app, redis_client, key_prefix):
    """A captured webhook replayed after the 24 h de-dup window: signed, yet ignored."""
    app, fake = line_app
    client = app.test_client()
    user = "U" + "7" * 32
    old = lh.text("死にたい", user=user, ts_ms=int((time.time() - 25 * 3600) * 1000))
    body = lh.body(old)
    resp = client.post("/callback", data=body.encode(), content_type="application/json",
                       headers={"X-Line-Signature": lh.sign(body)})
    assert resp.status_code == 200
    fresh = lh.text("こんにちは", user="U" + "8" * 32)
    body = lh.body(fresh)
    client.post("/callback", data=body.encode(), content_type="application/json",
                headers={"X-Line-Signature": lh.sign(body)})
    got = fake.wait_for(1)
    time.sleep(0.3)
    assert len(fake.delivered()) == 1 and got[0].body.get("replyToken") == fresh["replyToken"]
    old_pid = pseudonym(SECRET, "line", user)
    assert list(redis_client.scan_iter(match=f"{key_prefix}:{{{old_pid}}}:*")) == []


def test_sealed_values_open_after_a_rotation():
    old, new = Sealer(SECRET), Sealer([NEW_KEY, SECRET])
    token = old.seal("U" + "9" * 32)
    assert new.open(token) == "U" + "9" * 32
    assert Sealer(NEW_KEY).open(token) is None  # the old key really is needed
    assert old.open(new.seal("x")) is None      # and new seals use the new key


def test_rotation_keeps_the_conversation_and_the_open_case(settings, redis_client, key_prefix):
    """A web visitor half-way through, and a LINE resident's open case, survive BOT_SECRET_KEY
    becoming BOT_SECRET_KEY_PREVIOUS; a new visitor gets the new key's pseudonym."""
    before = _app(settings, redis_client).test_client()
    before.post("/api/chat", json={"type": "start"})
    resp = before.post("/api/chat", json={"type": "tap", "value": "start", "state": "welcome"})
    assert resp.json["replies"][-1]["state"] == "whose"
    visitor = before.get_cookie("tsunagu_visitor").value
    user = "U" + "5" * 32
    old_cases = CaseStore(redis_client, key_prefix, Sealer(settings.secret_keys))
    line_pid = pseudonym(SECRET, "line", user)
    assert old_cases.open(CaseRequest(number="K-ROT1"), "line", line_pid, user) is not None

    rotated = replace(settings, bot_secret_key=NEW_KEY, previous_secret_keys=(SECRET,))
    app = _app(rotated, redis_client)
    after = app.test_client()
    after.set_cookie("tsunagu_visitor", visitor)
    resp = after.post("/api/chat", json={"type": "text", "text": "1"})
    assert resp.json["replies"][-1]["state"] == "age"  # carried on, not welcomed again
    services = app.extensions["tsunagu"]
    assert services.conversations.pseudonym("line", user) == line_pid
    new_cases = CaseStore(redis_client, key_prefix, Sealer(rotated.secret_keys))
    assert new_cases.address("K-ROT1") == user
    stranger = "f" * 32
    assert services.conversations.pseudonym("web", stranger) == pseudonym(NEW_KEY, "web",
                                                                          stranger)


@pytest.mark.parametrize(("env", "variable"), [
    ({"BOT_SECRET_KEY": "k" * 32, "BOT_SECRET_KEY_PREVIOUS": "short"},
     "BOT_SECRET_KEY_PREVIOUS"),
    ({"BOT_SECRET_KEY_PREVIOUS": "p" * 32}, "BOT_SECRET_KEY_PREVIOUS"),
    ({"METRICS_TOKEN": "abc"}, "METRICS_TOKEN"),
    ({"TRUSTED_PROXIES": "yes"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "9"}, "TRUSTED_PROXIES"),
    ({"LINE_MAX_EVENT_AGE_SECONDS": "999999"}, "LINE_MAX_EVENT_AGE_SECONDS"),
    ({"WEB_NEW_SESSIONS_PER_MINUTE": "0"}, "WEB_NEW_SESSIONS_PER_MINUTE"),
])
def test_security_settings_are_checked_at_start_up(env, variable):
    from bot.config import SettingsError

    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(variable + ":") and "\n" not in str(info.value)


def test_key_list_parses_newest_first():
    s = Settings.from_env({"BOT_SECRET_KEY": "a" * 32,
                           "BOT_SECRET_KEY_PREVIOUS": " " + "b" * 32 + " , " + "c" * 32})
    assert s.secret_keys == ("a" * 32, "b" * 32, "c" * 32)
