"""DnsProbe: ask a DNS server one question and check the answer.

Messages are built and parsed with dnspython (the ``dns`` extra: ``pip install probekit[dns]``),
imported when a check runs, never when this module is. The bytes go through the dial path: the
server's name is resolved (timed as ``resolve``) and every address checked against the egress
policy before a socket exists, so the policy applies to the *server*, never to the name asked
about. A name to query is not a host to connect to.

Over UDP the socket is connected to the server's address, so the kernel drops datagrams from
anyone else; the reply's id, QR bit, opcode and question must match the query, or the check is
DOWN/``protocol`` (a spoofed or garbled reply is not skipped and waited past). A truncated (TC)
UDP reply is asked again over TCP, to the same address (phases ``connect`` and ``query_tcp``,
metric ``truncated`` 1). Over TCP (``transport = "tcp"``) a message carries its 2-byte length
prefix, and with ``tls`` the TCP connection is DNS over TLS (RFC 7858, port 853).

Phases: ``resolve``, ``query`` (UDP); ``resolve``, ``connect``, ``tls`` (with ``tls``), ``query``
(TCP); ``connect`` and ``query_tcp`` after a truncated UDP reply. Metrics: ``rcode``, ``answers``,
``ttl_min``, ``soa_serial`` (SOA questions), ``authoritative``, ``truncated`` (UDP) and
``bytes_received``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import attrs

from .._assertions import Assertion, assertion_tuple
from .._dial import Connection, Datagram
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import ErrorKind, Result
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._base import Attempt, ProbeBase
from ._fields import port as _port
from ._kind import Metric, Name, Option, ProbeKind
from ._options import TLS_OPTIONS, secret_from_env, tls_definition

if TYPE_CHECKING:
    import dns.message

__all__ = [
    "DEFAULT_PORT",
    "KIND",
    "RCODES",
    "RESOLV_CONF",
    "TSIG_ALGORITHMS",
    "TYPES",
    "DnsProbe",
    "system_nameserver",
]

log = logging.getLogger("probekit.probes.dns")

#: The record types a check may ask for.
TYPES: Final = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA")
#: Response codes by name (RFC 1035, 2136, 6891); BADVERS needs EDNS, which every query has.
RCODES: Final[Mapping[str, int]] = {
    "NOERROR": 0,
    "FORMERR": 1,
    "SERVFAIL": 2,
    "NXDOMAIN": 3,
    "NOTIMP": 4,
    "REFUSED": 5,
    "YXDOMAIN": 6,
    "YXRRSET": 7,
    "NXRRSET": 8,
    "NOTAUTH": 9,
    "NOTZONE": 10,
    "BADVERS": 16,
}
_RCODE_NAMES: Final = {number: name for name, number in RCODES.items()}
#: The TSIG algorithms a ``tsig_key`` may use.
TSIG_ALGORITHMS: Final = (
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
    "hmac-sha224",
    "hmac-sha1",
    "hmac-md5",
)
DEFAULT_PORT: Final = 53
#: Where the system's nameserver is read from when a probe names no ``server`` (a module
#: attribute so that tests can point it at a file of their own).
RESOLV_CONF = "/etc/resolv.conf"
#: The EDNS UDP payload size offered (the DNS flag day 2020 value): larger replies come back
#: truncated and are asked again over TCP.
EDNS_PAYLOAD: Final = 1232
#: The most bytes a DNS message can have (its TCP length prefix is 16 bits).
MESSAGE_LIMIT: Final = 65535

_HEADER = 12
_QR = 0x8000
_TC = 0x0200
_AA = 0x0400
_EXCERPT = 80
_SHOWN_ANSWERS = 5
_NAME_TYPES = frozenset({"CNAME", "NS", "PTR"})
_LAST_FIELD_TYPES = frozenset({"MX", "SRV", "CAA"})
_RESOLV_CACHE_SECONDS = 5.0
_resolv_cache: dict[str, tuple[float, str | None]] = {}


# -- the system's nameserver -----------------------------------------------------------------------


def _read_nameserver(path: str) -> str | None:
    """The first ``nameserver`` of a resolv.conf file, or None (no file, or no entry)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                words = re.split(r"[#;]", line, maxsplit=1)[0].split()
                if len(words) >= 2 and words[0] == "nameserver":
                    return words[1]
    except OSError as exc:
        log.debug("cannot read %s: %s", path, exc)
    return None


