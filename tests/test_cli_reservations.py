"""``zmesh reserve``, ``release-paths`` and ``reservations`` end to end, as real processes against
a real broker: text and --json output, a conflict naming its holder (exit 1), a bad pattern
refused before anything is sent (exit 2), releasing what one does not hold (exit 1)."""

from __future__ import annotations

import pytest

from zmesh.testing import BrokerProcess

from .test_cli import Cli
from .test_cli_messages import keys


@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)


def test_reserve_conflict_list_and_release(z: Cli) -> None:
    z.ok("agent", "idle", "--agent", "alice")  # live agents: the CLI does not heartbeat for them
    z.ok("agent", "idle", "--agent", "bob")
    got = z.json("reserve", "src/**/*.py", "./docs/", "--agent", "alice", "--ttl", "60", "--json")
    keys("reserve", got)
    assert [(r["pattern"], r["mode"], r["renewed"]) for r in got["reservations"]] == [
        ("src/**/*.py", "exclusive", False), ("docs/**", "exclusive", False)]
    err = z.fails(1, "reserve", "src/zmesh/cli/x.py", "--agent", "bob", match="held exclusive by 'alice'")
    assert "src/**/*.py" in err.stderr and "lapses in" in err.stderr
    z.fails(1, "reserve", "src/x.py", "--agent", "bob", "--wait", "0.3", match="held exclusive by 'alice'")
    assert z.ok("reserve", "src/**/*.md", "--shared", "--agent", "bob").startswith("src/**/*.md\tshared\ttoken ")
    listed = z.json("reservations", "--json")
    keys("reservations", listed)
    assert [(r["pattern"], r["agent"]) for r in listed["reservations"]] == [
        ("docs/**", "alice"), ("src/**/*.md", "bob"), ("src/**/*.py", "alice")]
    assert z.ok("reservations", "--path", "src/a/b.md").split("\t")[:3] == ["src/**/*.md", "bob", "shared"]
    z.fails(1, "release-paths", "lib/**", "--agent", "alice", match="holds no reservation on 'lib/**'")
    out = z.json("release-paths", "--agent", "alice", "--json")
    keys("release-paths", out)
    assert out["released"] == ["docs/**", "src/**/*.py"]
    assert z.ok("reservations", "--agent", "alice").strip() == "no reservations"


@pytest.mark.parametrize("pattern, why", [("/etc", "relative"), ("a/../b", "'..'"), ("x[0]", "character classes")])
def test_a_bad_pattern_is_a_usage_error_naming_it(z: Cli, pattern: str, why: str) -> None:
    z.fails(2, "reserve", pattern, "--agent", "a", match=why)
