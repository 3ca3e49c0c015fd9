"""The loopback HTTP server under every fake platform API: read a POST, answer JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handle = Callable[[str, bytes, dict[str, str]], tuple[int, dict]]


def serve_json(handle: Handle) -> tuple[ThreadingHTTPServer, str]:
    """Start a server on 127.0.0.1 (a free port) that passes each POST to `handle(path, raw
    body, lower-cased headers)` and sends back its (status, JSON payload); a GET passes its
    query string as a form body."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._answer(*handle(self.path, raw, headers))

        def do_GET(self) -> None:  # Web API read methods (conversations.history): query args
            path, _, query = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers["content-type"] = "application/x-www-form-urlencoded"
            self._answer(*handle(path, query.encode(), headers))

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"
