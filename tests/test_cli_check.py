"""`probekit check` is built from the registry of probe kinds: one sub-command per kind, from
its ProbeKind (summary, target syntax, options), against loopback servers."""

from __future__ import annotations

import select
import socketserver
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from importlib import metadata
from typing import Any, ClassVar

import attrs
import pytest

from probekit import Assertion, ErrorKind, Status, Timeouts, result_from_json
from probekit.cli import main
from probekit.probes import (
    Attempt,
    HostPort,
    Name,
    Option,
    ProbeBase,
    ProbeFailure,
    ProbeKind,
    _registry,
    get_kind,
    register_kind,
)


class LineServer(socketserver.ThreadingTCPServer):
    """Answers each line it gets with ``ack LINE`` and records the lines in order; notes when
    a second line had already arrived before the first was answered."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), LineHandler)
        self.lines: list[str] = []
        self.early = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class LineHandler(socketserver.StreamRequestHandler):
    server: LineServer
    rbufsize = 0  # unbuffered, so that select() sees whatever the client has sent

    def handle(self) -> None:
        for raw in self.rfile:
            self.server.lines.append(raw.decode().rstrip("\r\n"))
            if select.select([self.connection], [], [], 0.05)[0]:
                self.server.early = True  # the client did not wait for this answer
            self.wfile.write(b"ack " + raw)
            self.wfile.flush()


@pytest.fixture
def line_server() -> Iterator[LineServer]:
    server = LineServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- a kind that exists only in this module ------------------------------------------------------


@attrs.frozen
class GreetProbe(ProbeBase):
    """Say a greeting, one line at a time, and read the answers."""

    kind: ClassVar[str] = "greet"
    host: str
    port: int
    greeting: str = "hello"
    times: int = 1
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    assertions: tuple[Assertion, ...] = ()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port)
        with attempt.phase("greet"):
            for _ in range(self.times):
                await attempt.write(conn, self.greeting.encode() + b"\n")
                answer = await attempt.read_line(conn)
                if not answer.startswith(b"ack "):
                    raise ProbeFailure(ErrorKind.PROTOCOL, f"unexpected answer {answer!r}")
        attempt.metric("greetings", self.times)


def _greet_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    if values.get("shout"):
        definition["greeting"] = str(definition.get("greeting", "hello")).upper()


GREET = ProbeKind(
    name="greet",
    cls=GreetProbe,
    summary="greet a line server and read its answers",
    target=HostPort(),
    options=(
        Option(("--greeting",), field="greeting", metavar="TEXT", help="what to say"),
        Option(("--times",), field="times", metavar="N", parse=int, help="how many times"),
        Option(("--shout",), dest="shout", action="flag", help="say it in capitals"),
        Option(("--style",), dest="style", choices=("plain", "fancy"), help="how to say it"),
    ),
    to_definition=_greet_definition,
)


@attrs.frozen
class BareProbe(ProbeBase):
    """Connect and nothing else: no options, no assertions, a fixed deadline."""

    kind: ClassVar[str] = "bare"
    name: str

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(total=5.0)

    @property
    def target(self) -> str:
        return self.name

    async def run(self, attempt: Attempt) -> None:
        host, _, port = self.name.rpartition(":")
        await attempt.connect(host, int(port))


BARE = ProbeKind(
    name="bare", cls=BareProbe, summary="connect, nothing more", target=Name(what="ADDRESS")
)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds registered in a test are forgotten after it."""
    monkeypatch.setattr(_registry, "_kinds", dict(_registry._kinds))


# -- help ----------------------------------------------------------------------------------------


def test_check_help_lists_every_kind_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "--help")
    assert code == 0
    words = " ".join(out.split()) + " "  # help lines are wrapped
    for name in ("http", "tcp"):
        assert f" {name} {get_kind(name).summary} " in words, out
    assert "--timeout" in out  # the shared options, which may also come before the kind


