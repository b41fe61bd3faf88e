"""The lint is part of the test command: ruff (pyflakes, pycodestyle's errors, bugbear) over the
code, the tests and the benchmark, and mypy with no untyped definitions over zmesh/. Their
settings are pyproject.toml's; a finding fails the test with the tool's own lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(600)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=580)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "zmesh", "tests", "bench", "docs")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_and_every_def_is_typed() -> None:
    # the settings (files = zmesh, disallow_untyped_defs) are pyproject.toml's [tool.mypy]
    done = _run("mypy", "--cache-dir", "/tmp/zmesh-mypy-cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout, done.stdout
