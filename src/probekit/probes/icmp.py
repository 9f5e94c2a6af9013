"""IcmpProbe: ping a host with ICMP echo requests (IPv4 and IPv6) and report loss and round trips.

It writes the echo requests itself (RFC 792, RFC 4443) and sends them from a datagram ICMP socket
that the dial path opened after resolving the host and checking every address against the egress
policy, so no ICMP library is loaded and no packet goes to an address the policy denies. Linux
gives such sockets to the groups in ``net.ipv4.ping_group_range`` (it also governs IPv6); the
kernel sets the echo identifier and routes replies to the socket that sent the requests. Where
the range leaves the process out, the dial path gives a raw ICMP socket to a process allowed
one (root, ``CAP_NET_RAW``); the parser also reads what a raw socket receives (an IPv4 header
first, other programs' messages), so the probe does not depend on the kind of socket it got.

Replies are matched on sequence number and payload (a random token per check); every datagram is
read with a bound (the size of the expected reply plus the largest IPv4 header), and anything that
is not a reply to this check (short, corrupt, oversized, another sequence, a duplicate, late) is
ignored and counted in the ``ignored`` metric, never raised.

Phases: ``resolve``, ``ping`` (sending ``count`` requests ``ping_interval`` seconds apart and
waiting for their replies). Metrics: ``sent``, ``received``, ``loss_ratio``, ``rtt_min``,
``rtt_avg``, ``rtt_max``, ``rtt_stddev`` (seconds; the round-trip metrics only when a reply
came) and ``ignored``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import secrets
import socket
import statistics
import struct
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final

import attrs

from .._assertions import (
    Assertion,
    BodyContains,
    BodyMatches,
    CertExpiry,
    HeaderMatches,
    JsonPath,
    StatusIn,
    TlsForbidden,
    TlsRequired,
    assertion_tuple,
)
from .._dial import Datagram
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import AssertionOutcome, ErrorKind, Result, Status
from .._timeouts import Timeouts
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host
from ._fields import host as _host
from ._kind import Metric, Name, Option, ProbeKind
from ._options import family_definition

__all__ = [
    "DEFAULT_WAIT",
    "KIND",
    "MAX_COUNT",
    "MAX_SIZE",
    "IcmpProbe",
    "echo_request",
    "parse_reply",
]

log = logging.getLogger("probekit.probes.icmp")

#: How long a reply may take when ``timeouts.read`` does not say: a reply later than this after
#: its request counts as lost.
DEFAULT_WAIT: Final = 1.0
#: The most echo requests one check sends.
MAX_COUNT: Final = 100
#: The largest payload: what fits in one IPv4 datagram (65535 - 20 - 8).
MAX_SIZE: Final = 65507
#: The shortest and longest gaps between two requests.
MIN_INTERVAL: Final = 0.01
MAX_INTERVAL: Final = 60.0

_HEADER: Final = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_ECHO_REQUEST: Final = {4: 8, 6: 128}
_ECHO_REPLY: Final = {4: 0, 6: 129}
_IPV4_HEADER_MAX: Final = 60
_TOKEN_BYTES: Final = 8
# The bytes after the token, as ping(8) fills its payload.
_PATTERN: Final = bytes(range(0x10, 0x100))
# A socket that keeps reporting errors without a datagram in between is not worth more waits.
_MAX_ERRORS: Final = 16


# -- the wire format -------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(version: int, identifier: int, sequence: int, payload: bytes) -> bytes:
    """One echo request: ICMP type 8 (IPv4, with its checksum) or ICMPv6 type 128 (the kernel
    fills the ICMPv6 checksum, which covers the addresses)."""
    kind = _ECHO_REQUEST[version]
    head = _HEADER.pack(kind, 0, 0, identifier & 0xFFFF, sequence & 0xFFFF)
    if version == 6:
        return head + payload
    checksum = _checksum(head + payload)
    return _HEADER.pack(kind, 0, checksum, identifier & 0xFFFF, sequence & 0xFFFF) + payload


def parse_reply(data: bytes, version: int) -> tuple[int, bytes] | str:
    """``(sequence, payload)`` of an echo reply, or why ``data`` is not one.

    An IPv4 header in front (raw sockets, and datagram sockets on some systems) is skipped: no
    ICMP type starts with the byte 0x45-0x4f, so the two cannot be confused. The reasons are
    ``short``, ``corrupt`` (an IPv4 checksum that does not add up), ``request`` (an echo request,
    which a raw socket on loopback also sees) and ``type N`` for any other message.
    """
    if version == 4 and len(data) >= 20 and 0x45 <= data[0] <= 0x4F:
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < _HEADER.size:
        return "short"
    kind, _code, _checksum_field, _identifier, sequence = _HEADER.unpack_from(data)
    if kind == _ECHO_REQUEST[version]:
        return "request"
    if kind != _ECHO_REPLY[version]:
        return f"type {kind}"
    if version == 4 and _checksum(data) != 0:
        return "corrupt"
    return sequence, data[_HEADER.size :]


def _payload(token: bytes, size: int) -> bytes:
    """``size`` bytes: the check's random token, then ping's byte pattern, repeated."""
    filler = _PATTERN * (size // len(_PATTERN) + 1)
    return (token + filler)[:size]


def _error_text(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__


def _refused_message(exc: PermissionError, version: int) -> str:
    """What to change when the kernel will not give this process an ICMP socket."""
    if exc.errno == errno.EPERM:
        return (
            f"the kernel refused an ICMP socket ({_error_text(exc)}): something around this "
            "process (a seccomp profile, a container runtime, an LSM) forbids ICMP sockets; "
            "allow them there"
        )
    groups = sorted({os.getgid(), *os.getgroups()})
    which = "gid " + ", ".join(str(g) for g in groups)
    family = "IPv6 ping (ICMPv6) sockets too" if version == 6 else "IPv6 too"
    return (
        f"the kernel refused an ICMP socket ({_error_text(exc)}): this process "
        f"({which}) is not in net.ipv4.ping_group_range. Allow it with: "
        'sysctl -w net.ipv4.ping_group_range="0 2147483647" (or a range holding one of its '
        f"groups; persist it in /etc/sysctl.d/), or run it with CAP_NET_RAW for a raw socket. "
        f"The setting covers {family}"
    )


# -- the definition --------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _count(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    raw: object = value
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_COUNT:
        raise DefinitionError("count", f"must be an integer from 1 to {MAX_COUNT}, got {value!r}")


def _interval(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if not _is_number(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise DefinitionError(
            "ping_interval",
            f"must be a number of seconds from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}, got {value!r}",
        )


def _size(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    raw: object = value
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_SIZE:
        raise DefinitionError(
            "size", f"must be a number of payload bytes from 0 to {MAX_SIZE}, got {value!r}"
        )


def _ttl(_inst: object, _attribute: attrs.Attribute[int | None], value: int | None) -> None:
    raw: object = value
    if raw is None:
        return
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 255:
        raise DefinitionError("ttl", f"must be an integer from 1 to 255, got {value!r}")


def _rtt(_inst: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and (not _is_number(value) or value <= 0):
        raise DefinitionError(
            attribute.name, f"must be a positive number of seconds, got {value!r}"
        )


def _loss(_inst: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and (not _is_number(value) or not 0 <= value < 1):
        raise DefinitionError(
            attribute.name, f"must be a loss ratio from 0 to below 1 (0.2 is 20%), got {value!r}"
        )


# Assertions about a body, headers, a status code or TLS: an echo has none of these.
_NOT_FOR_ICMP = (
    BodyContains,
    BodyMatches,
    CertExpiry,
    HeaderMatches,
    JsonPath,
    StatusIn,
    TlsForbidden,
    TlsRequired,
)


@attrs.frozen
class IcmpProbe(ProbeBase):
    """Ping ``host``: send ``count`` ICMP echo requests of ``size`` payload bytes,
    ``ping_interval`` seconds apart, and wait for each reply at most ``timeouts.read`` (default
    :data:`DEFAULT_WAIT`) seconds after its request.

    UP when at least one reply came; DOWN/``timeout`` when none did (100% loss), or
    DOWN/``connect`` when none did and the network reported an error (unreachable, a local
    firewall refusing to send). ``loss_warn``/``loss_crit`` (ratios: 0.2 is 20%) and
    ``rtt_warn``/``rtt_crit`` (seconds, on the average round trip) make the check DEGRADED or
    DOWN through ``loss`` and ``rtt`` assertion outcomes that say what was expected and seen.
    ``ttl`` sets the requests' IPv4 TTL or IPv6 hop limit. A process the kernel gives no ICMP
    socket gets UNKNOWN with what to change.
    """

    kind: ClassVar[str] = "icmp"

    host: str = attrs.field(converter=_host)
    count: int = attrs.field(default=3, validator=_count)
    # Not "interval": in a config file's monitor table and a control-plane definition that is
    # how often the monitor runs, and it never reaches the probe.
    ping_interval: float = attrs.field(default=0.2, validator=_interval)
    size: int = attrs.field(default=56, validator=_size)
    ttl: int | None = attrs.field(default=None, validator=_ttl)
    rtt_warn: float | None = attrs.field(default=None, validator=_rtt)
    rtt_crit: float | None = attrs.field(default=None, validator=_rtt)
    loss_warn: float | None = attrs.field(default=None, validator=_loss)
    loss_crit: float | None = attrs.field(default=None, validator=_loss)
    ip_family: Family | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        check_family(self.ip_family)
        literal = _literal(self.host)
        if literal is not None and self.ip_family in ("ipv4", "ipv6"):
            wanted = 4 if self.ip_family == "ipv4" else 6
            if literal.version != wanted:
                raise DefinitionError(
                    "ip_family",
                    f"{self.ip_family} with the IPv{literal.version} address {self.host}",
                )
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")
        for low, high in (("rtt_warn", "rtt_crit"), ("loss_warn", "loss_crit")):
            warn, crit = getattr(self, low), getattr(self, high)
            if warn is not None and crit is not None and warn > crit:
                raise DefinitionError(low, f"{low} ({warn!r}) is above {high} ({crit!r})")
        for i, assertion in enumerate(self.assertions):
            if isinstance(assertion, _NOT_FOR_ICMP):
                raise DefinitionError(
                    f"assertions[{i}]",
                    f"{type(assertion).__name__} reads what an echo reply does not have; use "
                    "rtt_warn/rtt_crit, loss_warn/loss_crit or response_time",
                )
        needed = (self.count - 1) * self.ping_interval + self.wait
        if needed >= self.timeouts.total:
            raise DefinitionError(
                "timeouts.total",
                f"{self.timeouts.total:g} s is too short for {self.count} requests "
                f"{self.ping_interval:g} s apart and {self.wait:g} s for the last reply "
                f"({needed:g} s); raise it or lower count, ping_interval or timeouts.read",
            )

    @property
    def target(self) -> str:
        return self.host

    @property
    def wait(self) -> float:
        """How long after its request a reply still counts (``timeouts.read``, else 1 s)."""
        read = self.timeouts.read
        return read if read is not None else DEFAULT_WAIT

    async def run(self, attempt: Attempt) -> None:
        try:
            endpoint = await attempt.datagram(self.host, 0, protocol="icmp", family=self.ip_family)
        except PermissionError as exc:
            # Not a failure of the target: this checkpoint cannot ping at all, so UNKNOWN.
            version = 6 if self.ip_family == "ipv6" or ":" in self.host else 4
            raise ProbeFailure(ErrorKind.INTERNAL, _refused_message(exc, version)) from None
        except OSError as exc:
            raise ProbeFailure(
                ErrorKind.CONNECT, f"cannot open an ICMP socket for {self.host}: {_error_text(exc)}"
            ) from None
        version = endpoint.ip.version
        if self.ttl is not None:
            if version == 6:
                endpoint.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, self.ttl)
            else:
                endpoint.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.ttl)
        with attempt.phase("ping"):
            tally = await _Session(self, endpoint, version).run()
            tally.record(attempt)
            if not tally.rtts:
                raise ProbeFailure(*tally.failure(self, endpoint.address))
        self._judge(attempt, tally)

    def _judge(self, attempt: Attempt, tally: _Tally) -> None:
        """The ``loss`` and ``rtt`` outcomes of the thresholds that are set."""
        loss = tally.loss
        seen = f"{loss:.0%} ({tally.sent - len(tally.rtts)} of {tally.sent} lost)"
        _threshold(attempt, "loss", loss, self.loss_warn, self.loss_crit, seen, _percent)
        average = statistics.fmean(tally.rtts)
        _threshold(
            attempt, "rtt", average, self.rtt_warn, self.rtt_crit, _ms(average), _ms, " average"
        )


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _percent(value: float) -> str:
    return f"{value:.0%}" if value * 100 == round(value * 100) else f"{value:.1%}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _threshold(
    attempt: Attempt,
    name: str,
    value: float,
    warn: float | None,
    crit: float | None,
    seen: str,
    show: Any,
    what: str = "",
) -> None:
    if warn is None and crit is None:
        return
    if crit is not None and value > crit:
        outcome = AssertionOutcome(name, False, f"<= {show(crit)}{what}", seen)
    elif warn is not None and value > warn:
        outcome = AssertionOutcome(name, False, f"<= {show(warn)}{what}", seen, Status.DEGRADED)
    else:
        limit = warn if warn is not None else crit
        assert limit is not None
        outcome = AssertionOutcome(name, True, f"<= {show(limit)}{what}", seen)
    # attempt.outcome() cannot say DEGRADED, so the outcome is added with its severity here.
    attempt.assertions.append(outcome)


@attrs.define
class _Tally:
    """What one check's pings came to."""

    sent: int = 0
    rtts: list[float] = attrs.field(factory=list)
    ignored: int = 0
    ignored_why: dict[str, int] = attrs.field(factory=dict)
    error: OSError | None = None

    @property
    def loss(self) -> float:
        return 1.0 - len(self.rtts) / self.sent if self.sent else 1.0

    def ignore(self, why: str) -> None:
        self.ignored += 1
        self.ignored_why[why] = self.ignored_why.get(why, 0) + 1

    def record(self, attempt: Attempt) -> None:
        attempt.metric("sent", self.sent)
        attempt.metric("received", len(self.rtts))
        attempt.metric("loss_ratio", round(self.loss, 6))
        attempt.metric("ignored", self.ignored)
        if self.rtts:
            attempt.metric("rtt_min", round(min(self.rtts), 9))
            attempt.metric("rtt_avg", round(statistics.fmean(self.rtts), 9))
            attempt.metric("rtt_max", round(max(self.rtts), 9))
            attempt.metric("rtt_stddev", round(statistics.pstdev(self.rtts), 9))

    def failure(self, probe: IcmpProbe, address: str) -> tuple[ErrorKind, str]:
        """The error of a check that got no reply at all."""
        others = ""
        if self.ignored:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.ignored_why.items()))
            others = f"; ignored {self.ignored} datagram(s) that were not replies ({why})"
        if self.error is not None:
            return (
                ErrorKind.CONNECT,
                f"no echo reply from {address} (100% loss of {self.sent}): "
                f"{_error_text(self.error)}{others}",
            )
        return (
            ErrorKind.TIMEOUT,
            f"no echo reply from {address} to {self.sent} request(s) within "
            f"{probe.wait:g} s each (100% loss){others}",
        )


