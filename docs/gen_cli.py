"""Regenerate docs/CLI.md from the zmesh command tree: python docs/gen_cli.py"""

from pathlib import Path

from zmesh.cli import main
from zmesh.cli._docs import render_markdown

Path(__file__).with_name("CLI.md").write_text(render_markdown(main))
