"""Definitions as plain data: building probes, every error with its path, secrets by reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from probekit import DefinitionErrors, HttpProbe, Secret, TcpProbe, build_probe, probe_to_dict
from probekit._definitions import probe_kinds

HTTP = {
    "kind": "http",
    "url": "https://intranet.test/health",
    "method": "POST",
    "headers": {"X-Check": "1"},
    "body": '{"ping": true}',
    "bearer_token": {"secret": "api"},
    "tls": {"ca_file": "/etc/ssl/corp.pem", "min_version": "TLSv1.2"},
    "timeouts": {"total": 5, "connect": 1},
    "assertions": [
        {"type": "status_in", "codes": [200, 204]},
        {"type": "body_matches", "pattern": "ok"},
        {"type": "json_path", "path": "$.db.ok", "op": "eq", "value": True},
        {
            "type": "header_matches",
            "name": "content-type",
            "pattern": "json",
            "allow_missing": True,
        },
        {"type": "response_time", "warn": 0.5, "crit": 2},
        {"type": "cert_expiry", "warn_days": 30},
        {"type": "tls_required"},
    ],
}
TCP = {
    "kind": "tcp",
    "host": "mail.test",
    "port": 25,
    "steps": [
        {"expect": "^220"},
        {"send": "EHLO probe\r\n"},
        {"expect_exact": "250"},
        {"send_hex": "0d0a"},
    ],
    "max_bytes": 4096,
}


def test_builds_an_http_probe_with_everything() -> None:
    probe = build_probe(HTTP, secrets={"api": Secret("s3cret-token")})
    assert isinstance(probe, HttpProbe)
    assert probe.bearer_token is not None and probe.bearer_token.reveal() == "s3cret-token"
    assert probe.headers == (("X-Check", "1"),)
    assert probe.body == b'{"ping": true}'
    assert len(probe.assertions) == 7
    assert probe.timeouts.connect == 1.0


def test_builds_a_tcp_probe_with_steps() -> None:
    probe = build_probe(TCP)
    assert isinstance(probe, TcpProbe)
    assert [type(s).__name__ for s in probe.steps] == ["Expect", "Send", "Expect", "Send"]
    assert probe.steps[3].data == b"\r\n"  # type: ignore[union-attr]


@pytest.mark.parametrize("data", [HTTP, TCP])
def test_round_trip_through_plain_data(data: dict[str, Any]) -> None:
    secrets = {"api": Secret("s3cret-token")}
    probe = build_probe(data, secrets=secrets)
    plain = probe_to_dict(probe)
    assert "s3cret-token" not in repr(plain)
    if "bearer_token" in plain:
        assert plain["bearer_token"] == "<secret>"
        plain["bearer_token"] = {"secret": "api"}
    assert build_probe(plain, secrets=secrets) == probe


def test_every_error_is_reported_with_its_path() -> None:
    bad = {
        "kind": "http",
        "url": "https://x.test/",
        "method": 3,
        "assertions": [
            {"type": "status_in", "codes": [200]},
            {"type": "body_matches", "pattern": "(unclosed"},
            {"type": "no_such_thing"},
        ],
        "timeouts": {"total": -1},
        "max_redirects": "ten",
        "colour": "blue",
        "bearer_token": {"secret": "missing"},
    }
    with pytest.raises(DefinitionErrors) as info:
        build_probe(bad, path="monitors[3]")
    paths = [e.path for e in info.value.errors]
    assert paths == [
        "monitors[3].method",
        "monitors[3].assertions[1].pattern",
        "monitors[3].assertions[2].type",
        "monitors[3].timeouts.total",
        "monitors[3].max_redirects",
        "monitors[3].colour",
        "monitors[3].bearer_token.secret",
    ]
    assert "invalid regex" in str(info.value)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"kind": "gopher"}, "kind"),
        ({"url": "http://x/"}, "kind"),
        ("http://x/", ""),
        ({"kind": "http"}, "url"),
        ({"kind": "http", "url": "ftp://x/"}, "url"),
        ({"kind": "tcp", "host": "h", "port": 70000}, "port"),
        ({"kind": "tcp", "host": "h", "port": 1, "steps": [{"shout": "x"}]}, "steps[0].shout"),
        (
            {"kind": "tcp", "host": "h", "port": 1, "steps": [{"send_hex": "zz"}]},
            "steps[0].send_hex",
        ),
        ({"kind": "tcp", "host": "h", "port": 1, "steps": [{"expect": "("}]}, "steps[0].pattern"),
        ({"kind": "http", "url": "http://x/", "http_version": "3"}, "http_version"),
        (
            {"kind": "http", "url": "http://x/", "assertions": {"type": "tls_required"}},
            "assertions",
        ),
        (
            {"kind": "http", "url": "http://x/", "timeouts": {"total": float("inf")}},
            "timeouts.total",
        ),
    ],
)
def test_invalid_definitions(data: Any, path: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe(data)
    assert [e.path for e in info.value.errors] == [path]


def test_env_and_file_secrets_only_for_local_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TOKEN", "from-env")
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    env = {"kind": "http", "url": "http://x/", "bearer_token": {"env": "PROBE_TOKEN"}}
    file = {"kind": "http", "url": "http://x/", "bearer_token": {"file": str(secret_file)}}
    assert build_probe(env, local=True).bearer_token.reveal() == "from-env"
    assert build_probe(file, local=True).bearer_token.reveal() == "from-file"
    for remote in (env, file):
        with pytest.raises(DefinitionErrors, match="only read from local configuration"):
            build_probe(remote)
    with pytest.raises(DefinitionErrors, match="PROBE_MISSING is not set"):
        build_probe({**env, "bearer_token": {"env": "PROBE_MISSING"}}, local=True)


def test_a_secret_in_an_error_is_never_shown() -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe(
            {
                "kind": "http",
                "url": "http://x/",
                "bearer_token": "canary-8#x",
                "basic_auth": {"username": "u", "password": "canary-8#x"},
            }
        )
    assert "canary-8#x" not in str(info.value)


def test_kinds() -> None:
    assert {"http", "tcp"} <= set(probe_kinds())


_X = {"kind": "http", "url": "http://x/"}
MESSAGES: list[tuple[dict[Any, Any], str]] = [
    ({"url": "http://x/"}, "kind: required: a definition names its probe kind"),
    ({**_X, "kind": "htpp"}, "kind: unknown probe kind 'htpp' (did you mean 'http'?); known: "),
    ({"kind": "http"}, "url: required field missing"),
    ({**_X, "methd": "GET"}, "methd: unknown field (did you mean 'method'?)"),
    ({**_X, 7: 1}, "7: unknown field"),
    ({**_X, "url": "\ud800"}, "url: is not valid Unicode (a lone surrogate)"),
    ({**_X, "max_redirects": True}, "max_redirects: expected an integer, got True"),
    ({**_X, "http_version": "3"}, "http_version: '3' is not one of '1.1', '2'"),
    ({**_X, "timeouts": {"total": float("nan")}}, "timeouts.total: nan is not a finite number"),
    ({**_X, "assertions": [{}]}, "assertions[0].type: required: an assertion names its type"),
    ({**_X, "assertions": [{"type": "stauts_in", "codes": [200]}]},
     "assertions[0].type: unknown assertion 'stauts_in' (did you mean 'status_in'?); known: "),
    ({**_X, "assertions": [{"type": "status_in", "codez": [200]}]},
     "assertions[0].codez: unknown field (did you mean 'codes'?)"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), MESSAGES)
def test_definition_error_messages(data: dict[Any, Any], message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe(data)
    assert str(info.value.errors[0]).startswith(message)


def test_a_string_of_the_wrong_type_is_not_quoted() -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({**_X, "basic_auth": "probe:canary-8#x"})
    assert str(info.value) == "basic_auth: expected an object, got a string"
