"""What the hostile suites need to know about each built-in probe kind, in one table.

A new kind joins every suite (hostile servers, SSRF spellings, the secret canary, fuzzing) by
adding one :class:`KindProfile` to :data:`PROFILES`; ``test_every_builtin_kind_has_a_profile``
fails until it does. A profile says what a definition of the kind asks (``ask``) and where a
server's ``host:port`` goes in it (``place``: the kind's target syntax for most kinds; the
``server`` field for ``dns``, whose target is the *name* asked about, not a host to connect to),
so that the definition passes against the well-behaved server of its ``family`` (see
:data:`GOOD_SERVERS`) and every hostile variant is a change of the server only. It also says
where the kind's secrets go.

Families: ``http`` (HTTP/1.1), ``line`` (a Redis-like ``PING``/``+PONG`` line protocol, for TCP
scripts and Redis), ``smtp``, ``imap``, ``pop3``, ``ftp`` (each greets with the marker and
accepts the probe's dialogue, the login included), ``dns`` (UDP and TCP on one port, answering a
TXT record holding the marker), ``postgres`` (answers the SSLRequest ``N``, lets the user in,
and answers every query with one row whose cell is the marker), and ``none``: a kind that
cannot meet a server on loopback at all says so, and why, in ``exempt`` (it still runs through
the SSRF, canary and fuzz suites).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
from hostile_dns import DnsServer, StreamHandler, UdpHandler, answer_txt, framed, read_query

from pgserver import READY, auth, data_row, msg, param, read_message, read_startup
from probekit.probes._kind import HostPort, Name, Url
from probekit.probes._registry import builtin_names, get_kind
from servers import TcpServer

#: Every definition asks for this text, which only the well-behaved servers send: a hostile
#: server can therefore never make a check UP, whatever a probe does with a body it cut short.
MARKER = "probekit-hostile-marker"

Family = Literal["http", "line", "smtp", "imap", "pop3", "ftp", "dns", "postgres", "none"]
#: The families whose servers are TCP streams from the first byte: every protocol-independent
#: stream case (silence, RST, a full backlog, garbage, ...) applies to them as it is.
STREAM_FAMILIES: frozenset[str] = frozenset(
    {"http", "line", "smtp", "imap", "pop3", "ftp", "postgres"}
)
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


#: Puts ``host:port`` into a definition: ``(definition, host, port, tls) -> None``.
Placer = Callable[[Definition, str, int, bool], None]


def by_target(definition: Definition, host: str, port: int, tls: bool) -> None:
    """Where the kind's target syntax puts a host (a URL, ``HOST:PORT``, a plain host)."""
    definition.update(fields_for(definition["kind"], host, port, tls=tls))


def as_server(definition: Definition, host: str, port: int, tls: bool) -> None:
    """The ``server`` and ``port`` fields: a DNS check connects to its server; its target (the
    name asked about) is never dialled, so the egress policy applies to the server."""
    definition["server"] = host
    definition["port"] = port


def _http(tls: bool) -> Definition:
    return {"kind": "http", "assertions": [{"type": "body_contains", "text": MARKER}]}


def _tcp(tls: bool) -> Definition:
    definition: Definition = {
        "kind": "tcp",
        "steps": [
            {"send": "PING\r\n"},
            {"expect": r"^\+PONG\r$"},
            {"send": "INFO\r\n"},
            {"expect_exact": MARKER},
        ],
    }
    if tls:
        definition["tls"] = {}
    return definition


def _asks_marker(kind: str) -> Callable[[bool], Definition]:
    """A definition whose body (a Redis INFO, an SMTP greeting and EHLO reply, an IMAP greeting
    and capabilities, a POP3 greeting and CAPA list) must hold the marker."""

    def ask(tls: bool) -> Definition:
        definition: Definition = {
            "kind": kind,
            "assertions": [{"type": "body_contains", "text": MARKER}],
        }
        if tls:
            definition["tls"] = {}
        return definition

    return ask


