"""A loopback dispatch webhook for tests: records every POST, can go down and come back."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """``http://127.0.0.1:<port>/hook``; ``stop()`` refuses connections until ``start()``."""

    def __init__(self, port: int = 0, status=200) -> None:   # int | body -> (int, bytes)
        self.port, self.status = port, status
        self.got: list[dict] = []   # {'t', 'key', 'auth', 'body'}
        self.cond = threading.Condition()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}/hook'

    def start(self) -> Receiver:
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get('Content-Length') or 0)))
                with rx.cond:
                    rx.got.append({'t': time.time(), 'key': self.headers.get('Idempotency-Key'),
                                   'auth': self.headers.get('Authorization'),
                                   'body': body})
                    rx.cond.notify_all()
                # status: a code, or a function of the JSON body giving (code, reply bytes)
                code, reply = rx.status(body) if callable(rx.status) \
                    else (rx.status, b'')
                self.send_response(code)
                self.send_header('Content-Length', str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *a) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(('127.0.0.1', self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.1},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def wait_for(self, pred, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self.got), timeout_s)
