"""HttpProbe: HTTP(S) checks with real phase timings, on the shared dial path.

HTTP/1.1 responses are read by a lean, strict parser (``_h1``) over the dial path's own
connection, which keeps the per-check cost low and makes the phase boundaries exact:
``processing`` runs from the last request byte written to the first response byte read,
``transfer`` from there to the end of the body. HTTP/2 uses the h2 state machine on the same
connection (ALPN over TLS, prior knowledge over plain text).
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode, urljoin, urlsplit

import attrs

from .._assertions import Assertion, HeaderMatches, JsonPath, StatusIn, assertion_tuple
from .._context import ProbeContext
from .._dial import Connection, Proxy
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._h1 import ResponseParser
from .._policy import parse_host_address
from .._resolver import Family
from .._result import ErrorKind
from .._secret import Secret, as_secret, redact_url
from .._timeline import Timeline
from .._timeouts import Timeouts
from .._tls import TlsOptions, warm_up
from ._base import Attempt, ProbeBase
from ._kind import Metric, Option, ProbeKind, Url
from ._options import (
    BODY_OPTIONS,
    CERT_OPTIONS,
    TLS_OPTIONS,
    add_assertion,
    body_assertions,
    cert_assertion,
    option_problem,
    tls_definition,
)

__all__ = ["KIND", "BasicAuth", "HttpProbe"]

_READ = 64 * 1024
_ASCII_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_STATUS = StatusIn(ranges=((200, 299),))
_UA = b"probekit/0.1"
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: Control characters (C0 and DEL). A credential may hold none; a header value none but HTAB
#: (RFC 9110 section 5.5), so nothing a definition gives can end a header line or the head.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: What a URL may not hold anywhere: ASCII whitespace and control characters (C0, SP, DEL).
#: Other non-ASCII text is percent-encoded (path, query) or IDNA-encoded (host).
_URL_REFUSED = re.compile(r"[\x00-\x20\x7f]")
#: Request headers the probe computes itself; a definition giving them would send two.
_COMPUTED = frozenset({"content-length", "transfer-encoding"})
#: The same rule on the bytes of a request head being built (a last line, see _prepare).
_FIELD_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers HTTP/2 forbids (RFC 9113 §8.2.2); dropped from user headers when speaking h2.
_H2_FORBIDDEN = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


def _control_problem(text: str, pattern: re.Pattern[str] = _CONTROL) -> str | None:
    """What is wrong with ``text`` if it holds a control character (the message never shows
    ``text``, which may be a secret), else None."""
    found = pattern.search(text)
    if found is None:
        return None
    return (
        f"holds a control character (0x{ord(found.group()):02x}); CR, LF, NUL and the other "
        "control characters would change the request"
    )


def _password(value: Secret | str) -> Secret:
    secret = as_secret("password", value)
    if secret is None:
        raise DefinitionError("password", "expected a Secret (a str is taken as one), got None")
    problem = _control_problem(secret.reveal())
    if problem is not None:
        raise DefinitionError("password", f"the password {problem}")
    return secret


def _username(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise DefinitionError("username", f"expected a str, got {type(value).__name__}")
    problem = _control_problem(value)
    if problem is not None:
        raise DefinitionError("username", f"the user name {problem}")
    if ":" in value:
        raise DefinitionError("username", "a basic-auth user name may not contain ':' (RFC 7617)")


@attrs.frozen
class BasicAuth:
    """HTTP basic credentials; the password is a :class:`Secret` (a ``str`` is taken as one)."""

    username: str = attrs.field(validator=_username)
    password: Secret = attrs.field(converter=_password)

    def header(self) -> bytes:
        raw = f"{self.username}:{self.password.reveal()}".encode()
        return b"Basic " + base64.b64encode(raw)


HeaderValue = str | Secret
Pairs = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]]


def _pairs(field: str, value: Pairs | None) -> tuple[tuple[str, HeaderValue], ...]:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for i, item in enumerate(items):
        try:
            name, val = item
        except (TypeError, ValueError):
            raise DefinitionError(
                f"{field}[{i}]", f"expected a (name, value) pair, got {item!r}"
            ) from None
        if field == "headers":
            out.append(_header(i, name, val))
            continue
        if not isinstance(name, str) or not isinstance(val, str):
            raise DefinitionError(f"{field}[{i}]", "names and values must be strings")
        if any(c in name + val for c in "\r\n\0"):
            raise DefinitionError(f"{field}[{i}]", "names and values may not contain CR, LF or NUL")
        out.append((name, val))
    return tuple(out)


def _header(i: int, name: object, value: object) -> tuple[str, HeaderValue]:
    """One checked request header: a token name and a Latin-1 value (a str or a Secret) without
    control characters other than HTAB. Messages never show a secret value."""
    where = f"headers[{i}]"
    if not isinstance(name, str) or not isinstance(value, str | Secret):
        raise DefinitionError(where, "names must be strings, values strings or Secrets")
    if not name or not _TOKEN.issuperset(name):
        raise DefinitionError(where, f"{_shown(name)} is not a valid header name (RFC 9110 token)")
    text = value.reveal() if isinstance(value, Secret) else value
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise DefinitionError(where, f"the value of {name!r} is not Latin-1 text") from None
    problem = _control_problem(text, _FIELD_CONTROL)
    if problem is not None:
        raise DefinitionError(where, f"the value of {name!r} {problem}")
    return name, value


def _shown(text: str) -> str:
    """``repr(text)``, cut short: a name in a message, not a dump of whatever was given."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


