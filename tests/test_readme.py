"""The README's two commands: .ci/run runs the test command verbatim, and the broker
command starts a broker in a fresh clone with a new venv (embedded LMDB, no config file)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zmesh.testing import free_port, ping

from .conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [blocks[0].strip(), blocks[1].strip()]


def test_ci_runs_the_readme_test_command() -> None:
    run, test = readme_commands()
    assert "zmesh broker" in run and "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.slow
def test_readme_broker_command_in_a_fresh_clone(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    run, _ = readme_commands()
    port, pub = free_port(), free_port()
    home = tmp_path / "home"
    home.mkdir()
    # the command is run as written; only the environment moves it off the default
    # ports and $HOME (tests use free loopback ports and temporary dirs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZMESH_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), ZMESH_BIND=f"tcp://127.0.0.1:{port}", ZMESH_PUB_BIND=f"tcp://127.0.0.1:{pub}",
               ZMESH_DISCOVERY="0", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    env.pop("XDG_DATA_HOME", None)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(["bash", "-c", run], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or ping(f"tcp://127.0.0.1:{port}", 0.3),
                 timeout=300, interval=0.5, what="the README broker")
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert (home / ".local" / "share" / "zmesh" / "data.mdb").exists(), "default data dir"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
    assert "zmesh broker ready" in (tmp_path / "run.log").read_text()