#: The name every DNS definition asks about (a TXT record holding the marker).
DNS_NAME = "hostile.probekit.test"


def _dns(tls: bool) -> Definition:
    definition: Definition = {
        "kind": "dns",
        "name": DNS_NAME,
        "type": "TXT",
        "expect_answers": [MARKER],
    }
    if tls:
        definition["transport"] = "tcp"
        definition["tls"] = {}
    return definition


def _tls(tls: bool) -> Definition:
    return {"kind": "tls", "starttls": "smtp"}


def _api(tls: bool) -> Definition:
    """One api step asking for the marker (its URL is set by :func:`_api_place`)."""
    step: dict[str, Any] = {
        "name": "get",
        "url": "http://placeholder.invalid/",
        "assertions": [{"type": "body_contains", "text": MARKER}],
    }
    return {"kind": "api", "steps": [step]}


def _api_place(definition: Definition, host: str, port: int, tls: bool) -> None:
    """An api check dials the URL of each step: every step gets ``host:port``."""
    scheme = "https" if tls else "http"
    url = f"{scheme}://{bracket(host.replace('%', '%25')) if ':' in host else host}:{port}/"
    for step in definition["steps"]:
        step["url"] = url


_SCRIPTS = tempfile.TemporaryDirectory(prefix="probekit-hostile-scripts-")
atexit.register(_SCRIPTS.cleanup)
#: The URL each generated script requests, by its path.
_SCRIPT_URLS: dict[str, str] = {}


def _script(tls: bool) -> Definition:
    return {"kind": "script", "path": "placeholder.py"}


def _script_place(definition: Definition, host: str, port: int, tls: bool) -> None:
    """A script (written to a temporary file) that GETs ``host:port`` and asks for the marker."""
    scheme = "https" if tls else "http"
    url = f"{scheme}://{bracket(host.replace('%', '%25')) if ':' in host else host}:{port}/"
    code = (
        "async def check(client, script):\n"
        f"    response = await client.get({url!r}, follow_redirects=True)\n"
        f"    script.outcome('marker', {MARKER!r} in response.text, {MARKER!r}, 'absent')\n"
    )
    path = Path(_SCRIPTS.name) / f"get-{hashlib.sha256(url.encode()).hexdigest()[:16]}.py"
    if not path.exists():
        path.write_text(code)
    _SCRIPT_URLS[str(path)] = url
    definition["path"] = str(path)


def _api_step(field: str, value: Callable[[Any], Any]) -> SecretSetter:
    def setter(definition: Definition, secret: Any, _port: int) -> None:
        definition["steps"][0][field] = value(secret)

    return setter


def _api_variable(definition: Definition, secret: Any, _port: int) -> None:
    """A secret variable, sent in a header of the first step."""
    definition["variables"] = {"key": secret}
    definition["steps"][0]["headers"] = [["X-Api-Key", "{{key}}"]]


def _icmp(tls: bool) -> Definition:
    return {"kind": "icmp", "count": 1, "timeouts": {"read": 0.5}}


def _postgres(tls: bool) -> Definition:
    """A query whose first cell must hold the marker; TLS required with ``tls``."""
    return {
        "kind": "postgres",
        "username": "probe",
        "starttls": "required" if tls else "optional",
        "query": "SELECT marker",
        "assertions": [{"type": "body_contains", "text": MARKER}],
    }


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


def _login(definition: Definition, secret: Any, _port: int) -> None:
    """A mail login. STARTTLS off, so the password goes out in the dialogue the refusing
    server echoes (SMTP sends it in plain text only with ``plaintext_auth``)."""
    definition.update(username="probe", password=secret, starttls="off")
    if definition["kind"] == "smtp":
        definition["plaintext_auth"] = True


def _pg_login(definition: Definition, secret: Any, _port: int) -> None:
    """A PostgreSQL login; cleartext allowed, so the refusing server that asks for the password
    in clear text gets it (and echoes it back)."""
    definition.update(username="probe", password=secret, plaintext_auth=True)


