"""``zmesh discover``: list the brokers that answer on the LAN (zeroconf), every mesh.

Rules: it listens ``--timeout`` seconds at most (less once the answers settle) and connects
to nothing; each broker shows its mesh, id, endpoint, key fingerprint (``none``: security
off) and version, and ``preferred`` marks the one a client of that mesh joins when several
serve it (the lowest broker id: zmesh/discovery/record.py); a mesh with several brokers is
also said on stderr. With the global ``--mesh`` only that mesh is listed. No broker answered:
``unreachable``, exit 3 (as a broker that does not answer).
"""

from __future__ import annotations

import os
from typing import Any

import click

from ..errors import Unreachable
from ..discovery.mesh import ENV_MESH
from . import _MESH_META, main
from ._options import Seconds
from ._output import Ctx, emit, esc, json_flag, note, pass_ctx


@main.command("discover")
@click.option("--timeout", type=Seconds(0.1, 60), default=2.0, show_default=True,
              help="Seconds to listen for brokers at most (the global --timeout is for brokers' answers).")
@json_flag
@pass_ctx
@click.pass_context
def discover_cmd(click_ctx: click.Context, ctx: Ctx, timeout: float) -> None:
    """List the zmesh brokers that answer on the LAN (zeroconf), of every mesh: mesh, broker id,
    endpoint, key fingerprint (none: security off) and version. Exit 3 when none answered."""
    from ..discovery import SERVICE_TYPE, browse, pick

    only = os.environ.get(ENV_MESH) if _MESH_META in click_ctx.meta else None
    brokers = [b for b in browse(timeout) if only is None or b.mesh == only]
    if not brokers:
        which = f"zmesh broker of mesh '{only}'" if only else "zmesh broker"
        raise Unreachable(f"no {which} answered on the LAN within {timeout:g} s (zeroconf {SERVICE_TYPE})",
                          {"timeout": timeout, "service_type": SERVICE_TYPE, "mesh": only})
    meshes: dict[str, list[Any]] = {}
    for b in brokers:
        meshes.setdefault(b.mesh, []).append(b)
    preferred = {mesh: pick(group, mesh) if len(group) > 1 else group[0] for mesh, group in meshes.items()}
    for mesh, group in meshes.items():
        if len(group) > 1:
            note(ctx, f"mesh '{mesh}' has {len(group)} brokers; its clients join {preferred[mesh].broker_id} "
                      "(the lowest broker id)")
    rows = [{"mesh": b.mesh, "broker_id": b.broker_id, "endpoint": b.endpoint, "pub_endpoint": b.pub_endpoint,
             "key": b.key, "fingerprint": b.fingerprint, "version": b.version,
             "preferred": preferred[b.mesh] is b} for b in brokers]
    emit(ctx, {"brokers": rows}, _human)


def _human(d: dict[str, Any]) -> list[str]:
    return ["\t".join([esc(b["mesh"]), esc(b["broker_id"]), b["endpoint"],
                       f"key {b['fingerprint']}" if b["fingerprint"] else "key none",
                       f"zmesh {esc(b['version'])}" if b["version"] else "zmesh ?",
                       *(["(joined by its clients)"] if b["preferred"] and len([x for x in d["brokers"]
                                                                              if x["mesh"] == b["mesh"]]) > 1
                         else [])])
            for b in d["brokers"]]
