"""MultiStepProbe (kind ``api``) against an in-process API on loopback.

The API: POST /login (JSON user/password → a token and a session cookie), POST /items (bearer
token → 201 with an id), GET /items/ID, DELETE /items/ID, POST /logout; /silent never answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import sys
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probekit import (
    DefinitionError,
    DefinitionErrors,
    ErrorKind,
    MultiStepProbe,
    ProbeContext,
    ProbeFailure,
    Secret,
    Status,
    Timeouts,
    build_probe,
    probe_to_dict,
    result_from_json,
    result_to_json,
)
from probekit.probes.api import Extract, Step, _Scope, step_results
from servers import GuardedConnector, HttpServer, Request, response

PASSWORD = "s3cret-Pa55word"
TOKEN = "tok-9f8e7d6c5b4a"


class Api:
    """The server side's state, so tests check what really happened there."""

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {}
        self.deleted: list[int] = []
        self.logouts = 0
        self.flaky = 0
        self.auth_seen: list[str] = []

    def authorised(self, req: Request) -> bool:
        self.auth_seen.append(req.headers.get("authorization", ""))
        return req.headers.get("authorization") == f"Bearer {TOKEN}"

    async def handle(self, req: Request, writer: asyncio.StreamWriter) -> None:
        path, method = req.path, req.method
        js = {"Content-Type": "application/json"}
        if path == "/login" and method == "POST":
            doc = json.loads(req.body or b"{}")
            if doc.get("password") != PASSWORD:
                writer.write(response(401, b'{"error": "bad credentials"}', js))
                return
            body = json.dumps({"token": TOKEN, "user": doc.get("user")}).encode()
            writer.write(response(200, body, {**js, "Set-Cookie": "session=abc; Path=/"}))
        elif path == "/items" and method == "POST":
            if not self.authorised(req):
                writer.write(response(401, b"{}", js))
                return
            n = len(self.items) + 1
            self.items[n] = {"id": n, **json.loads(req.body)}
            body = json.dumps(self.items[n]).encode()
            writer.write(response(201, body, {**js, "Location": f"/items/{n}"}))
        elif path.startswith("/items/"):
            n = int(path.rsplit("/", 1)[1]) if path.rsplit("/", 1)[1].isdigit() else -1
            if not self.authorised(req) or n not in self.items:
                writer.write(response(404, b"{}", js))
            elif method == "DELETE":
                self.deleted.append(n)
                del self.items[n]
                writer.write(response(204))
            else:
                writer.write(response(200, json.dumps(self.items[n]).encode(), js))
        elif path == "/logout":
            self.logouts += 1
            writer.write(response(200, b"bye"))
        elif path == "/whoami":
            writer.write(response(200, req.headers.get("cookie", "").encode()))
        elif path == "/flaky":
            self.flaky += 1
            writer.write(response(503 if self.flaky < 3 else 200, b"x"))
        elif path == "/echo-token":
            writer.write(response(200, json.dumps({"token": TOKEN}).encode(), js))
        elif path == "/evil":
            writer.write(response(200, json.dumps({"v": "a\r\nX-Injected: 1"}).encode(), js))
        elif path == "/meta":
            writer.write(response(302, b"", {"Location": "http://169.254.169.254/latest"}))
        elif path == "/silent":
            await asyncio.sleep(3600)
        else:
            writer.write(response(404, b"not found"))


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, HttpServer]]:
    state = Api()
    async with HttpServer(handler=state.handle) as server:
        yield state, server


