"""Regenerate docs/PROTOCOL.md from zmesh/protocol/: python docs/gen_protocol.py"""

from pathlib import Path

from zmesh.protocol.doc import render_markdown

Path(__file__).with_name("PROTOCOL.md").write_text(render_markdown())
