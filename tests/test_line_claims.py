"""The process that accepts a LINE event answers it itself ("claims" the person in the
webhook's round trip): no ticket, no stream read. What it cannot finish is not lost — the
due entry brings it to another dispatcher — and what arrives while a person is locked is
answered by the lock's holder before it lets go."""

from __future__ import annotations

import time
import uuid

from bot.channels import line_queue
from bot.channels.line_events import Job
from tests import line_helpers as lh
from tests.test_line import post

USER = "U" + "c" * 32


def _entries_added(redis_client, names: list[str]) -> int:
    """How many entries the streams ever received (deleted ones included)."""
    total = 0
    for name in names:
        if redis_client.exists(name):
            total += int(redis_client.xinfo_stream(name)["entries-added"])
    return total


def _due_left(redis_client, queue) -> int:
    return sum(redis_client.zcard(line_queue.due_key(name)) for name in queue.shards)


def test_an_event_is_answered_by_the_process_that_took_it_without_a_ticket(
        line_app, redis_client):
    app, fake = line_app
    queue = app.extensions["tsunagu_line"].queue
    assert post(app.test_client(), lh.event("follow", user=USER)).status_code == 200
    got = fake.wait_for(1, timeout=10)
    assert len(got) == 1 and got[0].path.endswith("/reply")
    deadline = time.monotonic() + 5
    while _due_left(redis_client, queue) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _due_left(redis_client, queue) == 0          # answered: its due entry is gone
    assert _entries_added(redis_client, list(queue.shards)) == 0  # and no ticket was written


def test_a_process_that_dies_after_its_claim_loses_nothing(line_app, redis_client,
                                                           monkeypatch):
    """The webhook said 200 and claimed the person, then its process "died" before
    answering (the claim is dropped): once the lock has expired, the due entry is swept into
    a ticket and another dispatcher answers — once."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    monkeypatch.setattr(line_queue, "DUE_GRACE_MS", 200)
    line.queue.store.lock_ms = 800
    monkeypatch.setattr(line.dispatcher, "answer_claims", lambda claims: None)  # "died"
    ev = lh.text("こんにちは", user=USER)
    assert post(app.test_client(), ev).status_code == 200
    time.sleep(0.5)
    assert fake.delivered() == []                        # nobody answered yet (lock held)
    got = fake.wait_for(1, timeout=10)                   # swept after ~1 s: answered
    assert len(got) == 1
    time.sleep(1.5)
    assert len(fake.delivered()) == 1                    # and only once
    assert _due_left(redis_client, line.queue) == 0


def _job(sealed_user: str, ts: int) -> Job:
    return Job(event_id=uuid.uuid4().hex[:26].upper(), kind="text", value="こんにちは",
               state=None, reply_token=uuid.uuid4().hex, timestamp_ms=ts,
               sealed_user=sealed_user)


def test_what_arrives_while_a_person_is_locked_is_answered_before_the_lock_is_let_go(
        line_app, redis_client):
    """Two events of one person: the first claims them; the second's claim finds the lock
    taken. The holder answers both, in order, before releasing — no wait for any sweep."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    line.dispatcher.stop()                      # no background readers: only the claim acts
    queue, dispatcher = line.queue, line.dispatcher
    pid = line.conversations.pseudonym("line", USER)
    now = int(time.time() * 1000)
    first, second = _job(line.sealer.seal(USER), now), _job(line.sealer.seal(USER), now + 1)
    one = queue.accept([(pid, first)], claim=True)
    assert [c.pid for c in one.claims] == [pid]
    two = queue.accept([(pid, second)], claim=True)
    assert two.stored == [True] and two.claims == []   # locked: not claimed again
    dispatcher._claimed(one.claims[0])
    got = fake.delivered()
    assert [r.body["replyToken"] for r in got] == [first.reply_token, second.reply_token]
    assert redis_client.zcard(queue.inbox(pid)) == 0
    assert not redis_client.exists(queue.store.key(pid, "lock"))   # let go at the end
    assert _due_left(redis_client, queue) == 0


def test_a_claim_given_back_when_too_many_wait_is_answered_as_never_tried(line_app):
    """Too many claims waiting in this process: the claim is given back (lock released, a
    ticket written). Its jobs must not look "being answered" — or a reply token LINE refuses
    would be taken for a delivery that never happened. Here the token is expired: the
    answer must come by push, once."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    line.dispatcher._pool.backlog = 0                  # the process is "full"
    ev = lh.text("こんにちは", user=USER)
    fake.expired_tokens.add(ev["replyToken"])
    assert post(app.test_client(), ev).status_code == 200
    got = fake.wait_for(1, timeout=10)
    assert [r.path for r in got] == ["/v2/bot/message/push"]
    time.sleep(1.0)
    assert len(fake.delivered()) == 1