def test_a_kinds_help_shows_its_target_and_options_and_the_shared_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "check", "http", "--help")
    assert code == 0
    assert "--method" in out and "-H 'NAME: VALUE', --request-header" in out
    assert "--send" not in out
    assert all(flag in out for flag in ("--timeout", "--nagios", "--json", "--warn", "--deny"))
    assert "URL" in out
    code, out, _ = run_cli(capsys, "check", "tcp", "--help")
    assert code == 0
    assert "--send" in out and "--expect" in out and "HOST:PORT" in out
    assert "--method" not in out


# -- a kind registered at runtime ----------------------------------------------------------------


@pytest.mark.usefixtures("registry")
def test_a_kind_registered_at_runtime_is_a_check_subcommand(
    line_server: LineServer, capsys: pytest.CaptureFixture[str]
) -> None:
    register_kind(GREET)
    code, out, err = run_cli(capsys, "check", "greet", line_server.target, "--json")
    assert code == 0, err
    result = result_from_json(out)
    assert result.status is Status.UP
    assert result.kind == "greet"
    assert result.phase_names()[:2] == ("resolve", "connect")
    assert line_server.lines == ["hello"]

    code, out, err = run_cli(
        capsys,
        "check",
        "greet",
        line_server.target,
        *("--greeting", "hi", "--times", "2", "--shout", "--style", "fancy", "--nagios"),
        *("--warn", "5"),
    )
    assert code == 0, err
    assert out.startswith("GREET OK - ")
    assert ";5;;0" in out
    assert line_server.lines == ["hello", "HI", "HI"]
    code, out, _ = run_cli(capsys, "check", "greet", "--help")
    assert "--greeting TEXT" in out and "{plain,fancy}" in out


@pytest.mark.usefixtures("registry")
def test_option_parse_and_choices_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    register_kind(GREET)
    code, _, err = run_cli(capsys, "check", "greet", "127.0.0.1:1", "--times", "many")
    assert code == 3
    assert "argument --times: invalid literal for int() with base 10: 'many'" in err
    code, _, err = run_cli(capsys, "check", "greet", "127.0.0.1:1", "--style", "loud")
    assert code == 3
    assert "argument --style: invalid choice: 'loud'" in err


@pytest.mark.usefixtures("registry")
def test_a_kind_without_assertions_or_timeouts_takes_no_warn_or_timeout(
    line_server: LineServer, capsys: pytest.CaptureFixture[str]
) -> None:
    register_kind(BARE)
    assert run_cli(capsys, "check", "bare", line_server.target)[0] == 0
    code, out, err = run_cli(capsys, "check", "bare", line_server.target, "--warn", "1", "--nagios")
    assert code == 3
    assert "probekit check: error: --warn: bare checks have no assertions" in err
    assert out == "BARE UNKNOWN - invalid options: --warn: bare checks have no assertions\n"
    code, _, err = run_cli(capsys, "check", "bare", line_server.target, "--timeout", "1")
    assert code == 3
    assert "probekit check: error: --timeout: bare checks have no timeouts" in err
    code, _, err = run_cli(capsys, "check", "bare", "")
    assert code == 3
    assert "TARGET: expected a address" in err


