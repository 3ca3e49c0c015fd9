"""LineApi's own HTTP calls (one urllib3 pool, not the SDK's REST client): the same request
bytes and headers as the SDK sent, the SDK's exceptions with their status, connections reused."""

from __future__ import annotations

import socket
import threading

import pytest
from linebot.v3.messaging import ApiClient, ApiException, Configuration
from linebot.v3.messaging.exceptions import ServiceException, UnauthorizedException

from bot.channels.line_api import LineApi
from tests.fakes.http import serve_json

USER = "U" + "d" * 32
MESSAGES = [{"type": "text", "text": "こんにちは 😊 \"quoted\"\n", "quickReply": {"items": [
    {"type": "action", "action": {"type": "postback", "label": "はい",
                                  "data": '{"s":"q","v":"yes"}', "displayText": "はい"}}]}}]


@pytest.fixture
def recorder():
    """A loopback API that answers `answers` in turn (then 200) and keeps every raw request."""
    got: list[tuple[str, bytes, dict]] = []
    answers: list[int] = []
    lock = threading.Lock()

    def handle(path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        with lock:
            got.append((path, raw, headers))
            return (answers.pop(0) if answers else 200), {"message": "m"}

    server, url = serve_json(handle)
    yield got, answers, url, server
    server.shutdown()


def _sdk_post(url: str, path: str, body: dict, retry_key: str | None = None) -> None:
    """The call as LineApi made it before, through line-bot-sdk's REST client."""
    client = ApiClient(Configuration(host=url, access_token="tok"))
    headers = {"Authorization": "Bearer tok", "Content-Type": "application/json",
               "User-Agent": client.user_agent}
    if retry_key:
        headers["X-Line-Retry-Key"] = retry_key
    client.rest_client.request("POST", url + path, headers=headers, body=body,
                               _preload_content=False, _request_timeout=(2.0, 5.0))


def test_line_receives_the_request_the_sdk_sent(recorder):
    """Same path, body bytes and headers (User-Agent, retry key, lengths) as before."""
    got, _answers, url, _ = recorder
    api = LineApi(url, "tok")
    key = api.retry_key("ev-1")
    for path, body in (("/v2/bot/message/reply", {"replyToken": "rt", "messages": MESSAGES}),
                       ("/v2/bot/message/push", {"to": USER, "messages": MESSAGES})):
        retry = key if path.endswith("/push") else None
        _sdk_post(url, path, body, retry)
        api._post(path, body, timeout=(2.0, 5.0), retry_key=retry)
    assert api.deliver(USER, "ev-1", "rt", 0.0, MESSAGES) == "reply"
    assert len(got) == 5
    for before, now in ((got[0], got[1]), (got[2], got[3]), (got[0], got[4])):
        assert now == before
    assert got[2][2]["x-line-retry-key"] == key
    assert got[1][2]["user-agent"].startswith("line-bot-sdk-python/")
    api.close()


def test_a_base_url_with_a_path_keeps_it(recorder):
    got, _answers, url, _ = recorder
    api = LineApi(url + "/line/", "tok")
    api.show_loading(USER)
    assert [path for path, _, _ in got] == ["/line/v2/bot/chat/loading/start"]


@pytest.mark.parametrize(("status", "kind"), [(400, ApiException), (401, UnauthorizedException),
                                              (409, ApiException), (429, ApiException),
                                              (503, ServiceException)])
def test_a_non_2xx_raises_the_sdks_exception_with_its_status(recorder, status, kind):
    _got, answers, url, _ = recorder
    answers.append(status)
    api = LineApi(url, "tok")
    with pytest.raises(ApiException) as caught:
        api._post("/v2/bot/message/push", {"to": USER, "messages": MESSAGES}, timeout=(1.0, 1.0))
    assert type(caught.value) is kind and caught.value.status == status
    api._post("/v2/bot/message/push", {"to": USER, "messages": MESSAGES}, timeout=(1.0, 1.0))
    api.close()


def test_a_2xx_other_than_200_is_taken(recorder):
    _got, answers, url, _ = recorder
    answers.append(202)
    assert LineApi(url, "tok").deliver(USER, "ev-2", None, 0.0, MESSAGES) == "push"


def test_connections_to_line_are_reused(recorder):
    """LINE keeps connections open (HTTP/1.1): each answer read releases its connection to
    the pool, so a second call makes no new connection (the SDK's client made one per call)."""
    got, _answers, url, server = recorder
    server.RequestHandlerClass.protocol_version = "HTTP/1.1"
    api = LineApi(url, "tok")
    for n in range(5):
        assert api.deliver(USER, f"ev-{n}", f"rt-{n}", 0.0, MESSAGES) == "reply"
    assert len(got) == 5
    assert api._pool.num_connections == 1
    api.close()


def test_a_connection_that_cannot_be_made_is_tried_as_the_sdk_did():
    """Nothing was sent: urllib3 tries 3 more times at once (the SDK's PoolManager default),
    then the error says no connection was made (sent_maybe is False)."""
    from urllib3.exceptions import MaxRetryError

    from bot.channels.line_api import sent_maybe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = LineApi(f"http://127.0.0.1:{port}", "tok")
    with pytest.raises(MaxRetryError) as caught:
        api._post("/v2/bot/message/reply", {"replyToken": "t", "messages": MESSAGES},
                  timeout=(1.0, 1.0))
    assert api._pool.num_connections == 4
    assert not sent_maybe(caught.value)
