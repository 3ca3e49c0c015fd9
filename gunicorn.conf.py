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
