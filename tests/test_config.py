"""Config files: TOML and JSON monitors, defaults, policy, secrets, and every error at once."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from probekit import DefinitionErrors, HttpProbe, TcpProbe
from probekit._config import DEFAULT_INTERVAL, load_config, parse_config
from probekit.cli import main

GOOD = """
[defaults]
interval = 30
timeouts = { total = 5 }

[policy]
allow = ["10.0.0.0/8", "127.0.0.0/8"]
deny = ["10.9.0.0/16"]
deny_hosts = ["*.forbidden.example"]

[secrets]
api_token = { env = "PROBEKIT_TEST_TOKEN" }
db_password = { file = "SECRET_FILE" }

[[monitors]]
id = "intranet"
kind = "http"
url = "https://intranet.example/health"
bearer_token = { secret = "api_token" }
timeouts = { connect = 1 }
assertions = [
  { type = "status_in", codes = [200, 204] },
  { type = "body_matches", pattern = "ok|healthy" },
]

[[monitors]]
kind = "tcp"
host = "db.internal"
port = 5432
interval = 10
steps = [{ send = "PING\\r\\n" }, { expect = "^PONG" }]
"""


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PROBEKIT_TEST_TOKEN", "canary-tok3n")
    return "canary-tok3n"


def write(tmp_path: Path, text: str, name: str = "monitors.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good_config(tmp_path: Path) -> str:
    secret_file = tmp_path / "db-password"
    secret_file.write_text("canary-pa55\n")
    return GOOD.replace("SECRET_FILE", str(secret_file))


def test_a_good_toml_file(tmp_path: Path, token: str) -> None:
    config = load_config(write(tmp_path, good_config(tmp_path)))
    web, db = config.monitors
    assert web.monitor_id == "intranet"
    assert web.interval == 30.0  # from [defaults]
    assert isinstance(web.probe, HttpProbe)
    assert web.probe.bearer_token is not None
    assert web.probe.bearer_token.reveal() == token
    assert web.probe.timeouts.total == 5.0  # tables merge key by key with [defaults]
    assert web.probe.timeouts.connect == 1.0
    assert len(web.probe.assertions) == 2
    assert db.monitor_id == "db.internal:5432"  # the id defaults to the target
    assert db.interval == 10.0
    assert isinstance(db.probe, TcpProbe)
    assert db.probe.steps[0].data == b"PING\r\n"  # type: ignore[union-attr]
    assert config.monitor("intranet") is web
    policy = config.policy
    assert ipaddress.ip_network("10.9.0.0/16") in policy.deny
    assert not policy.decide_address("10.9.1.1").allowed
    assert policy.decide_address("10.1.1.1").allowed
    assert not policy.decide_address("192.0.2.1").allowed  # an allow list narrows the policy
    assert not policy.decide_address("169.254.169.254").allowed  # still denied by default
    assert not policy.decide_host("x.forbidden.example").allowed
    assert token not in repr(config)


def test_a_secret_read_from_a_file(tmp_path: Path, token: str) -> None:
    text = good_config(tmp_path) + (
        '\n[[monitors]]\nid = "files"\nkind = "http"\nurl = "http://files.internal/"\n'
        'basic_auth = { username = "probe", password = { secret = "db_password" } }\n'
    )
    probe = load_config(write(tmp_path, text)).monitor("files").probe
    assert probe.basic_auth.password.reveal() == "canary-pa55"


def test_defaults_and_the_default_interval(tmp_path: Path) -> None:
    text = '[[monitors]]\nkind = "tcp"\nhost = "127.0.0.1"\nport = 22\n'
    (monitor,) = load_config(write(tmp_path, text)).monitors
    assert monitor.interval == DEFAULT_INTERVAL == 60.0
    assert monitor.monitor_id == "127.0.0.1:22"


FIVE_ERRORS = """
[policy]
deny = ["10.0.0.0/33"]

[[monitors]]
id = "web"
kind = "http"
url = "http://web.internal/"
interval = -5

[[monitors]]
id = "web"
kind = "http"
url = "http://other.internal/"

