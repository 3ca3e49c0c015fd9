"""`python -m bench.stages`: the CPU each stage of answering one LINE event costs, in this process.

The stages of `Conversations.process` for a LINE event, along the walk `make bench` drives
(bench/load.py: follow, then taps to the results) and the same answers typed as text:
loading the session, the engine step, rendering the replies as LINE messages, the figures'
pipeline writes, `_record` (metrics and the "message" log line) and the log line alone, and
saving the session. No servers: the figures' writes are queued on a pipeline and encoded as
redis-py would send them, never executed; the log line is formatted and written to /dev/null.
Each stage is timed alone over many rounds of the walk, after a warm-up; CPU time of this
thread (time.thread_time), in microseconds per event. Not a test (speed belongs here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from bench.load import WALK
from bot import logs
from bot.channels.line_queue import line_messages
from bot.engine import Engine, Incoming, Step
from bot.figures import Figures
from bot.ports import Event
from bot.service import Conversations
from bot.session import Session
from bot.store import SessionStore
from bot.wiring import build_engine

TOKYO = ZoneInfo("Asia/Tokyo")
DEFAULT_NOW = "2026-12-08T15:30:00+09:00"  # a Tuesday afternoon: the city's windows are open


@dataclass
class Turn:
    """One event of a walk as the server meets it: the stored session, the event, the step."""

    raw: bytes | None
    incoming: Incoming
    before: Session | None
    step: Step
    lang: str


def tap_walk() -> list[Incoming]:
    """bench/load.py's walk: follow, then a tap on each question to the results."""
    return [Incoming(kind="event", value="first_contact") if s is None
            else Incoming(kind="tap", value=s[1], state=s[0]) for s in WALK]


def text_walk(engine: Engine) -> list[Incoming]:
    """The same answers typed: each choice's Japanese label as text."""
    out = []
    for s in WALK:
        if s is None:
            out.append(Incoming(kind="event", value="first_contact"))
            continue
        state, value = s
        session = engine.new_session()
        session.enter(state)
        label = next(o.label for o in engine.options(session) if o.value == value)
        out.append(Incoming(kind="text", value=label))
    return out


def walk(engine: Engine, incomings: list[Incoming], now: datetime) -> list[Turn]:
    """Step through the walk once, keeping what each stage needs."""
    turns: list[Turn] = []
    raw: bytes | None = None
    for incoming in incomings:
        before = Session.loads(raw) if raw is not None else None
        step = engine.step(before, incoming, now, channel="line")
        lang = (step.session or before or engine.new_session()).lang
        turns.append(Turn(raw, incoming, before, step, lang))
        raw = step.session.dumps().encode() if step.session is not None else None
    return turns


def stages(engine: Engine, turns: list[Turn], now: datetime) -> dict[str, Callable[[Turn], Any]]:
    client = redis.Redis(host="127.0.0.1", port=6379)  # never connected: pipelines only
    encoder = redis.Connection()
    figures = Figures(client, "bench")
    conversations = Conversations(engine, SessionStore(client, ttl_seconds=3600, prefix="bench"),
                                  "bench-secret", clock=lambda: now, figures=figures,
                                  city="bench")
    log = logs.get("conversation")
    pid = "0123456789abcdef" * 4

    def load(t: Turn) -> Any:
        return Session.loads(t.raw) if t.raw is not None else None

    def step(t: Turn) -> Any:
        return engine.step(t.before, t.incoming, now, channel="line")

    def render(t: Turn) -> Any:
        return line_messages(engine, t.step.replies, t.lang)

    messages = {id(t): line_messages(engine, t.step.replies, t.lang) for t in turns}

    def body(t: Turn) -> Any:
        return json.dumps({"replyToken": "r" * 32, "messages": messages[id(t)]})

    def figure(t: Turn) -> Any:
        write = figures.writes_for("line", t.before, t.step, t.incoming, now)
        if write is None:
            return None
        pipe = client.pipeline(transaction=False)
        write(pipe)
        return encoder.pack_commands([args for args, _ in pipe.command_stack])

    event = Event(channel="line", pid=pid, incoming=Incoming(kind="tap"), event_id="e" * 26,
                  address="U" * 33, received=now.timestamp())

    def record(t: Turn) -> Any:
        conversations._record(event, t.step, "reply", time.perf_counter())

    def log_line(t: Turn) -> Any:
        step = t.step
        logs.event(log, "message", channel="line", pid=pid[:16], kind=t.incoming.kind,
                   via="reply", state=step.session.state if step.session else None,
                   events=step.events, ms=1.23)

    def dumps(t: Turn) -> Any:
        return t.step.session.dumps() if t.step.session is not None else None

    return {"session load": load, "engine step": step, "render (LINE JSON)": render,
            "figures writes": figure, "_record (metrics+log)": record,
            "  of which log line": log_line, "session dumps": dumps,
            "(LINE body json.dumps)": body}


