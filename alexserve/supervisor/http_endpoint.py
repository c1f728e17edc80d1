"""The supervisor's HTTP endpoint: /metrics (Prometheus text format) and /healthz, one port.

prometheus-client's `make_wsgi_app` renders the registry (content negotiation
and gzip included); a small WSGI wrapper adds /healthz and the bearer-token
check, and a threading wsgiref server runs it on daemon threads.

The server is bounded, so a client that opens connections and sends nothing
(or one byte at a time) cannot use up threads and file handles:

    MAX_CONNECTIONS        connections served at once; more are answered 503 and closed at once
    READ_TIMEOUT_SECONDS   a socket read or write that waits longer ends the connection
    REQUEST_DEADLINE_SECONDS  a connection is shut down after this long, however slowly it trickles
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from alexserve.supervisor.auth import tokens_match

MAX_CONNECTIONS = 32
READ_TIMEOUT_SECONDS = 5.0
REQUEST_DEADLINE_SECONDS = 15.0
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    """One daemon thread per connection, at most `max_connections` of them."""

    daemon_threads = True
    allow_reuse_address = True
    max_connections = MAX_CONNECTIONS
    on_refused: Callable[[], None] = staticmethod(lambda: None)

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # full: answer at once instead of queueing a thread
            self.on_refused()
            try:
                request.settimeout(0.5)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    timeout = READ_TIMEOUT_SECONDS  # StreamRequestHandler sets it on the socket: no read or write waits longer
    deadline_seconds = REQUEST_DEADLINE_SECONDS

    def setup(self) -> None:
        super().setup()
        # A trickle of one byte every few seconds keeps each read under the timeout: cut it off at the deadline.
        self._deadline = threading.Timer(self.deadline_seconds, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut_off(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:  # the peer is gone or was cut off: nothing left to flush
            pass

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # a timeout or a cut-off connection: one fewer client, not an error to log
            self.close_connection = True

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
    """Serves /metrics and /healthz on (host, port) from daemon threads; port 0 picks a free one."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Callable[[], dict],
        token: str | None,
        max_connections: int = MAX_CONNECTIONS,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        limits = {"max_connections": max_connections, "on_refused": staticmethod(on_refused)}
        server_class = type("_Server", (_BoundedWSGIServer,), limits)
        self.httpd = make_server(
            host, port, make_app(registry, health, token), server_class, handler_class=_QuietHandler
        )
        self.host, self.port = host, self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="alexserve-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
