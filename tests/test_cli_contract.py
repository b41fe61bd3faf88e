"""The command line under bad input (issue 13): a table of bad values fed to every option
and argument of every command, derived from the command tree itself (a new option without
bad values fails the table test), and the findings that need a real broker or process.

Each case asserts what a script sees: the documented exit code, exactly one line on
stderr naming the option, nothing on stdout, no traceback. The table runs in-process with
click's CliRunner (fast); a sample of it and every broker-facing case run as real
subprocesses (``python -m zmesh``)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from zmesh import protocol
from zmesh.cli import EXIT_CODES, main
from zmesh.cli._docs import JSON_SHAPES, commands, render_markdown
from zmesh.cli.gateway import ListenType
from zmesh.cli.backup import HostPath
from zmesh.cli.security import KeyDir, KeyName
from zmesh.cli._options import EndpointType, IdType, JsonValue, MeshName, Pattern, Seconds, Since, SinceTime
from zmesh.testing import BrokerProcess, free_port

from .conftest import ROOT, wait_for
from .test_cli import Cli, _readline, clean_env, run

UNREACHABLE = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: a value that got through exits 3
HUGE = "9" * 30
OVERSIZED_JSON = "@" + str(Path(os.environ.get("TMPDIR", "/tmp")) / f"zmesh-oversized-{os.getpid()}.json")

#: a valid command line per command; the option under test is added to (or replaces in) it
#: a git repository of its own for the guard commands (never this project's: a bad value
#: that got through would install a hook there); made by _guard_repo
GUARD_REPO = Path(tempfile.gettempdir()) / f"zmesh-contract-repo-{os.getpid()}"
BASE: dict[str, list[str]] = {
    "broker": ["--data", "/nonexistent/zmesh-test-data", "--no-discovery"],
    "discover": ["--timeout", "0.5"],
    "events": ["--since", "0", "--count", "1"],
    "publish": ["topic"],
    "status": [],
    "health": [],
    "top": ["--once"],
    "version": [],
    "agent idle": ["--agent", "a"],
    "agent busy": ["t1", "--agent", "a"],
    "agent completed": ["t1", "--agent", "a"],
    "agent blocked": ["--agent", "a", "--reason", "r"],
    "agent help": ["--agent", "a", "--reason", "r"],
    "agents": [],
    "helpers": ["py"],
    "stats": ["a"],
    "blocker raise": ["--agent", "a", "--type", "t", "--description", "d"],
    "blocker resolve": ["blk-1"],
    "blocker ls": [],
    "send": ["s", "b", "--to", "a"],
    "assign": ["a", "t1"],
    "read": [],
    "ack": ["msg-1", "--agent", "a"],
    "unacked": [],
    "dead-letters": [],
    "msgstats": [],
    "group join": ["g", "--agent", "a"],
    "group leave": ["g", "--agent", "a"],
    "wait": ["--agent", "a"],
    "guard install": ["--repo", str(GUARD_REPO)],
    "guard check": ["--repo", str(GUARD_REPO)],
    "hook stop": ["--agent", "a"],
    "hook prompt": ["--agent", "a"],
    "mcp": ["--agent", "a"],
    "gateway": ["--listen", "127.0.0.1:7780"],
    "keygen": ["k", "--dir", str(GUARD_REPO / "keys")],
    "reserve": ["src/**", "--agent", "a"],
    "release-paths": ["x/**", "--agent", "a"],
    "reservations": [],
    "admin release": ["--task", "t1"],
    "admin purge": ["t1"],
    "admin requeue": ["t1"],
    "config show": [],
    "backup": ["/var/backups/zmesh/one"],
    "restore": ["/", "--data", "/nonexistent/zmesh-restore"],
    "audit": [],
    "task add": ["t1"],
    "task claim": ["t1", "--agent", "a"],
    "task done": ["t1", "--agent", "a"],
    "task fail": ["t1", "--agent", "a", "--error", "e"],
    "task ls": [],
    "task next": ["--agent", "a"],
    "task release": ["t1", "--agent", "a"],
    "task renew": ["t1", "--agent", "a"],
    "task show": ["t1"],
}


def bad_values(param: click.Parameter) -> list[str]:
    """The classes of bad input for a parameter, from its type: empty, huge, negative,
    non-finite, control characters, wrong type, malformed endpoint, oversized JSON."""
    t = param.type
    if isinstance(param, click.Option) and (param.is_flag or param.count):
        return []
    if isinstance(t, click.IntRange):
        out = ["", HUGE, "-" + HUGE, "abc", "1.5", "nan"]
        if t.min is not None:
            out.append(str(int(t.min) - 1))
        if t.max is not None:
            out.append(str(int(t.max) + 1))
        return out
    if isinstance(t, (Seconds, click.FloatRange)):
        return ["", "nan", "inf", "-inf", "-1", "1e400", "abc", HUGE]
    if isinstance(t, IdType):
        if t.kind == "text":
            return ["x" * (protocol.MAX_TEXT_CHARS + 1)]
        out = ["x" * 1000, "a\x1bb", "a\nb", "\u2028"]
        if t.kind != "after":
            out.append("")
        return out
    if isinstance(t, JsonValue):
        return ["{not json", "[1,", "NaN", "@/nonexistent/file.json", OVERSIZED_JSON, "1e400"]
    if isinstance(t, click.Choice):
        return ["", "bogus", "FULL"]
    if isinstance(t, EndpointType):
        return ["bogus", "127.0.0.1:7700", "http://127.0.0.1:7700", "tcp://host", "tcp://h:99999", ""]
    if isinstance(t, KeyDir):
        return ["", "/dev/null", "a\nb"]
    if isinstance(t, KeyName):
        return ["", "../x", "a/b", ".hidden", "x" * 65, "a\nb", "a b"]
    if isinstance(t, ListenType):
        return ["", "7780", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:abc", "bad host!:80",
                "a\nb:80", "x" * 300 + ":80"]
    if isinstance(t, Since):
        return ["", "abc", "-5", "10x", "a\nb", "2026-13-45"]
    if isinstance(t, SinceTime):
        return ["", "abc", "-5", "5", "10x", "1e3s", "a\nb", "2026-13-45"]
    if isinstance(t, Pattern):
        return ["(", "[a", "a{2,1}"]
    if isinstance(t, MeshName):
        return ["", "Lab", "a b", "-x", ".x", "x" * 64, "a\nb", "caf\u00e9", "a/b"]
    if isinstance(t, HostPath):
        return ["", "   ", "a\nb", "x" * 4097]
    if isinstance(t, click.Path):  # --config: a file that is not there or not TOML
        return ["/nonexistent/zmesh.toml", "/"]
    if t is click.STRING and param.name == "data":  # broker --data: a path
        return ["", "/dev/null", "a\nb"]
    if t is click.STRING and param.name == "metrics":  # broker --metrics HOST:PORT, checked as the config key
        return ["", "7702", "127.0.0.1", "127.0.0.1:99999", "bad host!:80", "a\nb:80", "::1:80"]
    if t is click.STRING and param.name == "store":  # broker --store etcd://..., checked as the config key
        return ["", "lmdb", "etcd://", "etcd://h", "etcd://h:99999", "http://h:2379", "etcd://h:1,", "a\nb"]
    raise AssertionError(f"no bad values for {param.name} of type {t!r}: add them to bad_values")


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for path, cmd in commands(main):
        for param in cmd.params:
            if param.name in ("json_", "help"):
                continue
            for value in bad_values(param):
                cases.append((path, _name(param), value))
    for param in main.params:
        if param.name in ("broker", "timeout", "mesh"):
            for value in bad_values(param):
                cases.append(("", _name(param), value))
    return cases


def _name(param: click.Parameter) -> str:
    """How a message names it: --option, or ARGUMENT."""
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


def _argv(path: str, name: str, value: str) -> list[str]:
    if not path:  # a global option
        return [name, value, "status"]
    cmd_args = list(BASE[path])
    if name.startswith("--"):
        if name in cmd_args:  # replace its valid value
            i = cmd_args.index(name)
            cmd_args[i + 1] = value
        else:
            cmd_args += [name, value]
    else:  # a positional argument: BASE lists them first, in order
        cmd = dict(commands(main))[path]
        names = [p.human_readable_name for p in cmd.params if isinstance(p, click.Argument)]
        cmd_args[names.index(name)] = value
    return ["--broker", UNREACHABLE, "--timeout", "0.5", *path.split(), *cmd_args]


@pytest.fixture(scope="module", autouse=True)
def _guard_repo() -> Any:
    GUARD_REPO.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(GUARD_REPO)], check=True, timeout=30, stdin=subprocess.DEVNULL)
    yield
    shutil.rmtree(GUARD_REPO, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _oversized_file() -> Any:
    path = Path(OVERSIZED_JSON[1:])
    path.write_text('"' + "x" * (protocol.MAX_MESSAGE_BYTES + 10) + '"')
    yield
    path.unlink()


CASES = _cases()


@pytest.mark.parametrize("path, name, value", CASES, ids=[f"{p or 'zmesh'} {n}={v[:12]!r}" for p, n, v in CASES])
def test_every_option_refuses_bad_values_in_one_line(path: str, name: str, value: str) -> None:
    runner = CliRunner()
    argv = _argv(path, name, value)
    result = runner.invoke(main, argv, env={k: None for k in os.environ if k.startswith("ZMESH_")},
                           prog_name="zmesh")
    assert result.exit_code == 2, (argv, result.exit_code, result.stdout, result.stderr, result.exception)
    err = result.stderr
    assert err.count("\n") == 1 and err.endswith("\n"), f"one line on stderr: {err!r}"
    assert "Traceback" not in err + result.stdout
    # an option by its flag, an argument by its name; a broker setting that reaches the
    # config check by its key (--data -> data, --ttl -> default_ttl; `config show` reads the same config)
    key = {"--ttl": "default_ttl"}.get(name, name.lstrip("-").replace("-", "_"))
    assert name in err or (path in ("broker", "config show") and key in err), f"{name} not named in {err!r}"
    assert result.stdout == ""
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception


def test_the_table_covers_every_command() -> None:
    paths = {path for path, _ in commands(main)}
    assert paths == set(BASE) == set(JSON_SHAPES), "a new command needs a BASE line and a JSON shape"


@pytest.mark.parametrize("argv", [
    ["task", "add", "t", "--priority", HUGE],
    ["task", "done", "t", "--agent", "a", "--token", HUGE],
    ["task", "claim", "t", "--agent", ""],
    ["task", "claim", "t", "--agent", "a", "--ttl", "nan"],
    ["--broker", "bogus", "status"],
    ["task", "add", "a\nb"],
])
def test_a_sample_as_real_processes(argv: list[str]) -> None:
    r = run("--broker", UNREACHABLE, *argv) if argv[0] != "--broker" else run(*argv)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


def test_mesh_and_broker_exclude_each_other() -> None:
    r = run("--mesh", "lab", "--broker", UNREACHABLE, "status")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == "", r
    assert "--mesh joins a broker found by discovery and --broker names one" in r.stderr
    r = run("--mesh", "lab", "status", env=clean_env(ZMESH_BROKER=UNREACHABLE))
    assert r.returncode == 2 and "ZMESH_BROKER names one" in r.stderr and "unset ZMESH_BROKER" in r.stderr, r
    # a bad ZMESH_MESH or ZMESH_KNOWN_HOSTS is refused before any packet (ZMESH_INTERFACES keeps a
    # discovery that ran anyway on loopback)
    r = run("--discover", "status", env=clean_env(ZMESH_MESH="Lab", ZMESH_INTERFACES="127.0.0.1"))
    assert r.returncode == 2 and r.stderr.startswith("zmesh: invalid_argument: ZMESH_MESH: 'Lab' is not a mesh"), r
    r = run("--discover", "status", env=clean_env(ZMESH_KNOWN_HOSTS="", ZMESH_INTERFACES="127.0.0.1"))
    assert r.returncode == 2 and "ZMESH_KNOWN_HOSTS: '' is not a file path" in r.stderr, r


def test_a_bad_zmesh_broker_is_exit_2_naming_it() -> None:
    r = run("status", env=clean_env(ZMESH_BROKER="127.0.0.1:7700"))
    assert r.returncode == 2 and "ZMESH_BROKER" in r.stderr and r.stderr.count("\n") == 1, r


def test_json_errors_are_one_object_on_stderr() -> None:
    r = run("--broker", UNREACHABLE, "task", "add", "t", "--priority", HUGE, "--json")
    assert r.returncode == 2 and r.stdout == ""
    err = json.loads(r.stderr)
    assert set(err) == {"code", "message", "details"} and err["code"] == "usage"
    assert err["details"]["field"] == "--priority"
    r = run("--broker", UNREACHABLE, "--timeout", "0.3", "--json", "status")
    assert r.returncode == 3 and json.loads(r.stderr)["code"] == "unreachable"


# ------------------------------------------------------------------ against a real broker
@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)


def test_json_flag_on_the_group_and_json_shapes_match_the_docs(z: Cli) -> None:
    """Finding 12: `zmesh task --json ls` was refused; claim said expires_at where show said
    expires_in. Every command's JSON keys are exactly the documented ones."""
    def keys(path: str, out: Any) -> None:
        expected = JSON_SHAPES[path]
        assert expected is not None
        assert tuple(out) == expected[0] or set(out) == set(expected[0]), (path, sorted(out))

    keys("task add", z.json("task", "add", "a", "--json"))
    z.ok("task", "add", "b", "--max-attempts", "1")  # its failure below makes it dead
    keys("task claim", claim := z.json("task", "--json", "claim", "a", "--agent", "w"))
    keys("task renew", z.json("task", "renew", "a", "--agent", "w", "--token", str(claim["token"]), "--json"))
    keys("task show", z.json("--json", "task", "show", "a"))
    keys("task done", z.json("task", "done", "a", "--agent", "w", "--json"))
    keys("task next", z.json("task", "next", "--agent", "w", "--json"))
    keys("task release", z.json("task", "release", "b", "--agent", "w", "--json"))
    z.ok("task", "claim", "b", "--agent", "w")
    keys("task fail", z.json("task", "fail", "b", "--agent", "w", "--error", "e", "--json"))
    keys("task ls", z.json("task", "--json", "ls"))
    keys("status", z.json("status", "--json"))
    keys("publish", z.json("publish", "x", "--json"))
    keys("events", json.loads(z.ok("events", "--since", "0", "--count", "1", "--json")))
    keys("version", z.json("version", "--json"))
    # a lost claim and nothing to claim: both an error on stderr, nothing on stdout
    for argv in (["task", "claim", "a", "--agent", "other", "--json"], ["task", "next", "--agent", "w", "--json"]):
        r = z(*argv)
        assert r.returncode == 1 and r.stdout == "" and set(json.loads(r.stderr)) == {"code", "message", "details"}