def _headers(value: Pairs | None) -> tuple[tuple[str, HeaderValue], ...]:
    return _pairs("headers", value)


def _query(
    value: Mapping[str, str] | Sequence[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...]:
    return _pairs("query", value)  # type: ignore[return-value]  # strings only: checked above


def _body(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _bearer_token(value: Secret | str | None) -> Secret | None:
    secret = as_secret("bearer_token", value)
    if secret is not None:
        problem = _control_problem(secret.reveal())
        if problem is not None:
            raise DefinitionError("bearer_token", f"the token {problem}")
    return secret


def _basic_auth(_inst: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, BasicAuth):
        raise DefinitionError(
            "basic_auth", f"expected BasicAuth(username, password), got {type(value).__name__}"
        )


def _proxy(value: Proxy | None) -> Proxy | None:
    if value is None:
        return None
    if not isinstance(value, Proxy):
        raise DefinitionError("proxy", f"expected a Proxy, got {type(value).__name__}")
    if value.username is not None and not isinstance(value.username, str):
        raise DefinitionError(
            "proxy.username", f"expected a str, got {type(value.username).__name__}"
        )
    password = as_secret("proxy.password", value.password)
    return value if password is value.password else attrs.evolve(value, password=password)


def _positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DefinitionError(attribute.name, f"must be a non-negative integer, got {value!r}")


@attrs.frozen
class _Url:
    scheme: str
    host: str
    port: int
    target: str  # origin-form: path and query

    @property
    def authority(self) -> str:
        literal = parse_host_address(self.host)
        host = (
            f"[{self.host}]"
            if literal is not None and literal.version == 6 and ":" in self.host
            else self.host
        )
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse_url(url: str, field: str = "url") -> _Url:
    # Every message shows the URL through redact_url: a definition error is logged and sent back
    # to a control plane, and a URL's userinfo may hold a password.
    if not isinstance(url, str):
        raise DefinitionError(field, f"a URL must be a string, got {type(url).__name__}")
    if _URL_REFUSED.search(url) is not None:
        raise DefinitionError(field, "a URL may not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # an unclosed IPv6 bracket, ...
        raise DefinitionError(field, f"{exc} in {redact_url(url)!r}") from None
    if parts.scheme not in ("http", "https"):
        raise DefinitionError(
            field, f"scheme must be http or https, got {parts.scheme!r} in {redact_url(url)!r}"
        )
    if not hostname:
        raise DefinitionError(field, f"no host in {redact_url(url)!r}")
    if not hostname.isascii():
        try:
            hostname = hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise DefinitionError(
                field, f"bad international host name in {redact_url(url)!r}: {exc}"
            ) from None
    if parts.username is not None or parts.password is not None:
        raise DefinitionError(field, "put credentials in basic_auth, not in the URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DefinitionError(field, f"{exc} in {redact_url(url)!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii():  # a request line is ASCII: percent-encode the rest as UTF-8
        target = quote(target, safe=_ASCII_PRINTABLE)
    return _Url(parts.scheme, hostname, port, target)


class _Response:
    __slots__ = (
        "body",
        "decoded_bytes",
        "headers",
        "http_version",
        "status",
        "truncated",
        "wire_bytes",
    )

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.wire_bytes = 0
        self.decoded_bytes = 0
        self.truncated = False
        self.http_version = "1.1"

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _BodySink:
    """Collects the body up to a cap, decompressing gzip/deflate with the cap on the output."""

    __slots__ = ("_decoder", "cap", "response")

    def __init__(self, response: _Response, cap: int) -> None:
        self.response = response
        self.cap = cap
        encoding = (response.header("content-encoding") or "").strip().lower()
        self._decoder: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bool:
        """Take ``data``; return False once the cap is reached (stop reading)."""
        resp = self.response
        resp.wire_bytes += len(data)
        room = self.cap - len(resp.body)
        if self._decoder is None:
            resp.body += data[:room]
            if len(data) > room:
                resp.truncated = True
            return not resp.truncated
        try:
            out = self._decoder.decompress(data, room + 1)
        except zlib.error as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"cannot decompress body: {exc}") from None
        resp.decoded_bytes += len(out)
        resp.body += out[:room]
        if len(out) > room or self._decoder.unconsumed_tail:
            resp.truncated = True
        if resp.wire_bytes > self.cap:
            resp.truncated = True
        return not resp.truncated


def _follow_redirect(
    url: _Url, location: str, status: int, method: str, body: bytes | None
) -> tuple[_Url, bool, str, bytes | None]:
    """The request a redirect leads to: the next URL (``location`` read against ``url``),
    whether it has the same origin (credentials go only there), and the method and body to
    send (303, and 301/302 after a POST, become a GET without a body; HEAD stays HEAD)."""
    nxt = _parse_url_for_redirect(f"{url.scheme}://{url.authority}{url.target}", location)
    same_origin = (nxt.scheme, nxt.host, nxt.port) == (url.scheme, url.host, url.port)
    if status == 303 or (status in (301, 302) and method == "POST"):
        method, body = ("GET" if method != "HEAD" else "HEAD"), None
    return nxt, same_origin, method, body


@attrs.frozen
class HttpProbe(ProbeBase):
    """Check an HTTP(S) endpoint.

    A fresh connection is made for every check, through the context's dialer (and so its egress
    policy, re-checked on every redirect hop). Without a :class:`StatusIn` assertion, a final
    status of 200-299 is required. The body read is capped at ``max_body_bytes`` (after
    decompression too): reading stops there, the assertions see the first ``max_body_bytes``
    and the result's ``body_truncated`` metric is 1. With ``fail_on_body_limit=True`` a larger
    body fails the check instead (``DOWN``/``protocol``).

    Phases: ``resolve``, ``connect``, ``tls``, ``processing``, ``transfer`` (per hop).
    """

    kind: ClassVar[str] = "http"

    url: str = attrs.field()
    method: str = "GET"
    headers: tuple[tuple[str, str | Secret], ...] = attrs.field(default=(), converter=_headers)
    query: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_query)
    body: bytes | None = attrs.field(default=None, converter=_body)
    basic_auth: BasicAuth | None = attrs.field(default=None, validator=_basic_auth)
    bearer_token: Secret | None = attrs.field(default=None, converter=_bearer_token)
    follow_redirects: bool = True
    max_redirects: int = attrs.field(default=10, validator=_positive_int)
    tls: TlsOptions = attrs.field(factory=TlsOptions)
    host_header: str | None = None
    http_version: Literal["1.1", "2"] = "1.1"
    proxy: Proxy | None = attrs.field(default=None, converter=_proxy)
    ip_family: Family | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    fail_on_body_limit: bool = False
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    _parsed: _Url = attrs.field(init=False, repr=False, eq=False)
    _host: str | None = attrs.field(init=False, repr=False, eq=False)  # host_header or Host
    _warm: bool = attrs.field(init=False, repr=False, eq=False, default=False)
    _resolves: bool = attrs.field(init=False, repr=False, eq=False, default=True)
    _tls_alpn: TlsOptions = attrs.field(init=False, repr=False, eq=False)
    _prepared: dict[tuple[Any, ...], tuple[str, list[tuple[bytes, bytes]], bytes]] = attrs.field(
        init=False, repr=False, eq=False, hash=False, factory=dict
    )

    @url.validator
    def _check_url(self, _attribute: attrs.Attribute[str], value: str) -> None:
        object.__setattr__(self, "_parsed", _parse_url(value))

    def __attrs_post_init__(self) -> None:
        if not self.method or not self.method.isalpha() or not self.method.isupper():
            raise DefinitionError(
                "method", f"expected an upper-case HTTP method, got {self.method!r}"
            )
        if self.http_version not in ("1.1", "2"):
            raise DefinitionError(
                "http_version", f"expected '1.1' or '2', got {self.http_version!r}"
            )
        if self.host_header is not None and not _is_host(self.host_header):
            raise DefinitionError(
                "host_header", f"expected a host[:port] in ASCII, got {self.host_header!r}"
            )
        host = self.host_header
        for i, (name, value) in enumerate(self.headers):
            lname = name.lower()
            if lname in _COMPUTED:
                raise DefinitionError(
                    f"headers[{i}]",
                    f"{name} is computed by the probe from body; give body instead "
                    "(b'' sends Content-Length: 0)",
                )
            if lname != "host":
                continue
            # A Host header is the Host header (as host_header is); two would be refused by
            # a server, so giving it twice, or with host_header too, is a definition error.
            if self.host_header is not None:
                raise DefinitionError(
                    f"headers[{i}]", "give the Host header in host_header or in headers, not both"
                )
            if host is not None:
                raise DefinitionError(f"headers[{i}]", "more than one Host header")
            if not isinstance(value, str) or not _is_host(value):
                raise DefinitionError(
                    f"headers[{i}]", "expected a host[:port] in ASCII as the Host header"
                )
            host = value
        object.__setattr__(self, "_host", host)
        literal = parse_host_address(self._parsed.host) is not None
        object.__setattr__(self, "_resolves", self.proxy is not None or not literal)
        if self.basic_auth is not None and self.bearer_token is not None:
            raise DefinitionError("bearer_token", "give basic_auth or bearer_token, not both")
        # Built once: the SSL context cache is keyed by these options.
        alpn = ("h2", "http/1.1") if self.http_version == "2" else ("http/1.1",)
        object.__setattr__(self, "_tls_alpn", attrs.evolve(self.tls, alpn=alpn))

    @property
    def target(self) -> str:
        return self.url

    @property
    def host(self) -> str:
        return self._parsed.host

    def prepare(self, ctx: ProbeContext) -> None:
        """Before the clock starts: build the SSL context and load the certificate parser (once
        per probe), and open the resolver's channel (a no-op once open)."""
        if not self._warm:
            if self._parsed.scheme == "https":
                warm_up(self._tls_alpn)
            object.__setattr__(self, "_warm", True)
        if self._resolves:
            warm = getattr(ctx.dialer.resolver, "prepare", None)
            if warm is not None:
                warm()

    # -- internals -------------------------------------------------------------------------

    def _first_url(self) -> _Url:
        if not self.query:
            return self._parsed
        sep = "&" if "?" in self._parsed.target else "?"
        return attrs.evolve(self._parsed, target=self._parsed.target + sep + urlencode(self.query))

    async def run(self, attempt: Attempt) -> None:
        url = self._first_url()
        method = self.method
        body = self.body
        auth = True
        hops = 0
        while True:
            response = await self._exchange(attempt, url, method, body, auth)
            location = response.header("location")
            if not (self.follow_redirects and response.status in _REDIRECTS and location):
                break
            if hops >= self.max_redirects:
                raise ProbeFailure(ErrorKind.PROTOCOL, f"more than {self.max_redirects} redirects")
            hops += 1
            url, same_origin, method, body = _follow_redirect(
                url, location, response.status, method, body
            )
            auth = auth and same_origin  # never send credentials to another origin
        attempt.metrics["redirects"] = hops
        self._evaluate(attempt, response)

    def _evaluate(self, attempt: Attempt, response: _Response) -> None:
        m = attempt.metrics
        m["status_code"] = response.status
        m["body_bytes"] = len(response.body)
        m["wire_bytes"] = response.wire_bytes
        m["http_version"] = float(response.http_version)
        if response.truncated:
            m["body_truncated"] = 1
            if self.fail_on_body_limit:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"body exceeded max_body_bytes ({self.max_body_bytes})"
                )
        assertions = self.assertions
        if not any(isinstance(a, StatusIn) for a in assertions):
            assertions = (_DEFAULT_STATUS, *assertions)
        attempt.evaluate(
            assertions,
            status_code=response.status,
            headers=response.headers,
            body=bytes(response.body),
        )

    def _prepare(
        self, url: _Url, method: str, body: bytes | None, auth: bool, absolute: bool
    ) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
        """The request line target, headers and the HTTP/1.1 request head for one hop.

        Built once per distinct hop and remembered: a probe sends the same request every time.
        Every part was checked when the probe was defined (header names are tokens, no value
        holds a control character but HTAB, the target is ASCII). The values are checked once
        more here, where the head is built, so that a value that changed since (a secret is
        revealed only now) is never sent: the check is then ``UNKNOWN``/``internal``.
        """
        key = (url, method, body, auth, absolute)
        prepared = self._prepared.get(key)
        if prepared is None:
            headers = self._request_headers(url, body, auth)
            if absolute and self.proxy is not None:
                proxy_auth = self.proxy.authorization()
                if proxy_auth:
                    headers.append((b"Proxy-Authorization", proxy_auth))
            for name, value in headers:
                if _FIELD_CONTROL_BYTES.search(value) is not None:
                    raise ProbeFailure(
                        ErrorKind.INTERNAL,
                        f"the {name.decode()} request header holds a control character; "
                        "the request was not sent",
                    )
            target = f"{url.scheme}://{url.authority}{url.target}" if absolute else url.target
            lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
            lines += [name + b": " + value for name, value in headers]
            prepared = (target, headers, b"\r\n".join(lines) + b"\r\n\r\n")
            if len(self._prepared) >= 16:  # redirects to ever-new URLs must not grow it
                self._prepared.clear()
            self._prepared[key] = prepared
        return prepared

    def _request_headers(
        self, url: _Url, body: bytes | None, auth: bool
    ) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = [(b"Host", (self._host or url.authority).encode())]
        names = set()
        for name, value in self.headers:
            lname = name.lower()
            if lname == "host":
                continue  # already first, as _host
            names.add(lname)
            text = value.reveal() if isinstance(value, Secret) else value
            headers.append((name.encode(), text.encode("latin-1")))
        if "user-agent" not in names:
            headers.append((b"User-Agent", _UA))
        if "accept" not in names:
            headers.append((b"Accept", b"*/*"))
        if auth and self.basic_auth is not None:
            headers.append((b"Authorization", self.basic_auth.header()))
        elif auth and self.bearer_token is not None:
            headers.append((b"Authorization", b"Bearer " + self.bearer_token.reveal().encode()))
        if body is not None:
            headers.append((b"Content-Length", str(len(body)).encode()))
        headers.append((b"Connection", b"close"))
        return headers

    async def _exchange(
        self, attempt: Attempt, url: _Url, method: str, body: bytes | None, auth: bool
    ) -> _Response:
        ctx = attempt.ctx
        timeline = attempt.timeline
        https = url.scheme == "https"
        tls = self._tls_alpn if https else None
        absolute = self.proxy is not None and not https
        # Built (or found) before dialling: a request that must not be sent opens no connection.
        target, headers, request = self._prepare(url, method, body, auth, absolute)
        if self.proxy is not None and absolute:
            # Plain HTTP through a proxy: absolute-form request to the proxy; the target is
            # still checked against the policy before anything is sent.
            await ctx.dialer.check_target(url.host, timeline, self.timeouts)
            conn = await ctx.dialer.connect(
                self.proxy.host, self.proxy.port, timeline, self.timeouts
            )
        else:
            conn = await ctx.dialer.connect(
                url.host,
                url.port,
                timeline,
                self.timeouts,
                tls=tls,
                proxy=self.proxy,
                family=self.ip_family,
            )
        try:
            attempt.address = conn.address
            attempt.record_tls(conn.tls)
            use_h2 = self.http_version == "2" and (
                (conn.tls is not None and conn.tls.alpn == "h2") or (not https and not absolute)
            )
            if use_h2:
                return await _h2_exchange(conn, url, method, target, headers, body, timeline, self)
            return await _h1_exchange(conn, method, request, body, timeline, self)
        finally:
            conn.close()


def _is_host(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


def _parse_url_for_redirect(base: str, location: str) -> _Url:
    """The next hop's URL; a Location the server got wrong is the server's protocol error."""
    try:
        return _parse_url(urljoin(base, location), "location")
    except DefinitionError as exc:
        raise ProbeFailure(ErrorKind.PROTOCOL, f"bad redirect: {exc.message}") from None
    except ValueError as exc:  # urljoin's own parse: an unclosed IPv6 bracket, ...
        raise ProbeFailure(ErrorKind.PROTOCOL, f"bad redirect: {exc}") from None


async def _h1_exchange(
    conn: Connection,
    method: str,
    request: bytes,
    body: bytes | None,
    timeline: Timeline,
    probe: HttpProbe,
) -> _Response:
    if body and len(body) > _READ:
        conn.write(request)
        conn.write(body)
        await conn.drain()
    else:
        conn.write(request + body if body else request)
    read_limit = probe.timeouts.read
    parser = ResponseParser(head_request=method == "HEAD")
    response = _Response()
    sink: _BodySink | None = None
    with timeline.phase("processing"):
        data = await conn.read(_READ, read_limit)
    with timeline.phase("transfer"):
        while True:
            chunks = parser.feed(data)
            if sink is None and parser.head_done:
                response.status = parser.status
                response.http_version = parser.http_version
                response.headers = parser.headers
                sink = _BodySink(response, probe.max_body_bytes)
            if sink is not None:
                for chunk in chunks:
                    if not sink.feed(chunk):
                        return response
            if parser.done:
                return response
            if not data:  # the parser ends or refuses every message at EOF; never spin here
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, "connection closed before the response ended"
                )
            data = await conn.read(_READ, read_limit)


async def _h2_exchange(
    conn: Connection,
    url: _Url,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    timeline: Timeline,
    probe: HttpProbe,
) -> _Response:
    import h2.config  # lazily: only HTTP/2 checks need it
    import h2.connection
    import h2.events
    import h2.exceptions

    h = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    h.initiate_connection()
    stream = h.get_next_available_stream_id()
    authority = next(v for k, v in headers if k == b"Host")
    request = [
        (b":method", method.encode()),
        (b":authority", authority),
        (b":scheme", url.scheme.encode()),
        (b":path", target.encode()),
    ]
    request += [(k.lower(), v) for k, v in headers if k.lower() not in _H2_FORBIDDEN]
    h.send_headers(stream, request, end_stream=not body)
    pending = body or b""
    response = _Response()
    response.http_version = "2"
    sink: _BodySink | None = None

    def push_body() -> None:
        nonlocal pending
        while pending:
            room = min(h.local_flow_control_window(stream), h.max_outbound_frame_size)
            if room <= 0:
                return
            chunk, pending = pending[:room], pending[room:]
            h.send_data(stream, chunk, end_stream=not pending)

    push_body()
    conn.write(h.data_to_send())
    read_limit = probe.timeouts.read
    phase = "processing"
    try:
        with timeline.phase("processing"):
            data = await conn.read(_READ, read_limit)
        with timeline.phase("transfer"):
            phase = "transfer"
            while True:
                if not data:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL, "connection closed before the response ended"
                    )
                for event in h.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                        hdrs = [(bytes(k), bytes(v)) for k, v in event.headers]
                        status = next((v for k, v in hdrs if k == b":status"), b"0")
                        response.status = int(status)
                        response.headers = [
                            (k.decode().lower(), v.decode("latin-1"))
                            for k, v in hdrs
                            if not k.startswith(b":")
                        ]
                        sink = _BodySink(response, probe.max_body_bytes)
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                        h.acknowledge_received_data(event.flow_controlled_length, stream)
                        if sink is None:
                            raise ProbeFailure(ErrorKind.PROTOCOL, "HTTP/2 data before headers")
                        if not sink.feed(event.data):
                            return response
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        return response
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                        raise ProbeFailure(
                            ErrorKind.PROTOCOL, f"HTTP/2 stream reset (error {event.error_code})"
                        )
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise ProbeFailure(
                            ErrorKind.PROTOCOL,
                            f"HTTP/2 connection terminated (error {event.error_code})",
                        )
                    elif isinstance(event, h2.events.WindowUpdated):
                        push_body()
                conn.write(h.data_to_send())
                data = await conn.read(_READ, read_limit)
    except h2.exceptions.ProtocolError as exc:
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"HTTP/2 protocol error during {phase}: {exc}"
        ) from None


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    headers = []
    for spec in values.get("request_headers") or ():
        name, sep, value = spec.partition(":")
        if not sep or not name.strip():
            problems.append(DefinitionError("-H", f"expected 'NAME: VALUE', got {spec!r}"))
            continue
        headers.append([name.strip(), value.strip()])
    if headers:
        definition["headers"] = headers
    if "method" not in definition:
        definition["method"] = "POST" if definition.get("body") is not None else "GET"
    if values.get("expect_status") is not None:
        try:
            add_assertion(definition, StatusIn.parse(values["expect_status"]))
        except DefinitionError as exc:
            problems.append(option_problem("--expect-status", exc))
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    for spec in values.get("header") or ():
        name, sep, pattern = spec.partition(":")
        if not sep or not name.strip():
            problems.append(DefinitionError("--header", f"expected NAME:REGEX, got {spec!r}"))
            continue
        try:
            add_assertion(definition, HeaderMatches(name.strip(), pattern))
        except DefinitionError as exc:
            problems.append(option_problem("--header", exc))
    for expr, op, text in values.get("jsonpath") or ():
        try:
            add_assertion(definition, JsonPath(expr, op, _json_value(text)))
        except DefinitionError as exc:
            problems.append(option_problem("--jsonpath", exc))
    try:
        cert_assertion(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    if values.get("http2"):
        definition["http_version"] = "2"
    try:
        tls = tls_definition(values)
    except DefinitionError as exc:
        problems.append(exc)
    else:
        if values.get("sni"):
            tls = {**(tls or {}), "server_name": values["sni"]}
        if tls is not None:
            definition["tls"] = tls
    if problems:
        raise DefinitionErrors(problems)


def _json_value(text: str) -> Any:
    """``--jsonpath``'s VALUE: a JSON literal when it reads as one (``3``, ``true``, ``null``,
    ``"3"``), else the text itself (``ok``)."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


KIND = ProbeKind(
    name="http",
    cls=HttpProbe,
    summary="request a URL (http:// or https://) and check the response",
    target=Url(),
    options=(
        Option(
            ("--method",),
            field="method",
            metavar="M",
            help="request method (default GET, POST with --data)",
        ),
        Option(("--data",), field="body", metavar="BODY", help="request body"),
        Option(
            ("-H", "--request-header"),
            dest="request_headers",
            action="append",
            metavar="'NAME: VALUE'",
            sets=("headers",),
            help="send this request header (repeatable)",
        ),
        Option(
            ("--expect-status",),
            dest="expect_status",
            metavar="CODES",
            help="accepted status codes, e.g. 200-299,301 (default 200-299)",
        ),
        Option(
            ("--header",),
            dest="header",
            action="append",
            metavar="NAME:RE",
            help="a value of response header NAME matches RE (repeatable)",
        ),
        Option(
            ("--jsonpath",),
            dest="jsonpath",
            action="append",
            nargs=3,
            metavar=("EXPR", "OP", "VALUE"),
            sets=("assertions",),
            help=(
                "the JSON body's value at EXPR ($.a.b[0]) compares to VALUE with OP: eq ne lt "
                "le gt ge contains matches, or exists/absent (VALUE ignored); VALUE is read as "
                "JSON when it is (3, true, null), else as text (repeatable)"
            ),
        ),
        *BODY_OPTIONS,
        *(attrs.evolve(o, sets=("tls",)) if o.dest == "ca_file" else o for o in TLS_OPTIONS),
        Option(
            ("--sni",),
            dest="sni",
            metavar="NAME",
            sets=("tls",),
            help="send NAME as the TLS server name and verify the certificate against it",
        ),
        *CERT_OPTIONS,
        Option(
            ("--http2",),
            dest="http2",
            action="flag",
            sets=("http_version",),
            help=(
                "speak HTTP/2: offered by ALPN over TLS (HTTP/1.1 when the server declines), "
                "with prior knowledge over http://"
            ),
        ),
    ),
    to_definition=_to_definition,
    metrics=(
        Metric(
            "status_code",
            "probekit_http_status_code",
            "HTTP status code of the last check's final response.",
        ),
        Metric("redirects", "probekit_http_redirects", "Redirects followed by the last check."),
        Metric(
            "body_bytes",
            "probekit_http_body_bytes",
            "Bytes of the final response's body (after decompression).",
        ),
        Metric(
            "http_version",
            "probekit_http_version",
            "HTTP version of the final response (1.1 or 2).",
        ),
    ),
    docs="probes/http.md",
    tls_field="tls",
    describe=lambda result: (
        f"status {int(result.metrics['status_code'])}" if "status_code" in result.metrics else None
    ),
)
