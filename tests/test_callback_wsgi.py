"""LINE's webhook answered without Flask (bot.channels.line_webhook.Callback): the same limits,
headers and failures as every other response of the app. Real app, real Redis, fake LINE."""

from __future__ import annotations

import io
import logging
from dataclasses import replace

from werkzeug.test import EnvironBuilder, run_wsgi_app

from bot.web.headers import SECURITY_HEADERS
from bot.wiring import build
from server import MAX_BODY, create_app
from tests import line_helpers as lh

USER = "U" + "4" * 32


def _post(client, body: str, signature: str | None = None, **kw):
    sig = lh.sign(body) if signature is None else signature
    return client.post("/callback", data=body.encode(), content_type="application/json",
                       headers={"X-Line-Signature": sig, **kw.pop("headers", {})}, **kw)


def test_webhook_answer_carries_the_security_headers(line_app):
    app, fake = line_app
    resp = _post(app.test_client(), lh.body(lh.text("こんにちは", user=USER)))
    assert resp.status_code == 200 and resp.data == b"OK"
    assert resp.headers["Content-Type"].startswith("text/plain")
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, name
    assert "Strict-Transport-Security" not in resp.headers  # plain HTTP, no proxy
    assert len(fake.wait_for(1)) == 1  # and the event is answered


def test_refusals_count_per_forwarded_address_behind_a_trusted_proxy(line_app):
    """The proxy headers are read before the webhook: each client behind the proxy has its
    own budget of refused requests, and HTTPS as the client used it brings HSTS."""
    app, _ = line_app
    settings = app.extensions["tsunagu"].settings
    behind = create_app(replace(settings, trusted_proxies=1, line_dispatch_threads=1),
                        services=build(replace(settings, trusted_proxies=1),
                                       client=app.extensions["tsunagu"].redis),
                        start_workers=False)
    client = behind.test_client()
    limit = behind.extensions["tsunagu_line"].refusals_per_minute
    body = lh.body(lh.text("hi"))

    def forged(address: str) -> int:
        return _post(client, body, "forged", headers={"X-Forwarded-For": address,
                                                      "X-Forwarded-Proto": "https"}).status_code

    assert [forged("192.0.2.10") for _ in range(limit)] == [400] * limit
    assert forged("192.0.2.10") == 429
    assert forged("192.0.2.11") == 400  # another client behind the same proxy
    resp = _post(client, body, "forged", headers={"X-Forwarded-For": "192.0.2.12",
                                                  "X-Forwarded-Proto": "https"})
    assert resp.headers.get("Strict-Transport-Security", "").startswith("max-age=")


def test_a_body_without_length_over_the_limit_is_413(line_app):
    """Chunked (no Content-Length): read only up to the limit, then refused."""
    app, _ = line_app
    raw = b"x" * (MAX_BODY + 10)
    environ = EnvironBuilder(path="/callback", method="POST",
                             headers={"X-Line-Signature": "s"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(raw)
    _, status, _ = run_wsgi_app(app, environ)
    assert status.startswith("413")


def test_an_unexpected_error_is_a_named_500_without_what_was_typed(line_app, caplog):
    app, _ = line_app
    line = app.extensions["tsunagu_line"]
    typed = "秘密の話をしたい"

    def broken(*args, **kwargs):
        raise RuntimeError(typed)

    line.queue.accept = broken
    with caplog.at_level(logging.INFO):
        resp = _post(app.test_client(), lh.body(lh.text(typed, user=USER)))
    assert resp.status_code == 500
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "'where': 'line.webhook'" in logged and typed not in logged


def test_only_post_is_the_webhook(line_app):
    app, fake = line_app
    resp = app.test_client().get("/callback")
    assert resp.status_code in (404, 405)
    assert fake.delivered() == []
