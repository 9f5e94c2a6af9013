"""Every code example in README.md and docs/ is executed or validated here.

What each fence language means, and how it is checked:

- ```python: runs as written, in-process, with the event loop's connect guarded: any attempt to
  connect to a non-loopback address fails the test instead of sending a packet.
- ```py: a fragment of a larger program (undefined names, top-level ``await``); it must compile.
- ```toml: a config file. One with ``[control]`` or ``[[checkpoints]]`` loads through
  ``probekit.cli.load_control_config``, any other through ``probekit.load_config``, with the
  environment variables and files it names provided by the test. A block preceded by
  ``<!-- fragment -->`` is deliberately partial and only has to parse as TOML.
- ```yaml: a blackbox_exporter ``blackbox.yml`` that ``probekit.exporter.parse_blackbox``
  must load, or a Prometheus config (with ``scrape_configs``) that only has to parse.
- ```json: must parse. The result example in results.md must load with ``result_from_json``. The
  protocol messages in protocol.md are decoded by ``test_the_documented_examples_decode`` in
  tests/test_protocol.py, so they are only checked for JSON validity here.
- ```sh: every command line (after an optional ``$ `` prompt and ``VAR=value`` assignments) that
  starts with ``probekit`` or ``python -m probekit`` runs in a subprocess, against loopback servers
  started by this module, and must exit with the code its comment notes (``# exit N`` or ``(exit
  N...)``). Ports 8080 (HTTP), 8443 (HTTPS, CA in ``ca.pem``), 2525 (SMTP-like) and 6379
  (Redis-like, password ``s3cret``) on 127.0.0.1 are replaced by the live servers' ports; config
  files the commands name are written by ``_files``, or are a ``toml`` block of the docs preceded
  by ``<!-- file: NAME -->`` (written as ``NAME``, with the doc ports in ``127.0.0.1:PORT`` and
  ``port = PORT`` replaced likewise), so the file a page shows is the file its commands run. A
  ``probekit check KIND`` command for a registered kind the command line does not offer yet is
  an expected failure. Skipped by rule:
  long-running commands (``probekit control``, ``probekit checkpoint``, ``probekit demo``,
  ``probekit exporter``, ``probekit run`` without ``--once`` or ``--duration``), which
  tests/test_cli_control.py, tests/test_demo.py and tests/test_exporter.py cover. In a block
  with ``$ `` prompts only prompted lines are commands, and for a command that exits 3 (invalid
  input, so no timings in its output) every line of the transcript below it must be printed.
  Other lines in an sh block are output, installation (``pip``, ``nox``, ``apt-get``),
  benchmarks or shell plumbing and are not run.
- ```text: output, diagrams and synopses; nothing to run.
"""

from __future__ import annotations

import ast
import asyncio.selector_events
import ipaddress
import json
import os
import re
import shlex
import socketserver
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from probekit import DefinitionErrors, load_config, result_from_json
from probekit.cli import load_control_config

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FRAGMENT = "<!-- fragment -->"
LANGUAGES = {"python", "py", "toml", "yaml", "json", "sh", "text"}
LONG_RUNNING = {"control", "checkpoint", "demo", "exporter"}


def _fences() -> Iterator[tuple[str, str, str, bool]]:
    """(language, code, id, marked as a fragment) for every fenced block."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        text = path.read_text()
        for i, match in enumerate(FENCE.finditer(text)):
            before = text[: match.start()].rstrip().splitlines()
            fragment = bool(before) and before[-1].strip() == FRAGMENT
            yield match.group(1), match.group(2), f"{path.relative_to(ROOT)}#{i}", fragment


FILE_MARK = re.compile(r"^<!-- file: ([\w.-]+) -->$")


def _doc_files() -> dict[str, str]:
    """The blocks marked ``<!-- file: NAME -->``: NAME → the block's text."""
    out: dict[str, str] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip().splitlines()
            mark = FILE_MARK.match(before[-1].strip()) if before else None
            if mark:
                assert mark.group(1) not in out, f"two blocks are the file {mark.group(1)}"
                out[mark.group(1)] = match.group(2)
    return out


