"""`python -m bench.roundtrips`: Redis round trips per resident message, with and without the
city's figures (bot/figures.py), on a real Redis.

A round trip is one request written to Redis and answered (a command or a whole pipeline):
every `send_packed_command` of redis-py's connection. The same scripted conversations run
twice through `Conversations.handle` — once with counting, once without — and the difference
per message is what counting costs.

  REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m bench.roundtrips [--residents 50]
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

import redis

from bot.config import Settings
from bot.engine import Incoming
from bot.wiring import build

# One resident: the welcome, the questionnaire, the feedback tap, and one typed answer.
SCRIPT = [("event", "first_contact", None), ("tap", "start", "welcome"),
          ("tap", "family", "whose"), ("text", "1", None), ("tap", "loneliness", "concern"),
          ("tap", "none", "more"), ("tap", "skip", "ward"), ("tap", "phone", "contact"),
          ("tap", "yes", "results")]


class CountingConnection(redis.Connection):
    trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.trips += 1
        super().send_packed_command(command, check_health)


def run(url: str, residents: int, counting: bool) -> tuple[int, int]:
    """(messages, round trips) for `residents` scripted conversations."""
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    prefix = f"tsunagu-bench-rt-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=url, bot_secret_key="b" * 40, key_prefix=prefix)
    services = build(settings, client=client)
    if not counting:
        services.conversations.figures = None
    messages = 0
    client.ping()  # the connection's own set-up is not a message's cost
    start = CountingConnection.trips
    for i in range(residents):
        visitor = f"bench-{i}"
        for kind, value, state in SCRIPT:
            services.conversations.handle("web", visitor,
                                          Incoming(kind=kind, value=value, state=state))
            messages += 1
    trips = CountingConnection.trips - start
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    return messages, trips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.roundtrips", description=__doc__)
    p.add_argument("--residents", type=int, default=50)
    args = p.parse_args(argv)
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    with_n, with_trips = run(url, args.residents, counting=True)
    without_n, without_trips = run(url, args.residents, counting=False)
    per_with, per_without = with_trips / with_n, without_trips / without_n
    print(f"messages: {with_n} ({args.residents} residents x {len(SCRIPT)})")
    print(f"round trips per message without figures: {per_without:.3f}")
    print(f"round trips per message with figures:    {per_with:.3f}")
    print(f"added by counting: {per_with - per_without:+.3f} per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
