"""Regenerate docs/MCP.md from the MCP server's tool list: python docs/gen_mcp.py"""

from pathlib import Path

from zmesh.adapters.mcp_doc import render_markdown

Path(__file__).with_name("MCP.md").write_text(render_markdown())