class _Session:
    """Send the requests on their schedule and match the replies, in one task."""

    __slots__ = ("endpoint", "payload", "probe", "version")

    def __init__(self, probe: IcmpProbe, endpoint: Datagram, version: int) -> None:
        self.probe = probe
        self.endpoint = endpoint
        self.version = version
        self.payload = _payload(secrets.token_bytes(_TOKEN_BYTES), probe.size)

    async def run(self) -> _Tally:
        probe = self.probe
        # Not the loop's clock: uvloop's (libuv's) ticks in milliseconds, and loopback round
        # trips are tens of microseconds.
        clock = time.perf_counter
        # The kernel replaces the identifier of a datagram socket's requests with its own; a raw
        # socket sends this one. Sequences start at random so that concurrent checks of one host
        # through raw sockets do not share them.
        identifier = secrets.randbits(16)
        first = secrets.randbits(16)
        # One byte more than the longest reply to expect, so an oversized one shows as such.
        bufsize = _HEADER.size + probe.size + 1
        if self.version == 4:
            bufsize += _IPV4_HEADER_MAX
        tally = _Tally()
        sent: dict[int, float] = {}
        answered: set[int] = set()
        errors = 0
        start = clock()
        while True:
            now = clock()
            if tally.sent < probe.count and now >= start + tally.sent * probe.ping_interval:
                sequence = (first + tally.sent) & 0xFFFF
                tally.sent += 1
                packet = echo_request(self.version, identifier, sequence, self.payload)
                sent[sequence] = clock()
                try:
                    await self.endpoint.send(packet)
                except OSError as exc:  # unreachable network, a firewall: this one is lost
                    log.debug("icmp %s: sending %d failed: %s", probe.host, sequence, exc)
                    tally.error = exc
                    answered.add(sequence)  # no reply to wait for
                continue
            if tally.sent < probe.count:
                wake = start + tally.sent * probe.ping_interval
            else:
                waiting = [at for seq, at in sent.items() if seq not in answered]
                wake = max(waiting, default=now) + probe.wait
                if not waiting or wake <= now:
                    return tally
            try:
                data = await self._receive(bufsize, wake - now)
            except OSError as exc:  # an error the network reported (host unreachable, ...)
                log.debug("icmp %s: %s", probe.host, exc)
                tally.error = exc
                errors += 1
                if errors > _MAX_ERRORS + probe.count:
                    raise ProbeFailure(
                        ErrorKind.CONNECT, f"the ICMP socket keeps failing: {_error_text(exc)}"
                    ) from None
                continue
            if data is None:
                continue
            arrived = clock()
            if len(data) >= bufsize:  # cut to the buffer: longer than any reply of ours
                tally.ignore("oversized")
                continue
            reply = parse_reply(data, self.version)
            if isinstance(reply, str):
                if reply != "request":  # a raw socket also sees the requests on loopback
                    tally.ignore(reply)
                continue
            sequence, body = reply
            if sequence not in sent or body != self.payload:
                tally.ignore("oversized" if len(body) > probe.size else "not ours")
            elif sequence in answered:
                tally.ignore("duplicate")
            elif arrived - sent[sequence] > probe.wait:
                answered.add(sequence)
                tally.ignore("late")
            else:
                answered.add(sequence)
                tally.rtts.append(arrived - sent[sequence])

    async def _receive(self, bufsize: int, limit: float) -> bytes | None:
        """One datagram, or None when ``limit`` passes first."""
        try:
            return await self.endpoint.recv(bufsize, max(limit, 0.0))
        except TimeoutError:
            # Only this wait's own limit ends up here: the check's deadline cancels the task
            # and leaves its own scope as TimeoutError (see probekit._deadline).
            return None


