"""Access tokens for live view: where the secret comes from, and signed expiring URLs.

The secret is read from a file (parameter ``token_file``), else the environment
(``BODYCAM_LIVE_TOKEN``), else a file created on first use at
``<ROS_HOME or ~/.ros>/bodycam/live_token`` (mode 0600), so ``bodycam run`` and the
``live_view`` node agree without passing the secret on a command line. Clients authenticate
with ``Authorization: Bearer <token>``, ``?token=``, a signed URL (``?exp=&sig=``: HMAC-SHA256
of path and expiry, keyed with the token) or the session cookie the page gets after either.
Every comparison is constant-time. Nothing here logs.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode

__all__ = ['ENV_TOKEN', 'COOKIE', 'TokenAuth', 'TokenError', 'default_token_path', 'load_token',
           'live_view_url', 'live_view_url_from_config']

ENV_TOKEN = 'BODYCAM_LIVE_TOKEN'
COOKIE = 'bodycam_live'
MIN_TOKEN_LEN = 16
#: An expiry has at most this many ASCII digits (UNIX s; 12 digits last until year 33658).
#: str.isdigit() alone lets '²' and 5000-digit strings through to int(), which raises.
MAX_EXP_DIGITS = 12


class TokenError(Exception):
    """No usable token: the file is missing, empty, too short or readable by others."""


def default_token_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = env.get('ROS_HOME') or str(Path.home() / '.ros')
    return Path(home) / 'bodycam' / 'live_token'


def load_token(token_file: str = '', env: Mapping[str, str] | None = None,
               create: bool = True, *, env_var: str = ENV_TOKEN,
               default_name: str = 'live_token') -> str:
    """The secret: ``token_file``, else ``$env_var``, else the default file
    ``<ROS_HOME>/bodycam/<default_name>`` (created with a random token when ``create``).

    Raises:
        TokenError: the named file is missing or unusable, or the token is shorter than 16.
    """
    env = os.environ if env is None else env
    if token_file:
        return _read(Path(token_file))
    if env.get(env_var):
        return _check(env[env_var].strip(), env_var)
    path = default_token_path(env).with_name(default_name)
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:   # O_EXCL: bodycam run and the node may race to create it; one wins
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, 'w') as f:
                f.write(secrets.token_urlsafe(32) + '\n')
    return _read(path)


def _read(path: Path) -> str:
    try:
        if path.stat().st_mode & 0o077:
            raise TokenError(f'token file {path} is readable by group/others; chmod 600 it')
        text = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f'cannot read token file {path}: {exc.strerror}') from exc
    return _check(text, str(path))


def _check(token: str, where: str) -> str:
    if len(token) < MIN_TOKEN_LEN:
        raise TokenError(f'token from {where} is shorter than {MIN_TOKEN_LEN} characters')
    return token


class TokenAuth:
    """Checks credentials against one secret; issues signed URLs and session cookies."""

    def __init__(self, token: str, clock=time.time) -> None:
        self._key = token.encode()
        self._clock = clock

    def check_token(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(
            candidate.encode('utf-8', 'surrogatepass'), self._key)

    def _mac(self, scope: str, exp: int) -> str:
        msg = f'{scope}|{exp}'.encode('utf-8', 'surrogatepass')
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, path: str, ttl_s: float) -> dict[str, str]:
        """Query parameters (``exp``, ``sig``) that open ``path`` until now + ``ttl_s``."""
        exp = int(self._clock() + ttl_s)
        return {'exp': str(exp), 'sig': self._mac(path, exp)}

    def check_signed(self, path: str, exp: str | None, sig: str | None) -> bool:
        """True for a valid unexpired signature; False (never an error) for anything else."""
        if not exp or not sig or len(exp) > MAX_EXP_DIGITS or not exp.isascii() \
                or not exp.isdigit() or int(exp) < self._clock():
            return False
        return hmac.compare_digest(sig.encode('utf-8', 'surrogatepass'),
                                   self._mac(path, int(exp)).encode())

    def session_cookie(self, ttl_s: float) -> str:
        exp = int(self._clock() + ttl_s)
        return f'{exp}.{self._mac("session", exp)}'

    def check_cookie(self, value: str | None) -> bool:
        if not value or '.' not in value:
            return False
        exp, _, sig = value.partition('.')
        return self.check_signed('session', exp, sig)


def live_view_url(host: str, port: int, token: str, *, tls: bool = False, path: str = '/',
                  ttl_s: float | None = None) -> str:
    """The URL that opens the page: ``?token=`` or, with ``ttl_s``, a signed expiring one."""
    if host in ('', '0.0.0.0', '::'):
        host = '127.0.0.1'
    if ':' in host:
        host = f'[{host}]'
    query = {'token': token} if ttl_s is None else TokenAuth(token).sign(path, ttl_s)
    return f'{"https" if tls else "http"}://{host}:{port}{path}?{urlencode(query)}'


def live_view_url_from_config(params_file: str | os.PathLike, ttl_s: float | None = 86400.0,
                              env: Mapping[str, str] | None = None) -> str:
    """The live view URL for a unit started from ``params_file`` (what ``bodycam run`` prints).

    Reads the ``live_view`` section (bind, port, tls_cert, token_file) and the token, creating
    the default token file if needed, exactly as the node will.

    Raises:
        TokenError: no usable token.
    """
    import yaml   # only here: the node never needs YAML

    with open(params_file) as f:
        doc = yaml.safe_load(f) or {}
    params: dict = {}
    for key, section in doc.items():
        if str(key).rstrip('/').split('/')[-1] == 'live_view' and isinstance(section, dict):
            params.update(section.get('ros__parameters') or {})
    token = load_token(str(params.get('token_file') or ''), env)
    return live_view_url(str(params.get('bind', '127.0.0.1')), int(params.get('port', 8080)),
                         token, tls=bool(params.get('tls_cert')), ttl_s=ttl_s)
