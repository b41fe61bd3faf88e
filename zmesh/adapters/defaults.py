"""The defaults of the surfaces for agents without a socket, in one place that imports nothing
(the CLI shows them in ``--help`` without loading the optional MCP SDK or FastAPI).

Why these values:

* A tool call or a long poll that says nothing for about 30 s may be cut: by a proxy, or by
  a client of the stateless MCP revision (2026-07-28), which re-issues a call whose response
  stream broke. So one wait lasts 25 s by default, with progress every 10 s as keepalives.
  Codex CLI's 60 s tool timeout (``tool_timeout_sec``), which progress does not extend, is
  well above it.
* An HTTP agent's lease is the predecessor's claim TTL, 300 s: it must call that often.
"""

#: default and largest wait of the MCP server's wait_for_work and reserve_paths (--wait-max)
MCP_WAIT_MAX_S = 25.0
#: seconds between progress notifications while a wait waits (--progress-every)
PROGRESS_EVERY_S = 10.0
#: the gateway: an HTTP agent's lease TTL (--ttl), the long poll's default and its largest (--wait-max)
HTTP_TTL_S = 300.0
HTTP_WAIT_S = 25.0
HTTP_WAIT_MAX_S = 300.0
