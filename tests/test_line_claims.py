"""The process that accepts a LINE event answers it itself ("claims" the person in the
webhook's round trip): no ticket, no stream read. What it cannot finish is not lost — the
due entry brings it to another dispatcher — and what arrives while a person is locked is
answered by the lock's holder before it lets go. On one Redis and on the local cluster, where
a person's event touches their own node only."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from bot import clusterpipe
from bot import store as store_module
from bot.channels import line_queue
from bot.channels.line_events import Job
from bot.redisconn import ReplicaWait, is_cluster, node_name
from tests import line_helpers as lh
from tests.test_line import post

USER = "U" + "c" * 32


@pytest.fixture
def redis_url(either_redis: str | None) -> str | None:
    return either_redis


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


@dataclass
class Quiet:
    """The LINE channel with its background readers stopped (only what a test calls acts),
    and one person."""

    line: Any
    fake: Any
    pid: str

    @property
    def queue(self) -> Any:
        return self.line.queue

    @property
    def dispatcher(self) -> Any:
        return self.line.dispatcher

    def jobs(self, n: int, now: int | None = None) -> list[Job]:
        """`n` of the person's events, one ms apart from `now`."""
        now = int(time.time() * 1000) if now is None else now
        return [_job(self.line.sealer.seal(USER), now + i) for i in range(n)]


def quieten(dispatcher: Any) -> None:
    """No background readers: only what the test calls acts. The process is not exiting,
    though: what the test answers is not cut short as a stopping worker's would be."""
    dispatcher.stop()
    dispatcher._stop_by = math.inf


@pytest.fixture
def quiet(line_app) -> Quiet:
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    quieten(line.dispatcher)
    return Quiet(line, fake, line.conversations.pseudonym("line", USER))


def test_what_arrives_while_a_person_is_locked_is_answered_before_the_lock_is_let_go(
        quiet, redis_client):
    """Two events of one person: the first claims them; the second's claim finds the lock
    taken. The holder answers both, in order, before releasing — no wait for any sweep."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    first, second = quiet.jobs(2)
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


def _sent_twice(monkeypatch, source: str) -> list[int]:
    """Run every pipeline holding the Lua script `source` twice and return the second run's
    results: the first reply lost (a read timeout), the pipeline re-sent, as redis-py's retry
    does. Returns the list of re-sent pipelines' sizes."""
    real = redis.client.Pipeline._execute_pipeline
    resent: list[int] = []

    def twice(self, connection, commands, raise_on_error):
        if any(args[:2] == ("EVAL", source) for args, _ in commands):
            real(self, connection, commands, False)
            resent.append(len(commands))
        return real(self, connection, commands, raise_on_error)
    monkeypatch.setattr(redis.client.Pipeline, "_execute_pipeline", twice)
    return resent


def test_an_accept_sent_again_after_a_lost_reply_answers_as_the_first_run(quiet, monkeypatch):
    """The webhook's round trip ran but its reply was lost, and the pipeline went again: the
    repeat must not take its own events for redeliveries (no claim, no ticket: unanswered
    until the lock expired, ~35 s) nor its own lock for someone else's — stored, claimed,
    never tried, answered once."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    first, second = quiet.jobs(2)
    queue.backlog.due()            # measured just now: this accept touches the person's node only
    resent = _sent_twice(monkeypatch, line_queue._ACCEPT)
    got = queue.accept([(pid, first), (pid, second)], claim=True)
    assert resent                                       # the accept did go twice
    assert got.stored == [True, True]
    assert [c.pid for c in got.claims] == [pid]
    assert [tried for _, tried in got.claims[0].taken] == [b"0", b"0"]
    monkeypatch.undo()
    dispatcher._claimed(got.claims[0])
    assert [r.body["replyToken"] for r in fake.delivered()] == [first.reply_token,
                                                               second.reply_token]
    again = queue.accept([(pid, first)], claim=True)    # a true redelivery still is one
    assert again.stored == [False] and again.claims == []


def test_a_finish_sent_again_keeps_what_it_took(quiet, monkeypatch):
    """A finish that took newly arrived events, sent again: the repeat must see those events
    as its own to answer (not as being answered by someone, which would let the lock go and
    leave them to the sweep)."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    first, second = quiet.jobs(2)
    one = queue.accept([(pid, first)], claim=True)
    queue.accept([(pid, second)], claim=True)           # arrives while the person is locked
    resent = _sent_twice(monkeypatch, line_queue._FINISH)
    started = time.monotonic()
    dispatcher._claimed(one.claims[0])
    assert resent
    assert [r.body["replyToken"] for r in fake.delivered()] == [first.reply_token,
                                                               second.reply_token]
    assert time.monotonic() - started < 5               # not left for a sweep
    assert queue.redis.zcard(queue.inbox(pid)) == 0