def test_ls_says_when_more_follow_and_pages(z: Cli) -> None:
    """Finding 13: --limit cut the list silently."""
    for i in range(5):
        z.ok("task", "add", f"t{i}")
    r = z("task", "ls", "--limit", "2")
    assert r.returncode == 0 and [line.split("\t")[0] for line in r.stdout.splitlines()] == ["t0", "t1"]
    assert "more tasks follow" in r.stderr and "--after 't1'" in r.stderr
    page = z.json("task", "ls", "--limit", "2", "--after", "t1", "--json")
    assert [t["id"] for t in page["tasks"]] == ["t2", "t3"] and page["more"] and page["next_after"] == "t3"
    every = z.json("task", "ls", "--limit", "2", "--all", "--json")
    assert [t["id"] for t in every["tasks"]] == [f"t{i}" for i in range(5)] and not every["more"]
    assert z("task", "ls").stderr == ""


def test_renew_extends_a_claim_and_a_lapsed_one_says_so(z: Cli) -> None:
    """Finding 9: `zmesh task renew` for shell jobs; a lapse is not a stale token."""
    z.ok("task", "add", "r")
    c = z.json("task", "claim", "r", "--agent", "sh", "--ttl", "5", "--json")
    out = z.json("task", "renew", "r", "--agent", "sh", "--token", str(c["token"]), "--ttl", "60", "--json")
    assert out["token"] == c["token"] and out["expires_in"] > 30
    assert z.show("r")["expires_in"] > 30
    z.ok("task", "claim", "r", "--agent", "sh", "--ttl", "0.3")  # the holder: its claim TTL is 0.3 s again
    wait_for(lambda: z.show("r")["status"] == "available", timeout=10, what="the claim to lapse")
    z.fails(1, "task", "renew", "r", "--agent", "sh", "--token", str(c["token"]), match="claim_expired")


