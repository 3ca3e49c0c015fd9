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
      pool whose threads have not all ended still runs what was handed over, for up to
      EXIT_WAIT_S, as the executor's (non-daemon) threads did: a degraded answer has
      nothing else behind it. That holds too for a pool its owner already stopped or
      finished with a `timeout` that ran out (server.shutdown, from gunicorn's
      `worker_exit`): after a HUP reload or a max_requests restart nothing SIGKILLs the
      worker soon, and the answer may still finish; after a stop, the master's SIGKILL
      only cuts short a wait that could not save it anyway. A pool whose threads all
      ended is forgotten then, and costs nothing at exit.

    Taking a task and ending are atomic with each other (`_gate`): an `offer` either comes
    before the threads' signals to end — and is run, or taken out by `take_waiting` — or
    is refused, never queued behind them where no thread would run it.
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
        self._gate = threading.Lock()  # offer's check and put vs. the end (see the class)
        _LIVE.add(self)

    def offer(self, task: Callable[..., Any], *args: Any) -> bool:
        with self._gate:
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
        with self._gate:
            self._accepting, self._dropping = False, True
            while True:
                try:
                    self._queue.get_nowait()
                except Empty:
                    break
            self._signal_end()
        return self._wait(timeout)

    def finish(self, timeout: float) -> bool:
        """No new tasks; what waits still runs; wait up to `timeout` in all. Returns whether
        every thread has ended (False: some task still runs, or still waits — see
        `take_waiting`)."""
        with self._gate:
            self._accepting = False
            self._signal_end()
        return self._wait(timeout)

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

    def _signal_end(self) -> None:
        """Behind what waits, one wake-up to end per thread. Called under `_gate`, once no
        new task is taken: nothing can be queued behind them."""
        for _ in self._threads:
            self._queue.put(None)

    def _wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` in all for the threads to end (None: not at all). A pool
        whose threads all ended is forgotten by the exit hook; one still busy stays for
        its EXIT_WAIT_S (see the class)."""
        if timeout is not None:
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        ended = self.ended()
        if ended:
            _LIVE.discard(self)
        elif timeout is not None:
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
    """At exit (atexit runs while daemon threads still live): let every pool whose threads
    have not all ended — nobody stopped it, or its owner's wait ran out — finish within
    EXIT_WAIT_S in all. Returns at once when every pool's threads ended in its owner's
    wait (those were forgotten then)."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for workers in list(_LIVE):
        workers.finish(max(0.0, deadline - time.monotonic()))


__all__ = ["EXIT_WAIT_S", "Workers"]
