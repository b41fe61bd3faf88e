"""``zmesh guard``: the pre-commit hook in a real git repository, real ``git commit`` processes,
a real broker. A commit touching another agent's exclusive reservation is refused naming the
holder; the agent's own reservations, warn mode and a broker that is away let it through;
an existing pre-commit hook is kept and still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from zmesh import Client
from zmesh.testing import BrokerProcess, free_port

from .test_cli import clean_env


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60,
                          env=env or _env(), stdin=subprocess.DEVNULL)


def _env(**extra: str) -> dict[str, str]:
    return dict(clean_env(), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@example.invalid", HOME=os.environ.get("HOME", "/tmp"), **extra)


def _zmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmesh", *args], capture_output=True, text=True, timeout=60,
                          env=clean_env(), stdin=subprocess.DEVNULL)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    r = tmp_path / "repo"
    r.mkdir()
    assert _git(r, "init", "-q").returncode == 0
    (r / "README").write_text("x\n")
    assert _git(r, "add", "README").returncode == 0
    assert _git(r, "commit", "-qm", "init").returncode == 0
    yield r


def _stage(repo: Path, path: str) -> None:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(path + "\n")
    assert _git(repo, "add", path).returncode == 0


def test_a_commit_on_another_agents_reservation_is_refused(broker: BrokerProcess, repo: Path) -> None:
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-commit").write_text("#!/bin/sh\necho chained-ran >&2\n[ ! -e STOP ]\n")  # an existing hook
    (hooks / "pre-commit").chmod(0o755)
    r = _zmesh("--broker", broker.endpoint, "guard", "install", "--repo", str(repo), "--agent", "me")
    assert r.returncode == 0 and "chaining" in r.stdout, r.stderr
    with Client(broker.endpoint, agent="other", ttl=30) as other, Client(broker.endpoint, agent="me", ttl=30) as me:
        other.reserve(["src/**/*.py"])
        me.reserve(["docs/**"])
        _stage(repo, "src/core/a.py")
        refused = _git(repo, "commit", "-qm", "touch theirs")
        assert refused.returncode != 0
        assert "src/core/a.py is reserved exclusively by 'other' (pattern src/**/*.py" in refused.stderr
        warned = _git(repo, "commit", "-qm", "warn only", env=_env(ZMESH_GUARD="warn"))
        assert warned.returncode == 0 and "reserved exclusively by 'other'" in warned.stderr
        assert "chained-ran" in warned.stderr  # the hook that was there still runs
        _stage(repo, "docs/mine.md")  # my own reservation: no objection
        mine = _git(repo, "commit", "-qm", "mine")
        assert mine.returncode == 0, mine.stderr
        (repo / "STOP").write_text("")  # the chained hook can still refuse
        _stage(repo, "docs/more.md")
        assert _git(repo, "commit", "-qm", "chained refuses").returncode != 0
        (repo / "STOP").unlink()
        r = _zmesh("--broker", broker.endpoint, "guard", "install", "--repo", str(repo))  # again: idempotent
        assert r.returncode == 0 and (hooks / "pre-commit.zmesh-chained").read_text().startswith("#!/bin/sh\necho")


def test_a_broker_that_is_away_never_blocks_a_commit(repo: Path) -> None:
    away = f"tcp://127.0.0.1:{free_port()}"
    assert _zmesh("--broker", away, "guard", "install", "--repo", str(repo)).returncode == 0
    _stage(repo, "src/a.py")
    done = _git(repo, "commit", "-qm", "no broker")
    assert done.returncode == 0 and "the commit is not checked" in done.stderr


def test_not_a_repository_is_a_usage_error(tmp_path: Path) -> None:
    r = _zmesh("guard", "check", "--repo", str(tmp_path))
    assert r.returncode == 2 and "--repo" in r.stderr


def test_a_bad_zmesh_agent_is_a_usage_error_naming_it(repo: Path) -> None:
    _stage(repo, "x.py")
    r = subprocess.run([sys.executable, "-m", "zmesh", "guard", "check", "--repo", str(repo)], capture_output=True,
                       text=True, timeout=60, env=dict(clean_env(), ZMESH_AGENT="a\x1bb"), stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "ZMESH_AGENT" in r.stderr and r.stderr.count("\n") == 1