def test_text_output_escapes_control_characters(z: Cli) -> None:
    """Finding 11: ids with control characters are refused; free text that holds them
    (an error message) is escaped in text output, one record per line."""
    z.fails(2, "task", "add", "a\nb", match="control characters")
    z.fails(2, "task", "add", "t", "--requires", "a\tb", match="control characters")
    z.ok("task", "add", "t")
    z.ok("task", "claim", "t", "--agent", "w")
    z.ok("task", "fail", "t", "--agent", "w", "--error", "line1\nline2\x1b[31m")
    lines = z.ok("task", "show", "t").splitlines()
    assert any(r"line1\nline2\x1b[31m" in line for line in lines), lines
    assert not any("\x1b" in line for line in lines)
    assert z.show("t")["history"][-1]["error"] == "line1\nline2\x1b[31m", "JSON keeps the text"


def test_json_values_from_a_file_and_stdin(z: Cli, tmp_path: Path) -> None:
    """Finding 15: --data @FILE and --data - for large JSON."""
    big = {"blob": "x" * 200_000}
    (tmp_path / "d.json").write_text(json.dumps(big))
    z.ok("task", "add", "f", "--data", f"@{tmp_path / 'd.json'}")
    assert z.show("f")["data"] == big
    r = subprocess.run([sys.executable, "-m", "zmesh", "--broker", z.endpoint, "task", "add", "s", "--data", "-"],
                       input='{"from": "stdin"}', capture_output=True, text=True, env=clean_env(), timeout=30)
    assert r.returncode == 0, r
    assert z.show("s")["data"] == {"from": "stdin"}
    z.fails(2, "task", "add", "g", "--data", f"@{tmp_path / 'missing.json'}", match="cannot read")


