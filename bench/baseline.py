"""The yardstick: a minimal signature-verifying LINE echo bot on the same SDK and server.

It does the least any LINE bot must do — verify `X-Line-Signature` with line-bot-sdk v3's
WebhookParser and reply with the reply token — synchronously inside the webhook, with no
Redis, no durability and no dialogue. tsunagu's figures are reported as ratios to it, because
on a shared, noisy machine only figures from the same run compare.

Served by gunicorn exactly like the real app (`gunicorn --pythonpath bench baseline:app` from
the repo root, so ./gunicorn.conf.py sets the same workers and threads); reads
LINE_CHANNEL_SECRET, LINE_CHANNEL_ACCESS_TOKEN and LINE_API_BASE_URL.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, request
from linebot.v3 import WebhookParser
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    ApiClient,
    ApiException,
    Configuration,
    MessagingApi,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.webhooks import Event, FollowEvent, MessageEvent, PostbackEvent

TIMEOUT = (2.0, 5.0)  # connect, read: the same as tsunagu's LINE calls


def echo_of(event: Event) -> str | None:
    """What to say back: the postback data or the text; a greeting on follow."""
    if isinstance(event, PostbackEvent):
        return event.postback.data
    if isinstance(event, MessageEvent):
        return getattr(event.message, "text", None) or event.message.type
    if isinstance(event, FollowEvent):
        return "hello"
    return None


def create_app() -> Flask:
    parser = WebhookParser(os.environ["LINE_CHANNEL_SECRET"])
    host = os.environ.get("LINE_API_BASE_URL", "https://api.line.me").rstrip("/")
    config = Configuration(host=host, access_token=os.environ["LINE_CHANNEL_ACCESS_TOKEN"])
    api = MessagingApi(ApiClient(config))  # one pooled client for all threads, as tsunagu
    app = Flask(__name__)

    @app.post("/callback")
    def callback() -> Response:
        signature = request.headers.get("X-Line-Signature", "")
        try:
            events = parser.parse(request.get_data(as_text=True), signature)
        except InvalidSignatureError:
            return Response("invalid signature", status=400, mimetype="text/plain")
        for event in events:
            text, token = echo_of(event), getattr(event, "reply_token", None)
            if text is None or not token:
                continue
            try:
                api.reply_message_with_http_info(
                    ReplyMessageRequest(reply_token=token, messages=[TextMessage(text=text)]),
                    _request_timeout=TIMEOUT, _preload_content=False)
            except ApiException as exc:
                app.logger.warning("reply failed: %s", exc.status)
            except Exception as exc:  # urllib3 timeouts: the echo bot just moves on
                app.logger.warning("reply failed: %s", type(exc).__name__)
        return Response("OK", status=200, mimetype="text/plain")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    return app


def __getattr__(name: str) -> Any:
    """Build `app` when gunicorn asks for it, not on every import (as server.py does)."""
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