async def system_nameserver(path: str | None = None) -> str | None:
    """The system's first nameserver (``/etc/resolv.conf``), read at most every few seconds
    in a worker thread, so a check never blocks the event loop on the file."""
    path = path or RESOLV_CONF
    now = time.monotonic()
    cached = _resolv_cache.get(path)
    if cached is not None and now - cached[0] < _RESOLV_CACHE_SECONDS:
        return cached[1]
    server = await asyncio.to_thread(_read_nameserver, path)
    _resolv_cache[path] = (now, server)
    return server


# -- definition-time checks ------------------------------------------------------------------------


def _upper(value: str) -> str:
    return value.upper() if isinstance(value, str) else value


def _upper_all(value: Sequence[str]) -> tuple[str, ...]:
    raw: object = value
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise DefinitionError("valid_rcodes", f"expected a list of names, got {raw!r}")
    return tuple(v.upper() if isinstance(v, str) else v for v in value)


def _expected(value: Sequence[str]) -> tuple[str, ...]:
    raw: object = value
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise DefinitionError("expect_answers", f"expected a list of values, got {raw!r}")
    return tuple(value)


def _server(value: str | None) -> str | None:
    raw: object = value
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise DefinitionError("server", f"a server must be a string, got {type(raw).__name__}")
    if raw.startswith("[") and raw.endswith("]"):
        return raw[1:-1]
    return raw


def _check_name(name: object) -> None:
    """A DNS name as people write it: labels of 1-63 bytes (IDNA for non-ASCII), 253 in all."""
    if not isinstance(name, str):
        raise DefinitionError("name", f"a name must be a string, got {type(name).__name__}")
    if not name.strip():
        raise DefinitionError("name", "a name is required")
    if name == ".":
        return
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in name):
        raise DefinitionError("name", f"not a DNS name: {name!r}")
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    total = 0
    for label in labels:
        if not label:
            raise DefinitionError("name", f"an empty label in {name!r}")
        try:
            encoded = label.encode("ascii") if label.isascii() else label.encode("idna")
        except UnicodeError:
            raise DefinitionError("name", f"not a valid international label: {label!r}") from None
        if len(encoded) > 63:
            raise DefinitionError("name", f"a label is over 63 bytes: {label[:20]!r}…")
        total += len(encoded) + 1
    if total > 254:
        raise DefinitionError("name", f"over 253 characters ({total - 1})")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


