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
    the process. Half of graceful_timeout: the worker's own draining of connections comes
    first, and the master kills the worker once graceful_timeout is over. gunicorn also calls
    this in the master for a worker that vanished: no app there (`wsgi` is set by the worker
    when it loads the app)."""
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from server import shutdown

        shutdown(app, graceful_timeout / 2)
