"""Sessions in a real Redis: pseudonymous keys, TTL, deletion, one person at a time."""

from __future__ import annotations

import threading
import time

import pytest

from bot.engine import Incoming
from bot.session import Session
from bot.store import SessionStore, pseudonym
from tests.conftest import SECRET


@pytest.fixture
def store(redis_client, key_prefix) -> SessionStore:
    return SessionStore(redis_client, ttl_seconds=3600, prefix=key_prefix)


def test_pseudonym_is_keyed_and_stable():
    a = pseudonym(SECRET, "line", "U1234")
    assert a == pseudonym(SECRET, "line", "U1234")
    assert a != pseudonym(SECRET, "web", "U1234")
    assert a != pseudonym("another-secret" * 3, "line", "U1234")
    assert len(a) == 64 and "U1234" not in a


def test_keys_carry_one_hash_tag_per_person(store):
    pid = pseudonym(SECRET, "line", "U1")
    assert store.key(pid, "session") == f"{store.prefix}:{{{pid}}}:session"


def test_save_sets_the_inactivity_ttl(store, redis_client):
    pid = pseudonym(SECRET, "web", "v1")
    with store.turn(pid) as turn:
        assert turn.session is None
        turn.keep(Session(state="whose", answers={"whose": "self"}))
    ttl = redis_client.ttl(store.key(pid, "session"))
    assert 3500 < ttl <= 3600
    assert store.load(pid).answers == {"whose": "self"}
    assert redis_client.exists(store.key(pid, "lock")) == 0


def test_turn_deletes_when_the_session_is_gone(store, redis_client):
    pid = pseudonym(SECRET, "web", "v2")
    store.save(pid, Session(state="age"))
    with store.turn(pid) as turn:
        turn.keep(None)
    assert redis_client.exists(store.key(pid, "session")) == 0


def test_a_session_stays_small(engine, walker, store, redis_client):
    walker.start()
    for value in ("start", "family", "40_64", "hikikomori", "long", "open",
                  "disability", "poverty", "elderly"):
        walker.tap(value)
    pid = pseudonym(SECRET, "web", "v3")
    store.save(pid, walker.session)
    raw = redis_client.get(store.key(pid, "session"))
    assert len(raw) < 1024
    assert Session.loads(raw) == walker.session


def test_one_person_is_served_one_message_at_a_time(store):
    pid = pseudonym(SECRET, "web", "v4")
    order: list[str] = []
    inside = threading.Event()

    def slow():
        with store.turn(pid):
            order.append("a-in")
            inside.set()
            time.sleep(0.2)
            order.append("a-out")

    t = threading.Thread(target=slow)
    t.start()
    assert inside.wait(5)
    with store.turn(pid):
        order.append("b-in")
    t.join()
    assert order == ["a-in", "a-out", "b-in"]


def test_other_people_are_not_blocked(store):
    a, b = pseudonym(SECRET, "web", "x"), pseudonym(SECRET, "web", "y")
    with store.turn(a), store.turn(b) as turn_b:
        assert turn_b.session is None


def test_conversation_round_trips_through_redis(services, redis_client, key_prefix):
    conv = services.conversations
    conv.handle("web", "visitor-1", Incoming("event", "first_contact"))
    conv.handle("web", "visitor-1", Incoming("tap", "start", "welcome"))
    step = conv.handle("web", "visitor-1", Incoming("tap", "self", "whose"))
    assert step.session.state == "age"
    # Besides the session, only the day's anonymous figures (bot.figures).
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}:*")
            if b":{fig:" not in k]
    assert keys == [f"{key_prefix}:{{{conv.pseudonym('web', 'visitor-1')}}}:session"]
    assert all("visitor-1" not in k for k in keys)
    conv.handle("web", "visitor-1", Incoming("text", "データを消す"))
    assert [k for k in redis_client.scan_iter(match=f"{key_prefix}:*")
            if b":{fig:" not in k] == []


def test_delete_my_data_works_on_a_cluster(redis_cluster):
    """The forget command's deletions ride in the session's pipeline; a cluster pipeline
    refuses a DEL of several keys, so before, every forget (and LINE unfollow) on a cluster
    failed: the degraded answer, and the data kept."""
    import uuid

    from bot.config import Settings
    from bot.redisconn import connect
    from bot.wiring import build

    client = connect(redis_cluster.url, cluster=True)
    prefix = f"tsunagu-test-{uuid.uuid4().hex[:10]}"
    conv = build(Settings(redis_url=redis_cluster.url, redis_cluster=True,
                          bot_secret_key=SECRET, key_prefix=prefix), client=client).conversations
    conv.handle("web", "visitor-1", Incoming("event", "first_contact"))
    conv.handle("web", "visitor-1", Incoming("tap", "start", "welcome"))
    step = conv.handle("web", "visitor-1", Incoming("text", "データを消す"))
    assert "degraded" not in step.events and step.forget
    assert [k for k in client.scan_iter(match=f"{prefix}:*") if b":{fig:" not in k] == []
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()
