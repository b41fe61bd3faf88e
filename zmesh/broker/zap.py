"""The broker's gate when security is on: CurveZMQ on its ROUTER and PUB sockets, and a ZAP
handler (pyzmq's authenticator, in its own thread) that admits the client keys on the
allow-list.

Rules it keeps:

* Every socket the broker binds gets the same server key pair and ZAP domain; the gate
  starts before any bind, so no connection is ever taken unauthenticated.
* A client whose key is not on the list gets nothing: the handshake fails before a single
  request is read. The refusal is logged with the peer's address and the key's fingerprint,
  at most once per key per interval (a client retrying cannot flood the log).
* An admitted connection carries ``ROLE:KEY`` as its ZAP User-Id (the key's role from
  the allow-list, then its Z85 public key), which libzmq attaches to every message read
  from it (``frame.get("User-Id")``): the broker hands both to the core per request
  (keys.user_id and keys.split_user_id are the two ends of that format). The role is
  fixed when the connection is made: moving a key to another role directory takes effect
  when its client connects again.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from ..util.logs import RateLimited
from ..config import BrokerConfig
from ..errors import ConfigError
from ..transport.keys import AllowList, KeyPair, fingerprint, keygen, load_pair, user_id

log = logging.getLogger("zmesh.zap")

#: the ZAP domain of the broker's sockets
DOMAIN = "zmesh"


class Gate(ThreadAuthenticator):
    """pyzmq's thread authenticator with the allow-list as its CURVE check, and refusals
    logged with the peer."""

    def __init__(self, context: zmq.Context, keys: KeyPair, allow: AllowList) -> None:
        super().__init__(context, log=logging.getLogger("zmesh.zap.auth"))
        self.keys = keys
        self.allowed_keys = allow
        self.refused = 0
        self._warn = RateLimited(log, 30.0)
        self._peer = ""

    def begin(self) -> None:
        self.start()
        self.configure_curve_callback(DOMAIN, credentials_provider=self)
        roles = Counter(role for _file, role in self.allowed_keys.entries().values())
        log.info("security on: broker key %s, client keys allowed in %s: %d agent, %d observer, %d admin",
                 self.keys.fingerprint, self.allowed_keys.directory, roles["agent"], roles["observer"],
                 roles["admin"])
        for doubled in self.allowed_keys.doubled:
            log.warning("a key is in more than one role directory, the highest role counts: %s", doubled)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """What libzmq attaches to every message of an admitted connection (pyzmq asks after
        :meth:`callback` allowed the key; raw key bytes)."""
        z85 = zmq.utils.z85.encode(client_public_key)
        return user_id(self.allowed_keys.role(z85) or "agent", z85.decode("ascii"))

    def callback(self, domain: str, key: bytes) -> bool:
        """The CURVE check pyzmq asks (key in Z85)."""
        name = self.allowed_keys.allows(key)
        if name is None:
            self.refused += 1
            self._warn.warning(key.decode("ascii", "replace"), "refused a client with an unknown key %s (%s) "
                               "from %s: it is not in %s", fingerprint(key), key.decode("ascii", "replace"),
                               self._peer or "?", self.allowed_keys.directory)
            return False
        return True

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # [version, request id, domain, address, identity, mechanism, credentials...]
        self._peer = msg[3].decode("ascii", "replace") if len(msg) > 3 else ""
        if len(msg) > 5 and msg[5] != b"CURVE":
            self.refused += 1
            self._warn.warning("mechanism:" + self._peer, "refused a client from %s without CURVE (%s): "
                               "security is on", self._peer, msg[5].decode("ascii", "replace"))
        await super().handle_zap_message(msg)

    def secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server in the gate's domain (before it binds)."""
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)


def open_gate(context: zmq.Context, config: BrokerConfig) -> Gate:
    """The gate for a secure broker, started: its key pair (made on the first start when the
    default path is used) and its allow-list directory (made empty, with a warning, when the
    default one is missing; a configured one that is missing is a ConfigError)."""
    key_file = config.key_path
    if not config.key_file and not key_file.exists():
        keys_dir = key_file.parent
        keygen(keys_dir, "broker")
        log.info("made the broker's key pair in %s (clients need %s as ZMESH_SERVER_KEY)", keys_dir,
                 keys_dir / "broker.key")
    pair = load_pair(key_file, "key_file")
    allowed = config.authorized_path
    if not allowed.is_dir():
        if config.authorized_keys:
            raise ConfigError(f"authorized_keys: {allowed} is not a directory", {"field": "authorized_keys"})
        allowed.mkdir(parents=True, mode=0o700)
    gate = Gate(context, pair, AllowList(allowed))
    gate.begin()
    if not gate.allowed_keys.keys():
        log.warning("security on and no client key in %s: every client is refused until one is added", allowed)
    return gate


def client_options(server_public: bytes, keys: KeyPair) -> tuple[tuple[int, Any], ...]:
    """Socket options that make a client socket a CURVE client of a broker."""
    return ((zmq.CURVE_SERVERKEY, server_public), (zmq.CURVE_PUBLICKEY, keys.public),
            (zmq.CURVE_SECRETKEY, keys.secret))