def test_a_drain_whose_lock_step_is_sent_again_takes_its_own_lock(quiet, monkeypatch):
    """The drain's lock-and-take round trip ran but its reply was lost, and it went again:
    the repeat finds the lock holding its own token — taken, the job answered once — not a
    lock to wait for until it expires (~30 s) while the person's messages wait too."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    (job,) = quiet.jobs(1)
    assert queue.accept([(pid, job)], claim=False).stored == [True]   # a ticket, no claim
    resent = _sent_twice(monkeypatch, store_module._LOCK_LOAD)
    started = time.monotonic()
    assert dispatcher.drain(pid) == 1
    assert resent and time.monotonic() - started < 3
    assert [r.body["replyToken"] for r in fake.delivered()] == [job.reply_token]
    assert not queue.redis.exists(queue.store.key(pid, "lock"))


def test_another_call_in_the_same_millisecond_is_not_taken_for_a_repeat(quiet, monkeypatch):
    """Marks carry their call's stamp, unique to the call: a finish in the same millisecond as
    the accept that took a job still left in the inbox (its answer failed) sees it as taken by
    someone else — lets go — rather than as its own to answer again as never tried."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    now = int(time.time() * 1000)
    stamps = iter([repr(now + 1 / 4096), repr(now + 2 / 4096)])   # two calls, one ms
    monkeypatch.setattr(line_queue, "call_stamp", lambda now_ms=None: next(stamps))
    got = queue.accept([(pid, *quiet.jobs(1, now))], claim=True)
    (claim,) = got.claims
    assert [tried for _, tried in claim.taken] == [b"0"]
    # The job's answer failed: it stays in the inbox, and the finish lets go.
    assert dispatcher._finish(pid, store_module.Turn(session=None), claim.token, None, None,
                              None) is None
    assert not queue.redis.exists(queue.store.key(pid, "lock"))
    assert fake.delivered() == []


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