def _blocks(*languages: str) -> list[Any]:
    return [
        pytest.param(code, fragment, id=name)
        for language, code, name, fragment in _fences()
        if language in languages
    ]


def test_every_block_has_a_known_language() -> None:
    unknown = [name for language, _, name, _ in _fences() if language not in LANGUAGES]
    assert not unknown, f"code blocks with no or an unknown language: {unknown}"


def test_there_are_examples() -> None:
    assert len(_blocks("python")) >= 5
    assert len(_blocks("toml")) >= 3
    assert len(_blocks("json")) >= 5
    assert len(_commands()) >= 8


# -- python -------------------------------------------------------------------------------------


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    attempts: list[Any] = []
    original = asyncio.selector_events.BaseSelectorEventLoop.sock_connect

    async def guarded(self: Any, sock: Any, address: Any) -> None:
        attempts.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a documented example tried to connect to {address}")
        await original(self, sock, address)

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", guarded)
    return attempts


@pytest.mark.parametrize(("code", "fragment"), _blocks("python"))
def test_example_runs(code: str, fragment: bool, loopback_only: list[Any]) -> None:
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    # dont_inherit: as written, not under this module's `from __future__ import annotations`
    code_object = compile(code, "<doc example>", "exec", dont_inherit=True)
    exec(code_object, namespace)  # noqa: S102 - our own docs