def _key_password(definition: Definition, secret: Any, _port: int) -> None:
    tls = dict(definition.get("tls") or {})
    tls["client_key_password"] = secret
    definition["tls"] = tls


def _starttls_key_password(definition: Definition, secret: Any, _port: int) -> None:
    """The client key of the STARTTLS upgrade (read when the server says go ahead)."""
    definition["starttls"] = "required"
    definition["starttls_options"] = {"client_key_password": secret}


def _tsig(definition: Definition, secret: Any, _port: int) -> None:
    definition["tsig_name"] = "probekit-hostile-key."
    definition["tsig_key"] = secret


MAIL_SECRETS: dict[str, SecretSetter] = {
    "password": _login,
    "tls.client_key_password": _key_password,
    "starttls_options.client_key_password": _starttls_key_password,
}


def _ssh(tls: bool) -> Definition:
    return {"kind": "ssh"}


def _sftp(tls: bool) -> Definition:
    """An SFTP check needs a login to dial at all: a password that is not the canary."""
    return {"kind": "sftp", "username": "probe", "password": "probe-hostile-password"}


def _ssh_password(definition: Definition, secret: Any, _port: int) -> None:
    definition.update(username="probe", password=secret)


def _ssh_private_key(definition: Definition, secret: Any, _port: int) -> None:
    definition.update(username="probe", private_key=secret)