@attrs.frozen
class DnsProbe(ProbeBase):
    """Ask ``server`` (by default the system's first nameserver) for the ``type`` records of
    ``name``, and check the reply.

    The response code must be one of ``valid_rcodes`` (else DOWN/``protocol`` naming it; list
    ``NXDOMAIN`` to check that a name does *not* exist). Answers are the records of the asked
    type in the answer section (after any CNAME chain), rendered as text: an address, a name
    with its final dot, ``10 mail.example.`` for MX, ``0 5 5060 sip.example.`` for SRV, the
    joined strings of a TXT record, the RFC 1035 text of SOA and CAA. ``expect_answers`` must
    each be among them (addresses compare as addresses; names ignore case and the final dot;
    for MX, SRV and CAA the target alone matches too), every answer must match
    ``answers_match``, none may match ``answers_not_match``, and there must be from
    ``min_answers`` (default: 1 for a NOERROR reply, else 0) to ``max_answers``. A failed one is
    DOWN/``assertion`` with an outcome saying what was expected and what came back.

    ``name`` may be an IP address for a ``PTR`` question (it is asked as its
    ``in-addr.arpa``/``ip6.arpa`` name). ``recursion`` sets the RD bit. ``tsig_key`` (a
    base64 :class:`~probekit.Secret`) with ``tsig_name`` signs the query with TSIG and
    requires a signed reply; a refused key or signature is DOWN/``auth``. ``max_bytes`` caps
    the reply (a larger one is DOWN/``protocol``, over TCP refused from its length prefix).
    ``assertions`` see the answers, one per line, as the body.
    """

    kind: ClassVar[str] = "dns"

    name: str
    type: str = attrs.field(default="A", converter=_upper)
    server: str | None = attrs.field(default=None, converter=_server)
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    transport: Literal["udp", "tcp"] = "udp"
    tls: TlsOptions | None = None
    valid_rcodes: tuple[str, ...] = attrs.field(default=("NOERROR",), converter=_upper_all)
    recursion: bool = True
    expect_answers: tuple[str, ...] = attrs.field(default=(), converter=_expected)
    answers_match: str | None = None
    answers_not_match: str | None = None
    min_answers: int | None = None
    max_answers: int | None = None
    tsig_name: str | None = None
    tsig_key: Secret | None = None
    tsig_algorithm: str = "hmac-sha256"
    max_bytes: int = MESSAGE_LIMIT
    ip_family: Family | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        _check_name(self.name)
        if self.type not in TYPES:
            raise DefinitionError("type", f"expected one of {', '.join(TYPES)}, got {self.type!r}")
        if self.server is not None and (
            not self.server.strip() or any(c.isspace() or c in "\0/" for c in self.server)
        ):
            raise DefinitionError("server", f"not a host name or address: {self.server!r}")
        if self.transport not in ("udp", "tcp"):
            raise DefinitionError("transport", f"expected udp or tcp, got {self.transport!r}")
        if self.tls is not None:
            if not isinstance(self.tls, TlsOptions):
                raise DefinitionError("tls", f"expected TlsOptions, got {self.tls!r}")
            if self.transport != "tcp":
                raise DefinitionError("tls", 'DNS over TLS needs transport = "tcp"')
        if not self.valid_rcodes:
            raise DefinitionError("valid_rcodes", "at least one response code")
        for i, code in enumerate(self.valid_rcodes):
            if code not in RCODES:
                raise DefinitionError(
                    f"valid_rcodes[{i}]", f"expected one of {', '.join(RCODES)}, got {code!r}"
                )
        if not isinstance(self.recursion, bool):
            raise DefinitionError("recursion", f"expected true or false, got {self.recursion!r}")
        self._check_answers()
        self._check_tsig()
        raw_max: object = self.max_bytes
        if isinstance(raw_max, bool) or not isinstance(raw_max, int) or not 12 <= raw_max <= 65535:
            raise DefinitionError(
                "max_bytes", f"must be an integer from 12 to 65535, got {self.max_bytes!r}"
            )
        if self.ip_family is not None and self.ip_family not in ("any", "ipv4", "ipv6"):
            raise DefinitionError(
                "ip_family", f"expected any, ipv4 or ipv6, got {self.ip_family!r}"
            )
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")

    def _check_answers(self) -> None:
        for i, value in enumerate(self.expect_answers):
            where = f"expect_answers[{i}]"
            if not isinstance(value, str) or not value.strip():
                raise DefinitionError(where, f"expected a non-empty string, got {value!r}")
            if self.type in ("A", "AAAA"):
                address = _address(value)
                version = 4 if self.type == "A" else 6
                if address is None or address.version != version:
                    raise DefinitionError(where, f"not an IPv{version} address: {value!r}")
        for field in ("answers_match", "answers_not_match"):
            pattern: object = getattr(self, field)
            if pattern is None:
                continue
            if not isinstance(pattern, str):
                raise DefinitionError(field, f"expected a regular expression, got {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DefinitionError(field, f"invalid regex: {exc}") from None
        for field in ("min_answers", "max_answers"):
            count: object = getattr(self, field)
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 0
            ):
                raise DefinitionError(field, f"must be a whole number >= 0, got {count!r}")
        if (
            self.min_answers is not None
            and self.max_answers is not None
            and self.min_answers > self.max_answers
        ):
            raise DefinitionError("min_answers", "min_answers is above max_answers")

    def _check_tsig(self) -> None:
        key: object = self.tsig_key
        if key is not None:
            if not isinstance(key, Secret):
                # The type only: the value may be the key itself.
                raise DefinitionError("tsig_key", f"expected a Secret, got {type(key).__name__}")
            try:
                decoded = base64.b64decode(key.reveal(), validate=True)
            except (binascii.Error, ValueError):
                raise DefinitionError("tsig_key", "not base64 (the key is not shown)") from None
            if not decoded:
                raise DefinitionError("tsig_key", "an empty key")
            if self.tsig_name is None:
                raise DefinitionError("tsig_name", "a TSIG key needs its name (tsig_name)")
        if self.tsig_name is not None:
            try:
                _check_name(self.tsig_name)
            except DefinitionError as exc:
                raise DefinitionError("tsig_name", exc.message) from None
            if key is None:
                raise DefinitionError("tsig_key", "tsig_name needs a tsig_key")
        if self.tsig_algorithm not in TSIG_ALGORITHMS:
            raise DefinitionError(
                "tsig_algorithm",
                f"expected one of {', '.join(TSIG_ALGORITHMS)}, got {self.tsig_algorithm!r}",
            )

    @property
    def target(self) -> str:
        """``NAME TYPE``, and ``@SERVER`` (with ``:PORT`` when not 53) as dig writes it."""
        text = f"{self.name} {self.type}"
        if self.server is not None:
            server = f"[{self.server}]" if ":" in self.server else self.server
            text += f" @{server}"
            if self.port != DEFAULT_PORT:
                text += f":{self.port}" if ":" not in self.server else f" port {self.port}"
        elif self.port != DEFAULT_PORT:
            text += f" port {self.port}"
        return text

    @property
    def host(self) -> str:
        """The server asked (the key of per-host concurrency limits); ``resolv.conf`` when the
        system's nameserver is asked."""
        return self.server or "resolv.conf"

    async def run(self, attempt: Attempt) -> None:
        try:
            import dns.message  # noqa: F401 - the extra is checked here, before any packet
        except ImportError:
            raise ProbeFailure(
                ErrorKind.INTERNAL, "the dns probe needs dnspython: install probekit[dns]"
            ) from None
        server = self.server
        if server is None:
            server = await system_nameserver()
            if server is None:
                raise ProbeFailure(
                    ErrorKind.INTERNAL,
                    f"no nameserver in {RESOLV_CONF}: give the probe a server",
                )
        query = self._query()
        wire = query.to_wire()
        if self.transport == "tcp":
            conn = await attempt.connect(server, self.port, tls=self.tls, family=self.ip_family)
            with attempt.phase("query"):
                reply = await self._ask_tcp(attempt, conn, query, wire)
                self._check_reply(attempt, query, reply)
        else:
            endpoint = await attempt.datagram(server, self.port, family=self.ip_family)
            with attempt.phase("query"):
                data = await self._ask_udp(attempt, endpoint, wire)
                truncated = _header_flags(data, query.id) & _TC != 0
                attempt.metric("truncated", int(truncated))
                if not truncated:
                    reply = self._parse(data, query)
                    self._check_reply(attempt, query, reply)
            if truncated:
                log.debug("dns %s: truncated over UDP, asking again over TCP", self.target)
                conn = await attempt.connect(str(endpoint.ip), self.port)
                with attempt.phase("query_tcp"):
                    reply = await self._ask_tcp(attempt, conn, query, wire)
                    self._check_reply(attempt, query, reply)
        self._check_answers_of(attempt, reply)

    # -- the exchange --------------------------------------------------------------------------

    def _query(self) -> dns.message.Message:
        import dns.flags
        import dns.message
        import dns.name
        import dns.rdatatype
        import dns.reversename
        import dns.tsig

        address = _address(self.name) if self.type == "PTR" else None
        if address is not None:
            qname = dns.reversename.from_address(str(address))
        else:
            qname = dns.name.from_text(self.name, idna_codec=dns.name.IDNA_2003)
        query = dns.message.make_query(
            qname, dns.rdatatype.from_text(self.type), use_edns=0, payload=EDNS_PAYLOAD
        )
        if not self.recursion:
            query.flags &= ~dns.flags.RD
        if self.tsig_key is not None and self.tsig_name is not None:
            key = dns.tsig.Key(self.tsig_name, self.tsig_key.reveal(), self.tsig_algorithm)
            query.use_tsig(key)
        return query

    async def _ask_udp(self, attempt: Attempt, endpoint: Datagram, wire: bytes) -> bytes:
        try:
            await endpoint.send(wire)
            data = await endpoint.recv(self.max_bytes + 1, attempt.timeouts.read)
        except ConnectionRefusedError:
            raise ProbeFailure(
                ErrorKind.CONNECT,
                f"port unreachable: nothing answers DNS on {endpoint.address} (UDP)",
            ) from None
        attempt.metric("bytes_received", len(data))
        if len(data) > self.max_bytes:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the reply is over max_bytes ({self.max_bytes} bytes)"
            )
        return data

    async def _ask_tcp(
        self, attempt: Attempt, conn: Connection, query: dns.message.Message, wire: bytes
    ) -> dns.message.Message:
        await attempt.write(conn, len(wire).to_bytes(2, "big") + wire)
        prefix = await _read_exactly(attempt, conn, 2, "the reply's length prefix")
        length = int.from_bytes(prefix, "big")
        if length > self.max_bytes:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the reply announces {length} bytes, over max_bytes ({self.max_bytes}); not read",
            )
        data = await _read_exactly(attempt, conn, length, f"the {length}-byte reply")
        attempt.metric("bytes_received", length + 2)
        _header_flags(data, query.id)
        return self._parse(data, query)

    def _parse(self, data: bytes, query: dns.message.Message) -> dns.message.Message:
        import dns.exception
        import dns.message
        import dns.name
        import dns.tsig

        try:
            if query.keyring:
                return dns.message.from_wire(data, keyring=query.keyring, request_mac=query.mac)
            return dns.message.from_wire(data, keyring=False)
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadKey) as exc:
            raise ProbeFailure(ErrorKind.AUTH, f"TSIG refused: {_tsig_problem(exc)}") from None
        except dns.message.UnknownTSIGKey:
            raise ProbeFailure(
                ErrorKind.AUTH, "the reply is signed with a key other than the query's"
            ) from None
        except dns.tsig.BadTime:
            raise ProbeFailure(
                ErrorKind.AUTH, "the reply's TSIG time is outside its fudge (clock skew?)"
            ) from None
        except dns.exception.DNSException as exc:
            rcode = data[3] & 0x0F
            if query.keyring and rcode == RCODES["NOTAUTH"]:
                raise ProbeFailure(
                    ErrorKind.AUTH, "the server refused the TSIG key (NOTAUTH, unsigned)"
                ) from None
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not a DNS message: {_problem(exc)}") from None

    def _check_reply(
        self, attempt: Attempt, query: dns.message.Message, reply: dns.message.Message
    ) -> None:
        """The reply answers this query; its rcode is one of ``valid_rcodes``."""
        import dns.opcode

        if dns.opcode.from_flags(int(reply.flags)) != dns.opcode.QUERY:
            raise ProbeFailure(ErrorKind.PROTOCOL, "the reply's opcode is not QUERY")
        rcode = int(reply.rcode())
        rcode_name = _RCODE_NAMES.get(rcode, f"RCODE{rcode}")
        attempt.metric("rcode", rcode)
        attempt.metric("answer_rrs", sum(len(rrset) for rrset in reply.answer))
        attempt.metric("authority_rrs", sum(len(rrset) for rrset in reply.authority))
        attempt.metric("additional_rrs", sum(len(rrset) for rrset in reply.additional))
        attempt.metric("authoritative", int(int(reply.flags) & _AA != 0))
        if reply.question != query.question and (
            reply.question or rcode_name in ("NOERROR", "NXDOMAIN")
        ):
            asked = query.question[0]
            got = ", ".join(f"{q.name} {_type_text(q.rdtype)}" for q in reply.question[:2])
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the reply answers another question ({got or 'none'}), not "
                f"{asked.name} {self.type}",
            )
        passed = rcode_name in self.valid_rcodes
        attempt.outcome("rcode", passed, " or ".join(self.valid_rcodes), rcode_name)
        if passed:
            return
        if query.keyring and rcode_name == "NOTAUTH":
            raise ProbeFailure(ErrorKind.AUTH, "the server refused the TSIG key (NOTAUTH)")
        raise ProbeFailure(
            ErrorKind.PROTOCOL,
            f"the server answered {rcode_name} (expected {' or '.join(self.valid_rcodes)})",
        )

    # -- the answers ---------------------------------------------------------------------------

    def _check_answers_of(self, attempt: Attempt, reply: dns.message.Message) -> None:
        import dns.rdataclass
        import dns.rdatatype

        rdtype = dns.rdatatype.from_text(self.type)
        answers: list[str] = []
        ttls: list[int] = []
        serial: int | None = None
        for rrset in reply.answer:
            ttls.append(rrset.ttl)
            if rrset.rdtype != rdtype or rrset.rdclass != dns.rdataclass.IN:
                continue
            for rdata in rrset:
                answers.append(_render(self.type, rdata))
                if serial is None and self.type == "SOA":
                    serial = int(rdata.serial)
        attempt.metric("answers", len(answers))
        if ttls:
            attempt.metric("ttl_min", min(ttls))
        if serial is not None:
            attempt.metric("soa_serial", serial)
        attempt.observe(body="\n".join(answers).encode())
        rcode = int(reply.rcode())
        least = self.min_answers
        if least is None:
            least = 1 if rcode == 0 else 0
        most = self.max_answers
        count_ok = least <= len(answers) and (most is None or len(answers) <= most)
        attempt.outcome("answers", count_ok, _count_text(least, most, self.type), _shown(answers))
        for expected in self.expect_answers:
            wanted = _normal(self.type, expected)
            found = any(_matches(self.type, wanted, answer) for answer in answers)
            attempt.outcome(
                "expect_answer",
                found,
                f"{expected} among the {self.type} answers",
                _shown(answers),
            )
        if self.answers_match is not None:
            pattern = re.compile(self.answers_match)
            misses = [a for a in answers if not pattern.search(a)]
            attempt.outcome(
                "answers_match",
                not misses,
                f"every answer to match /{self.answers_match}/",
                f"{_shown(misses)} not matching" if misses else _shown(answers),
            )
        if self.answers_not_match is not None:
            pattern = re.compile(self.answers_not_match)
            hits = [a for a in answers if pattern.search(a)]
            attempt.outcome(
                "answers_not_match",
                not hits,
                f"no answer to match /{self.answers_not_match}/",
                f"{_shown(hits)} matching" if hits else _shown(answers),
            )


