"""The supervisor's HTTP endpoint: /metrics (Prometheus text format) and /healthz, one port.

prometheus-client's `make_wsgi_app` renders the registry (content negotiation
and gzip included); a small WSGI wrapper adds /healthz and the bearer-token
check, and a threading wsgiref server runs it on a daemon thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from alexserve.supervisor.auth import tokens_match


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # scrapes every few seconds would flood the log
        pass


def make_app(registry: CollectorRegistry, health: Callable[[], dict], token: str | None):
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            body = json.dumps(health()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/metrics":
            if token is not None:
                header = environ.get("HTTP_AUTHORIZATION", "")
                given = header[len("Bearer ") :] if header.startswith("Bearer ") else None
                if not tokens_match(token, given):
                    start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
                    return [b"unauthorized: send Authorization: Bearer TOKEN\n"]
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class MetricsServer:
    """Serves /metrics and /healthz on (host, port) from a daemon thread; port 0 picks a free one."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: Callable[[], dict], token: str | None
    ) -> None:
        self.httpd = make_server(
            host, port, make_app(registry, health, token), _ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.host, self.port = host, self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="alexserve-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
