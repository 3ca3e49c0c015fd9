"""Simulated residents: each walks the whole questionnaire over signed LINE webhooks, and
sends its next tap only once the previous answer reached the fake LINE API, as a person does.

A resident walks again and again, as a new person (a fresh LINE user id) each time, until the
level's time is up; a walk in progress is finished. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.fakeline import BenchLine
from tests import line_helpers as lh

# follow → tap welcome:start → whose:self → age:"18_39" → concern:loneliness → more:none →
# ward:skip → contact:phone → results (bot/flows/handbook.yaml)
WALK: tuple[tuple[str, str] | None, ...] = (
    None, ("welcome", "start"), ("whose", "self"), ("age", "18_39"),
    ("concern", "loneliness"), ("more", "none"), ("ward", "skip"), ("contact", "phone"),
)
ANSWER_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0


def new_user() -> str:
    return "U" + uuid.uuid4().hex


def walk_events(user: str) -> Iterator[dict]:
    for step in WALK:
        yield lh.event("follow", user=user) if step is None else lh.tap(*step, user=user)


class Poster:
    """POST /callback over one keep-alive connection per resident: a new connection per
    request would also time the TCP handshake and, at these rates, run loopback out of
    ephemeral ports (TIME_WAIT)."""

    def __init__(self, port: int, secret: str = lh.LINE_SECRET):
        self.port = port
        self.secret = secret
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: str) -> int:
        data = body.encode()
        headers = {"Content-Type": "application/json", "X-Line-Signature":
                   lh.sign(body, self.secret), "Content-Length": str(len(data))}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=HTTP_TIMEOUT_S)
            try:
                self.conn.request("POST", "/callback", body=data, headers=headers)
                resp = self.conn.getresponse()
                resp.read()
                if resp.will_close:
                    self.close()
                return resp.status
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: open a new one, once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Sample:
    sent: float            # perf_counter() before the webhook request
    webhook_s: float       # HTTP round trip of POST /callback
    status: int            # HTTP status (0: no answer at all)
    latency_s: float | None  # event → answer at the fake LINE API; None if none came
    arrived: float | None
    kinds: tuple[str, ...] = ()


@dataclass
class Walk:
    user: str
    event_ids: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.samples) == len(WALK) and all(s.latency_s is not None
                                                      for s in self.samples)

    @property
    def reached_results(self) -> bool:
        """The last answer carries the windows as a Flex carousel (the echo bot's never)."""
        return self.complete and "flex" in self.samples[-1].kinds


def send(poster: Poster, line: BenchLine, user: str, event: dict, wait: bool,
         answer_timeout: float = ANSWER_TIMEOUT_S) -> Sample:
    body = lh.body(event)
    waiter = line.expect(user, event.get("replyToken", ""))
    sent = time.perf_counter()
    try:
        status = poster.post(body)
    except OSError:
        status = 0
        poster.close()
    webhook_s = time.perf_counter() - sent
    if not wait:
        return Sample(sent, webhook_s, status, None, None)
    arrival = waiter.wait(answer_timeout) if status == 200 else None
    if arrival is None:
        line.forget(waiter)
        return Sample(sent, webhook_s, status, None, None)
    return Sample(sent, webhook_s, status, arrival.at - sent, arrival.at, arrival.kinds)


def walk_once(poster: Poster, line: BenchLine, deadline: float, think_s: float = 0.0) -> Walk:
    """One person's whole walk. With `think_s`, they pause 0.5–1.5 × think_s to read each
    answer before tapping (without, they tap the moment it arrives)."""
    walk = Walk(user=new_user())
    for i, event in enumerate(walk_events(walk.user)):
        if i and think_s:
            time.sleep(random.uniform(0.5, 1.5) * think_s)
        if time.perf_counter() > deadline:
            break
        walk.event_ids.append(event["webhookEventId"])
        sample = send(poster, line, walk.user, event, wait=True)
        walk.samples.append(sample)
        if sample.latency_s is None:
            break  # no answer: a person would not tap on
    return walk


@dataclass
class LevelRun:
    residents: int
    started: float
    stop_at: float
    ended: float
    walks: list[Walk]

    @property
    def samples(self) -> list[Sample]:
        return [s for w in self.walks for s in w.samples]


def run_level(port: int, line: BenchLine, residents: int, duration_s: float,
              grace_s: float = 30.0, think_s: float = 0.0) -> LevelRun:
    """`residents` people walking at once for `duration_s`; walks in progress then finish
    (bounded by `grace_s`; with 0 they stop where they are)."""
    walks: list[Walk] = []
    lock = threading.Lock()
    barrier = threading.Barrier(residents + 1)
    times: dict[str, float] = {}

    def resident() -> None:
        poster = Poster(port)
        barrier.wait()
        # People do not tap in lockstep; paced ones arrive spread over one pause.
        time.sleep(random.uniform(0, max(0.02, think_s)))
        mine = []
        try:
            while time.perf_counter() < times["stop_at"]:
                mine.append(walk_once(poster, line, times["deadline"], think_s))
        finally:
            poster.close()
            with lock:
                walks.extend(mine)

    threads = [threading.Thread(target=resident, daemon=True) for _ in range(residents)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    times.update(stop_at=started + duration_s, deadline=started + duration_s + grace_s)
    barrier.wait()
    for t in threads:
        t.join(max(0.0, times["deadline"] + ANSWER_TIMEOUT_S + 5 - time.perf_counter()))
    with lock:
        done = list(walks)
    return LevelRun(residents=residents, started=started, stop_at=times["stop_at"],
                    ended=time.perf_counter(), walks=done)


@dataclass
class HangRun:
    webhook_s: list[float]
    statuses: list[int]
    answered_after: int   # answers that reached LINE once it stopped hanging
    expected: int


def run_hang(port: int, line: BenchLine, residents: int, duration_s: float,
             gap_s: float, drain_s: float) -> HangRun:
    """LINE hangs (the caller sets `line.hang_s`): residents keep sending their walk's events
    every `gap_s` without waiting for answers; only the webhook's own time is measured. Then
    LINE recovers (hang_s = 0) and the events that got a 200 are waited for, up to `drain_s`."""
    samples: list[Sample] = []
    waiters = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s

    def resident() -> None:
        poster = Poster(port)
        try:
            while time.perf_counter() < stop_at:
                user = new_user()
                for event in walk_events(user):
                    if time.perf_counter() >= stop_at:
                        break
                    sample = send(poster, line, user, event, wait=False)
                    with lock:
                        samples.append(sample)
                        if sample.status == 200:
                            waiters.append(event["replyToken"])
                    time.sleep(gap_s)
        finally:
            poster.close()

    threads = [threading.Thread(target=resident, daemon=True) for _ in range(residents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + HTTP_TIMEOUT_S + 5)
    line.hang_s = 0.0
    deadline = time.perf_counter() + drain_s
    while line.pending() and time.perf_counter() < deadline:
        time.sleep(0.1)
    answered = len(waiters) - min(len(waiters), line.pending())
    return HangRun(webhook_s=[s.webhook_s for s in samples],
                   statuses=[s.status for s in samples], answered_after=answered,
                   expected=len(waiters))
