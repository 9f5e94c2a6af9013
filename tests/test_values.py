"""Values: the result model's JSON form, secrets that never show, statuses, exports."""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import logging
import pickle
import types

import pytest
from hypothesis import given, settings

import probekit
from probekit import (
    BasicAuth,
    DefinitionError,
    FakeClock,
    HttpProbe,
    Proxy,
    Result,
    Secret,
    Status,
    TlsOptions,
    result_from_json,
    result_to_json,
)
from proxy import LoopbackProxy
from servers import HttpServer, closed_port, make_context, serving
from strategies import results, secret_values


def test_public_names_are_exactly_all() -> None:
    public = {
        name
        for name in dir(probekit)
        if not name.startswith("_") and not isinstance(getattr(probekit, name), types.ModuleType)
    }
    assert set(probekit.__all__) == public - {"annotations"}
    assert probekit.__all__ == sorted(probekit.__all__)
    for name in probekit.__all__:
        assert getattr(probekit, name) is not None
    namespace: dict[str, object] = {}
    exec("from probekit import *", namespace)  # noqa: S102 - the star import users may write
    assert set(namespace) - {"__builtins__"} == set(probekit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        probekit.Nope  # type: ignore[attr-defined]  # noqa: B018


def test_import_is_lazy_about_protocol_libraries() -> None:
    import subprocess
    import sys

    heavy = "('aiodns', 'h2', 'cryptography')"
    code = f"import sys, probekit; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "needs"),
    [
        # HTTP resolves with aiodns and speaks h2 only when a check does; nothing at import.
        ("HttpProbe", ()),
        ("TcpProbe", ()),
        ("Runner", ()),
    ],
)
def test_a_probe_class_loads_no_other_kind_or_protocol_library(
    name: str, needs: tuple[str, ...]
) -> None:
    import subprocess
    import sys

    heavy = (
        "aiodns", "pycares", "h2", "cryptography", "websockets", "prometheus_client",
        "importlib.metadata", "probekit.probes.redis", "probekit.probes.tcp",
        "probekit.probes.http", "probekit.checkpoint", "probekit.control", "probekit.cli",
    )  # fmt: skip
    module = {"HttpProbe": "probekit.probes.http", "TcpProbe": "probekit.probes.tcp"}.get(name)
    allowed = {module, *needs}
    code = (
        f"import sys, probekit; probekit.{name}; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert set(ast.literal_eval(out)) - allowed == set()


def test_status_exit_codes_and_order() -> None:
    assert [s.exit_code for s in Status] == [0, 1, 2, 3]
    assert [s.nagios for s in Status] == ["OK", "WARNING", "CRITICAL", "UNKNOWN"]
    assert Status.UP.worst(Status.DEGRADED) is Status.DEGRADED
    assert Status.DOWN.worst(Status.DEGRADED) is Status.DOWN
    assert Status.UNKNOWN.worst(Status.DOWN) is Status.UNKNOWN


@given(results)
def test_result_json_round_trip(result: Result) -> None:
    text = result_to_json(result)
    assert result_from_json(text) == result
    data = json.loads(text)
    assert data["schema_version"] == 1
    assert data["status"] == result.status.value


def test_result_json_refuses_other_schema_versions() -> None:
    with pytest.raises(DefinitionError, match="schema version"):
        result_from_json('{"schema_version": 99}')
    with pytest.raises(DefinitionError, match="JSON object"):
        result_from_json("[1, 2]")


def test_secret_hides_itself() -> None:
    s = Secret("hunter2-canary")
    assert "hunter2" not in repr(s) + str(s) + f"{s}" + f"{s!r:>30}"
    assert s.reveal() == "hunter2-canary"
    assert s == Secret("hunter2-canary") and s != Secret("other")
    assert copy.deepcopy(s) is s
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]
    assert probekit.converter.unstructure(s) == "<secret>"
    with pytest.raises(DefinitionError):
        probekit.converter.structure("<secret>", Secret)


@settings(max_examples=40)
@given(secret_values)
def test_a_secret_never_appears_in_results_logs_or_errors(value: str) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    root = logging.getLogger("probekit")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        texts = asyncio.run(_exercise_secret(value))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    texts += [r.getMessage() for r in records]
    texts += [logging.Formatter().format(r) for r in records]
    for text in texts:
        assert value not in text


async def _exercise_secret(value: str) -> list[str]:
    secret = Secret(value)
    ctx = make_context()
    texts: list[str] = []
    async with serving(HttpServer()) as server, LoopbackProxy(require_auth=b"Basic nope") as proxy:
        probes = [
            HttpProbe(server.url("/status/401"), basic_auth=BasicAuth("ops", secret)),
            HttpProbe(server.url("/echo"), bearer_token=secret),
            HttpProbe(
                server.url("/silent"), bearer_token=secret, timeouts=probekit.Timeouts(total=0.05)
            ),
            HttpProbe(f"http://localhost:{closed_port()}/", bearer_token=secret),
            HttpProbe("http://169.254.169.254/", bearer_token=secret),
            HttpProbe(server.url("/ok"), proxy=Proxy(proxy.url, username="u", password=secret)),
            HttpProbe(
                server.url("/ok"), tls=TlsOptions(client_key_password=secret), bearer_token=secret
            ),
        ]
        for probe in probes:
            result = await probe.check(ctx)
            texts += [
                repr(probe),
                str(probe),
                repr(result),
                result_to_json(result),
                result.summary(),
            ]
    try:
        HttpProbe("http://h/", basic_auth=BasicAuth("u", secret), bearer_token=secret)
    except DefinitionError as exc:
        texts.append(str(exc))
    return texts


def test_definition_error_paths_nest() -> None:
    err = DefinitionError("pattern", "invalid regex")
    assert str(err.under("assertions[1]")) == "assertions[1].pattern: invalid regex"
    assert str(DefinitionError("[2]", "x").under("steps")) == "steps[2]: x"


def test_fake_clock() -> None:
    clock = FakeClock()
    start, wall = clock.monotonic(), clock.now()
    clock.advance(2.5)
    assert clock.monotonic() - start == 2.5
    assert (clock.now() - wall).total_seconds() == 2.5
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