@pytest.mark.usefixtures("registry")
def test_a_kind_whose_flags_clash_with_the_shared_ones_is_left_out(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    clash = attrs.evolve(GREET, options=(Option(("--timeout",), field="times", help="clashes"),))
    register_kind(clash)
    code, out, _ = run_cli(capsys, "check", "--help")
    assert code == 0
    assert GREET.summary not in out and get_kind("http").summary in out
    assert "clash with the options every kind shares" in caplog.text


@pytest.mark.usefixtures("registry")
def test_a_plugin_kind_from_an_entry_point_is_a_check_subcommand(
    monkeypatch: pytest.MonkeyPatch, line_server: LineServer, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = metadata.EntryPoint(
        name="greet", value="test_cli_check:GREET", group=_registry.ENTRY_POINT_GROUP
    )

    def entry_points(**selection: str) -> list[metadata.EntryPoint]:
        return [plugin] if selection.get("group") == _registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.setattr(_registry, "_scanned_plugins", False)
    code, out, _ = run_cli(capsys, "check", "--help")
    assert code == 0
    assert "greet a line server" in out
    assert run_cli(capsys, "check", "greet", line_server.target)[0] == 0
    monkeypatch.setattr(_registry, "_scanned_plugins", False)  # scan again next time


# -- usage errors ------------------------------------------------------------------------------


def test_an_option_of_another_kind_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "check", "tcp", "127.0.0.1:1", "--method", "GET")
    assert code == 3
    assert out == ""
    assert "usage: probekit check tcp" in err
    assert "probekit check tcp: error: unrecognized arguments: --method GET" in err
    code, _, err = run_cli(capsys, "check", "http", "http://127.0.0.1:1/", "--send", "x")
    assert code == 3
    assert "unrecognized arguments: --send x" in err


def test_a_kinds_option_before_the_kind_is_a_usage_error_with_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(capsys, "check", "--method", "GET", "http", "http://127.0.0.1:1/")
    assert code == 3
    assert "argument KIND: invalid choice: 'GET'" in err
    assert "a kind's own options go after it: probekit check KIND TARGET [options]" in err


def test_the_shared_options_may_come_before_the_kind(
    line_server: LineServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "check", "--nagios", "--timeout", "5", "--warn", "4", "tcp", line_server.target
    )
    assert code == 0, err
    assert out.startswith("TCP OK - ")
    assert ";4;;0" in out
    code, out, _ = run_cli(
        capsys, "check", "--deny", "127.0.0.0/8", "tcp", line_server.target, "--json"
    )
    assert code == 2
    result = result_from_json(out)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    code, _, err = run_cli(capsys, "check", "--json", "tcp", line_server.target, "--nagios")
    assert code == 3
    assert "--json/--nagios: not allowed together" in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "must be a finite number of seconds above 0, got -1.0"),
        ("inf", "must be a finite number of seconds above 0, got inf"),
        ("soon", "not a number of seconds: 'soon'"),
    ],
)
def test_seconds_options_follow_the_shared_rule(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    code, _, err = run_cli(capsys, "check", "tcp", "127.0.0.1:1", "--timeout", value)
    assert code == 3
    assert f"argument --timeout: {message}" in err


def test_a_bad_target_is_reported_as_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", "tcp", "example.test:99999")
    assert code == 3
    assert err.splitlines() == [
        "probekit check: error: TARGET: expected HOST:PORT (or [IPv6]:PORT), "
        "got 'example.test:99999'"
    ]
    code, _, err = run_cli(capsys, "check", "http", "gopher://x/")
    assert code == 3
    assert err.startswith("probekit check: error: TARGET: ")


def test_every_problem_is_reported_at_once(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys,
        "check",
        "tcp",
        "nocolon",
        *("--regex", "(", "--expect", "[", "--insecure", "--deny", "bad", "--timeout", "1"),
        *("--warn", "3", "--crit", "2"),
    )
    assert code == 3
    assert out == ""
    labels = [
        line.removeprefix("probekit check: error: ").split(":")[0]
        for line in err.split("\n")
        if line
    ]
    assert sorted(labels) == sorted(
        ["TARGET", "--regex", "--expect", "--insecure/--ca-file", "--deny", "--warn"]
    )


# -- ordered options -----------------------------------------------------------------------------


def test_ordered_options_keep_their_order(
    line_server: LineServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys,
        "check",
        "tcp",
        line_server.target,
        *(r"--send", r"second\n", "--expect", "^ack second"),
        *(r"--send", r"first\n", "--expect", "^ack first", "--json"),
    )
    assert code == 0, (out, err)
    assert line_server.lines == ["second", "first"]
    assert not line_server.early  # each --send waited for the --expect before it
    assert result_from_json(out).status is Status.UP
