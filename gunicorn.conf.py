"""gunicorn settings for a small machine (2 cores). Read by `make run` and the Procfile."""

import os
import signal
import time
from typing import Any

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# The embedded Redis lives inside one process: more than one worker would split sessions.
workers = int(os.environ.get("WEB_CONCURRENCY", "2" if os.environ.get("REDIS_URL") else "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = None  # request paths carry no personal data, but the app logs what matters
errorlog = "-"


# Where post_worker_init notes, on the worker object, when the worker got SIGTERM.
SIGTERM_AT = "tsunagu_sigterm_at"


def post_worker_init(worker: Any) -> None:
    """In the worker, once the app is loaded: note when SIGTERM arrives, then let gunicorn
    handle it as before (stop accepting, drain the connections).

    Why: the master SIGKILLs the worker graceful_timeout after its SIGTERM; `worker_exit`
    runs only after the draining, which can take most of that, so it needs the SIGTERM's
    time to know what is left (server.shutdown_budget). gunicorn's `init_signals` ran
    before this hook (Worker.init_process), so the handler found here is gunicorn's own.
    `signal.signal` makes the signal interrupt system calls again: gunicorn turned that off
    for SIGTERM so that it does not disturb requests under way, and so does this."""
    handle = signal.getsignal(signal.SIGTERM)

    def note_sigterm(sig: int, frame: Any) -> None:
        if getattr(worker, SIGTERM_AT, None) is None:
            setattr(worker, SIGTERM_AT, time.monotonic())
        if callable(handle):
            handle(sig, frame)

    signal.signal(signal.SIGTERM, note_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)


def worker_exit(arbiter: Any, worker: Any) -> None:
    """In the worker, after its last request and before it exits: stop the app's background
    threads (server.shutdown) so that an answer under way finishes rather than dying with
    the process. gunicorn also calls this in the master for a worker that vanished: no app
    there (`wsgi` is set by the worker when it loads the app).

    The budget comes from the worker's own graceful_timeout (`worker.cfg`: a
    --graceful-timeout on the command line counts, not only this file's) and, after a
    SIGTERM, from the time already spent draining connections since then: the master's
    SIGKILL comes graceful_timeout after the SIGTERM and must not land inside `shutdown`
    (server.shutdown_budget). A HUP reload also SIGTERMs the old workers, without the
    SIGKILL: pools still busy then get bot.workers' EXIT_WAIT_S at interpreter exit."""
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from server import shutdown, shutdown_budget

        noted = getattr(worker, SIGTERM_AT, None)
        since = None if noted is None else time.monotonic() - noted
        shutdown(app, shutdown_budget(worker.cfg.graceful_timeout, since))
