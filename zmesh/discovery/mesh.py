"""Mesh names: the one check every mesh name passes where it enters zmesh (``--mesh``,
``ZMESH_MESH``, the ``mesh`` config key, ``Client(mesh=...)``, a discovery record from the
LAN, a known-hosts line).

Rules it keeps:

* A mesh name is 1..63 characters of lowercase ASCII letters, digits, ``-``, ``_`` and
  ``.``, starting with a letter or a digit: it fits one DNS label, shows the same in every
  terminal, and two spellings of one name (``Lab`` and ``lab``) cannot split a mesh in two.
* The mesh a client joins is its argument, else ``$ZMESH_MESH``, else ``default``; the
  mesh a broker advertises is its ``mesh`` setting (default ``default``). A broker whose
  record names no mesh (one older than meshes) belongs to ``default``.
* A bad name is an ``InvalidArgument`` naming where it came from; no I/O here.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import InvalidArgument

DEFAULT_MESH = "default"
ENV_MESH = "ZMESH_MESH"
MAX_MESH_CHARS = 63
_MESH = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
RULE = (f"1..{MAX_MESH_CHARS} lowercase letters, digits, '-', '_' or '.', starting with a letter or digit")


def check_mesh(value: Any, field: str = "mesh") -> str:
    """``value`` if it is a mesh name, else InvalidArgument naming ``field``."""
    if not isinstance(value, str) or not _MESH.fullmatch(value):
        shown = repr(value) if not isinstance(value, str) else repr(value[:80])
        raise InvalidArgument(f"{field}: {shown} is not a mesh name: must be {RULE}", {"field": field})
    return value


def resolve_mesh(value: str | None) -> str:
    """The mesh a client joins: ``value``, else $ZMESH_MESH, else ``default`` (checked)."""
    if value is not None:
        return check_mesh(value, "mesh")
    env = os.environ.get(ENV_MESH)
    if env is None:
        return DEFAULT_MESH
    return check_mesh(env.strip(), ENV_MESH)
