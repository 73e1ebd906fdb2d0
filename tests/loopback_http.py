"""A file server on 127.0.0.1 for download tests: Range requests, dropped connections, a request log.

`LoopbackServer({"/x.pth": data})` serves in a thread; `drops` lists, request by request, after how
many body bytes the connection is cut (the full Content-Length is still announced), so tests can
interrupt a transfer exactly. `ranges=False` makes it a server that ignores Range headers.
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class LoopbackServer:
    """Serves `files` (URL path -> bytes) at `self.url`; `self.requests` logs (path, Range header)."""

    def __init__(self, files: dict[str, bytes], drops: list[int] | None = None, ranges: bool = True) -> None:
        self.files = files
        self.drops = list(drops or [])
        self.ranges = ranges
        self.requests: list[tuple[str, str | None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                range_header = self.headers.get("Range")
                owner.requests.append((self.path, range_header))
                data = owner.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if owner.ranges and match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if owner.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                drop = owner.drops.pop(0) if owner.drops else None
                self.wfile.write(body if drop is None else body[:drop])

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
                pass

        return Handler


def closed_port_url() -> str:
    """The URL of a loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