def transaction(base: str, *, read_name: str = "widget", **extra: Any) -> dict[str, Any]:
    """login → create → read → list → delete (always_run), as a plain definition."""
    return {
        "kind": "api",
        "variables": {"user": "alice", "password": {"secret": "API_PASSWORD"}},
        "steps": [
            {
                "name": "login",
                "method": "POST",
                "url": f"{base}/login",
                "json": {"user": "{{user}}", "password": "{{password}}"},
                "extract": [{"name": "token", "source": "json", "path": "$.token", "secret": True}],
            },
            {
                "name": "create",
                "method": "POST",
                "url": f"{base}/items",
                "headers": {"Authorization": "Bearer {{token}}"},
                "json": {"name": "widget", "owner": "{{user}}"},
                "assertions": [{"type": "status_in", "codes": [201]}],
                "extract": [
                    {"name": "id", "source": "json", "path": "$.id"},
                    {"name": "where", "source": "header", "path": "Location"},
                ],
            },
            {
                "name": "read",
                "url": f"{base}/items/{{{{id}}}}",
                "bearer_token": "{{token}}",
                "assertions": [
                    {"type": "json_path", "path": "$.id", "op": "exists"},
                    {"type": "json_path", "path": "$.name", "op": "eq", "value": read_name},
                ],
            },
            {
                "name": "session",
                "url": f"{base}/whoami",
                "assertions": [{"type": "body_contains", "text": "session=abc"}],
            },
            {
                "name": "delete",
                "method": "DELETE",
                "url": f"{base}{{{{where}}}}",
                "bearer_token": "{{token}}",
                "assertions": [{"type": "status_in", "codes": [204]}],
                "always_run": True,
            },
        ],
        **extra,
    }


SECRETS = {"API_PASSWORD": Secret(PASSWORD)}


