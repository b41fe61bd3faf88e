"""Surfaces for agents that cannot hold a ZeroMQ socket: the MCP server (``mcp``) and the HTTP
gateway (``http``). They sit outside the broker's loop, on the public async client, and
share one agent session (``session``) and one way of typing arguments from the op table
(``schemas``). Their third-party dependencies are extras (``zmesh[mcp]``, ``zmesh[gateway]``),
imported only here."""
