"""The op table's entries, one module per resource; zmesh/protocol/table.py assembles them in
order. Each module states the fields of its ops once: the broker validates with them, the
clients check arguments with them, the CLI, MCP and HTTP schemas and docs/PROTOCOL.md are
built from them."""
