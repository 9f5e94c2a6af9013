"""What the hostile suites need to know about each built-in probe kind, in one table.

A new kind joins every suite (hostile servers, SSRF spellings, the secret canary, fuzzing) by
adding one :class:`KindProfile` to :data:`PROFILES`; ``test_every_builtin_kind_has_a_profile``
fails until it does. A profile says how to write a definition that reaches a server at
``host:port`` and passes against :func:`good_line_server`/:func:`good_http_server` (so every
hostile variant is a change of the server only), which family of hostile servers speaks its
protocol, and where its secrets go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import attrs

from probekit.probes._kind import HostPort, Name, Url
from probekit.probes._registry import builtin_names, get_kind

#: Every definition asks for this text, which only the well-behaved servers send: a hostile
#: server can therefore never make a check UP, whatever a probe does with a body it cut short.
MARKER = "probekit-hostile-marker"

Family = Literal["http", "line"]
Definition = dict[str, Any]


def bracket(host: str) -> str:
    """``host`` as it is written before ``:PORT`` (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def target_text(kind: str, host: str, port: int, *, scheme: str = "http") -> str:
    """The command-line target of ``kind`` for ``host:port``, in the kind's own target syntax."""
    syntax = get_kind(kind).target
    if isinstance(syntax, Url):
        host = bracket(host.replace("%", "%25")) if ":" in host else host
        return f"{scheme}://{host}:{port}/"
    if isinstance(syntax, HostPort):
        return f"{bracket(host)}:{port}"
    if isinstance(syntax, Name):
        return host
    raise AssertionError(f"unknown target syntax {syntax!r} of kind {kind!r}")


def fields_for(kind: str, host: str, port: int, *, tls: bool = False) -> Definition:
    """The definition fields the kind's target syntax gives for ``host:port``."""
    scheme = "https" if tls else "http"
    return {
        "kind": kind,
        **get_kind(kind).target.parse(target_text(kind, host, port, scheme=scheme)),
    }


def _http(host: str, port: int, tls: bool) -> Definition:
    definition = fields_for("http", host, port, tls=tls)
    definition["assertions"] = [{"type": "body_contains", "text": MARKER}]
    return definition


def _tcp(host: str, port: int, tls: bool) -> Definition:
    definition = fields_for("tcp", host, port)
    definition["steps"] = [
        {"send": "PING\r\n"},
        {"expect": r"^\+PONG\r$"},
        {"send": "INFO\r\n"},
        {"expect_exact": MARKER},
    ]
    if tls:
        definition["tls"] = {}
    return definition


def _redis(host: str, port: int, tls: bool) -> Definition:
    definition = fields_for("redis", host, port)
    definition["assertions"] = [{"type": "body_contains", "text": MARKER}]
    if tls:
        definition["tls"] = {}
    return definition


#: Puts a secret into a definition: ``(definition, secret reference, loopback port) -> None``.
#: The port is one a server listens on when the secret is used against it (a proxy, the target).
SecretSetter = Callable[[Definition, Any, int], None]


def _bearer(definition: Definition, secret: Any, _port: int) -> None:
    definition["bearer_token"] = secret


def _header(definition: Definition, secret: Any, _port: int) -> None:
    definition["headers"] = [["X-Api-Key", secret]]


def _basic(definition: Definition, secret: Any, _port: int) -> None:
    definition["basic_auth"] = {"username": "probe", "password": secret}


def _proxy(definition: Definition, secret: Any, port: int) -> None:
    definition["proxy"] = {
        "url": f"http://127.0.0.1:{port}",
        "username": "probe",
        "password": secret,
    }


def _password(definition: Definition, secret: Any, _port: int) -> None:
    definition["password"] = secret


def _key_password(definition: Definition, secret: Any, _port: int) -> None:
    tls = dict(definition.get("tls") or {})
    tls["client_key_password"] = secret
    definition["tls"] = tls


@attrs.frozen
class KindProfile:
    """One built-in kind, as the hostile suites use it.

    ``definition(host, port, tls)`` reaches a well-behaved server of ``family`` at
    ``host:port`` and is UP there; ``tls`` is None for kinds without TLS. ``secrets`` maps each
    secret field's path (as :func:`secret_paths` finds it) to the setter that fills it.
    ``redirects`` says whether the kind follows redirects (so a redirect pivot applies).
    """

    name: str
    family: Family
    definition: Callable[[str, int, bool], Definition]
    tls: bool
    redirects: bool = False
    proxy: bool = False
    secrets: dict[str, SecretSetter] = attrs.field(factory=dict)


PROFILES: dict[str, KindProfile] = {
    "http": KindProfile(
        name="http",
        family="http",
        definition=_http,
        tls=True,
        redirects=True,
        proxy=True,
        secrets={
            "bearer_token": _bearer,
            "headers[][]": _header,
            "basic_auth.password": _basic,
            "proxy.password": _proxy,
            "tls.client_key_password": _key_password,
        },
    ),
    "tcp": KindProfile(
        name="tcp",
        family="line",
        definition=_tcp,
        tls=True,
        proxy=True,
        secrets={
            "proxy.password": _proxy,
            "tls.client_key_password": _key_password,
            "steps[].options.client_key_password": lambda d, s, p: d["steps"].insert(
                0, {"starttls": {"client_key_password": s}}
            ),
        },
    ),
    "redis": KindProfile(
        name="redis",
        family="line",
        definition=_redis,
        tls=True,
        secrets={"password": _password, "tls.client_key_password": _key_password},
    ),
}


def builtin_profiles() -> list[KindProfile]:
    """The profile of every built-in kind (from ``builtin_names()``) that has one; the suites
    run over these, and test_every_builtin_kind_has_a_profile fails for a kind without one."""
    return [PROFILES[name] for name in builtin_names() if name in PROFILES]


def profile(kind: str) -> KindProfile:
    found = PROFILES.get(kind)
    if found is None:
        raise AssertionError(
            f"built-in kind {kind!r} has no entry in tests/hostile/hostile_kinds.py PROFILES: "
            "add one so that it runs through the hostile, SSRF, canary and fuzz suites"
        )
    return found


def secret_paths(cls: type) -> set[str]:
    """Every field path under the attrs class ``cls`` whose type is (or holds) ``Secret``."""
    import typing

    from probekit import Secret

    found: set[str] = set()

    def visit(hint: Any, path: str, seen: frozenset[type]) -> None:
        if hint is Secret:
            found.add(path)
            return
        args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        if origin is tuple and args:
            for arg in args:
                if arg is not Ellipsis:
                    visit(arg, f"{path}[]", seen)
            return
        if args:
            for arg in args:
                visit(arg, path, seen)
            return
        if isinstance(hint, type) and attrs.has(hint) and hint not in seen:
            hints = typing.get_type_hints(hint)
            for field in attrs.fields(hint):
                if field.init:
                    name = field.alias or field.name
                    visit(hints[field.name], f"{path}.{name}" if path else name, seen | {hint})

    visit(cls, "", frozenset())
    return found


# -- well-behaved servers: each kind's definition is UP against the one of its family ----------


def info_reply() -> bytes:
    text = f"# Server\r\nredis_version:7.2.4\r\n{MARKER}:ok\r\n".encode()
    return b"$%d\r\n%s\r\n" % (len(text), text)


async def good_line_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers PING with ``+PONG`` and INFO with a bulk string holding the marker (inline or
    RESP commands alike), AUTH with ``+OK``."""
    while data := await reader.read(4096):
        if b"AUTH" in data:
            writer.write(b"+OK\r\n")
        elif b"INFO" in data:
            writer.write(info_reply())
        elif b"PING" in data:
            writer.write(b"+PONG\r\n")
        await writer.drain()


def http_response(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
        % (status.encode(), len(body), extra)
        + body
    )


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request head (a hostile server answers whatever was asked)."""
    return await reader.readuntil(b"\r\n\r\n")


async def good_http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(http_response(f"all good: {MARKER}".encode()))


GOOD_SERVERS = {"http": good_http_server, "line": good_line_server}
