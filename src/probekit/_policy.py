"""The local egress policy: which hosts and addresses a probe may dial.

The policy belongs to the operator of the machine running the probes. It is checked on every
resolved address of every hop before a socket is opened. Host names are normalised first, so the
many spellings of one address (``0xa9fea9fe``, ``2852039166``, ``0251.0376.0251.0376``,
``[::ffff:169.254.169.254]``, and their full-width forms) are decided as the address they
denote. An IPv6 address that carries an IPv4 address (6to4, Teredo, NAT64) is denied when that
IPv4 address would be: see :func:`embedded_ipv4`.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from typing import Final

import attrs

from ._exceptions import DefinitionError, PolicyError

__all__ = [
    "DEFAULT_DENIED_NETWORKS",
    "Decision",
    "EgressPolicy",
    "IPAddress",
    "IPNetwork",
    "canonical_address",
    "embedded_ipv4",
    "parse_host_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Denied unless the operator explicitly allows them: link-local (where cloud metadata services
#: live), the metadata addresses themselves, unspecified and multicast addresses.
DEFAULT_DENIED_NETWORKS: Final[tuple[str, ...]] = (
    "169.254.0.0/16",  # IPv4 link-local, including 169.254.169.254 (AWS/GCP/Azure metadata)
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "192.0.0.192/32",  # Oracle Cloud metadata (legacy address; the current one is 169.254.169.254)
    "0.0.0.0/8",  # "this network": connecting to it reaches the local host on Linux
    "::/128",  # unspecified
    "224.0.0.0/4",  # multicast
    "ff00::/8",  # multicast
)

_CACHE_SIZE: Final = 4096
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4COMPAT = ipaddress.IPv6Network("::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
#: RFC 6052 §2.2 layouts a prefix inside 64:ff9b:1::/48 can use, other than /96: the prefix
#: length, then the IPv4 address's bits as (shift, width) pieces of the 128-bit number, high
#: piece first, and the mask of the bits that must be zero (the ``u`` octet and the suffix).
_NAT64_LAYOUTS: Final = (
    (48, ((64, 16), (40, 16)), (0xFF << 56) | ((1 << 40) - 1)),
    (56, ((64, 8), (32, 24)), (0xFF << 56) | ((1 << 32) - 1)),
    (64, ((24, 32),), (0xFF << 56) | ((1 << 24) - 1)),
)
#: Label separators that IDNA (UTS 46) reads as ".", so a browser reads them as dots too.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")


def _loose_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse ``text`` the way ``inet_aton`` does (1-4 parts, decimal, octal or hex), or None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_PART.match(p) for p in parts):
        return None
    values = []
    for p in parts:
        if p[:2].lower() == "0x":
            values.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p[0] == "0":
            values.append(int(p, 8))
        else:
            values.append(int(p))
    *head, last = values
    if any(v > 255 for v in head):
        return None
    if last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(number)


@functools.lru_cache(maxsize=4096)
def parse_host_address(host: str) -> IPAddress | None:
    """Return the IP address ``host`` spells, however oddly, or None for a host name.

    Accepts brackets (``[::1]``), IPv6 zone ids (dropped), every IPv4 form ``inet_aton``
    accepts (``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``), and the full-width
    forms of all of them (NFKC-normalised, ``。`` read as a dot). The answer is not yet
    canonical: see :func:`canonical_address`. Answers are remembered (the same hosts are parsed
    on every check).
    """
    text = host.strip()
    if not text.isascii():
        # URL parsers and IDNA read full-width digits, letters, dots and colons (U+FF10 and
        # on) as ASCII, and U+3002 as a dot: decide them as the address they become.
        text = unicodedata.normalize("NFKC", text).translate(_DOTS)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith(".") and text[:-1].replace(".", "").isdigit():
        text = text[:-1]
    if ":" in text:
        text = text.split("%", 1)[0]
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _loose_ipv4(text)


def canonical_address(address: IPAddress) -> IPAddress:
    """Map IPv6 forms that embed an IPv4 address (mapped, NAT64, compatible) to that address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address in _V4COMPAT and int(address) > 1:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def embedded_ipv4(address: IPAddress) -> tuple[tuple[str, ipaddress.IPv4Address], ...]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form.

    - IPv4-mapped (``::ffff:0:0/96``) and IPv4-compatible (``::/96``, deprecated): the address
      *is* the IPv4 address.
    - NAT64 (``64:ff9b::/96``, RFC 6052): a translator connects to the last 32 bits.
    - NAT64 local use (``64:ff9b:1::/48``, RFC 8215): the last 32 bits (a ``/96`` prefix, how it
      is deployed), and the ``/48``, ``/56`` and ``/64`` layouts of RFC 6052 wherever the
      address fits them (its ``u`` octet and suffix are zero). A reading inside ``0.0.0.0/8`` is
      left out when another one is not: it is the zero padding of a different layout.
    - 6to4 (``2002::/16``): relays tunnel to bits 16-47.
    - Teredo (``2001::/32``): packets go to the client's public address, the last 32 bits
      XOR-ed with ones (the Teredo server, bits 32-63, only qualifies clients).
    """
    if address.version == 4:
        return ()
    assert isinstance(address, ipaddress.IPv6Address)
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    elif address in _NAT64:
        found.append(("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    elif address in _NAT64_LOCAL:
        found.extend(("NAT64", ip) for ip in _nat64_local(int(address)))
    elif address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    elif address.teredo is not None:
        found.append(("Teredo", address.teredo[1]))
    elif address in _V4COMPAT and int(address) > 1:
        found.append(("IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    return tuple(found)


def _nat64_local(number: int) -> list[ipaddress.IPv4Address]:
    readings = [ipaddress.IPv4Address(number & 0xFFFFFFFF)]
    for _length, pieces, zero in _NAT64_LAYOUTS:
        if number & zero:
            continue
        value = 0
        for shift, width in pieces:
            value = value << width | (number >> shift) & ((1 << width) - 1)
        readings.append(ipaddress.IPv4Address(value))
    meaningful = [ip for ip in readings if ip not in _THIS_NETWORK]
    return list(dict.fromkeys(meaningful or readings))


def _networks(field: str, values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError) as exc:
            raise DefinitionError(f"{field}[{i}]", f"invalid network {value!r}: {exc}") from None
    return tuple(out)


def _patterns(field: str, values: Iterable[str]) -> tuple[str, ...]:
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise DefinitionError(f"{field}[{i}]", f"invalid host pattern {value!r}")
        out.append(value.lower().rstrip("."))
    return tuple(out)


def _allow(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return _networks("allow", values)


def _deny(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return _networks("deny", values)


def _deny_default(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return _networks("deny_default", values)


def _allow_hosts(values: Iterable[str]) -> tuple[str, ...]:
    return _patterns("allow_hosts", values)


def _deny_hosts(values: Iterable[str]) -> tuple[str, ...]:
    return _patterns("deny_hosts", values)


@attrs.frozen
class Decision:
    """A policy verdict and the rule that produced it."""

    allowed: bool
    reason: str


@attrs.frozen
class EgressPolicy:
    """Allowed and denied networks and host patterns.

    The decision for an address, in order: a network in ``deny`` denies; a network in
    ``allow`` that is at least as specific as the most specific matching ``deny_default``
    entry allows; a ``deny_default`` network denies (link-local, metadata, unspecified,
    multicast); otherwise the address is allowed when ``allow`` is empty, and denied when it is
    not (an allow list narrows the policy to itself). Host patterns (``fnmatch``-style,
    case-insensitive, e.g. ``*.corp.example``) work the same way on the name before it is
    resolved; every resolved address is then checked too.

    The default policy allows private networks, loopback and public addresses and denies only
    the ``deny_default`` set; operators narrow it with ``allow`` or ``deny``.
    """

    allow: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_allow)
    deny: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_deny)
    allow_hosts: tuple[str, ...] = attrs.field(default=(), converter=_allow_hosts)
    deny_hosts: tuple[str, ...] = attrs.field(default=(), converter=_deny_hosts)
    deny_default: tuple[IPNetwork, ...] = attrs.field(
        default=DEFAULT_DENIED_NETWORKS, converter=_deny_default
    )
    # Decisions are pure functions of the (frozen) policy and the address or host, and a
    # checkpoint asks about the same few hundred targets over and over: remember them.
    _decisions: dict[object, Decision] = attrs.field(
        factory=dict, init=False, repr=False, eq=False, hash=False
    )

    @classmethod
    def allow_all(cls) -> EgressPolicy:
        """A policy that denies nothing (for tests and for operators who really mean it)."""
        return cls(deny_default=())

    def decide_address(self, address: IPAddress | str) -> Decision:
        """Decide one address (any spelling :func:`parse_host_address` accepts)."""
        cached = self._decisions.get(address)
        if cached is None:
            cached = self._decide_address(address)
            self._remember(address, cached)
        return cached

    def _remember(self, key: object, decision: Decision) -> None:
        if len(self._decisions) >= _CACHE_SIZE:
            self._decisions.clear()
        self._decisions[key] = decision

    def _decide_address(self, address: IPAddress | str) -> Decision:
        if isinstance(address, str):
            parsed = parse_host_address(address)
            if parsed is None:
                raise ValueError(f"not an IP address: {address!r}")
            address = parsed
        decision = self._decide_forms(address)
        if not decision.allowed:
            return decision
        # A tunnel or translator delivers to the embedded IPv4 address: the IPv6 form must not
        # reach what the IPv4 form may not. (The canonical forms, the same host written two
        # ways, were decided as both above: a rule on either form applies.)
        canonical = canonical_address(address)
        for form, inner in embedded_ipv4(address):
            if inner == canonical:
                continue
            verdict = self.decide_address(inner)
            if not verdict.allowed:
                return Decision(False, f"address embeds {inner} ({form}); {verdict.reason}")
        return decision

    def _decide_forms(self, address: IPAddress) -> Decision:
        ip = canonical_address(address)
        candidates = {ip, address}
        for net in self.deny:
            if any(a in net for a in candidates):
                return Decision(False, f"address is in denied network {net}")
        best_allow = max(
            (net.prefixlen for net in self.allow if any(a in net for a in candidates)), default=-1
        )
        matched_default = [net for net in self.deny_default if any(a in net for a in candidates)]
        if matched_default:
            net = max(matched_default, key=lambda n: n.prefixlen)
            if best_allow >= net.prefixlen:
                return Decision(True, "address is explicitly allowed")
            return Decision(False, f"address is in {net}, denied by default")
        if not self.allow:
            return Decision(True, "allowed: no allow list")
        if best_allow >= 0:
            return Decision(True, "address is in an allowed network")
        return Decision(False, "address is not in any allowed network")

    def decide_host(self, host: str) -> Decision:
        """Decide a host name before resolution (an IP literal is decided as an address)."""
        key = ("host", host)
        cached = self._decisions.get(key)
        if cached is None:
            cached = self._decide_host(host)
            self._remember(key, cached)
        return cached

    def _decide_host(self, host: str) -> Decision:
        literal = parse_host_address(host)
        if literal is not None:
            return self.decide_address(literal)
        name = host.lower().rstrip(".")
        for pattern in self.deny_hosts:
            if fnmatch.fnmatchcase(name, pattern):
                return Decision(False, f"host matches denied pattern {pattern!r}")
        if self.allow_hosts and not any(fnmatch.fnmatchcase(name, p) for p in self.allow_hosts):
            return Decision(False, "host matches no allowed pattern")
        return Decision(True, "host allowed")

    def check_host(self, host: str) -> None:
        """Raise :class:`PolicyError` if ``host`` is denied by name or spelling."""
        decision = self.decide_host(host)
        if not decision.allowed:
            raise PolicyError(host, None, decision.reason)

    def check_addresses(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raise :class:`PolicyError` if *any* of ``addresses`` is denied.

        One denied address among allowed ones denies the whole host: a resolver that mixes a
        metadata address into an answer must not get a chance to have it dialled.
        """
        for address in addresses:
            decision = self.decide_address(address)
            if not decision.allowed:
                raise PolicyError(host, str(address), decision.reason)

    def summary(self) -> dict[str, list[str]]:
        """A plain description, e.g. for a checkpoint's heartbeat."""
        return {
            "allow": [str(n) for n in self.allow],
            "deny": [str(n) for n in self.deny],
            "allow_hosts": list(self.allow_hosts),
            "deny_hosts": list(self.deny_hosts),
            "deny_default": [str(n) for n in self.deny_default],
        }
