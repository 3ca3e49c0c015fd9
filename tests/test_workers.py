"""bot.workers: the bounded hand-off of LINE answers (claims) and degraded answers."""

from __future__ import annotations

import threading

from bot import logs
from bot.workers import Workers


def test_tasks_run_on_the_workers_in_order() -> None:
    workers = Workers("t", threads=1, backlog=10)
    done: list[tuple[int, str]] = []
    finished = threading.Event()
    try:
        for i in range(5):
            assert workers.offer(lambda i=i: done.append((i, threading.current_thread().name)))
        assert workers.offer(finished.set)
        assert finished.wait(5)
        assert [i for i, _ in done] == [0, 1, 2, 3, 4]
        assert {name for _, name in done} == {"t-0"}  # not the caller's thread
    finally:
        workers.stop(timeout=5)


def test_no_thread_before_the_first_task() -> None:
    before = {t.name for t in threading.enumerate()}
    workers = Workers("idle-pool", threads=3, backlog=1)
    assert not any(t.name.startswith("idle-pool") for t in threading.enumerate()
                   if t.name not in before)
    workers.stop()
    assert not workers.offer(print)  # stopped: refused, nothing started


def test_a_full_backlog_refuses_and_the_caller_keeps_the_work() -> None:
    workers = Workers("busy", threads=1, backlog=2)
    gate, started = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        gate.wait(5)

    try:
        assert workers.offer(block)
        assert started.wait(5)        # the one thread is busy now
        assert workers.offer(print)   # two may wait...
        assert workers.offer(print)
        assert workers.waiting() == 2
        assert not workers.offer(print)  # ...the third is refused
    finally:
        gate.set()
        workers.stop(timeout=5)


def test_a_failing_task_is_logged_by_name_and_the_thread_goes_on(caplog) -> None:
    workers = Workers("failing", threads=1, backlog=5)
    finished = threading.Event()

    def boom(secret: str) -> None:
        raise ValueError(secret)

    try:
        assert workers.offer(boom, "U-some-user-id")
        assert workers.offer(finished.set)
        assert finished.wait(5)  # the same single thread ran the next task
    finally:
        workers.stop(timeout=5)
    fields = [getattr(r, logs._FIELDS, {}) for r in caplog.records]
    assert {"where": "failing", "error": "ValueError"} in fields
    assert "U-some-user-id" not in caplog.text + repr(fields)


def test_stop_drops_what_waits_and_lets_the_running_task_finish() -> None:
    workers = Workers("stopping", threads=1, backlog=5)
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def running() -> None:
        started.set()
        gate.wait(5)
        ran.append("running")

    assert workers.offer(running)
    assert started.wait(5)
    assert workers.offer(lambda: ran.append("waiting"))
    stopper = threading.Thread(target=workers.stop, kwargs={"timeout": 5})
    stopper.start()
    gate.set()
    stopper.join(10)
    assert ran == ["running"]
    assert not workers.offer(lambda: ran.append("late"))