@pytest.mark.parametrize(("code", "fragment"), _blocks("py"))
def test_fragment_compiles(code: str, fragment: bool) -> None:
    compile(code, "<doc fragment>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# -- toml ---------------------------------------------------------------------------------------

# The secret files and TLS files the examples name, and what the test puts in their place.
SECRET_FILES = ("/run/secrets/db-password", "/run/secrets/office-token")


@pytest.mark.parametrize(("code", "fragment"), _blocks("toml"))
def test_config_loads(
    code: str, fragment: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tomllib.loads(code)
    if fragment:
        return
    for name in set(re.findall(r'env = "(\w+)"', code)):
        value = f"doc-{name.lower()}-0123456789abcdef0123456789"
        if name.endswith("_URL"):  # a URL that is a credential (a Slack incoming webhook)
            value = f"https://hooks.example/services/{value}"
        monkeypatch.setenv(name, value)
    for index, doc_path in enumerate(SECRET_FILES):
        stand_in = tmp_path / f"secret-{index}"
        stand_in.write_text("doc-secret-0123456789abcdef0123456789\n")
        code = code.replace(f'"{doc_path}"', json.dumps(str(stand_in)))
    if "modules" in data:  # probekit exporter's modules in probekit's TOML
        from probekit.exporter import parse_toml_modules

        assert parse_toml_modules(code)
        return
    if "control" in data or "checkpoints" in data:
        ca = trustme.CA()
        leaf = ca.issue_cert("control.example")
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "control.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / "control-key.pem"))
        code = code.replace('"/etc/probekit/', json.dumps(str(tmp_path) + "/")[:-1])
        code = code.replace('"/var/lib/probekit/', json.dumps(str(tmp_path) + "/")[:-1])
        path = tmp_path / "control.toml"
        path.write_text(code)
        config = load_control_config(path)
        assert config is not None
    else:
        path = tmp_path / "monitors.toml"
        path.write_text(code)
        try:
            config_ = load_config(path)
        except DefinitionErrors as exc:  # pragma: no cover - the failure message
            pytest.fail(f"documented config does not load: {exc.errors}")
        assert config_.monitors


# -- yaml ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "fragment"), _blocks("yaml"))
def test_yaml_loads(code: str, fragment: bool) -> None:
    """A blackbox.yml loads as probekit exporter reads it; a Prometheus scrape config parses."""
    import yaml

    data = yaml.safe_load(code)
    if fragment or "scrape_configs" in data:
        return
    from probekit.exporter import parse_blackbox

    assert parse_blackbox(code)


# -- json ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "fragment"), _blocks("json"))
def test_json_parses(code: str, fragment: bool) -> None:
    data = json.loads(code)
    if isinstance(data, dict) and "schema_version" in data and "phases" in data:
        result = result_from_json(code)  # a result in the documented schema
        assert result.target == data["target"]


def test_the_result_example_is_checked() -> None:
    examples = [code for _, code, _, _ in _fences() if '"schema_version"' in code]
    assert examples, "docs/results.md lost its JSON result example"


# -- sh -----------------------------------------------------------------------------------------

PROMPT = re.compile(r"^(\$ )?((?:\w+=\S* )*)(probekit|python -m probekit)( .*)?$")
EXIT = re.compile(r"#.*\bexit (\d)\b")
DOC_PORTS = {"http": 8080, "https": 8443, "smtp": 2525, "redis": 6379}


def _argv(line: str) -> list[str]:
    match = PROMPT.match(line)
    assert match is not None
    return shlex.split(match.group(4) or "", comments=True)


def _commands(*, long_running: bool = False) -> list[Any]:
    """Every command line of every sh block, continuation lines joined: the ones that finish on
    their own, or (``long_running=True``) the ones that run until stopped."""
    out = []
    for language, code, name, _ in _fences():
        if language != "sh":
            continue
        lines = code.replace("\\\n", " ").splitlines()
        transcript = any(line.startswith("$ ") for line in lines)  # then the rest is output
        for number, line in enumerate(lines):
            match = PROMPT.match(line.strip())
            if match and (match.group(1) or not transcript):
                output = []
                for following in lines[number + 1 :]:
                    if following.startswith("$ "):
                        break
                    output.append(following.strip())
                if _long_running(_argv(line.strip())) == long_running:
                    out.append(pytest.param(line.strip(), output, id=f"{name}:{number}"))
    return out


def _long_running(argv: list[str]) -> bool:
    command = argv[0] if argv else ""
    if command in LONG_RUNNING:
        return True
    return command == "run" and "--once" not in argv and "--duration" not in argv


class _Http(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Smtp(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 mail.test ESMTP\r\n")
        if self.rfile.readline().startswith(b"EHLO"):
            self.wfile.write(b"250 mail.test\r\n")


class _Redis(socketserver.StreamRequestHandler):
    """Enough Redis for the documented commands: inline or RESP-array commands; ``AUTH``
    accepts the password ``s3cret``; ``PING``; ``INFO`` (version 7.2.4)."""

    INFO = b"# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\nuptime_in_seconds:1\r\n"

    def command(self) -> list[bytes]:
        line = self.rfile.readline(4096)
        if not line.startswith(b"*"):
            return line.split()
        words = []
        for _ in range(int(line[1:])):
            size = int(self.rfile.readline(4096)[1:])
            words.append(self.rfile.read(size + 2)[:-2])
        return words

    def handle(self) -> None:
        while words := self.command():
            name = words[0].upper()
            if name == b"AUTH":
                ok = words[-1] == b"s3cret"
                self.wfile.write(b"+OK\r\n" if ok else b"-WRONGPASS invalid password\r\n")
            elif name == b"PING":
                self.wfile.write(b"+PONG\r\n")
            elif name == b"INFO":
                self.wfile.write(b"$%d\r\n%s\r\n" % (len(self.INFO), self.INFO))
            else:
                self.wfile.write(b"-ERR unknown command\r\n")


class _Tcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _files(ports: dict[str, int], ca_file: str) -> dict[str, str]:
    """The config files the documented commands name."""
    return {
        # cli.md: `intranet` is up and `db` is down.
        "monitors.toml": f"""
[[monitors]]
id = "intranet"
kind = "http"
url = "https://127.0.0.1:{ports["https"]}/"
tls = {{ ca_file = "{ca_file}" }}

[[monitors]]
id = "db"
kind = "tcp"
host = "127.0.0.1"
port = 1
""",
        # cli.md: two errors.
        "typo.toml": """
[[monitors]]
kind = "tcp"
host = "127.0.0.1"
port = 1
interval = -1

[[monitors]]
id = "b"
kind = "tcp"
host = "127.0.0.1"
port = 1

[[monitors]]
id = "c"
kind = "tcp"
host = "127.0.0.1"
port = 1

[[monitors]]
kind = "http"
url = "http://127.0.0.1/"
assertions = [{ type = "status_in", codes = [200] }, { type = "body_matches", pattern = "(" }]
""",
        # config.md: the five errors it shows.
        "broken.toml": """
[policy]
deny = ["10.0.0.0/33"]

[[monitors]]
id = "web"
kind = "http"
url = "http://127.0.0.1/"
interval = -5

[[monitors]]
id = "web"
kind = "http"
url = "http://127.0.0.1/"

[[monitors]]
kind = "tcp"
host = "127.0.0.1"
port = 1
bearer_token = { env = "TOKEN" }

[[monitors]]
kind = "http"
url = "http://127.0.0.1/x"
assertions = [{ type = "status_in", codes = [200] }, { type = "body_matches", pattern = "(" }]
""",
    }


@pytest.fixture(scope="module")
def doc_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[int, int]]]:
    """A directory with the example files, and live servers standing in for the doc ports."""
    home = tmp_path_factory.mktemp("doc-world")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(home / "ca.pem"))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(tls)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    https = ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    https.socket = tls.wrap_socket(https.socket, server_side=True)
    servers: dict[str, socketserver.BaseServer] = {
        "http": http,
        "https": https,
        "smtp": _Tcp(("127.0.0.1", 0), _Smtp),
        "redis": _Tcp(("127.0.0.1", 0), _Redis),
    }
    ports = {name: int(server.socket.getsockname()[1]) for name, server in servers.items()}  # type: ignore[attr-defined]
    for name, text in _files(ports, str(home / "ca.pem")).items():
        (home / name).write_text(text)
    live = {DOC_PORTS[name]: port for name, port in ports.items()}
    for name, text in _doc_files().items():
        text = re.sub(
            r"(127\.0\.0\.1:|port = )(\d+)\b",
            lambda m: f"{m.group(1)}{live.get(int(m.group(2)), int(m.group(2)))}",
            text,
        )
        (home / name).write_text(text)
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield home, live
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("line", "output"), _commands(long_running=True))
def test_long_running_commands_are_exercised_elsewhere(line: str, output: list[str]) -> None:
    """`control`, `checkpoint`, `demo` and `run` without an end run until stopped; their own
    tests start them as subprocesses and stop them (test_cli_control.py, test_demo.py,
    test_cli.py). This checks the documented subcommand is one of those."""
    command = _argv(line)[0]
    covering = {
        "control": "test_cli_control.py",
        "checkpoint": "test_cli_control.py",
        "demo": "test_demo.py",
        "exporter": "test_exporter.py",
        "run": "test_cli.py",
    }[command]
    source = (Path(__file__).parent / covering).read_text()
    assert f'"{command}"' in source, f"{covering} does not start `probekit {command}`"