def _base(server: HttpServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_transaction_up_with_five_step_results(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    state, server = api
    probe = build_probe(transaction(_base(server)), secrets=SECRETS)
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    steps = step_results(result)
    assert [s.name for s in steps] == ["login", "create", "read", "session", "delete"]
    for step in steps:
        assert step.state == "passed"
        names = [p.name for p in step.phases]
        assert names == ["resolve", "connect", "processing", "transfer"], names
        assert step.attempts == 1
    assert [s.status_code for s in steps] == [200, 201, 200, 200, 204]
    # The token from login's JSON went out as a bearer header, by header and by bearer_token.
    assert state.auth_seen == [f"Bearer {TOKEN}"] * 3
    assert state.deleted == [1] and state.items == {}
    assert result.metrics["steps_passed"] == 5
    assert result.address == f"127.0.0.1:{server.port}"
    # Extracted variables are named, their values not shown unless captured.
    outcome = next(a for a in result.assertions if a.name == "create: extract id")
    assert outcome.passed and outcome.observed == "set"


async def test_capture_shows_values_but_never_secret_ones(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    probe = build_probe(transaction(_base(server), capture=True), secrets=SECRETS)
    result = await probe.check(ctx)
    shown = {a.name: a.observed for a in result.assertions}
    assert shown["create: extract id"] == "1"
    assert shown["create: extract where"] == "/items/1"
    assert shown["login: extract token"] == "set"


async def test_step3_assertion_fails_later_skipped_cleanup_runs(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    state, server = api
    probe = build_probe(transaction(_base(server), read_name="gadget"), secrets=SECRETS)
    result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.error.message.startswith("read: json_path failed")
    steps = {s.name: s for s in step_results(result)}
    assert [s.state for s in steps.values()] == ["passed", "passed", "failed", "skipped", "passed"]
    # Every assertion of the failing step is reported, the passing one too.
    read = [(a.name, a.passed) for a in steps["read"].assertions]
    assert read == [("status", True), ("json_path", True), ("json_path", False)]
    assert steps["session"].phases == () and steps["session"].status_code is None
    assert state.deleted == [1]  # the always_run DELETE ran: checked on the server


async def test_deadline_in_step2_names_step_and_phase_and_cleanup_runs(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    state, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("login", f"{base}/login", method="POST", json={"password": PASSWORD}),
            Step("stall", f"{base}/silent"),
            Step("after", f"{base}/whoami"),
            Step("logout", f"{base}/logout", method="POST", always_run=True),
        ),
        timeouts=Timeouts(total=1.5),
        cleanup_grace=0.8,
    )
    result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "stall.processing"
    assert "step 2 (stall)" in result.error.message
    assert [s.state for s in step_results(result)] == ["passed", "failed", "skipped", "passed"]
    assert state.logouts == 1


async def test_step_error_names_step_and_phase(
    api: tuple[Api, HttpServer], connector: GuardedConnector, ctx: ProbeContext
) -> None:
    """A redirect to the metadata address inside a step: policy_denied, no packet sent."""
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(Step("ok", f"{base}/whoami"), Step("hop", f"{base}/meta"), Step("no", base + "/"))
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert result.error.phase == "hop"  # refused between phases, as HttpProbe reports it
    assert result.error.message.startswith("step 2 (hop): ")
    assert connector.refused == []
    assert {ip for ip, _ in connector.dialled} == {"127.0.0.1"}
    assert [s.state for s in step_results(result)] == ["passed", "failed", "skipped"]


def test_undefined_variable_is_a_definition_error_with_index_and_path() -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe(
            {
                "kind": "api",
                "steps": [
                    {
                        "name": "a",
                        "url": "http://127.0.0.1/{{later}}",
                        "extract": [{"name": "later", "source": "status"}],
                    },
                    {"name": "b", "url": "http://127.0.0.1/", "headers": {"X": "{{nope}}"}},
                    {
                        "name": "c",
                        "url": "http://127.0.0.1/",
                        "json": {"k": ["{{ later }}", "{{x"]},
                    },
                ],
            }
        )
    paths = {e.path: e.message for e in info.value.errors}
    assert "undefined variable 'later' in step 0" in paths["steps[0].url"]
    assert "undefined variable 'nope' in step 1" in paths["steps[1].headers[0]"]
    assert "not a {{name}} placeholder" in paths["steps[2].json.k[1]"]
    assert "steps[2].json.k[0]" not in paths  # defined by step a, spaces allowed


@pytest.mark.parametrize(
    ("step", "path"),
    [
        ({"name": "a", "url": "ftp://x/{{v}}"}, "steps[0].url"),
        ({"name": "a b", "url": "http://x/"}, "steps[0].name"),
        ({"name": "a", "url": "http://x/", "method": "get"}, "steps[0].method"),
        ({"name": "a", "url": "http://x/", "body": "x", "json": {}}, "steps[0].json"),
        ({"name": "a", "url": "http://x/", "headers": {"X": "a\nb"}}, "steps[0].headers[0]"),
        ({"name": "a", "url": "http://x/", "max_attempts": 0}, "steps[0].max_attempts"),
        (
            {"name": "a", "url": "http://x/", "extract": [{"name": "1x", "source": "status"}]},
            "steps[0].extract[0].name",
        ),
        (
            {
                "name": "a",
                "url": "http://x/",
                "extract": [{"name": "v", "source": "regex", "path": "(a"}],
            },
            "steps[0].extract[0].path",
        ),
    ],
)
def test_malformed_steps_name_their_field(step: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        build_probe({"kind": "api", "variables": {"v": "1"}, "steps": [step]})
    errors = info.value.errors if isinstance(info.value, DefinitionErrors) else [info.value]
    assert path in [e.path for e in errors], [(e.path, e.message) for e in errors]


def test_definition_round_trips_and_secrets_stay_masked() -> None:
    probe = build_probe(transaction("http://127.0.0.1:1"), secrets=SECRETS)
    plain = probe_to_dict(probe)
    assert PASSWORD not in json.dumps(plain) + repr(probe) + str(probe)
    assert plain["variables"] == [["user", "alice"], ["password", "<secret>"]]
    # Steps, assertions and extractions survive their plain form; the secret is given again.
    plain["variables"][1][1] = {"secret": "API_PASSWORD"}
    assert build_probe(json.loads(json.dumps(plain)), secrets=SECRETS) == probe
    assert plain["steps"][1]["assertions"] == [{"type": "status_in", "codes": [201], "ranges": []}]
    assert plain["steps"][0]["extract"] == [
        {"name": "token", "path": "$.token", "secret": True}  # source json is the default
    ]


async def test_secret_appears_nowhere_in_results_or_logs(
    api: tuple[Api, HttpServer], ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, server = api
    definition = transaction(_base(server), read_name="gadget")
    # The server echoes the (secret) token; an assertion on it would show it, but for scrubbing.
    definition["steps"].insert(
        3,
        {
            "name": "echo",
            "url": f"{_base(server)}/echo-token?t={{{{token}}}}&p={{{{password}}}}",
            "assertions": [{"type": "json_path", "path": "$.token", "op": "eq", "value": "x"}],
            "continue_on_failure": True,
        },
    )
    definition["steps"][2]["continue_on_failure"] = True
    result = await build_probe(definition, secrets=SECRETS).check(ctx)
    assert result.status is Status.DOWN
    text = result_to_json(result) + result.summary() + repr(result) + caplog.text
    assert result_from_json(result_to_json(result)) == result
    for secret in (PASSWORD, TOKEN):
        assert secret not in text
    echo = next(a for a in result.assertions if a.name == "echo: json_path")
    assert "<secret>" in echo.observed


async def test_secret_in_a_failing_url_is_not_shown(ctx: ProbeContext) -> None:
    probe = MultiStepProbe(
        steps=(Step("s", "{{where}}"),), variables={"where": Secret("http://u:pw@x/")}
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "pw" not in result.error.message and "the request was not sent" in result.error.message


async def test_crlf_from_a_response_never_reaches_a_header(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("evil", f"{base}/evil", extract=(Extract("v", "json", "$.v"),)),
            Step("use", f"{base}/whoami", headers={"X-V": "{{v}}"}),
            Step("url", f"{base}/whoami?v={{{{v}}}}", continue_on_failure=True),
        )
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "use"
    assert "control character" in result.error.message
    assert "not sent" in result.error.message
    assert [r.path for r in server.requests] == ["/evil"]


async def test_crlf_into_the_url_is_percent_encoded(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("evil", f"{base}/evil", extract=(Extract("v", "json", "$.v"),)),
            Step("url", f"{base}/whoami?v={{{{v}}}}"),
        )
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert server.requests[1].target == "/whoami?v=a%0D%0AX-Injected:%201"
    assert "x-injected" not in server.requests[1].headers


async def test_cookies_and_every_extraction_source(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step(
                "login",
                f"{base}/login",
                method="POST",
                json={"password": "{{pw}}", "user": 'ü "q" {}'},
                extract=(
                    Extract("cookie", "cookie", "session"),
                    Extract("user", "regex", r'"user": "(?P<u>.*?)"}', group="u"),
                    Extract("code", "status"),
                    Extract("ctype", "header", "content-type"),
                ),
            ),
            Step(
                "created",
                f"{base}/items",
                method="POST",
                bearer_token=Secret(TOKEN),
                json={"name": "{{cookie}}-{{code}}"},
                follow_redirects=False,
                extract=(Extract("loc", "location"),),
                assertions=(),
            ),
            Step("who", f"{base}/whoami"),
        ),
        variables={"pw": Secret(PASSWORD)},
        capture=True,
    )
    result = await probe.check(ctx)
    shown = {a.name: a.observed for a in result.assertions}
    assert shown["login: extract cookie"] == "abc"
    assert shown["login: extract code"] == "200"
    assert shown["login: extract ctype"] == "application/json"
    assert shown["login: extract user"] == '\\u00fc \\"q\\" {}'  # as json.dumps wrote it
    assert shown["created: extract loc"] == f"{base}/items/1"
    assert server.requests[-1].headers["cookie"] == "session=abc"
    assert json.loads(server.requests[1].body) == {"name": "abc-200"}


async def test_missing_extraction_fails_the_step(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    probe = MultiStepProbe(
        steps=(
            Step("a", f"{_base(server)}/whoami", extract=(Extract("v", "json", "$.x"),)),
            Step("b", f"{_base(server)}/whoami?{{{{v}}}}"),
        )
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.error.message == "a: extract v failed: expected json $.x, got not found"
    assert [s.state for s in step_results(result)] == ["failed", "skipped"]


async def test_retries_with_a_wait(api: tuple[Api, HttpServer], ctx: ProbeContext) -> None:
    state, server = api
    probe = MultiStepProbe(
        steps=(Step("flaky", f"{_base(server)}/flaky", max_attempts=3, retry_wait=0.01),)
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["steps.flaky.attempts"] == 3 and state.flaky == 3
    # Phases of every try are kept; only the last try's outcomes count.
    assert [p.name for p in result.phases].count("flaky.connect") == 3
    assert [a.passed for a in result.assertions] == [True]


async def test_continue_on_failure_goes_on_but_stays_down(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("missing", f"{base}/nothing-here", continue_on_failure=True),
            Step("next", f"{base}/whoami"),
        )
    )
    result = await probe.check(ctx)
    assert result.status is Status.DOWN and result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert [s.state for s in step_results(result)] == ["failed", "passed"]


async def test_cleanup_step_with_unset_variable_is_skipped(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("create", f"{base}/nothing", extract=(Extract("id", "json", "$.id"),)),
            Step("delete", f"{base}/items/{{{{id}}}}", method="DELETE", always_run=True),
        )
    )
    result = await probe.check(ctx)
    assert [s.state for s in step_results(result)] == ["failed", "skipped"]
    assert len(server.requests) == 1


async def test_toml_definition_and_check_command(
    api: tuple[Api, HttpServer], tmp_path: Any
) -> None:
    state, server = api
    base = _base(server)
    # The file's own total stands on the command line (with the default 10 s, a grace of 12 s
    # would be refused).
    text = f"""
kind = "api"
cleanup_grace = 12
timeouts = {{ total = 30 }}

[variables]
user = "alice"

[[steps]]
name = "login"
method = "POST"
url = "{base}/login"
json = {{ user = "{{{{user}}}}", password = "{PASSWORD}" }}
extract = [{{ name = "token", source = "json", path = "$.token", secret = true }}]

[[steps]]
name = "create"
method = "POST"
url = "{base}/items"
bearer_token = "{{{{token}}}}"
json = {{ name = "widget" }}
assertions = [{{ type = "status_in", codes = [201] }}]
extract = [{{ name = "id", source = "json", path = "$.id" }}]

[[steps]]
name = "delete"
method = "DELETE"
url = "{base}/items/{{{{id}}}}"
bearer_token = "{{{{token}}}}"
always_run = true
assertions = [{{ type = "status_in", codes = [204] }}]
"""
    probe = build_probe(tomllib.loads(text))
    assert isinstance(probe, MultiStepProbe) and len(probe.steps) == 3
    assert probe.timeouts.total == 30
    file = tmp_path / "steps.toml"
    file.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probekit",
        "check",
        "api",
        str(file),
        "--allow",
        "127.0.0.0/8",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)
    assert state.deleted == [1]
    assert b"3/3 steps passed" in out or b"OK" in out, out
    assert TOKEN.encode() not in out + err and PASSWORD.encode() not in out


# -- interpolation cannot change the request's shape ------------------------------------------

_HEADER_NAMES = [
    "host",
    "x-v",
    "content-type",
    "user-agent",
    "accept",
    "authorization",
    "content-length",
    "connection",
]


@given(
    value=st.text(
        alphabet=st.characters(codec="utf-8")
        | st.sampled_from(list("\r\n\"'{}% :;\\" + string.whitespace)),
        max_size=40,
    )
)
def test_interpolated_values_cannot_inject_a_header_or_break_the_request_line(value: str) -> None:
    probe = MultiStepProbe(
        steps=(
            Step(
                "s",
                "http://127.0.0.1:8080/items/{{v}}?q={{v}}",
                method="POST",
                headers={"X-V": "pre {{v}} post"},
                bearer_token="{{v}}",
                json={"k": "{{v}}", "{{v}}": ["{{v}}"]},
            ),
        ),
        variables={"v": "defined"},
    )
    scope = _Scope((("v", value),))
    try:
        http = probe._http_probe(probe.steps[0], scope, Timeouts())
        head = http._prepare(http._parsed, http.method, http.body, True, False)[2]
    except ProbeFailure as exc:
        assert exc.kind is ErrorKind.PROTOCOL and "not sent" in exc.message  # noqa: PT017
        assert any(c in value for c in "\r\n\0") or not value.isprintable() or not _latin1(value)
        return
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    request_line = lines[0].split(b" ")
    assert len(request_line) == 3 and request_line[2] == b"HTTP/1.1"
    assert request_line[1].startswith(b"/items/") and request_line[1].isascii()
    names = [line.split(b":", 1)[0].decode().lower() for line in lines[1:-2]]
    assert names == _HEADER_NAMES
    assert json.loads(http.body or b"") == {"k": value, value: [value]}


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


async def test_authorization_is_not_sent_to_another_origin(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    port = http_server.port
    probe = MultiStepProbe(
        steps=(
            Step(
                "hop",
                f"http://127.0.0.1:{port}/redirect?to=http://localhost:{port}/echo",
                headers={"Authorization": "Bearer {{t}}", "X-Keep": "1"},
            ),
        ),
        variables={"t": Secret(TOKEN)},
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    first, second = http_server.requests
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in second.headers and second.headers["x-keep"] == "1"


async def test_a_cleanup_step_that_outlives_the_grace(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("stall", f"{base}/silent"),
            Step("stuck-cleanup", f"{base}/silent", always_run=True),
            Step("last-cleanup", f"{base}/logout", always_run=True),
        ),
        timeouts=Timeouts(total=1.0),
        cleanup_grace=0.4,
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "stall.processing"  # the first timeout is the one reported
    states = [s.state for s in step_results(result)]
    assert states == ["failed", "failed", "skipped"]


def test_the_command_line_target(tmp_path: Any) -> None:
    from probekit.probes.api import KIND

    steps = {"kind": "api", "steps": [{"name": "a", "url": "http://127.0.0.1/"}]}
    file = tmp_path / "steps.json"
    file.write_text(json.dumps(steps))
    assert KIND.target.parse(str(file)) == {"steps": steps["steps"]}  # kind is the command's
    assert KIND.target.parse("http://h/x") == {"steps": [{"name": "get", "url": "http://h/x"}]}
    assert KIND.target.parse("h:8080")["steps"][0]["url"] == "http://h:8080/"
    assert KIND.target.parse("::1")["steps"][0]["url"] == "http://[::1]/"
    (tmp_path / "bad.toml").write_text("steps = [")
    with pytest.raises(DefinitionError, match="invalid TOML"):
        KIND.target.parse(str(tmp_path / "bad.toml"))
    with pytest.raises(DefinitionError, match="cannot read"):
        KIND.target.parse(str(tmp_path / "missing.toml"))


async def test_the_first_failure_is_reported_not_a_later_cleanup_timeout(
    api: tuple[Api, HttpServer], ctx: ProbeContext
) -> None:
    _, server = api
    base = _base(server)
    probe = MultiStepProbe(
        steps=(
            Step("missing", f"{base}/nothing-here"),
            Step("stuck-cleanup", f"{base}/silent", always_run=True),
        ),
        timeouts=Timeouts(total=1.0),
        cleanup_grace=0.3,
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.error.message.startswith("missing: status failed")
    assert [s.state for s in step_results(result)] == ["failed", "failed"]