# -- the command-line form -------------------------------------------------------------------------


def _integer(name: str, low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low} to {high}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {text}")
    return value


def _loss_percent(text: str) -> float:
    """``20`` or ``20%`` as the ratio 0.2."""
    number = text[:-1] if text.endswith("%") else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a loss percentage: {text!r} (write 20 or 20%)") from None
    if not math.isfinite(value) or not 0 <= value < 100:
        raise ValueError(f"a loss percentage is from 0 to below 100, got {text}")
    return value / 100


def _rta_pl(text: str) -> tuple[float, float]:
    """check_ping's ``RTA,PL%``: the average round trip in milliseconds and the loss in percent,
    as (seconds, ratio)."""
    rta, comma, loss = text.partition(",")
    if not comma or not loss.endswith("%"):
        raise ValueError(
            f"expected RTA,PL% like 200,20% (milliseconds, loss percent), got {text!r}; "
            "the number of requests is -p/--count"
        )
    try:
        milliseconds = float(rta)
    except ValueError:
        raise ValueError(f"not a round trip in milliseconds: {rta!r}") from None
    if not math.isfinite(milliseconds) or milliseconds <= 0:
        raise ValueError(f"the round trip must be above 0 ms, got {rta}")
    return milliseconds / 1000, _loss_percent(loss)


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    for flag, level in (("-w/--warning", "warn"), ("-c/--critical", "crit")):
        pair = values.get("warning" if level == "warn" else "critical")
        rtt, loss = values.get(f"rtt_{level}"), values.get(f"loss_{level}")
        if rtt is not None:
            definition[f"rtt_{level}"] = rtt
        if loss is not None:
            definition[f"loss_{level}"] = loss
        if pair is None:
            continue
        if rtt is not None or loss is not None:
            problems.append(
                DefinitionError(flag, f"give either it or --rtt-{level}/--loss-{level}, not both")
            )
            continue
        definition[f"rtt_{level}"], definition[f"loss_{level}"] = pair
    if (problem := family_definition(values, definition, "-4/-6")) is not None:
        problems.append(problem)
    if problems:
        raise DefinitionErrors(problems)