async def _read_exactly(attempt: Attempt, conn: Connection, size: int, what: str) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await attempt.read(conn, size - len(received))
        if not data:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the connection closed after {len(received)} of {what}'s {size} bytes",
            )
        received += data
    return bytes(received)


def _header_flags(data: bytes, query_id: int) -> int:
    """The flags of a reply's header, once it is a reply to this query (else a protocol failure,
    before the rest is parsed: a spoofed or stray reply is refused as such)."""
    if len(data) < _HEADER:
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"a {len(data)}-byte reply is shorter than a DNS header"
        )
    reply_id = int.from_bytes(data[0:2], "big")
    flags = int.from_bytes(data[2:4], "big")
    if not flags & _QR:
        raise ProbeFailure(ErrorKind.PROTOCOL, "not a DNS response (the QR bit is clear)")
    if reply_id != query_id:
        raise ProbeFailure(
            ErrorKind.PROTOCOL,
            f"the reply's id {reply_id} is not the query's ({query_id}): spoofed or stray",
        )
    return flags


def _problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "…"
    return text


def _tsig_problem(exc: BaseException) -> str:
    names = {
        "PeerBadKey": "the server does not know the key (BADKEY)",
        "PeerBadSignature": "the server says the signature is wrong (BADSIG)",
        "PeerBadTime": "the server says the signing time is off (BADTIME)",
        "PeerBadTruncation": "the server refused the truncated MAC (BADTRUNC)",
        "BadSignature": "the reply's signature does not verify with the key",
        "BadKey": "the reply is signed with another key",
    }
    return names.get(type(exc).__name__, _problem(exc))


