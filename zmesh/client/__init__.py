"""Clients: ``Client`` (blocking) and ``AsyncClient`` (asyncio), thin drivers of one core."""

from ._async import AsyncClient
from ._protocol import Claim
from ._roster import Roster
from ._sync import Client

__all__ = ["AsyncClient", "Claim", "Client", "Roster"]
