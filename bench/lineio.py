"""`python -m bench.lineio`: the CPU of the LINE channel's own I/O, per call, in this process.

- calls: one reply through `LineApi.deliver` against the tests' fake LINE API on loopback, in
  its own process (HTTP/1.0, a new connection per call, as in `make bench`; `--keepalive`:
  HTTP/1.1 as LINE speaks), next to the same POST through line-bot-sdk's REST client (what
  `LineApi` used before) — alternately in the same run, so the figures compare on a noisy
  machine.
- parse: one signed webhook body as `make bench` sends it (a postback, a text, a follow),
  verified and read into what a job needs — by the webhook's `EventParser` and by
  line-bot-sdk's `WebhookParser` (pydantic models, what the webhook used before).

CPU is the calling thread's (`time.thread_time`), so the fake server's threads do not count.
Not a test: speed belongs here. Run it on a quiet machine; it takes a few seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.fakeline import BenchLine, serve_line
from tests import line_helpers as lh

USER = "U" + "b" * 32


def _messages() -> list[dict]:
    """A typical answer: a question with its quick replies (most of what a walk receives)."""
    from bot.channels.line_render import render
    from bot.replies import Choice, Question, Text

    choices = [Choice(label=f"選択肢 {i} のこと", value=f"v{i}") for i in range(7)]
    return render([Text(text="ありがとうございます。いくつか質問します。"),
                   Question(text="どなたのことですか？", state="whose", choices=choices)],
                  "電話", "ホームページ")


def _cpu_per_call(call: Callable[[int], object], n: int) -> float:
    for i in range(min(200, n)):  # warm-up: imports, pool, caches
        call(-1 - i)
    started = time.thread_time()
    for i in range(n):
        call(i)
    return (time.thread_time() - started) / n * 1e6


def _sdk_post(base_url: str) -> Callable[[str, dict], object]:
    """The POST as LineApi made it before: the SDK's REST client (PoolManager, json.dumps)."""
    from linebot.v3.messaging import ApiClient, Configuration

    client = ApiClient(Configuration(host=base_url, access_token="tok"))

    def post(path: str, body: dict) -> object:
        headers = {"Authorization": "Bearer tok", "Content-Type": "application/json",
                   "User-Agent": client.user_agent}
        return client.rest_client.request("POST", base_url + path, headers=headers, body=body,
                                          _preload_content=False,
                                          _request_timeout=(2.0, 5.0))

    return post


def _serve(keepalive: bool, urls: multiprocessing.Queue, stop: Any) -> None:
    """The fake LINE API, in its own process: its threads must not share our GIL."""
    server, url = serve_line(BenchLine())
    if keepalive:  # as LINE does: HTTP/1.1, the connection stays open between calls
        handler: Any = server.RequestHandlerClass
        handler.protocol_version = "HTTP/1.1"
        # Its headers and body go out in two writes: without this, Nagle holds the body for
        # our delayed ACK (40 ms) on a connection past its first packets.
        handler.disable_nagle_algorithm = True
    urls.put(url)
    stop.wait()
    server.shutdown()


def calls(n: int, keepalive: bool = False, rounds: int = 5) -> None:
    from bot.channels.line_api import LineApi

    urls: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    fake = multiprocessing.Process(target=_serve, args=(keepalive, urls, stop), daemon=True)
    fake.start()
    url = urls.get(timeout=30)
    messages = _messages()
    api, sdk = LineApi(url, "tok"), _sdk_post(url)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for r in range(rounds):  # alternate, so both meet the same machine
            ours.append(_cpu_per_call(
                lambda i, r=r: api.deliver(USER, f"ev{r}.{i}", f"tok-a{r}.{i}", 0.0, messages),
                n // rounds))
            theirs.append(_cpu_per_call(
                lambda i, r=r: sdk("/v2/bot/message/reply",
                                   {"replyToken": f"tok-b{r}.{i}", "messages": messages}),
                n // rounds))
        api.close()
    finally:
        stop.set()
        fake.join(5)
    how = "HTTP/1.1 keep-alive" if keepalive else "HTTP/1.0, a connection per call"
    print(f"LINE reply call ({how}), CPU per call, median of {rounds} rounds of "
          f"{n // rounds} (µs):")
    print(f"  LineApi.deliver              {statistics.median(ours):8.1f}")
    print(f"  line-bot-sdk REST client     {statistics.median(theirs):8.1f}")


def parse(n: int) -> None:
    """Warm: bodies back to back. After a LINE call: each body parsed right after a reply went
    out, as in the server, where other work has pushed the parser out of the CPU's caches."""
    from linebot.v3 import WebhookParser

    from bot.channels.line_api import LineApi
    from bot.channels.line_events import EventParser, reply_token_of, translate, user_id_of
    from tests.test_line_events import _sdk_translate, _sdk_user_id_of

    sdk, ours = WebhookParser(lh.LINE_SECRET), EventParser(lh.LINE_SECRET)
    bodies = {"postback": lh.body(lh.tap("whose", "self", user=USER)),
              "text": lh.body(lh.text("毎日ひとりでさびしい", user=USER)),
              "follow": lh.body(lh.event("follow", user=USER))}
    urls: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    fake = multiprocessing.Process(target=_serve, args=(False, urls, stop), daemon=True)
    fake.start()
    api, messages = LineApi(urls.get(timeout=30), "tok"), _messages()
    print(f"Webhook body → what a job needs, CPU per body (µs): warm over {n} bodies; "
          f"after a LINE call, median of {n // 4}:")
    print(f"  {'':9} {'line-bot-sdk WebhookParser':>30} {'EventParser':>24}")
    try:
        for name, body in bodies.items():
            signature = lh.sign(body)

            def with_sdk(_i: int, body: str = body, signature: str = signature) -> object:
                return [(e.timestamp, e.webhook_event_id, getattr(e, "reply_token", None),
                         _sdk_translate(e), _sdk_user_id_of(e))
                        for e in sdk.parse(body, signature)]

            def with_ours(_i: int, body: str = body, signature: str = signature) -> object:
                return [(e["timestamp"], e["webhookEventId"], reply_token_of(e), translate(e),
                         user_id_of(e)) for e in ours.parse(body, signature)]

            figures = []
            for f in (with_sdk, with_ours):
                cold = []
                for i in range(n // 4):
                    api.deliver(USER, f"{name}{f.__name__}{i}", f"{name}{f.__name__}{i}", 0.0,
                                messages)
                    started = time.thread_time()
                    f(i)
                    cold.append((time.thread_time() - started) * 1e6)
                figures += [_cpu_per_call(f, n), statistics.median(cold)]
            print(f"  {name:9} warm {figures[0]:6.1f}  after a call {figures[1]:6.1f}   "
                  f"warm {figures[2]:6.1f}  after a call {figures[3]:6.1f}")
    finally:
        api.close()
        stop.set()
        fake.join(5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lineio", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="*", help="calls, parse (default both)")
    p.add_argument("-n", type=int, default=2000, help="calls or bodies per figure")
    p.add_argument("--keepalive", action="store_true",
                   help="the fake LINE API keeps connections open (HTTP/1.1), as LINE does")
    args = p.parse_args(argv)
    runs = {"calls": lambda n: calls(n, args.keepalive), "parse": parse}
    for what in args.what or list(runs):
        if what not in runs:
            p.error(f"unknown: {what}")
        runs[what](args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
