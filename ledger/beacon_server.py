"""A local drand-compatible beacon: a 1-of-1 "threshold" quicknet-scheme chain.

For tests and demos without network. It speaks drand's HTTP API (v1):
``GET /info``, ``/public/latest``, ``/public/<round>`` and the same under
``/<chain hash>/``. Round ``R`` is answered only from its publication time
``genesis + (R - 1) * period`` on (425 Too Early before, as drand's relays do), so a
client sees the same schedule as with a real chain. Signatures are deterministic (BLS
is unique), so nothing is stored: a round is signed when first asked for.

Trusts: whoever holds the key file can compute every round in advance — this beacon
demonstrates the protocol; it gives none of drand's guarantees.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .drand import BeaconKey, Round

_PATH = re.compile(r"^(?:/(?P<chain>[0-9a-f]{64}))?/(?P<what>info|public/latest|"
                   r"public/(?P<round>[0-9]{1,19}))/?$")


class BeaconServer:
    def __init__(self, key: BeaconKey, host: str = "127.0.0.1", port: int = 0) -> None:
        self.key, self.info = key, key.info
        self._cache: dict[int, Round] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status, body = server.answer(self.path.split("?")[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}" if isinstance(host, str) else f"http://127.0.0.1:{port}"

    def round(self, r: int) -> Round:
        with self._lock:
            if r not in self._cache:
                self._cache[r] = self.key.sign(r)
            return self._cache[r]

    def answer(self, path: str) -> tuple[int, dict[str, object]]:
        m = _PATH.match(path)
        if m is None:
            return 404, {"error": "not found"}
        if m["chain"] is not None and m["chain"] != self.info.hash_hex:
            return 404, {"error": f"unknown chain {m['chain']}"}
        if m["what"] == "info":
            return 200, self.info.to_json()
        latest = self.info.round_at(time.time())
        r = latest if m["round"] is None else int(m["round"])
        if r < 1:
            return 425 if m["round"] is None else 404, {"error": "no round yet"}
        if r > latest:
            return 425, {"error": f"round {r} is not published yet (latest {latest})"}
        return 200, self.round(r).to_json()

    def start(self) -> BeaconServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="potd-beacon",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()
