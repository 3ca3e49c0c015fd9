"""bot.workers: the bounded hand-off of LINE answers (claims) and degraded answers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot import logs
from bot import workers as workers_module
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
    workers.stop()                # while the running task still holds its thread
    gate.set()
    workers.stop(timeout=5)       # again, now waiting for the running one
    assert ran == ["running"]
    assert not workers.offer(lambda: ran.append("late"))


def test_at_exit_what_was_handed_over_still_runs() -> None:
    """A gunicorn worker ends with sys.exit on every restart: the threads are daemons, yet
    what was queued (a degraded answer has nothing else behind it) is answered first."""
    script = (
        "import sys, time\n"
        "from bot.workers import Workers\n"
        "w = Workers('line-degraded', 1, 64)\n"
        "def answer(i):\n"
        "    time.sleep(0.05)\n"
        "    print('answered', i, flush=True)\n"
        "for i in range(4):\n"
        "    assert w.offer(answer, i)\n"
        "sys.exit(0)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"answered {i}" for i in range(4)]


def test_no_thread_to_start_means_the_caller_keeps_the_work(monkeypatch) -> None:
    def refuse(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    workers = Workers("no-threads", threads=2, backlog=5)
    assert not workers.offer(print)


def test_a_task_raising_base_exception_does_not_take_its_thread() -> None:
    workers = Workers("base", threads=1, backlog=5)
    finished = threading.Event()

    def leave() -> None:
        raise SystemExit(3)

    try:
        assert workers.offer(leave)
        assert workers.offer(finished.set)
        assert finished.wait(5)
    finally:
        workers.stop(timeout=5)


def test_what_waits_past_finish_is_taken_out_for_the_caller() -> None:
    """`finish` runs what waits within its timeout; what still waits at the end is taken
    out (`take_waiting`), oldest first, and never runs here; the threads still end."""
    workers = Workers("taking", threads=1, backlog=10)
    gate, started = threading.Event(), threading.Event()
    ran: list[int] = []

    def running() -> None:
        started.set()
        gate.wait(5)

    def later(i: int) -> None:
        ran.append(i)

    assert workers.offer(running)
    assert started.wait(5)
    for i in range(3):
        assert workers.offer(later, i)
    assert workers.finish(0.1) is False            # the running task holds the thread
    taken = workers.take_waiting()
    assert [args for _, args in taken] == [(0,), (1,), (2,)]
    assert workers.take_waiting() == []
    gate.set()
    assert workers.finish(5) is True               # the wake-up to end was kept
    assert ran == []


def test_finish_runs_what_waits_within_its_timeout() -> None:
    workers = Workers("finishing", threads=2, backlog=10)
    ran: list[int] = []
    for i in range(6):
        assert workers.offer(lambda i=i: (time.sleep(0.05), ran.append(i)))
    assert workers.finish(5) is True
    assert sorted(ran) == list(range(6))
    assert workers.ended()


@pytest.mark.parametrize("end", ["finish", "stop"])
def test_a_pool_still_busy_after_its_owners_wait_is_still_waited_for_at_exit(end: str) -> None:
    """After a HUP reload or a max_requests restart nothing SIGKILLs the worker soon: a
    degraded answer still running when server.shutdown's wait ran out (the only copy of its
    event) gets the exit hook's EXIT_WAIT_S, whether its pool was finished or stopped."""
    workers = Workers(f"busy-{end}", threads=1, backlog=10)
    gate, started, done = threading.Event(), threading.Event(), threading.Event()
    try:
        assert workers.offer(lambda: (started.set(), gate.wait(10), done.set()))
        assert started.wait(5)
        assert getattr(workers, end)(timeout=0.05) is False
        assert workers in workers_module._LIVE
        threading.Timer(0.2, gate.set).start()
        workers_module._finish_all()
        assert done.is_set()                      # waited for at exit, not abandoned
        assert workers not in workers_module._LIVE
    finally:
        gate.set()
        workers.stop(timeout=5)


def test_a_pool_that_ended_in_its_owners_wait_costs_nothing_at_exit() -> None:
    workers = Workers("ended", threads=2, backlog=10)
    unused = Workers("unused", threads=2, backlog=10)
    assert workers.offer(time.sleep, 0.01)
    assert workers.finish(5) is True
    assert unused.stop(timeout=5) is True
    assert workers not in workers_module._LIVE
    assert unused not in workers_module._LIVE


def test_a_task_offered_while_the_pool_finishes_is_run_or_refused() -> None:
    """`offer` passed its check, then `finish` queued the threads' ends, then `offer` put
    its task behind them: no thread ran it, yet the caller was told it would be. Now the
    check and the put are atomic with the end: the task is either refused (the caller
    answers on its own thread) or queued ahead of the ends, and run."""
    workers = Workers("racing", threads=1, backlog=10)
    assert workers.offer(lambda: None)         # the thread is started
    ran = threading.Event()
    finished: list[bool] = []
    finisher = threading.Thread(target=lambda: finished.append(workers.finish(5)))
    checked = workers.full

    def full_then_finish() -> bool:
        answer = checked()
        finisher.start()
        finisher.join(0.3)                     # finish gets its chance between check and put
        return answer

    workers.full = full_then_finish  # type: ignore[method-assign]
    offered = workers.offer(ran.set)
    finisher.join(5)
    assert finished == [True]
    assert not offered or ran.is_set()
    assert workers.take_waiting() == []