def _type_text(rdtype: int) -> str:
    import dns.rdatatype

    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))


def _render(rtype: str, rdata: Any) -> str:
    """One answer as text: an address, a name, ``pref exchange``, the TXT strings joined, ..."""
    if rtype in ("A", "AAAA"):
        return str(rdata.address)
    if rtype in _NAME_TYPES:
        return str(rdata.target.to_text())
    if rtype == "MX":
        return f"{rdata.preference} {rdata.exchange.to_text()}"
    if rtype == "SRV":
        return f"{rdata.priority} {rdata.weight} {rdata.port} {rdata.target.to_text()}"
    if rtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return str(rdata.to_text())


def _normal(rtype: str, text: str) -> str:
    """The form answers and expected values are compared in."""
    if rtype in ("A", "AAAA"):
        address = _address(text.strip())
        return str(address) if address is not None else text.strip()
    if rtype == "TXT":
        return text
    words = [w if w == "." else w.rstrip(".") for w in text.lower().split()]
    return " ".join(words)


def _matches(rtype: str, wanted: str, answer: str) -> bool:
    have = _normal(rtype, answer)
    if wanted == have:
        return True
    if rtype in _LAST_FIELD_TYPES and have:
        return wanted.strip('"') == have.split()[-1].strip('"')
    return False