def _describe(result: Result) -> str | None:
    metrics = result.metrics
    sent, received = metrics.get("sent"), metrics.get("received")
    if sent is None or received is None:
        return None
    text = f"{int(received)}/{int(sent)} replies, {metrics.get('loss_ratio', 0.0):.0%} loss"
    if "rtt_avg" in metrics:
        parts = (metrics[key] * 1000 for key in ("rtt_min", "rtt_avg", "rtt_max", "rtt_stddev"))
        text += ", rtt min/avg/max/stddev " + "/".join(f"{p:.3f}" for p in parts) + " ms"
    return text


KIND = ProbeKind(
    name="icmp",
    cls=IcmpProbe,
    summary="ping a host with ICMP echo requests (IPv4/IPv6): loss and round-trip times",
    target=Name(field="host", what="HOST"),
    options=(
        Option(
            ("-p", "--packets", "--count"),
            field="count",
            metavar="N",
            parse=_integer("the count", 1, MAX_COUNT),
            help=f"send N echo requests (default 3, at most {MAX_COUNT})",
        ),
        Option(
            ("-i", "--interval"),
            field="ping_interval",
            metavar="S",
            parse=_seconds,
            help="seconds between two requests (default 0.2)",
        ),
        Option(
            ("-s", "--size"),
            field="size",
            metavar="BYTES",
            parse=_integer("the size", 0, MAX_SIZE),
            help="payload bytes of each request (default 56)",
        ),
        Option(
            ("--ttl",),
            field="ttl",
            metavar="N",
            parse=_integer("the TTL", 1, 255),
            help="IPv4 TTL / IPv6 hop limit of the requests",
        ),
        Option(
            ("-w", "--warning"),
            dest="warning",
            metavar="RTA,PL%",
            parse=_rta_pl,
            sets=("rtt_warn", "loss_warn"),
            help="DEGRADED (WARNING) when the average round trip is above RTA milliseconds or "
            "the loss above PL percent (check_ping's form, e.g. 100,20 and a percent sign)",
        ),
        Option(
            ("-c", "--critical"),
            dest="critical",
            metavar="RTA,PL%",
            parse=_rta_pl,
            sets=("rtt_crit", "loss_crit"),
            help="DOWN (CRITICAL) when the average round trip is above RTA milliseconds or the "
            "loss above PL percent (check_ping's form)",
        ),
        Option(
            ("--rtt-warn",),
            dest="rtt_warn",
            metavar="S",
            parse=_seconds,
            sets=("rtt_warn",),
            help="DEGRADED when the average round trip is above S seconds",
        ),
        Option(
            ("--rtt-crit",),
            dest="rtt_crit",
            metavar="S",
            parse=_seconds,
            sets=("rtt_crit",),
            help="DOWN when the average round trip is above S seconds",
        ),
        Option(
            ("--loss-warn",),
            dest="loss_warn",
            metavar="PCT",
            parse=_loss_percent,
            sets=("loss_warn",),
            help="DEGRADED when more than PCT percent of the requests go unanswered",
        ),
        Option(
            ("--loss-crit",),
            dest="loss_crit",
            metavar="PCT",
            parse=_loss_percent,
            sets=("loss_crit",),
            help="DOWN when more than PCT percent of the requests go unanswered",
        ),
        Option(("-4",), dest="ipv4", action="flag", sets=("ip_family",), help="ping over IPv4"),
        Option(("-6",), dest="ipv6", action="flag", sets=("ip_family",), help="ping over IPv6"),
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("sent", "probekit_icmp_sent", "Echo requests sent."),
        Metric("received", "probekit_icmp_received", "Echo replies received in time."),
        Metric(
            "loss_ratio",
            "probekit_icmp_loss_ratio",
            "Share of the echo requests left unanswered (0 to 1).",
        ),
        Metric("rtt_min", "probekit_icmp_rtt_min_seconds", "Shortest round trip, in seconds."),
        Metric("rtt_avg", "probekit_icmp_rtt_avg_seconds", "Average round trip, in seconds."),
        Metric("rtt_max", "probekit_icmp_rtt_max_seconds", "Longest round trip, in seconds."),
        Metric(
            "rtt_stddev",
            "probekit_icmp_rtt_stddev_seconds",
            "Standard deviation of the round trips (jitter), in seconds.",
        ),
        Metric(
            "ignored",
            "probekit_icmp_ignored",
            "Datagrams that were not a timely reply to this check (short, corrupt, oversized, "
            "duplicate, late, someone else's).",
        ),
    ),
    docs="probes/icmp.md",
    describe=_describe,
)
