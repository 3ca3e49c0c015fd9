"""A fixed set of threads fed by a bounded queue: work handed off a request's thread.

Deliberately not `concurrent.futures.ThreadPoolExecutor`: nobody here waits for a result, yet
the executor builds a Future per task (with its own Condition and lock), takes its shutdown
lock, counts idle threads through a Python semaphore, and completes the Future afterwards.
On the LINE webhook's path, where every event is handed to an answering thread, that was a
measurable share of the server's CPU. A `queue.SimpleQueue` is a C structure whose `put` and
blocking `get` release the GIL like a lock; the bound is read from its size.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from bot import logs

log = logs.get("workers")

Task = tuple[Callable[..., Any], tuple[Any, ...]]
EXIT_WAIT_S = 5.0  # at interpreter exit, how long queued and running tasks may still take


class Workers:
    """`threads` daemon threads run what `offer` hands them, oldest first.

    `offer` refuses (returns False) when `backlog` tasks already wait, when no thread can be
    started, or once the workers stop: the caller then does the work another way (on its own
    thread, or by a ticket). A task raising is logged by its name, never its arguments (they
    may hold a person's address), and the thread goes on.

    Ways to end, each taking no new tasks:
    - `stop` drops what waits and lets running tasks finish (the executor's
      `shutdown(cancel_futures=True)`);
    - `finish` lets what waits run too, within its `timeout`; what still waits at the end
      can then be taken out (`take_waiting`) and handed elsewhere — the dispatcher gives
      its claims back (lock released, ticket written) rather than leave them to die;
    - at interpreter exit — a gunicorn worker ends with `sys.exit` on every restart — a
      pool nobody stopped still runs what was handed over, for up to EXIT_WAIT_S, as the
      executor's (non-daemon) threads did: a degraded answer has nothing else behind it. A
      pool already stopped or finished with a `timeout` is not waited for again: its owner
      (server.shutdown, from gunicorn's `worker_exit`) spent the budget that fits under
      gunicorn's graceful_timeout, and more would only meet the master's SIGKILL.
    """

    def __init__(self, name: str, threads: int, backlog: int):
        self.name = name
        self.backlog = backlog
        self._queue: SimpleQueue[Task | None] = SimpleQueue()
        self._accepting = True
        self._dropping = False
        self._count = threads
        self._threads: list[threading.Thread] = []
        self._starting = threading.Lock()
        _LIVE.add(self)

    def offer(self, task: Callable[..., Any], *args: Any) -> bool:
        if self.full():
            return False
        if not self._threads:
            try:
                self._start()
            except RuntimeError:  # "can't start new thread": the caller does the work
                logs.event(log, "workers_not_started", logging.ERROR, pool=self.name)
                return False
        self._queue.put((task, args))
        return True

    def _start(self) -> None:
        """Threads start with the first task, as the executor's did: a channel built and
        never used (tests, a CLI) holds none."""
        with self._starting:
            if self._threads:
                return
            threads = [threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
                       for i in range(self._count)]
            started = []
            try:
                for thread in threads:
                    thread.start()
                    started.append(thread)
            finally:
                self._threads = started

    def waiting(self) -> int:
        return self._queue.qsize()

    def full(self) -> bool:
        return not self._accepting or self._queue.qsize() >= self.backlog

    def stop(self, timeout: float | None = None) -> bool:
        """No new tasks; waiting ones are dropped; with `timeout`, wait that long in all for
        the running ones. Returns whether every thread has ended."""
        self._accepting, self._dropping = False, True
        while True:
            try:
                self._queue.get_nowait()
            except Empty:
                break
        return self._end(timeout)

    def finish(self, timeout: float) -> bool:
        """No new tasks; what waits still runs; wait up to `timeout` in all. Returns whether
        every thread has ended (False: some task still runs, or still waits — see
        `take_waiting`)."""
        self._accepting = False
        return self._end(timeout)

    def take_waiting(self) -> list[Task]:
        """Remove the tasks no thread has started and return them, oldest first: the caller
        hands them elsewhere. Each task goes either to a thread or here, never both (the
        queue's `get` is atomic). The threads' wake-ups to end stay queued."""
        tasks: list[Task] = []
        ends = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                break
            if item is None:
                ends += 1
            else:
                tasks.append(item)
        for _ in range(ends):
            self._queue.put(None)
        return tasks

    def ended(self) -> bool:
        """Whether no thread runs (none started, or every one has returned)."""
        return not any(thread.is_alive() for thread in self._threads)

    def _end(self, timeout: float | None) -> bool:
        for _ in self._threads:  # behind what waits: one wake-up per thread
            self._queue.put(None)
        if timeout is None:
            return self.ended()
        _LIVE.discard(self)  # waited for by its owner: not again at exit (see the class)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        ended = self.ended()
        if not ended:
            # queued: tasks not started, with the threads' wake-ups to end
            logs.event(log, "workers_unfinished", logging.WARNING, pool=self.name,
                       running=sum(thread.is_alive() for thread in self._threads),
                       queued=self.waiting())
        return ended

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None or self._dropping:
                return
            task, args = item
            try:
                task(*args)
            except BaseException as exc:  # the task's own failure: logged, the thread goes on
                logs.failure(self.name, exc)


_LIVE: weakref.WeakSet[Workers] = weakref.WeakSet()


@atexit.register
def _finish_all() -> None:
    """At exit (atexit runs while daemon threads still live): let every pool nobody stopped
    with a wait finish. Returns at once when shutdown already waited for them all."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for workers in list(_LIVE):
        workers.finish(max(0.0, deadline - time.monotonic()))


__all__ = ["EXIT_WAIT_S", "Workers"]
