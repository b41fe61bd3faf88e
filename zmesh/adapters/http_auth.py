"""Bearer tokens for the HTTP gateway: who may call it, and as which agent.

Rules it keeps:

* The tokens file (``zmesh gateway --tokens FILE``) holds one ``TOKEN AGENT`` per line
  (blank lines and ``#`` comments skipped). ``AGENT`` is the one agent id the token may act
  as, or ``*``: any agent, and the gateway's own calls (``/task/assign``). A token is at
  least :data:`MIN_TOKEN_CHARS` printable characters without spaces; a bad line, a token
  given twice, or a file that others can read is refused at start, naming the file and the
  line, as a key file is.
* With tokens, every request carries ``Authorization: Bearer TOKEN``: without one, or with
  one not in the file, the answer is 401 (code ``unauthorized``); acting as an agent the
  token does not name is 403 (code ``forbidden``). Tokens are compared in constant time.
  ``GET /openapi.json`` and the docs stay open: they hold no data.
* The caller's token travels in a context variable set per request by the gateway's
  middleware; the handlers ask :func:`allow` with the agent they act as (None for a call
  of the gateway itself), so no handler can forget to check.
* Without a tokens file nothing here runs (the gateway listens on loopback by default; the
  CLI refuses another address without tokens unless told ``--no-auth``).
"""

from __future__ import annotations

import hmac
import os
from contextvars import ContextVar
from pathlib import Path

from .. import protocol
from ..errors import ConfigError, Forbidden, RemoteError, ZmeshError
from ..protocol.fields import check_value
from ..transport.keys import MIN_TOKEN_CHARS, check_private, valid_token
#: a token's agent that may act as any agent and make the gateway's own calls
ANY = "*"
#: paths served without a token
OPEN_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class Unauthorized(ZmeshError):
    code = "unauthorized"
    meaning = "no bearer token, or one the gateway does not know"


#: the agent the current request's token may act as (ANY for any), or None without tokens
CALLER: ContextVar[str | None] = ContextVar("zmesh_http_caller", default=None)


class Tokens:
    """The tokens of a tokens file."""

    def __init__(self, by_token: dict[str, str]) -> None:
        self._by_token = by_token

    def __len__(self) -> int:
        return len(self._by_token)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokens:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--tokens: no file {file}", {"field": "--tokens"})
        check_private(file, "--tokens")
        by_token: dict[str, str] = {}
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            where = f"--tokens: {file} line {number}"
            if len(parts) != 2:
                raise ConfigError(f"{where}: want 'TOKEN AGENT' (AGENT an agent id or *)", {"field": "--tokens"})
            token, agent = parts
            if not valid_token(token):
                raise ConfigError(f"{where}: a token has at least {MIN_TOKEN_CHARS} printable characters",
                                  {"field": "--tokens"})
            if agent != ANY:
                try:
                    check_value(protocol.OPS["register"].by_name["agent"], agent)
                except RemoteError as exc:
                    raise ConfigError(f"{where}: {exc.message}", {"field": "--tokens"}) from None
            if token in by_token:
                raise ConfigError(f"{where}: this token is given twice", {"field": "--tokens"})
            by_token[token] = agent
        if not by_token:
            raise ConfigError(f"--tokens: {file} holds no token", {"field": "--tokens"})
        return cls(by_token)

    def caller(self, authorization: str | None) -> str:
        """The agent a request's ``Authorization`` header may act as; raises Unauthorized."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this gateway needs 'Authorization: Bearer TOKEN'", {"field": "Authorization"})
        token = token.strip()
        found = None
        for known, agent in self._by_token.items():  # every one compared: the time says nothing
            if hmac.compare_digest(known.encode(), token.encode()):
                found = agent
        if found is None:
            raise Unauthorized("the bearer token is not one this gateway knows", {"field": "Authorization"})
        return found


def allow(agent: str | None) -> None:
    """Refuse the current request when its token may not act as ``agent`` (None: the
    gateway's own call, for ``*`` tokens only)."""
    caller = CALLER.get()
    if caller is None or caller == ANY or (agent is not None and caller == agent):
        return
    what = f"act as agent '{agent}'" if agent is not None else "make the gateway's own calls"
    raise Forbidden(f"this token may not {what}: it is agent '{caller}''s", {"field": "Authorization"})
