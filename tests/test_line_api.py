"""LineApi's own HTTP calls (one urllib3 pool, not the SDK's REST client): the same request
bytes and headers as the SDK sent, the SDK's exceptions with their status, connections reused."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from linebot.v3.messaging import ApiClient, ApiException, Configuration
from linebot.v3.messaging.exceptions import ServiceException, UnauthorizedException

from bot.channels.line_api import DeliveryPending, LineApi
from tests.fakes import net
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


# -- a deadline (the person lock's expiry) bounds every wait ------------------------------------

SLACK_S = 0.1  # between computing the time left and the socket call: scheduling, not waiting


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback address whose connections are never made (tests.fakes.net)."""
    with net.blackhole() as port:
        yield f"http://127.0.0.1:{port}"


def watch(api: LineApi, connect_delay_s: float = 0.0) -> list[tuple[str, float, float]]:
    """Record each socket wait a call makes — ("connect" or "read", when it starts, its
    timeout) — through the pool's connection class; `connect_delay_s`: a TCP connect that
    takes that long (of its timeout) to be made."""
    waits: list[tuple[str, float, float]] = []

    class Watched(api._pool.ConnectionCls):  # type: ignore[name-defined]
        def connect(self) -> None:
            waits.append(("connect", time.monotonic(), self.timeout))
            time.sleep(min(connect_delay_s, self.timeout))
            super().connect()

        def getresponse(self, *args, **kwargs):
            waits.append(("read", time.monotonic(), self.timeout))
            return super().getresponse(*args, **kwargs)

    api._pool.ConnectionCls = Watched
    return waits


@pytest.mark.parametrize("reply_token", ["rt", None])
def test_connect_tries_under_a_deadline_all_end_before_it(blackhole, reply_token):
    """LINE unreachable (every connect times out), 0.6 s left under the lock: the connect
    tries share the time left. Before, urllib3 retried each call 3 times with the timeout
    the call began with: 4 x 0.6 s of connecting for a reply, the push after it too."""
    api = LineApi(blackhole, "tok")
    waits = watch(api)
    deadline = time.monotonic() + 0.6
    with pytest.raises(DeliveryPending):
        api.deliver(USER, "ev-d", reply_token, 0.0, MESSAGES, deadline=deadline)
    assert waits and {kind for kind, _, _ in waits} == {"connect"}
    late = [(round(at + timeout - deadline, 3)) for _, at, timeout in waits
            if at + timeout > deadline + SLACK_S]
    assert not late, f"waits ending after the deadline by (s): {late}"
    api.close()


def test_with_time_enough_a_connection_is_still_tried_four_times(blackhole):
    """The deadline only shortens the tries: far away, each of the 4 connects gets the whole
    connect timeout (as without a deadline), and none is made."""
    from urllib3.exceptions import MaxRetryError

    api = LineApi(blackhole, "tok", timeout=(0.2, 0.2))
    waits = watch(api)
    with pytest.raises(MaxRetryError):
        api._post("/v2/bot/message/push", {"to": USER, "messages": MESSAGES},
                  timeout=api.timeout, deadline=time.monotonic() + 60)
    assert [(kind, timeout) for kind, _, timeout in waits] == [("connect", 0.2)] * 4
    api.close()


def test_a_slow_connect_leaves_the_read_only_the_time_left():
    """A connect that took 0.4 s of the 0.8 s left: the wait for LINE's answer gets the
    rest (urllib3's Timeout total), not the 0.8 s the call began with. LINE never answers,
    so the reply is not known to be delivered: pending, not pushed."""
    silent = socket.socket()  # accepts (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    api = LineApi(f"http://127.0.0.1:{silent.getsockname()[1]}", "tok")
    waits = watch(api, connect_delay_s=0.4)
    deadline = time.monotonic() + 0.8
    with pytest.raises(DeliveryPending):
        api.deliver(USER, "ev-s", "rt", 0.0, MESSAGES, deadline=deadline)
    assert [kind for kind, _, _ in waits] == ["connect", "read"]
    late = [(kind, round(at + timeout - deadline, 3)) for kind, at, timeout in waits
            if at + timeout > deadline + SLACK_S]
    assert not late, f"waits ending after the deadline by (s): {late}"
    api.close()
    silent.close()