def test_version_shows_client_and_broker(z: Cli) -> None:
    out = z.json("version", "--json")
    assert out["client"] == out["broker"] and out["protocol"] == out["broker_protocol"] == protocol.PROTOCOL_VERSION
    assert "broker" in z.ok("version")
    r = run("--broker", UNREACHABLE, "--timeout", "0.3", "version")
    assert r.returncode == 3 and r.stdout.startswith("client ")


def test_events_since_ahead_of_the_broker_says_so(z: Cli) -> None:
    z.fails(2, "events", "--since", "999", "--count", "1", match="since 999 is ahead")


def test_zmesh_events_rides_through_a_broker_outage(tmp_path: Path) -> None:
    """Finding 8: `zmesh events` exited 3 when an outage outlasted the timeout."""
    b = BrokerProcess(tmp_path / "data").start()
    p = subprocess.Popen([sys.executable, "-m", "zmesh", "--broker", b.endpoint, "--timeout", "0.5", "events",
                          "--since", "0", "--topic", "msg.", "--count", "2", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=clean_env())
    b2 = None
    try:
        Cli(b.endpoint).ok("publish", "before")
        assert json.loads(_readline(p, 30))["topic"] == "msg.before"  # it is following: now the outage
        b.stop()
        ready, _, _ = select.select([p.stderr], [], [], 20)
        assert ready, "no outage notice on stderr within 20 s"
        notice = p.stderr.readline()  # type: ignore[union-attr]
        assert "broker unreachable" in notice and p.poll() is None, notice
        b2 = BrokerProcess(b.data, port=b.port, pub_port=b.pub_port).start()
        Cli(b2.endpoint).ok("publish", "back")
        event = json.loads(_readline(p, 30))
        assert event["topic"] == "msg.back"
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for broker in (b, b2):
            if broker is not None:
                broker.stop()
                broker.kill()


# ------------------------------------------------------------------ the broker process
def _broker_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["broker", "--data", str(tmp_path / "data"), "--bind", f"tcp://127.0.0.1:{free_port()}",
            "--pub-bind", f"tcp://127.0.0.1:{free_port()}", "--no-discovery", *extra]


def test_data_path_that_is_a_file_says_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    r = run(*_broker_argv(tmp_path))
    assert r.returncode == 2 and "not a directory" in r.stderr and r.stderr.count("\n") == 1, r


def test_a_failed_start_and_a_clean_stop_leave_no_ipc_files(tmp_path: Path, broker: BrokerProcess) -> None:
    """Finding 10: a failed start left zmesh-pub.ipc behind; a clean stop left both."""
    r = run("broker", "--data", str(tmp_path / "other"), "--bind", broker.endpoint,  # taken
            "--pub-bind", f"tcp://127.0.0.1:{free_port()}", "--no-discovery")
    assert r.returncode == 1 and "cannot bind" in r.stderr and r.stderr.strip().count("\n") == 0, r
    assert not list((tmp_path / "other").glob("*.ipc"))
    assert sorted(p.name for p in broker.data.glob("*.ipc")) == ["zmesh-pub.ipc", "zmesh.ipc"]
    assert broker.stop() == 0
    assert not list(broker.data.glob("*.ipc"))


def test_the_broker_log_tells_an_operator_what_happened(broker_factory) -> None:
    """Finding 14: the log said only ready and stopped. `zmesh broker -v` works."""
    b = broker_factory(extra=("-v",))
    cli = Cli(b.endpoint)
    cli.ok("task", "add", "t")
    cli.ok("task", "claim", "t", "--agent", "gone", "--ttl", "1")  # its lease: 1 s too
    import zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(b.endpoint)
    sock.send_multipart([b"junk"])  # a bad request: answered and logged with the peer
    assert sock.poll(5000)
    sock.close(0)
    b.kill()  # a crash: the next start scans the tasks and says so
    b.start()  # the same data, ports and log file (every start appends to it)
    log = b.log()
    assert "refused a request from 127.0.0.1" in log
    assert re.search(r"recovered in [0-9.]+ s: 1 agent lease\(s\) restarted .* 1 claim\(s\) held, every task scanned", log), log
    wait_for(lambda: "lease of agent 'gone' expired" in b.log(), timeout=20, what="the expiry line")
    assert "released 1 claim(s): 't'" in b.log()
    assert b.stop() == 0
    b.start()
    assert b.stop() == 0
    assert "claims read from the clean-shutdown index" in b.log()


def test_every_option_has_help_and_the_docs_are_generated() -> None:
    """Finding 15: every option has a description; docs/CLI.md is generated from the tree."""
    for path, cmd in [("", main), *commands(main)]:
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"zmesh {path} {param.opts[0]} has no help"
    assert (ROOT / "docs" / "CLI.md").read_text() == render_markdown(main), "run: python docs/gen_cli.py"
    claim_ttl = next(p for p in main.commands["task"].commands["claim"].params if p.name == "ttl")
    assert "lease" in (claim_ttl.help or ""), "task claim --ttl says it also sets an implicit agent's lease"


def test_protocol_doc_prints_limits_as_integers() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert not re.search(r"\d\.\d+e\+\d", doc), "a limit in exponent notation"
    assert f"| `MAX_MESSAGE_BYTES` | {protocol.MAX_MESSAGE_BYTES} |" in doc
    for kind in protocol.KINDS:
        assert f"| {kind} |" in doc, f"field kind {kind} is not documented"


def test_readme_exit_codes_match_the_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in readme, f"README's exit-code table lacks: | {code} | {meaning} |"
    # the error format test_json_errors_are_one_object_on_stderr and the table hold the CLI to
    assert "`zmesh: CODE: message`" in readme and '`{"code": ..., "message": ..., "details": {...}}`' in readme


def test_sigint_on_events_exits_quietly(z: Cli) -> None:
    z.ok("publish", "x")
    p = subprocess.Popen([sys.executable, "-m", "zmesh", "--broker", z.endpoint, "events", "--since", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                         env=clean_env())
    try:
        assert "msg.x" in _readline(p, 30)  # following: Ctrl-C now interrupts the stream
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=20)
        assert "Traceback" not in err and p.returncode == 130, (p.returncode, err)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
