"""HTTP servers that RUN steps reach: bound to a bridge's gateway address before the bridge
exists (``IP_FREEBIND``), never looking their own address up in DNS."""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
from collections.abc import Callable

IP_FREEBIND = 15


class FreebindHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up (getfqdn): bind only
        self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def serve_in_thread(host: str, handler: type[http.server.BaseHTTPRequestHandler]
                    ) -> FreebindHTTPServer:
    """A server on ``host`` (a free port), answering in a daemon thread until shut down."""
    server = FreebindHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


Handler = Callable[[http.server.BaseHTTPRequestHandler], tuple[int, bytes]]


class StepServer:
    """A server for RUN steps: ``handler(request) -> (status, body)`` answers each GET
    (``content_type(path)`` names its type); ``requests`` lists (client address, path)."""

    def __init__(self, host: str, handler: Handler,
                 content_type: Callable[[str], str] = lambda path: "text/plain"):
        outer = self
        self.requests: list[tuple[str, str]] = []

        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.requests.append((self.client_address[0], self.path))
                status, body = handler(self)
                self.send_response(status)
                self.send_header("Content-Type", content_type(self.path))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = serve_in_thread(host, Answer)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