def _count_text(least: int, most: int | None, rtype: str) -> str:
    if most is None:
        return f"at least {least} {rtype} answer{'s' if least != 1 else ''}"
    if least == most:
        return f"exactly {least} {rtype} answer{'s' if least != 1 else ''}"
    return f"{least} to {most} {rtype} answers"


def _shown(answers: Sequence[str]) -> str:
    """A short listing of answers for an outcome: their count, then the first few."""
    if not answers:
        return "no answers"
    shown = []
    for answer in answers[:_SHOWN_ANSWERS]:
        text = answer if len(answer) <= _EXCERPT else answer[:_EXCERPT] + "…"
        shown.append(repr(text) if any(c.isspace() for c in text) or not text else text)
    more = f" and {len(answers) - _SHOWN_ANSWERS} more" if len(answers) > _SHOWN_ANSWERS else ""
    return f"{len(answers)}: {', '.join(shown)}{more}"


# -- the command-line form -------------------------------------------------------------------------


def _rcode_option(text: str) -> str:
    code = text.upper()
    if code not in RCODES:
        raise ValueError(f"expected one of {', '.join(RCODES)}, got {text!r}")
    return code


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    if values.get("tcp"):
        definition["transport"] = "tcp"
    try:
        tls = tls_definition(values)
    except DefinitionError as exc:
        problems.append(exc)
        tls = None
    if tls is not None and not values.get("tls"):
        problems.append(DefinitionError("--insecure/--ca-file", "need --tls for dns checks"))
    if values.get("tls"):
        definition["transport"] = "tcp"
        definition["tls"] = tls or {}
        definition.setdefault("port", 853)
    if values.get("no_recursion"):
        definition["recursion"] = False
    try:
        secret_from_env(
            values, definition, dest="tsig_key_env", field="tsig_key", label="--tsig-key-env"
        )
    except DefinitionError as exc:
        problems.append(exc)
    if problems:
        raise DefinitionErrors(problems)


