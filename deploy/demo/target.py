"""A local HTTP app for the demo-targets profile: GET /health answers 200, or 500 while broken.

POST /break and POST /mend switch it, from loopback only (that is, from inside its own
container: ``podman exec ... python -c ...``). Standard library only.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Target(BaseHTTPRequestHandler):
    broken = threading.Event()

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path != "/health":
            self._answer(404, b"not found")
        elif self.broken.is_set():
            self._answer(500, b"database unavailable")
        else:
            self._answer(200, b"all is well")

    def do_POST(self) -> None:
        if self.client_address[0] != "127.0.0.1" or self.path not in ("/break", "/mend"):
            self._answer(403, b"forbidden")
            return
        if self.path == "/break":
            self.broken.set()
        else:
            self.broken.clear()
        sys.stdout.write(f"target: {self.path[1:]}\n")
        self._answer(200, self.path[1:].encode())

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", 8080), Target)  # noqa: S104 (its own network)
    sys.stdout.write("target: serving on :8080\n")
    server.serve_forever()
