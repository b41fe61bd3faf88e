"""CurveZMQ keys: making them, reading them, and the broker's list of allowed client keys.

Rules it keeps:

* Key files are ZeroMQ's own certificate format (pyzmq's ``zmq.auth``): ``NAME.key``
  holds the public key, and ``NAME.key_secret`` holds both keys. A secret file is written
  with mode 0600 and refused when others can read it (as ssh refuses such a key).
* A key given where one enters (a flag, an env var, a config key, an argument) is a file
  path or a 40-character Z85 public key. A bad one is a ConfigError naming the field and
  the file, never a traceback.
* A key is shown by its fingerprint: the first 16 hex digits of the SHA-256 of the public
  key. Logs, refusals and (later) discovery records use it.
* The allow-list is a directory of public key files. It is read again when the directory
  changes, so a key added or removed takes effect with no restart.
* A key's role is the directory it is in (:data:`ROLE_DIRS`): the allow-list directory
  itself for agents, ``observers/`` and ``admins/`` inside it for the other two. A key in
  more than one gets the highest role it was given (admin, then agent, then observer):
  each placement was an operator's decision, and a warning names the key.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from ..errors import ConfigError
# the pure part of a key's identity (the core reads it without zmq); re-exported here
from ..protocol.identity import ROLE_DIRS, ROLES, Z85_KEY_CHARS, fingerprint, split_user_id, user_id  # noqa: F401
#: the shortest bearer token taken (the HTTP gateway's tokens, the metrics endpoint's)
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class KeyPair:
    """A CurveZMQ key pair (raw Z85 bytes, as libzmq's socket options take them)."""

    public: bytes
    secret: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def keygen(directory: str | os.PathLike[str], name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (0600) into ``directory``; refuses to
    overwrite unless ``force``."""
    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not force:
        for path in (public, secret):
            if path.exists():
                raise ConfigError(f"{path} exists; pass --force to replace it", {"field": "name"})
    folder.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    secret.chmod(0o600)
    public.chmod(0o644)
    return public, secret


def check_private(path: Path, field: str) -> None:
    """Refuse a secret file (a key, the gateway's tokens) that the group or others can read."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{field}: {path} can be read by others (mode {stat.S_IMODE(mode):04o}); "
                          f"chmod 600 {path}", {"field": field})


def valid_token(token: str) -> bool:
    """A bearer token: at least MIN_TOKEN_CHARS printable characters, no whitespace (the
    only whitespace ``isprintable`` lets through is the ASCII space)."""
    return len(token) >= MIN_TOKEN_CHARS and token.isprintable() and " " not in token


def load_token(path: str | os.PathLike[str], field: str) -> str:
    """The one bearer token of a token file (mode 0600 or stricter; blank lines and ``#``
    comments skipped); a ConfigError naming ``field`` and the file otherwise."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{field}: no token file {file}", {"field": field})
    check_private(file, field)
    lines = [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines()]
    tokens = [line for line in lines if line and not line.startswith("#")]
    if len(tokens) != 1 or not valid_token(tokens[0]):
        raise ConfigError(f"{field}: {file} must hold one token of at least {MIN_TOKEN_CHARS} printable "
                          "characters, no spaces, on a line of its own", {"field": field})
    return tokens[0]


def _read(file: Path, field: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(str(file))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{field}: {file} is not a zmesh key file: {exc}", {"field": field}) from None


def load_pair(path: str | os.PathLike[str], field: str) -> KeyPair:
    """A key pair from a ``.key_secret`` file (its mode must be 0600 or stricter)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{field}: no key file {file} (make one with `zmesh keygen`)", {"field": field})
    check_private(file, field)
    public, secret = _read(file, field)
    if secret is None:
        raise ConfigError(f"{field}: {file} holds only a public key; give the .key_secret file",
                          {"field": field})
    return KeyPair(public, secret)


def load_public(value: str | os.PathLike[str], field: str) -> bytes:
    """A public key from a key file or from its 40-character Z85 text."""
    text = os.fspath(value)
    if len(text) == Z85_KEY_CHARS and not Path(text).exists():
        try:
            zmq.utils.z85.decode(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError, KeyError):  # pyzmq: KeyError for a character not in Z85
            raise ConfigError(f"{field}: {text!r} is neither a key file nor a Z85 public key",
                              {"field": field}) from None
        return text.encode("ascii")
    file = Path(text)
    if not file.is_file():
        raise ConfigError(f"{field}: {text!r} is neither a key file nor a Z85 public key", {"field": field})
    return _read(file, field)[0]


class AllowList:
    """The client public keys allowed in, with their roles: every ``*.key`` file in the
    directory and in its role subdirectories (a ``.key_secret`` file counts by its public
    half), read again when one of those directories changes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._keys: dict[bytes, tuple[str, str]] = {}
        #: keys found in more than one role directory (their highest role wins)
        self.doubled: list[str] = []

    def _changed(self) -> bool:
        stamps = []
        for sub in ROLE_DIRS.values():
            try:
                st = (self.directory / sub).stat()
            except FileNotFoundError:
                if not sub:
                    raise
                stamps.append((0, 0))
                continue
            stamps.append((st.st_mtime_ns, st.st_ino))
        stamp = tuple(stamps)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def _read(self) -> dict[bytes, tuple[str, str]]:
        keys: dict[bytes, tuple[str, str]] = {}
        doubled = []
        for role, sub in ROLE_DIRS.items():  # lowest first: a higher role replaces a lower one
            folder = self.directory / sub
            for file in sorted(folder.glob("*.key*")) if folder.is_dir() else ():
                if file.suffix not in (".key", ".key_secret"):
                    continue
                if file.suffix == ".key_secret" and file.with_suffix(".key").exists():
                    continue  # the pair's public file names it
                try:
                    public, _secret = zmq.auth.load_certificate(str(file))
                except (ValueError, OSError):
                    continue  # a stray file is not a key: the count in the log shows what was read
                if public in keys:
                    doubled.append(f"{fingerprint(public)} ({keys[public][0]}, {file.relative_to(self.directory)})")
                keys[public] = (str(file.relative_to(self.directory)), role)
        self.doubled = doubled
        return keys

    def entries(self) -> dict[bytes, tuple[str, str]]:
        """Allowed public key -> (the file it came from, relative to the directory; its role)."""
        try:
            if not self._changed():
                return self._keys
        except OSError:
            self._keys, self._stamp = {}, None
            return self._keys
        self._keys = self._read()
        return self._keys

    def keys(self) -> dict[bytes, str]:
        """Allowed public key -> the file it came from."""
        return {key: entry[0] for key, entry in self.entries().items()}

    def allows(self, public: bytes) -> str | None:
        """The file that allows ``public`` (Z85), or None."""
        entry = self.entries().get(public)
        return None if entry is None else entry[0]

    def role(self, public: bytes) -> str | None:
        """The role of ``public`` (Z85), or None when it is not allowed."""
        entry = self.entries().get(public)
        return None if entry is None else entry[1]


def public_file(secret_file: Path) -> Path | None:
    """The public file beside a ``NAME.key_secret`` (``NAME.key``, keygen's pair); None for a
    file named otherwise."""
    name = secret_file.name
    return secret_file.with_name(name[: -len("_secret")]) if name.endswith(".key_secret") else None


def write_public(path: Path, public: bytes) -> None:
    """A public key file in ZeroMQ's certificate format (what keygen writes as NAME.key)."""
    path.write_text("#   ZeroMQ CURVE Public Certificate (copied by zmesh)\n\nmetadata\ncurve\n"
                    f'    public-key = "{public.decode("ascii")}"\n')
    path.chmod(0o644)


def copy_pair(pair_file: Path, dest: Path) -> str | None:
    """A broker's key pair copied to ``dest`` (mode 0600, which must not exist; its public
    file beside it when named NAME.key_secret); its fingerprint, or None when there is no
    pair to copy."""
    if not pair_file.is_file():
        return None
    pair = load_pair(pair_file, "key_file")
    dest.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair_file.read_bytes())
        os.fsync(fh.fileno())
    public = public_file(dest)
    if public is not None:
        write_public(public, pair.public)
    return pair.fingerprint


def copy_allowed(allowed: Path, dest: Path) -> int:
    """The public half of every key the allow-list ``allowed`` admits, each in its role's
    directory under ``dest`` (a client's secret is never copied); how many (0: no list)."""
    if not allowed.is_dir():
        return 0
    entries = AllowList(allowed).entries()
    dest.mkdir(parents=True, mode=0o700, exist_ok=True)  # an empty list stays a list
    for key, (source, role) in entries.items():
        folder = dest / ROLE_DIRS[role]
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        name = Path(source)
        write_public(folder / (public_file(name) or name).name, key)
    return len(entries)