def test_loading_is_not_shown_without_time_left(recorder):
    """The loading animation runs under the lock too: with no time left it is skipped."""
    got, _answers, url, _ = recorder
    api = LineApi(url, "tok")
    api.show_loading(USER, deadline=time.monotonic())
    api.show_loading(USER, deadline=time.monotonic() + 5)
    assert len(got) == 1
    api.close()


@pytest.fixture
def slow_dns(monkeypatch) -> Iterator[tuple[dict[str, int], set[str]]]:
    """A resolver where `<name>.test` is 127.0.0.1: at once, or (names in the returned set)
    only once released at the end of the test — a DNS that hangs (getaddrinfo has no timeout
    of its own). Also returns how many lookups each name had."""
    real = socket.getaddrinfo
    calls: dict[str, int] = {}
    slow: set[str] = set()
    release = threading.Event()

    def getaddrinfo(host, port, *args, **kwargs):
        if not str(host).endswith(".test"):
            return real(host, port, *args, **kwargs)
        calls[host] = calls.get(host, 0) + 1
        if host in slow:
            release.wait(10)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield calls, slow
    release.set()


def test_a_hanging_name_lookup_ends_the_call_before_its_deadline(recorder, slow_dns):
    """urllib3 resolves the host before the connect, outside every timeout: a DNS that hangs
    held the call (and the person lock) past the deadline — here until the lookup answered,
    then the push went out after the lock had expired. Now the lookup waits at most the
    connect's time, and the four connect tries share one lookup."""
    got, _answers, url, _ = recorder
    calls, slow = slow_dns
    slow.add("hanging.test")
    api = LineApi(url.replace("127.0.0.1", "hanging.test"), "tok")
    started = time.monotonic()
    deadline = started + 0.8
    with pytest.raises(DeliveryPending):
        api.deliver(USER, "ev-dns", None, 0.0, MESSAGES, deadline=deadline)
    took = time.monotonic() - started
    print(f"\nhanging DNS, 0.8 s left: the call ended after {took:.2f} s")
    assert took < 0.8 + SLACK_S
    assert not got, "nothing sent"
    assert calls == {"hanging.test": 1}, "one lookup at a time per name"
    api.close()


def test_a_slow_lookup_connects_to_the_name_s_last_address(recorder, slow_dns):
    """A resolver that stops answering does not stop new connections to LINE: the name's
    last answer is used once the wait is over."""
    got, _answers, url, _ = recorder
    _calls, slow = slow_dns
    url = url.replace("127.0.0.1", "stale.test")
    first = LineApi(url, "tok")
    assert first.deliver(USER, "ev-1", None, 0.0, MESSAGES) == "push"
    first.close()
    slow.add("stale.test")
    api = LineApi(url, "tok", timeout=(0.3, 2.0))   # a new connection: a new lookup
    started = time.monotonic()
    assert api.deliver(USER, "ev-2", None, 0.0, MESSAGES,
                       deadline=started + 1.5) == "push"
    took = time.monotonic() - started
    assert 0.15 <= took < 0.3 + SLACK_S, took   # half the connect time waited, then sent
    assert len(got) == 2
    api.close()


def test_over_tls_the_certificate_is_checked_against_the_name(recorder, slow_dns, tmp_path):
    """The connect goes to the address the lookup found; TLS still sends and verifies the
    host's name (SNI, the certificate's name), as urllib3 does: a certificate for another
    name is refused."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    got, _answers, url, server = recorder
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    apis = []
    for name in ("tls.test", "other.test"):
        api = LineApi(url.replace("http://127.0.0.1", f"https://{name}"), "tok", backoff=())
        api._pool.ca_certs = str(cert)  # type: ignore[attr-defined]
        apis.append(api)
    assert apis[0].deliver(USER, "ev-tls", None, 0.0, MESSAGES) == "push"
    with pytest.raises(DeliveryPending):
        apis[1].deliver(USER, "ev-other", None, 0.0, MESSAGES)
    assert len(got) == 1
    for api in apis:
        api.close()