def _describe(result: Result) -> str | None:
    code = result.metrics.get("rcode")
    if code is None:
        return None
    text = _RCODE_NAMES.get(int(code), f"RCODE{int(code)}")
    answers = next((a for a in result.assertions if a.name == "answers"), None)
    if answers is not None:
        shown = answers.observed
        text += f", {shown}" if shown == "no answers" else f", answers {shown}"
    ttl = result.metrics.get("ttl_min")
    if ttl is not None:
        text += f" (TTL {int(ttl)} s)"
    if result.metrics.get("truncated"):
        text += ", truncated over UDP and asked again over TCP"
    return text


KIND = ProbeKind(
    name="dns",
    cls=DnsProbe,
    summary="ask a DNS server for NAME's records, check the rcode and the answers",
    target=Name(field="name", what="NAME"),
    options=(
        Option(
            ("--server",),
            field="server",
            metavar="HOST",
            help="the DNS server to ask (default: the first nameserver of /etc/resolv.conf)",
        ),
        Option(
            ("--port",),
            field="port",
            metavar="PORT",
            parse=int,
            help="the server's port (default 53; 853 with --tls)",
        ),
        Option(
            ("--type",),
            field="type",
            metavar="TYPE",
            parse=str.upper,
            choices=TYPES,
            help=f"the record type to ask for: {', '.join(TYPES)} (default A)",
        ),
        Option(
            ("--tcp",),
            dest="tcp",
            action="flag",
            sets=("transport",),
            help="ask over TCP (default: UDP, and TCP after a truncated reply)",
        ),
        Option(
            ("--tls",),
            dest="tls",
            action="flag",
            sets=("tls", "transport"),
            help="ask over DNS over TLS (RFC 7858; port 853 unless --port)",
        ),
        *TLS_OPTIONS,
        Option(
            ("--rcode",),
            field="valid_rcodes",
            action="append",
            metavar="RCODE",
            parse=_rcode_option,
            help="a response code that counts as up (repeatable; default NOERROR; "
            "NXDOMAIN to check that a name does not exist)",
        ),
        Option(
            ("--expect-address", "--expect"),
            field="expect_answers",
            action="append",
            metavar="VALUE",
            help="an answer that must be among those returned (repeatable): an address, "
            "a name, an MX or SRV target, a TXT text",
        ),
        Option(
            ("--answers-match",),
            field="answers_match",
            metavar="RE",
            help="every answer must match the regular expression RE",
        ),
        Option(
            ("--answers-not-match",),
            field="answers_not_match",
            metavar="RE",
            help="no answer may match the regular expression RE",
        ),
        Option(
            ("--min-answers",),
            field="min_answers",
            metavar="N",
            parse=int,
            help="at least N answers (default 1 for a NOERROR reply)",
        ),
        Option(
            ("--max-answers",),
            field="max_answers",
            metavar="N",
            parse=int,
            help="at most N answers",
        ),
        Option(
            ("--no-recursion",),
            dest="no_recursion",
            action="flag",
            sets=("recursion",),
            help="clear the RD bit (ask an authoritative server about its own zone)",
        ),
        Option(
            ("--tsig-name",),
            field="tsig_name",
            metavar="NAME",
            help="sign the query with the TSIG key of this name (needs --tsig-key-env)",
        ),
        Option(
            ("--tsig-key-env",),
            dest="tsig_key_env",
            metavar="VAR",
            sets=("tsig_key",),
            help="the base64 TSIG key, read from environment variable VAR",
        ),
        Option(
            ("--tsig-algorithm",),
            field="tsig_algorithm",
            metavar="ALG",
            choices=TSIG_ALGORITHMS,
            help="the TSIG algorithm (default hmac-sha256)",
        ),
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("rcode", "probekit_dns_rcode", "The reply's response code (0 NOERROR, 3 NXDOMAIN)."),
        Metric("answers", "probekit_dns_answers", "Records of the asked type in the answer."),
        Metric(
            "ttl_min",
            "probekit_dns_ttl_min_seconds",
            "The lowest TTL of the answer section's records, CNAMEs included.",
        ),
        Metric("soa_serial", "probekit_dns_soa_serial", "The SOA serial (SOA questions)."),
        Metric(
            "authoritative",
            "probekit_dns_authoritative",
            "1 when the reply has the AA (authoritative answer) bit.",
        ),
        Metric(
            "truncated",
            "probekit_dns_truncated",
            "1 when the UDP reply was truncated and the question asked again over TCP.",
        ),
        Metric("bytes_received", "probekit_dns_reply_bytes", "Bytes of the DNS reply."),
        Metric(
            "answer_rrs",
            "probekit_dns_answer_rrs",
            "Records in the reply's answer section, of every type.",
        ),
        Metric(
            "authority_rrs",
            "probekit_dns_authority_rrs",
            "Records in the reply's authority section.",
        ),
        Metric(
            "additional_rrs",
            "probekit_dns_additional_rrs",
            "Records in the reply's additional section (the EDNS OPT record not counted).",
        ),
    ),
    docs="probes/dns.md",
    tls_field="tls",
    describe=_describe,
)
