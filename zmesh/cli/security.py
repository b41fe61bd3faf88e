"""``zmesh keygen``: make a CurveZMQ key pair for a broker or a client (zmesh/transport/keys.py).

Rules: NAME is a plain file stem (letters, digits, ``-``, ``_``, ``.``), so the files land
where they are asked to and nowhere else. An existing pair is never overwritten without
``--force``. The secret file is mode 0600; the output says where each file went, the public
key in Z85 (what ZMESH_SERVER_KEY may hold) and its fingerprint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ..protocol.fields import CONTROL_CHARS, escape_controls
from . import main
from ._output import Ctx, emit, json_flag, pass_ctx

class KeyName(click.ParamType):
    """A key file stem: 1..64 of letters, digits, '.', '_', '-', starting with a letter or digit."""

    name = "NAME"
    _RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) or not self._RE.fullmatch(value):
            self.fail(f"{value!r} must be 1..64 letters, digits, '.', '_' or '-' (a file stem)", param, ctx)
        return value


class KeyDir(click.ParamType):
    """The directory key files go in: a path without control characters that is not a file."""

    name = "DIR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.strip() or CONTROL_CHARS.search(text):
            self.fail(f"{escape_controls(text)!r} is not a directory path", param, ctx)
        if Path(text).exists() and not Path(text).is_dir():
            self.fail(f"{text!r} exists and is not a directory", param, ctx)
        return text


@main.command()
@click.argument("name", type=KeyName())
@click.option("--dir", "directory", type=KeyDir(), default=".", show_default=True,
              help="Directory the key files go in (made if missing).")
@click.option("--force", is_flag=True, help="Replace an existing key pair of that name.")
@json_flag
@pass_ctx
def keygen(ctx: Ctx, name: str, directory: str, force: bool) -> None:
    """Make a CurveZMQ key pair: NAME.key (the public key, to hand out) and NAME.key_secret
    (mode 0600, to keep). A broker's public key is what clients set as ZMESH_SERVER_KEY; a
    client's public key goes into the broker's authorized_keys directory."""
    from ..transport.keys import fingerprint, keygen as make, load_pair

    public, secret = make(directory, name, force=force)
    pair = load_pair(secret, "NAME")
    emit(ctx, {"public": str(Path(public).resolve()), "secret": str(Path(secret).resolve()),
               "key": pair.public.decode(), "fingerprint": fingerprint(pair.public)}, _human)


def _human(d: dict[str, Any]) -> list[str]:
    return [f"public key  {d['public']}", f"secret key  {d['secret']} (mode 0600: keep it private)",
            f"Z85         {d['key']}", f"fingerprint {d['fingerprint']}"]