@pytest.mark.parametrize(("line", "output"), _commands())
def test_command_runs(line: str, output: list[str], doc_world: tuple[Path, dict[int, int]]) -> None:
    home, ports = doc_world
    match = PROMPT.match(line)
    assert match is not None
    argv = _argv(line)
    expected = EXIT.search(line)
    assert expected, f"the documented command does not say its exit code (# exit N): {line}"
    argv = [
        re.sub(
            r"(127\.0\.0\.1|localhost):(\d+)",
            lambda m: f"{m.group(1)}:{ports.get(int(m.group(2)), int(m.group(2)))}",
            arg,
        )
        for arg in argv
    ]
    env = dict(os.environ)
    for assignment in match.group(2).split():
        name, _, value = assignment.partition("=")
        env[name] = value
    done = subprocess.run(
        [sys.executable, "-m", "probekit", *argv],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == int(expected.group(1)), (done.stdout, done.stderr)
    if done.returncode == 3:  # invalid input: the transcript's error lines have no timings
        shown = (done.stdout + done.stderr).splitlines()
        for expected_line in output:
            assert any(expected_line in printed for printed in shown), (expected_line, shown)


# -- the config file reference --------------------------------------------------------------------
#
# docs/toml.md lists the keys every kind shares; each kind's own fields are in the field table of
# its page under docs/probes/. These tests read both and compare them with the code: the
# registry's kinds and their attrs fields, the assertion types, the step keys, the config file's
# sections and policy keys. A kind added with a page written like the others passes unchanged.

REFERENCE = ROOT / "docs" / "toml.md"
HEADING = re.compile(r"^(#{2,4}) (.+)$", re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _builtin_kinds() -> list[Any]:
    import importlib

    from probekit.probes._registry import builtin_names

    found: list[Any] = []
    for module in builtin_names():
        loaded = importlib.import_module(f"probekit.probes.{module}")
        declared = getattr(loaded, "KINDS", None)
        found.extend(declared if declared is not None else (loaded.KIND,))
    return [pytest.param(kind, id=kind.name) for kind in found]


def _sections(text: str) -> dict[str, str]:
    """Each heading's text (``## `[policy]` `` → ``[policy]``) → the text under it, up to the
    next heading of any level."""
    matches = list(HEADING.finditer(text))
    out = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out[match.group(2).strip().strip("`")] = text[match.end() : end]
    return out


def _table_keys(text: str, header: str = "field") -> set[str]:
    """The names in backticks in the first column of every table whose first header cell is
    ``header`` (``| `host`, `port` | ...`` gives both; ``[policy]`` gives ``policy``)."""
    keys: set[str] = set()
    rows = iter(text.splitlines())
    for line in rows:
        cells = line.split("|")
        if len(cells) > 2 and cells[1].strip() == header:
            for row in rows:
                if not row.startswith("|"):
                    break
                first = row.split("|")[1]
                keys |= set(re.findall(r"`\[*([A-Za-z_][A-Za-z0-9_]*)\]*`", first))
    return keys


def _named(text: str) -> set[str]:
    """Every identifier inside a code span of ``text``."""
    return {word for span in CODE_SPAN.findall(text) for word in re.findall(r"\w+", span)}


def _public_fields(cls: type) -> list[str]:
    """The fields a definition gives: attrs fields set by ``__init__``, not private or derived."""
    import attrs

    return [f.name for f in attrs.fields(cls) if f.init and not f.name.startswith("_")]


def _reference() -> dict[str, str]:
    return _sections(REFERENCE.read_text())


def _shared_values() -> dict[str, type]:
    """The values docs/toml.md documents once for every kind: its section name → class."""
    from probekit import Proxy, Timeouts, TlsOptions
    from probekit.probes.http import BasicAuth

    return {"timeouts": Timeouts, "tls": TlsOptions, "proxy": Proxy, "basic_auth": BasicAuth}


@pytest.mark.parametrize("kind", _builtin_kinds())
def test_every_field_of_a_kind_is_in_its_pages_table(kind: Any) -> None:
    assert kind.docs is not None
    documented = _table_keys((ROOT / "docs" / kind.docs).read_text())
    missing = [name for name in _public_fields(kind.cls) if name not in documented]
    assert not missing, f"docs/{kind.docs}: fields missing from its `| field |` table: {missing}"


@pytest.mark.parametrize("kind", _builtin_kinds())
def test_every_nested_value_of_a_kind_is_documented(kind: Any) -> None:
    """A field whose value is a table (an attrs class: ``tls``, ``timeouts``, a kind's own) has
    each of its keys documented: in docs/toml.md for the shared ones, else on the kind's page.
    A field with its own plain form (``ProbeKind.structure``, as TCP's steps) is the page's to
    describe, and is checked as a key above."""
    import typing

    import attrs

    shared = {cls: name for name, cls in _shared_values().items()}
    reference = _reference()
    page = (ROOT / "docs" / kind.docs).read_text()
    hints = typing.get_type_hints(kind.cls)

    def classes(hint: Any) -> Iterator[type]:
        if isinstance(hint, type) and attrs.has(hint):
            yield hint
        for argument in typing.get_args(hint):
            yield from classes(argument)

    problems = []
    for name in _public_fields(kind.cls):
        if name in kind.structure:
            continue
        for cls in classes(hints.get(name)):
            if cls in shared:
                where, keys = f"docs/toml.md `{shared[cls]}`", _table_keys(reference[shared[cls]])
            else:
                where, keys = f"docs/{kind.docs}", _named(page)
            missing = [key for key in _public_fields(cls) if key not in keys]
            if missing:
                problems.append(f"{name} ({cls.__name__}): {missing} not in {where}")
    assert not problems, problems


@pytest.mark.parametrize("name", sorted(_shared_values()))
def test_the_reference_documents_each_shared_value(name: str) -> None:
    section = _reference().get(name)
    assert section is not None, f"docs/toml.md has no `{name}` section"
    missing = [f for f in _public_fields(_shared_values()[name]) if f not in _table_keys(section)]
    assert not missing, f"docs/toml.md `{name}`: missing {missing}"


def _assertion_types() -> list[Any]:
    from probekit._assertions import ASSERTION_TYPES

    return [pytest.param(name, cls, id=name) for name, cls in sorted(ASSERTION_TYPES.items())]


@pytest.mark.parametrize(("name", "cls"), _assertion_types())
def test_the_reference_documents_each_assertion_type(name: str, cls: type) -> None:
    section = _reference().get(name)
    assert section is not None, f"docs/toml.md has no section for assertion type `{name}`"
    fields = _public_fields(cls)
    if not fields:
        assert "No fields" in section, f"docs/toml.md `{name}`: say it has no fields"
    missing = [f for f in fields if f not in _table_keys(section)]
    assert not missing, f"docs/toml.md `{name}`: fields missing from its table: {missing}"


def test_the_reference_documents_the_file_and_its_sections() -> None:
    from probekit import _config

    reference = _reference()
    sections = _table_keys(reference["Top level"], "section")
    assert set(_config._SECTIONS) <= sections
    assert {"kind", *_config._MONITOR_KEYS} <= _table_keys(reference["[[monitors]]"], "key")
    assert set(_config._POLICY_KEYS) <= _table_keys(reference["[policy]"], "key")
    forms = _named(reference["[secrets]"])
    assert {"env", "file", "secret"} <= forms


def test_the_reference_documents_every_step() -> None:
    from probekit.probes.tcp import _STEP_KEYS

    keys = set(re.findall(r"\w+", _STEP_KEYS)) - {"or"}
    assert keys == {"send", "send_hex", "expect", "expect_exact", "starttls"}
    assert keys <= _table_keys(_reference()["steps"], "key")


def test_the_reference_checks_can_fail() -> None:
    """The readers above find what is there and nothing else (so a missing key is caught)."""
    text = (
        "| field | default |\n|---|---|\n| `host`, `port` | x |\n| `[a_b]` | `y` |\n\nafter `z`\n"
    )
    assert _table_keys(text) == {"host", "port", "a_b"}
    assert _table_keys(text, "key") == set()
    assert "z" in _named(text) and "z" not in _table_keys(text)
    sections = _sections("## `one`\nA\n### two\nB\n")
    assert sections == {"one": "\nA\n", "two": "\nB\n"}
