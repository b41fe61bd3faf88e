"""The client's known-hosts file: the broker key each mesh was pinned to on first use.

Rules it keeps:

* One line per mesh, ``MESH KEY [comment]`` (KEY: the broker's CurveZMQ public key, 40 Z85
  characters); blank lines and lines starting with ``#`` are comments. A line that does not
  parse, or a mesh listed twice with two keys, is a ConfigError naming the file and the
  line: the file is never guessed at.
* Where it is: ``known_hosts=`` (Client), else ``$ZMESH_KNOWN_HOSTS``, else
  ``$XDG_CONFIG_HOME/zmesh/known_hosts`` (``~/.config/zmesh/known_hosts``).
* It is written only to add a mesh seen for the first time: under an flock on a lock file
  beside it, the file is read again (another client may have pinned that mesh meanwhile:
  its line wins), then a temporary file of mode 0600 is written, fsynced and renamed over
  it, so a reader never sees half a file and two clients pinning at once both land. A
  directory it makes has mode 0700.
* A file that others may write is refused (a pin anyone can change pins nothing), as ssh
  refuses such files.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zmq.utils.z85

from ..errors import ConfigError, InvalidArgument
from ..protocol.fields import CONTROL_CHARS, escape_controls
from ..transport.keys import Z85_KEY_CHARS
from .mesh import check_mesh

__all__ = ["ENV_KNOWN_HOSTS", "Pinned", "KnownHosts", "default_known_hosts", "known_hosts_file"]

ENV_KNOWN_HOSTS = "ZMESH_KNOWN_HOSTS"
#: a known-hosts file larger than this is refused (a mesh takes one short line)
MAX_BYTES = 1 << 20
HEADER = ("# zmesh known hosts: MESH BROKER-KEY, pinned on first use (zmesh/discovery/known_hosts.py).\n"
          "# A client of MESH refuses a broker with another key; remove a line to pin that mesh again.\n")


def default_known_hosts() -> str:
    """$XDG_CONFIG_HOME/zmesh/known_hosts, else ~/.config/zmesh/known_hosts."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return os.path.join(base, "zmesh", "known_hosts")


def known_hosts_file(value: str | os.PathLike[str] | None) -> KnownHosts:
    """The known-hosts file of a client: ``value``, else $ZMESH_KNOWN_HOSTS, else the
    default; the path is checked (not empty, no control characters, not a directory)."""
    if value is not None:
        text, field = os.fspath(value), "known_hosts"
    elif os.environ.get(ENV_KNOWN_HOSTS) is not None:
        text, field = os.environ[ENV_KNOWN_HOSTS].strip(), ENV_KNOWN_HOSTS
    else:
        text, field = default_known_hosts(), "known_hosts"
    if not isinstance(text, str) or not text.strip() or CONTROL_CHARS.search(text):
        raise InvalidArgument(f"{field}: {escape_controls(str(text))!r} is not a file path "
                              "(empty, or with control characters)", {"field": field})
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        raise InvalidArgument(f"{field}: {path} is a directory, not a known-hosts file", {"field": field})
    return KnownHosts(path, field)


@dataclass(frozen=True)
class Pinned:
    """One line of the file: ``mesh`` pinned to ``key`` (Z85) at line ``line``."""

    mesh: str
    key: str
    line: int


class KnownHosts:
    """A known-hosts file (see the module rules); ``field`` names it in errors."""

    def __init__(self, path: str | os.PathLike[str], field: str = "known_hosts") -> None:
        self.path = Path(path)
        self.field = field

    def _fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.field}: {self.path}: {message}", {"field": self.field, "file": str(self.path)})

    def entries(self) -> dict[str, Pinned]:
        """Mesh -> its pin; {} when the file does not exist yet."""
        try:
            with open(self.path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                raw = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._fail(f"cannot read: {exc.strerror or exc}") from None
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise self._fail(f"others can write it (mode {stat.S_IMODE(mode):04o}); chmod 600 {self.path}")
        if len(raw) > MAX_BYTES:
            raise self._fail(f"larger than {MAX_BYTES} bytes: not a known-hosts file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("not UTF-8 text: not a known-hosts file") from None
        return self._parse(text)

    def _parse(self, text: str) -> dict[str, Pinned]:
        out: dict[str, Pinned] = {}
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split(None, 2)
            if len(parts) < 2:
                raise self._fail(f"line {number}: expected 'MESH KEY', got {escape_controls(stripped[:80])!r}; "
                                 "fix or remove that line")
            mesh, key = parts[0], parts[1]
            try:
                check_mesh(mesh, f"line {number}")
            except InvalidArgument as exc:
                raise self._fail(f"{exc.message}; fix or remove that line") from None
            if not _is_key(key):
                raise self._fail(f"line {number}: {escape_controls(key[:60])!r} is not a broker key "
                                 f"({Z85_KEY_CHARS} Z85 characters); fix or remove that line")
            seen = out.get(mesh)
            if seen is not None and seen.key != key:
                raise self._fail(f"mesh '{mesh}' is pinned twice with two keys (lines {seen.line} and {number}); "
                                 "remove the wrong one")
            if seen is None:
                out[mesh] = Pinned(mesh, key, number)
        return out

    def get(self, mesh: str) -> Pinned | None:
        return self.entries().get(mesh)

    def pin(self, mesh: str, key: str, note: str = "") -> Pinned:
        """Add ``mesh KEY`` unless the mesh is already pinned; returns the pin now in the
        file (the earlier one if another client pinned the mesh meanwhile)."""
        check_mesh(mesh)
        if not _is_key(key):
            raise InvalidArgument(f"not a broker key: {key!r}", {"field": "key"})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock_path = self.path.with_name(self.path.name + ".lock")
            lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._fail(f"cannot write: {exc.strerror or exc} (set {self.field} to a file you can write, "
                             "or pin the key with ZMESH_SERVER_KEY)") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.entries()
            if mesh in current:
                return current[mesh]
            try:
                old = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                old = HEADER
            if old and not old.endswith("\n"):
                old += "\n"
            comment = f"  # {escape_controls(note)}" if note else ""
            new = old + f"{mesh} {key}{comment}\n"
            self._replace(new)
            return self._parse(new)[mesh]
        finally:
            os.close(lock)  # releases the flock

    def _replace(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._fail(f"cannot write: {exc.strerror or exc}") from None
        try:  # the rename is durable once the directory is synced
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def where(self, pinned: Pinned) -> str:
        return f"{self.path} line {pinned.line}"


def first_seen_note(broker_id: str, endpoint: str) -> str:
    """The comment written after a new pin: which broker, where, when."""
    return f"broker {broker_id} at {endpoint}, first seen {time.strftime('%Y-%m-%d %H:%M:%S %z')}"


def _is_key(text: str) -> bool:
    if len(text) != Z85_KEY_CHARS:
        return False
    try:
        zmq.utils.z85.decode(text.encode("ascii"))
    except (ValueError, KeyError, UnicodeEncodeError):
        return False
    return True