def _encrypted_key() -> str:
    """A private key encrypted with a passphrase that is *not* the canary, so unlocking it
    with the canary fails (a failure that reads the passphrase)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a different passphrase"),
        )
        .decode()
    )


def _ssh_passphrase(definition: Definition, secret: Any, _port: int) -> None:
    definition.update(username="probe", private_key=_encrypted_key(), passphrase=secret)


SSH_SECRETS: dict[str, SecretSetter] = {
    "password": _ssh_password,
    "private_key": _ssh_private_key,
    "passphrase": _ssh_passphrase,
}
#: Why the ssh and sftp kinds meet no well-behaved server of a stream family.
SSH_EXEMPT = (
    "An SSH session is binary packets after the version exchange, encrypted after the key "
    "exchange; no stream family's well-behaved server speaks it, so no ssh or sftp definition "
    "can be UP against them. Their hostile servers (silence, a stall after the version line, "
    "HTTP and other non-SSH replies, an endless line, endless non-SSH lines, SSH-1.5, garbage "
    "packets, a close in the key exchange, a slow login, a command or SFTP request that never "
    "ends) are the tables of tests/test_ssh.py and tests/test_sftp.py, against an asyncssh "
    "server and raw TCP servers on loopback."
)


@attrs.frozen
class KindProfile:
    """One built-in kind, as the hostile suites use it.

    ``definition(host, port, tls)`` is ``ask(tls)`` with ``host:port`` put in by ``place``; it
    reaches a well-behaved server of ``family`` at ``host:port`` and is UP there. ``tls`` says
    whether the kind has TLS (then ``ask(True)`` asks for it). ``secrets`` maps each secret
    field's path (as :func:`secret_paths` finds it) to the setter that fills it;
    ``base64_secrets`` are those whose value must be base64 text (a TSIG key), which the canary
    goes into encoded. ``redirects`` says whether the kind follows redirects (so a redirect
    pivot applies), ``proxy`` whether it dials through a proxy. ``strict_urls``: the kind's URL
    parser refuses some spellings of an address outright (httpx's, for a script), which the SSRF
    suite accepts as a protocol error naming an invalid URL, with nothing dialled.
    ``local_only``: the control plane never sends the kind (a script), so the suites that go
    through a control plane and a checkpoint leave it out. ``exempt``:
    why a kind of family ``none`` meets no server (the hostile-server suite skips it).
    """

    name: str
    family: Family
    ask: Callable[[bool], Definition]
    tls: bool
    place: Placer = by_target
    redirects: bool = False
    proxy: bool = False
    secrets: dict[str, SecretSetter] = attrs.field(factory=dict)
    base64_secrets: frozenset[str] = frozenset()
    exempt: str = ""
    strict_urls: bool = False
    local_only: bool = False

    def url_of(self, definition: Definition) -> str:
        """The URL a definition of a kind that ``redirects`` requests (a redirect's target in
        the SSRF suite): ``url``, an api check's first step's, a script's (see _script_place)."""
        if "url" in definition:
            return str(definition["url"])
        if "steps" in definition:
            return str(definition["steps"][0]["url"])
        return _SCRIPT_URLS[definition["path"]]

    def definition(self, host: str, port: int, tls: bool) -> Definition:
        definition = self.ask(tls)
        self.place(definition, host, port, tls)
        return definition


PROFILES: dict[str, KindProfile] = {
    "http": KindProfile(
        name="http",
        family="http",
        ask=_http,
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
        ask=_tcp,
        tls=True,
        proxy=True,
        secrets={
            "proxy.password": _proxy,
            "tls.client_key_password": _key_password,
            "steps[].options.client_key_password": lambda d, s, p: d["steps"].insert(
                0, {"starttls": {"client_key_password": s}}
            ),
            # An AUTH line sent before the well-behaved server's PING: it answers every line.
            "steps[].data": lambda d, s, p: d["steps"].insert(0, {"send": s}),
        },
    ),
    "redis": KindProfile(
        name="redis",
        family="line",
        ask=_asks_marker("redis"),
        tls=True,
        secrets={"password": _password, "tls.client_key_password": _key_password},
    ),
    "smtp": KindProfile(
        name="smtp", family="smtp", ask=_asks_marker("smtp"), tls=True, secrets=MAIL_SECRETS
    ),
    "imap": KindProfile(
        name="imap", family="imap", ask=_asks_marker("imap"), tls=True, secrets=MAIL_SECRETS
    ),
    "pop3": KindProfile(
        name="pop3", family="pop3", ask=_asks_marker("pop3"), tls=True, secrets=MAIL_SECRETS
    ),
    "dns": KindProfile(
        name="dns",
        family="dns",
        ask=_dns,
        tls=True,
        place=as_server,
        secrets={"tsig_key": _tsig, "tls.client_key_password": _key_password},
        base64_secrets=frozenset({"tsig_key"}),
    ),
    "tls": KindProfile(
        name="tls",
        family="none",
        ask=_tls,
        tls=True,
        # The canary meets the line family's silent and echoing servers (it dials TCP).
        secrets={"tls.client_key_password": _key_password},
        exempt=(
            "A tls check is a TLS handshake, after an optional STARTTLS dialogue; the "
            "well-behaved servers of every family speak plain text, so no tls definition can be "
            "UP against them (the control row and the rebinding test need UP). Its hostile "
            "servers (silence and stalls in each phase, garbage, early close, oversized and "
            "endless replies, refused STARTTLS, plain text injected before the handshake, bad "
            "certificates) are the tables of tests/test_tls.py, each within deadline + 100 ms."
        ),
    ),
    "ftp": KindProfile(
        name="ftp",
        family="ftp",
        ask=_asks_marker("ftp"),
        tls=True,
        secrets={
            "password": _login,
            "tls.client_key_password": _key_password,
            "starttls_options.client_key_password": _starttls_key_password,
        },
    ),
    "api": KindProfile(
        name="api",
        family="http",
        ask=_api,
        tls=True,
        place=_api_place,
        redirects=True,
        secrets={
            "variables[][]": _api_variable,
            "steps[].headers[][]": _api_step("headers", lambda s: [["X-Api-Key", s]]),
            "steps[].bearer_token": _api_step("bearer_token", lambda s: s),
            "steps[].basic_auth.password": _api_step(
                "basic_auth", lambda s: {"username": "probe", "password": s}
            ),
            "tls.client_key_password": _key_password,
        },
    ),
    "script": KindProfile(
        name="script",
        family="http",
        ask=_script,
        tls=True,
        place=_script_place,
        redirects=True,
        strict_urls=True,
        local_only=True,
        secrets={"tls.client_key_password": _key_password},
    ),
    "icmp": KindProfile(
        name="icmp",
        family="none",
        ask=_icmp,
        tls=False,
        exempt=(
            "ICMP echo has no server to misbehave on loopback: the kernel answers pings, and "
            "this process may not open ICMP sockets at all (net.ipv4.ping_group_range); what a "
            "hostile host can send back (garbage, duplicates, floods) is tests/test_icmp.py's "
            "FakeHost, which also stands in for the host in the SSRF rebinding test. The "
            "policy checks (SSRF spellings, mixed answers) need no server."
        ),
    ),
    "ssh": KindProfile(
        name="ssh", family="none", ask=_ssh, tls=False, secrets=SSH_SECRETS, exempt=SSH_EXEMPT
    ),
    "sftp": KindProfile(
        name="sftp", family="none", ask=_sftp, tls=False, secrets=SSH_SECRETS, exempt=SSH_EXEMPT
    ),
    "postgres": KindProfile(
        name="postgres",
        family="postgres",
        ask=_postgres,
        tls=True,
        secrets={
            "password": _pg_login,
            "starttls_options.client_key_password": _starttls_key_password,
        },
    ),
    "mysql": KindProfile(
        name="mysql",
        family="none",
        ask=lambda tls: {"kind": "mysql", "starttls": "off"},
        tls=True,
        secrets={
            "password": lambda d, s, p: d.update(username="probe", password=s),
            "starttls_options.client_key_password": _starttls_key_password,
        },
        exempt=(
            "A MySQL server speaks first, in binary packets (the protocol 10 handshake): none "
            "of the well-behaved servers here says it, so no mysql definition can be UP against "
            "them. Its hostile servers (garbage greetings, ERR greetings, packets out of "
            "sequence or over the limit, stalls in each phase, plain text before the TLS "
            "handshake, odd login replies, LOCAL INFILE requests, broken rows) are the "
            "tables of tests/test_mysql.py, with Hypothesis on every parser of server bytes."
        ),
    ),
    "mssql": KindProfile(
        name="mssql",
        family="none",
        ask=lambda tls: {"kind": "mssql", "tls": {}} if tls else {"kind": "mssql"},
        tls=True,
        secrets={
            "password": lambda d, s, p: d.update(username="probe", password=s, tls={}),
            "tls.client_key_password": _key_password,
        },
        exempt=(
            "A TDS server answers the client's PRELOGIN with a binary TDS packet, which none of "
            "the well-behaved servers here sends. Its hostile servers (garbage, wrong packet "
            "types, broken option tables, oversized answers, stalls, garbage in the TLS "
            "handshake, odd login answers) are the tables of tests/test_mssql.py, with "
            "Hypothesis on the PRELOGIN and login-answer parsers."
        ),
    ),
}


def server_profiles() -> list[KindProfile]:
    """The profiles that meet servers (every family but ``none``)."""
    return [p for p in builtin_profiles() if p.family != "none"]


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


async def good_smtp_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greets with the marker, offers AUTH PLAIN and accepts it, accepts anything else."""
    writer.write(f"220 hostile.test ESMTP {MARKER}\r\n".encode())
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb in (b"EHLO", b"HELO"):
            writer.write(b"250-hostile.test\r\n250-AUTH PLAIN\r\n250 SIZE 10240000\r\n")
        elif verb == b"AUTH":
            writer.write(b"235 2.7.0 accepted\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 2.0.0 bye\r\n")
            return
        else:
            writer.write(b"250 2.0.0 ok\r\n")
        await writer.drain()


async def good_imap_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greets with the marker; answers CAPABILITY, LOGIN, EXAMINE and LOGOUT."""
    writer.write(f"* OK [CAPABILITY IMAP4rev1] {MARKER} ready\r\n".encode())
    while line := await reader.readline():
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        verb = rest.split(b" ", 1)[0].upper()
        if verb == b"CAPABILITY":
            writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n%s OK done\r\n" % tag)
        elif verb == b"LOGIN":
            writer.write(b"%s OK logged in\r\n" % tag)
        elif verb == b"EXAMINE":
            writer.write(b"* 3 EXISTS\r\n%s OK [READ-ONLY] done\r\n" % tag)
        elif verb == b"LOGOUT":
            writer.write(b"* BYE bye\r\n%s OK done\r\n" % tag)
            return
        else:
            writer.write(b"%s BAD unknown\r\n" % tag)
        await writer.drain()


async def good_pop3_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greets with the marker; answers CAPA, USER, PASS, STAT and QUIT."""
    writer.write(f"+OK {MARKER} ready\r\n".encode())
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"CAPA":
            writer.write(b"+OK capabilities\r\nUSER\r\nTOP\r\n.\r\n")
        elif verb in (b"USER", b"PASS"):
            writer.write(b"+OK\r\n")
        elif verb == b"STAT":
            writer.write(b"+OK 2 320\r\n")
        elif verb == b"QUIT":
            writer.write(b"+OK bye\r\n")
            return
        else:
            writer.write(b"-ERR unknown\r\n")
        await writer.drain()


async def good_ftp_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greets with the marker; refuses AUTH TLS, accepts USER/PASS, answers QUIT. (A data
    connection, which needs a second listener, is tests/test_ftp.py's FakeFtp.)"""
    writer.write(f"220 {MARKER} ready\r\n".encode())
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"USER":
            writer.write(b"331 password please\r\n")
        elif verb == b"PASS":
            writer.write(b"230 logged in\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            return
        else:
            writer.write(b"502 not implemented\r\n")


async def good_pg_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers an SSLRequest ``N``, lets any user in (trust), and answers every query with one
    row whose first cell is the marker."""
    code, _ = await read_startup(reader)
    if code == 80877103:
        writer.write(b"N")
        await read_startup(reader)
    writer.write(auth(0) + param("server_version", "16.1") + READY)
    while True:
        kind, _ = await read_message(reader)
        if kind != b"Q":
            return
        writer.write(data_row([f"all good: {MARKER}"]) + msg(b"C", b"SELECT 1\0") + READY)
        await writer.drain()


def good_dns_udp(query: bytes) -> list[bytes]:
    return [answer_txt(query, MARKER)]


async def good_dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(framed(answer_txt(await read_query(reader), MARKER)))


@attrs.frozen
class DnsHandlers:
    """A DNS server's two sides: ``udp`` answers a datagram, ``tcp`` serves a connection."""

    udp: UdpHandler | None = None
    tcp: StreamHandler | None = None


Handler = StreamHandler | DnsHandlers

GOOD_SERVERS: dict[str, Handler] = {
    "http": good_http_server,
    "line": good_line_server,
    "smtp": good_smtp_server,
    "imap": good_imap_server,
    "pop3": good_pop3_server,
    "ftp": good_ftp_server,
    "dns": DnsHandlers(good_dns_udp, good_dns_tcp),
    "postgres": good_pg_server,
}


def make_server(family: Family, handler: Handler) -> TcpServer | DnsServer:
    """A (not yet started) loopback server of ``family`` running ``handler``: a DNS server
    (UDP and TCP on one port) for ``dns``, a TCP server for the others."""
    if family == "dns":
        assert isinstance(handler, DnsHandlers), handler
        return DnsServer(handler.udp, handler.tcp)
    assert family in STREAM_FAMILIES and not isinstance(handler, DnsHandlers), (family, handler)
    return TcpServer(handler)


def good_server(family: Family) -> TcpServer | DnsServer:
    """The well-behaved server of ``family`` (not yet started)."""
    return make_server(family, GOOD_SERVERS[family])
