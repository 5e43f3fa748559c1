"""A loopback dispatch webhook for tests: records every POST, can go down and come back,
over plain http or TLS with a certificate from :func:`make_ca` (the test's own CA)."""
from __future__ import annotations

import datetime
import json
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass(frozen=True)
class CertAuthority:
    """A CA certificate (give it to the client) and a server pair it signed."""
    ca_file: Path
    cert_file: Path      # server certificate for 127.0.0.1 and localhost
    key_file: Path       # its key, mode 0600


def make_ca(directory: Path, name: str = 'test') -> CertAuthority:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, made with
    ``cryptography`` as an agency's own CA would make them."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f'{name} CA')])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    out = CertAuthority(directory / f'{name}-ca.pem', directory / f'{name}-cert.pem',
                 directory / f'{name}-key.pem')
    out.ca_file.write_bytes(ca.public_bytes(pem))
    out.cert_file.write_bytes(leaf.public_bytes(pem))
    out.key_file.touch(mode=0o600)
    out.key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return out


class Receiver:
    """``http(s)://127.0.0.1:<port>/hook``; ``stop()`` refuses connections until ``start()``.

    With ``tls`` (a :class:`CertAuthority`) it serves HTTPS with that CA's server certificate;
    ``errors`` counts connections that ended without a reply (a client that does not
    trust the certificate hangs up in the handshake).
    """

    def __init__(self, port: int = 0, status=200,   # int | body -> (int, bytes)
                 tls: CertAuthority | None = None) -> None:
        self.port, self.status, self.tls = port, status, tls
        self.got: list[dict] = []   # {'t', 'key', 'auth', 'body'}
        self.cond = threading.Condition()
        self.errors = 0
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f'{"https" if self.tls else "http"}://127.0.0.1:{self.port}/hook'

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

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                rx.errors += 1

        self._httpd = Server(('127.0.0.1', self.port), Handler)
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
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