def measure(fn: Callable[[Turn], Any], turns: list[Turn], rounds: int, repeat: int) -> float:
    """CPU µs per event: the least of `repeat` runs of `rounds` passes over the walk, after
    one unmeasured pass (the least: other processes on the machine only ever add to it)."""
    for t in turns:
        fn(t)
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(rounds):
            for t in turns:
                fn(t)
        best = min(best, time.thread_time() - started)
    return best * 1e6 / (rounds * len(turns))


def quiet_log() -> None:
    """The server's JSON log handler, writing to /dev/null."""
    root = logging.getLogger("tsunagu")
    root.handlers.clear()
    handler = logging.StreamHandler(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
    handler.setFormatter(logs.JsonFormatter())
    root.addHandler(handler)
    root.setLevel("INFO")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages")
    parser.add_argument("--pack", default="kyoto")
    parser.add_argument("--rounds", type=int, default=300, help="passes over each walk")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage; the least")
    parser.add_argument("--by-event", action="store_true",
                        help="also each event of the tap walk, engine step and render")
    parser.add_argument("--now", default=DEFAULT_NOW,
                        help="the moment answered at, ISO 8601 (default %(default)s)")
    args = parser.parse_args(argv)
    quiet_log()
    from bot.pack import load_pack

    engine = build_engine(load_pack(args.pack))
    now = datetime.fromisoformat(args.now).astimezone(TOKYO)
    walks = {"taps": tap_walk(), "text": text_walk(engine)}
    results: dict[str, dict[str, float]] = {}
    for name, incomings in walks.items():
        turns = walk(engine, incomings, now)
        rounds = args.rounds if name == "taps" else max(1, args.rounds // 10)
        for stage, fn in stages(engine, turns, now).items():
            results.setdefault(stage, {})[name] = measure(fn, turns, rounds, args.repeat)
    print(f"CPU per event, µs (time.thread_time; pack {args.pack}, now {now.isoformat()}; "
          f"walks of {len(WALK)} events, {args.rounds} rounds of taps, "
          f"{max(1, args.rounds // 10)} of text)")
    print(f"{'stage':<26} {'taps':>9} {'text':>9}")
    totals = dict.fromkeys(walks, 0.0)
    for stage, by_walk in results.items():
        print(f"{stage:<26} " + " ".join(f"{by_walk[w]:>9.1f}" for w in walks))
        if not stage.startswith((" ", "(")):
            for w in walks:
                totals[w] += by_walk[w]
    print(f"{'total (ours)':<26} " + " ".join(f"{totals[w]:>9.1f}" for w in walks))
    print("  (indented: part of the row above; in parentheses: not ours, for scale)")
    if args.by_event:
        turns = walk(engine, walks["taps"], now)
        fns = stages(engine, turns, now)
        print(f"\n{'tap walk event':<26} {'step':>9} {'render':>9}")
        for t in turns:
            name = f"{t.incoming.state or ''}:{t.incoming.value}"
            print(f"{name:<26} " + " ".join(
                f"{measure(fns[s], [t], args.rounds, args.repeat):>9.1f}"
                for s in ("engine step", "render (LINE JSON)")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