def test_a_finish_waits_for_a_replica_only_when_it_took_more(line_app, monkeypatch):
    """The marks of jobs taken reach a replica before anything is sent: the claim's (in the
    accept) and those a finish takes when events arrived meanwhile. A finish that only saves
    and lets go waits for nothing (its answer is out; a failover losing it brings the job back
    as a retry, which LINE does not say twice) — before, every answer waited twice."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    quieten(line.dispatcher)
    queue, dispatcher = line.queue, line.dispatcher
    queue.wait = ReplicaWait(queue.redis, 1, 5)   # one replica wanted (none here: 0 after 5 ms)
    waits: list[list[str]] = []
    real = queue.wait.add
    before: list[int] = []                        # commands queued ahead of each WAIT
    monkeypatch.setattr(queue.wait, "add", lambda pipe, keys: waits.append(keys) or
                        before.append(len(pipe)) or real(pipe, keys))
    pid = line.conversations.pseudonym("line", USER)
    now = int(time.time() * 1000)
    alone = queue.accept([(pid, _job(line.sealer.seal(USER), now))], claim=True)
    assert len(waits) == 1                        # the accept's
    dispatcher._claimed(alone.claims[0])
    assert len(fake.delivered()) == 1
    assert len(waits) == 1                        # the finish: none
    first, second = _job(line.sealer.seal(USER), now + 1), _job(line.sealer.seal(USER), now + 2)
    one = queue.accept([(pid, first)], claim=True)
    queue.accept([(pid, second)], claim=True)     # arrives while the person is locked
    assert len(waits) == 3
    dispatcher._claimed(one.claims[0])
    assert len(fake.delivered()) == 3
    assert waits[3:] == [[queue.inbox(pid)]]      # once: for the job the finish took
    # In a round trip of its own, after a write of the person's slot: WAIT counts its own
    # connection's writes, which would otherwise be none (it returned at once).
    assert before[3] == 1


def test_on_a_cluster_an_event_touches_its_persons_node_only(line_app, redis_client,
                                                            monkeypatch):
    """Its due entry is filed in a spread due set on the person's node, so the accept and the
    finish (with the day's figures) are each one pipeline to one node, sent straight to it:
    redis-py's cluster pipeline is never needed. Before, the due entry went to the person's
    shard — on another node two times in three."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    if not is_cluster(line.queue.redis):
        pytest.skip("one Redis: every key is on the one node")
    # The backlog alarm's count (once a second per process) reads every shard: not this.
    monkeypatch.setattr(line.queue.backlog, "due", lambda: False)
    handed: list[int] = []
    real = clusterpipe.Cluster.library_pipeline
    monkeypatch.setattr(clusterpipe.Cluster, "library_pipeline",
                        lambda self: handed.append(1) or real(self))
    for i in range(12):
        assert post(app.test_client(), lh.text("こんにちは", user=f"U{i:032x}")).status_code \
            == 200
    assert len(fake.wait_for(12, timeout=20)) == 12
    assert handed == []
    monkeypatch.setattr(line.dispatcher, "answer_claims", lambda claims: None)  # held back
    for i in range(12, 24):
        user = f"U{i:032x}"
        pid = line.conversations.pseudonym("line", user)
        assert post(app.test_client(), lh.text("こんにちは", user=user)).status_code == 200
        due = line.queue.due(pid)
        assert due in line.queue.spread_dues
        assert node_name(redis_client, due) == node_name(redis_client, line.queue.marks(pid))
        assert redis_client.zcard(due) >= 1       # filed there


def test_a_spread_due_entry_whose_process_died_is_answered_once(line_app, redis_client,
                                                                monkeypatch):
    """As above, on a cluster: the entry sits in a spread due set, whose sweep writes the
    ticket to the person's shard (another slot), then removes the entry."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    if not line.queue.spread_dues:
        pytest.skip("one Redis: due entries stay in the shards' due sets")
    monkeypatch.setattr(line_queue, "DUE_GRACE_MS", 200)
    line.queue.store.lock_ms = 800
    monkeypatch.setattr(line.dispatcher, "answer_claims", lambda claims: None)  # "died"
    users = [f"U{i:031x}d" for i in range(6)]
    for user in users:
        assert post(app.test_client(), lh.text("こんにちは", user=user)).status_code == 200
    pids = [line.conversations.pseudonym("line", u) for u in users]
    assert all(redis_client.zcard(line.queue.due(pid)) for pid in pids)
    got = fake.wait_for(len(users), timeout=15)
    assert len(got) == len(users)
    time.sleep(1.5)
    assert len(fake.delivered()) == len(users)           # once each
    assert _due_left(redis_client, line.queue) == 0
    assert sum(redis_client.zcard(k) for k in line.queue.spread_dues) == 0


def test_a_spread_sweep_whose_ticket_shard_is_down_writes_the_ticket_elsewhere(
        line_app, redis_client, monkeypatch):
    """The tickets of a spread due set go to other slots; a node down among them made
    redis-py raise for the whole batch, which stopped every sweep of that set (its entries
    oldest first, so always in the batch). Each ticket then goes to another shard, and the
    shard that failed is marked (the next writes try it last)."""
    app, _ = line_app
    line = app.extensions["tsunagu_line"]
    if not line.queue.spread_dues:
        pytest.skip("one Redis: due entries stay in the shards' due sets")
    quieten(line.dispatcher)
    queue = line.queue
    pid = line.conversations.pseudonym("line", USER)
    own = queue.shards.of(pid)
    key = queue.due(pid)
    redis_client.zadd(key, {line_queue.due_member(pid, "E1"): 1})
    real = queue.redis.pipeline

    class Down:
        """A pipeline that fails as a whole when it writes to the person's shard."""

        def __init__(self) -> None:
            self.pipe = real(transaction=False)
            self.streams: list[str] = []

        def __getattr__(self, name: str):
            return getattr(self.pipe, name)

        def xadd(self, name: str, fields: dict, *args, **kwargs):
            self.streams.append(name)
            return self.pipe.xadd(name, fields, *args, **kwargs)

        def execute(self, raise_on_error: bool = True):
            if own in self.streams:
                raise redis.ConnectionError("the ticket shard's node is down")
            return self.pipe.execute(raise_on_error=raise_on_error)

    monkeypatch.setattr(queue.redis, "pipeline", lambda transaction=None: Down())
    assert line.dispatcher._sweep_spread(key, int(time.time() * 1000)) == 1
    monkeypatch.undo()
    assert redis_client.zcard(key) == 0
    assert _entries_added(redis_client, list(queue.shards)) == 1   # in another shard
    assert redis_client.xlen(queue.shards.for_writing(pid)[0]) == 1
    assert queue.shards.is_down(own)


def test_a_cluster_error_that_is_not_a_redis_error_is_a_failed_write(line_app, monkeypatch):
    """redis-py's cluster client raises "no node for this slot" as RedisClusterException, not a
    RedisError: the fallback writers take it as a shard that failed, not as a crash of the
    webhook (which had stored and claimed the events already)."""
    app, _ = line_app
    queue = app.extensions["tsunagu_line"].queue

    def no_node(*args, **kwargs):
        raise redis.exceptions.SlotNotCoveredError("Slot 1 is not covered by the cluster.")
    monkeypatch.setattr(queue, "_write", no_node)          # the tickets' round trip
    monkeypatch.setattr(queue.redis, "zadd", no_node)
    pid = "p" * 16
    assert queue._ticket_elsewhere(pid) is False
    assert queue.tickets([pid, "q" * 16]) == []
    queue._due_elsewhere(pid, {line_queue.due_member(pid, "E1"): 1})   # logged, not raised


def test_a_give_back_that_fails_leaves_the_stored_events_to_their_due_entries(
        line_app, monkeypatch):
    """The process is full and giving the claim back fails (Redis slow): the webhook's events
    are stored, so they must not be answered again in degraded mode now (a second answer
    later) — the lock expires and their due entries bring them back."""
    app, fake = line_app
    line = app.extensions["tsunagu_line"]
    monkeypatch.setattr(line.dispatcher._pool, "offer", lambda *a: False)  # full just now

    def slow(claim):
        raise redis.TimeoutError("Timeout reading from socket")
    monkeypatch.setattr(line.dispatcher, "_give_back", slow)
    assert post(app.test_client(), lh.text("こんにちは", user=USER)).status_code == 200
    time.sleep(0.5)
    assert fake.delivered() == []                      # no degraded answer beside the stored one
    pid = line.conversations.pseudonym("line", USER)
    assert line.queue.redis.zcard(line.queue.inbox(pid)) == 1


def test_a_give_back_leaves_a_later_holders_marks_alone(quiet):
    """A claim that waited past its lock, given back: another holder has the person now and
    marked the jobs as being answered — those marks and that lock are theirs to keep."""
    queue, dispatcher, pid = quiet.queue, quiet.dispatcher, quiet.pid
    (claim,) = queue.accept([(pid, *quiet.jobs(1))], claim=True).claims
    lock = queue.store.key(pid, "lock")
    queue.redis.set(lock, "d:someone-else")            # ours expired; another took over
    dispatcher._give_back(claim)
    assert queue.redis.get(lock) == b"d:someone-else"
    event_id = queue.open(claim.taken[0][0]).event_id
    assert queue.redis.zscore(queue.marks(pid), f"t{event_id}") is not None


def test_a_claim_not_begun_close_to_the_stop_deadline_is_given_back(quiet):
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    (claim,) = queue.accept([(pid, *quiet.jobs(1))], claim=True).claims
    dispatcher._stop_by = time.monotonic() + 1.0       # stopping, 1 s left: too close
    dispatcher._start_claim(claim)
    assert fake.delivered() == []
    assert not queue.redis.exists(queue.store.key(pid, "lock"))       # released
    assert sum(queue.redis.xlen(name) for name in queue.shards) == 1   # and ticketed
    (claim,) = queue.accept([(pid, *quiet.jobs(1))], claim=True).claims
    dispatcher._stop_by = time.monotonic() + 10.0      # stopping, time enough: answered
    dispatcher._start_claim(claim)
    assert len(fake.delivered()) == 2                  # with the one given back before


def test_a_give_back_of_a_whole_backlog_removes_every_mark(quiet):
    """A claim takes the person's whole inbox: thousands of jobs after a long LINE outage.
    Its give-back must not stop at Lua's unpack limit (~8000), leaving the lock held."""
    queue, dispatcher, pid = quiet.queue, quiet.dispatcher, quiet.pid
    lock, marks = queue.store.key(pid, "lock"), queue.marks(pid)
    ids = [f"E{i:05d}" for i in range(9000)]
    queue.redis.set(lock, "d:mine")
    queue.redis.zadd(marks, {f"t{i}": 1 for i in ids})
    claim = line_queue.Claim(pid=pid, token="d:mine", session=None,
                             taken=[(f'{{"event_id":"{i}"}}'.encode(), b"0") for i in ids])
    dispatcher._give_back(claim)
    assert not queue.redis.exists(lock) and queue.redis.zcard(marks) == 0


def test_a_holder_cut_short_by_the_stop_hands_what_arrived_to_another_process(quiet):
    """Stopping, close to the deadline: the holder answers what it began, then lets go
    rather than take what arrived meanwhile — a ticket takes it to another process now."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    first, second = quiet.jobs(2)
    (claim,) = queue.accept([(pid, first)], claim=True).claims
    queue.accept([(pid, second)], claim=True)           # arrives while the person is locked
    dispatcher._stop_by = time.monotonic() + 1.0
    dispatcher._claimed(claim)
    assert [r.body["replyToken"] for r in fake.delivered()] == [first.reply_token]
    assert not queue.redis.exists(queue.store.key(pid, "lock"))
    assert sum(queue.redis.xlen(name) for name in queue.shards) == 1


def test_with_a_redis_inside_the_process_nothing_is_handed_over(quiet):
    """`make run`'s Redis goes with the process: a stopping worker answers all it has time
    for, since a claim given back there would never be answered."""
    queue, dispatcher, pid, fake = quiet.queue, quiet.dispatcher, quiet.pid, quiet.fake
    dispatcher.hands_over = False
    (claim,) = queue.accept([(pid, *quiet.jobs(1))], claim=True).claims
    dispatcher._stop_by = time.monotonic() + 1.0
    dispatcher._start_claim(claim)
    assert len(fake.delivered()) == 1
