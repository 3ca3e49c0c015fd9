"""gunicorn settings for a small machine (2 cores). Read by `make run` and the Procfile."""

import os

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


def worker_exit(arbiter, worker):
    """In the worker, after its last request and before it exits: stop the app's background
    threads (server.shutdown) so that an answer under way finishes rather than dying with
    the process. gunicorn also calls this in the master for a worker that vanished: no app
    there (`wsgi` is set by the worker when it loads the app).

    The budget is the worker's own graceful_timeout (`worker.cfg`: a --graceful-timeout on
    the command line counts, not only this file's): the master kills the worker once that
    much has passed since its SIGTERM. Half of it, because the worker's draining of its
    connections came first (2 s for kept-alive ones, more for a slow request); then
    shutdown's CLOSING_S; the pools it waited for are not waited for again at exit
    (bot.workers), so the worker exits at about graceful_timeout / 2 + 1 s after draining."""
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from server import shutdown

        shutdown(app, worker.cfg.graceful_timeout / 2)
