"""A fixed set of threads fed by a bounded queue: work handed off a request's thread.

Deliberately not `concurrent.futures.ThreadPoolExecutor`: nobody here waits for a result, yet
the executor builds a Future per task (with its own Condition and lock), takes its shutdown
lock, counts idle threads through a Python semaphore, and completes the Future afterwards.
On the LINE webhook's path, where every event is handed to an answering thread, that was a
measurable share of the server's CPU. A `queue.SimpleQueue` is a C structure whose `put` and
blocking `get` release the GIL like a lock; the bound is read from its size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from bot import logs

Task = tuple[Callable[..., Any], tuple[Any, ...]]


class Workers:
    """`threads` daemon threads run what `offer` hands them, oldest first.

    `offer` refuses (returns False) when `backlog` tasks already wait or the workers were
    stopped: the caller then does the work another way (on its own thread, or by a ticket).
    A task raising is logged by its name, never its arguments (they may hold a person's
    address), and the thread goes on. `stop` lets running tasks finish and drops the waiting
    ones, like `shutdown(cancel_futures=True)`.
    """

    def __init__(self, name: str, threads: int, backlog: int):
        self.name = name
        self.backlog = backlog
        self._queue: SimpleQueue[Task | None] = SimpleQueue()
        self._stopped = False
        self._count = threads
        self._threads: list[threading.Thread] = []
        self._starting = threading.Lock()

    def offer(self, task: Callable[..., Any], *args: Any) -> bool:
        if self._stopped or self._queue.qsize() >= self.backlog:
            return False
        if not self._threads:
            self._start()
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
            for thread in threads:
                thread.start()
            self._threads = threads

    def waiting(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float | None = None) -> None:
        """No new tasks; waiting ones are dropped; with `timeout`, wait for running ones."""
        self._stopped = True
        while True:  # drop what waits, then one wake-up per thread
            try:
                self._queue.get_nowait()
            except Empty:
                break
        for _ in self._threads:
            self._queue.put(None)
        if timeout is not None:
            for thread in self._threads:
                thread.join(timeout)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None or self._stopped:
                return
            task, args = item
            try:
                task(*args)
            except Exception as exc:  # the task's own failure: logged, the thread goes on
                logs.failure(self.name, exc)


__all__ = ["Workers"]