[[monitors]]
kind = "tcp"
host = "mail.internal"
port = 25
bearer_token = { secret = "nope" }

[[monitors]]
kind = "http"
url = "http://api.internal/"
assertions = [
  { type = "status_in", codes = [200] },
  { type = "body_matches", pattern = "(unclosed" },
]
"""

FIVE_PATHS = [
    "policy.deny[0]",
    "monitors[0].interval",
    "monitors[1].id",
    "monitors[2].bearer_token",
    "monitors[3].assertions[1].pattern",
]


def test_five_errors_are_reported_together_with_their_paths(tmp_path: Path) -> None:
    with pytest.raises(DefinitionErrors) as info:
        load_config(write(tmp_path, FIVE_ERRORS))
    errors = info.value.errors
    assert [e.path for e in errors] == FIVE_PATHS
    messages = [str(e) for e in errors]
    assert messages[0].startswith("policy.deny[0]: invalid network '10.0.0.0/33'")
    assert messages[1] == "monitors[0].interval: must be a finite number of seconds above 0, got -5"
    assert messages[2] == "monitors[1].id: duplicate id 'web', also used by monitors[0]"
    assert messages[3] == "monitors[2].bearer_token: unknown field"
    assert messages[4].startswith("monitors[3].assertions[1].pattern: invalid regex: ")


def test_probekit_run_prints_all_five_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FIVE_ERRORS)
    assert main(["run", str(path), "--once"]) == 3
    err = capsys.readouterr().err
    assert "5 errors" in err
    for where in FIVE_PATHS:
        assert f"  {where}: " in err
    assert main(["run", str(path)]) == 3


def test_json_config(tmp_path: Path, token: str) -> None:
    data = {
        "defaults": {"interval": 15},
        "secrets": {"api_token": {"env": "PROBEKIT_TEST_TOKEN"}},
        "policy": {"deny": ["192.0.2.0/24"]},
        "monitors": [
            {
                "id": "api",
                "kind": "http",
                "url": "http://api.internal/health",
                "headers": {"X-Probe": "1"},
                "bearer_token": {"secret": "api_token"},
                "assertions": [{"type": "json_path", "path": "$.ok", "value": True}],
            },
            {"id": "ssh", "kind": "tcp", "host": "bastion", "port": 22, "interval": 5.5},
        ],
    }
    config = load_config(write(tmp_path, json.dumps(data), "monitors.json"))
    assert [(m.monitor_id, m.interval) for m in config.monitors] == [("api", 15.0), ("ssh", 5.5)]
    assert config.monitors[0].probe.bearer_token.reveal() == token
    assert config.monitors[0].probe.headers == (("X-Probe", "1"),)
    assert not config.policy.decide_address("192.0.2.7").allowed
    assert parse_config(data) == config


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(DefinitionErrors, match=r"invalid JSON at line 3, column \d+"):
        load_config(write(tmp_path, '{\n"monitors": [\n  {"kind": }\n]}', "bad.json"))


def test_toml_syntax_error_has_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[[monitors]]\nkind = "http"\nurl = "http://x/"\ninterval = \n'
    path = write(tmp_path, text)
    with pytest.raises(DefinitionErrors) as info:
        load_config(path)
    assert str(info.value).startswith("invalid TOML at line 4, column 12: ")
    assert main(["run", str(path), "--once"]) == 3
    assert "invalid TOML at line 4" in capsys.readouterr().err


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionErrors, match=r"cannot read .*nowhere\.toml"):
        load_config(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["monitors: no monitors: add at least one [[monitors]] table"]),
        ("monitors = []", ["monitors: no monitors: add at least one [[monitors]] table"]),
        ('monitors = "x"', ["monitors: expected a list of monitor tables, got str"]),
        ("monitors = [1]", ["monitors[0]: expected a table, got int"]),
        (
            '[settings]\nx = 1\n[[monitors]]\nkind = "tcp"\nhost = "h"\nport = 1',
            [
                "settings: unknown section; known: monitors, defaults, policy, secrets, channels, "
                "alerting"
            ],
        ),
        (
            '[policy]\nallow_all = true\nallow = "10.0.0.0/8"\n'
            '[[monitors]]\nkind = "tcp"\nhost = "h"\nport = 1',
            [
                "policy.allow_all: unknown field; known: allow, deny, allow_hosts, deny_hosts",
                "policy.allow: expected a list of strings, got str",
            ],
        ),
        (
            '[[monitors]]\nid = ""\nkind = "tcp"\nhost = "h"\nport = 1\ninterval = true',
            [
                "monitors[0].id: must not be empty",
                "monitors[0].interval: expected a number of seconds, got True",
            ],
        ),
        (
            f'[[monitors]]\nid = "{"m" * 201}"\nkind = "tcp"\nhost = "h"\nport = 1\n'
            '[[monitors]]\nid = "a\\u0007b"\nkind = "tcp"\nhost = "h"\nport = 2',
            [
                "monitors[0].id: is longer than 200 characters",
                "monitors[1].id: contains a control or unprintable character",
            ],
        ),
        (
            '[[monitors]]\nkind = "tcp"\nhost = "h"\nport = 1\n'
            '[[monitors]]\nkind = "tcp"\nhost = "h"\nport = 1',
            [
                "monitors[1].id: duplicate id 'h:1', also used by monitors[0] "
                "(the id defaults to the target; give each an id)"
            ],
        ),
        (
            '[defaults]\nid = "x"\nmethod = "GET"\ninterval = 0\n'
            '[[monitors]]\nkind = "tcp"\nhost = "h"\nport = 1',
            [
                "defaults.id: every monitor needs its own id; it cannot have a default",
                "monitors[0].interval: must be a finite number of seconds above 0, got 0 "
                "(from [defaults])",
                "monitors[0].method: unknown field (from [defaults])",
            ],
        ),
    ],
)
def test_invalid_files(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(DefinitionErrors) as info:
        load_config(write(tmp_path, text))
    assert [str(e) for e in info.value.errors] == expected


def test_secret_problems_are_reported_once_at_their_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROBEKIT_UNSET", raising=False)
    text = (
        '[secrets]\ngone = { env = "PROBEKIT_UNSET" }\nmissing_file = { file = "/nonexistent/x" }\n'
        'literal = "canary-inline"\nodd = { vault = "x" }\n'
        '[[monitors]]\nkind = "http"\nurl = "http://x/"\nbearer_token = { secret = "gone" }\n'
        '[[monitors]]\nkind = "http"\nurl = "http://y/"\nbearer_token = { secret = "undeclared" }\n'
    )
    with pytest.raises(DefinitionErrors) as info:
        load_config(write(tmp_path, text))
    assert [str(e) for e in info.value.errors] == [
        "secrets.gone.env: environment variable PROBEKIT_UNSET is not set",
        "secrets.missing_file.file: cannot read /nonexistent/x: No such file or directory",
        'secrets.literal: a secret is read from {env = "VAR"} or {file = "PATH"}',
        'secrets.odd: a secret is read from {env = "VAR"} or {file = "PATH"}',
        "monitors[1].bearer_token.secret: no secret named 'undeclared'",
    ]
    assert "canary-inline" not in str(info.value)


def test_a_secret_file_that_is_not_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    text = (
        f'[secrets]\nkey = {{ file = "{tmp_path / "binary"}" }}\n'
        '[[monitors]]\nkind = "tcp"\nhost = "h"\nport = 1\n'
    )
    with pytest.raises(DefinitionErrors) as info:
        load_config(write(tmp_path, text))
    assert [str(e) for e in info.value.errors] == [
        f"secrets.key.file: {tmp_path / 'binary'} is not UTF-8 text"
    ]


def test_env_secrets_may_also_be_referenced_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBEKIT_INLINE", "v")
    text = (
        '[[monitors]]\nkind = "http"\nurl = "http://x/"\nbearer_token = { env = "PROBEKIT_INLINE" }'
    )
    (monitor,) = load_config(write(tmp_path, text)).monitors
    assert monitor.probe.bearer_token.reveal() == "v"
