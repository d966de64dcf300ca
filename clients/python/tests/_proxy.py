"""A loss-making HTTP proxy in front of a real router: it forwards every request, and for the
ones it is told to, throws the router's answer away and closes the connection, as a network
that fails after the server acted would. Used to prove that retries after a lost answer never
apply a change twice. One request per connection (it answers ``Connection: close``).
"""

from __future__ import annotations

import http.client
import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class Seen:
    """A request the proxy received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    status: int | None = None
    dropped: bool = False


@dataclass
class _Rule:
    method: str
    path_contains: str
    remaining: int


@dataclass
class _State:
    upstream: tuple[str, int]
    rules: list[_Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


class _Handler(socketserver.StreamRequestHandler):
    state: _State

    def handle(self) -> None:
        line = self.rfile.readline(65536).decode("latin-1").strip()
        if not line:
            return
        method, path, _ = line.split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(65536).decode("latin-1")
            if raw in ("\r\n", "\n", ""):
                break
            name, _, value = raw.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", "0") or 0))
        seen = Seen(method, path, headers, body)
        with self.state.lock:
            self.state.seen.append(seen)
            rule = next(
                (
                    r
                    for r in self.state.rules
                    if r.remaining > 0 and r.method == method and r.path_contains in path
                ),
                None,
            )
            if rule is not None:
                rule.remaining -= 1
        upstream = http.client.HTTPConnection(*self.state.upstream, timeout=60)
        try:
            forward = {k: v for k, v in headers.items() if k not in _HOP}
            forward["connection"] = "close"
            upstream.request(method, path, body=body or None, headers=forward)
            resp = upstream.getresponse()
            data = resp.read()
            seen.status = resp.status
            if rule is not None:
                # The server acted; its answer is lost on the way back.
                seen.dropped = True
                return
            out = [f"HTTP/1.1 {resp.status} {resp.reason}"]
            out += [f"{k}: {v}" for k, v in resp.getheaders() if k.lower() not in _HOP]
            out += [f"content-length: {len(data)}", "connection: close", "", ""]
            self.wfile.write("\r\n".join(out).encode("latin-1") + data)
            self.wfile.flush()
        finally:
            upstream.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class LossyProxy:
    """``with LossyProxy("127.0.0.1:7700") as proxy: proxy.drop("PATCH") ...``"""

    def __init__(self, upstream_addr: str) -> None:
        host, port = upstream_addr.rsplit(":", 1)
        self.state = _State(upstream=(host, int(port)))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port!s}"

    def drop(self, method: str, path_contains: str = "", times: int = 1) -> None:
        """Lose the answers of the next ``times`` matching requests."""
        with self.state.lock:
            self.state.rules.append(_Rule(method, path_contains, times))

    @property
    def seen(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.seen)

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
