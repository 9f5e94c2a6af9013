"""Shared hypothesis strategies: IP addresses and their spellings, results, secrets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import string

from hypothesis import strategies as st

from probekit import (
    AssertionOutcome,
    CertInfo,
    ErrorKind,
    Phase,
    ProbeError,
    Result,
    Status,
    TlsInfo,
)

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
addresses = st.one_of(ipv4, ipv6)
networks = st.one_of(
    st.tuples(ipv4, st.integers(0, 32)).map(
        lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)
    ),
    st.tuples(ipv6, st.integers(0, 128)).map(
        lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)
    ),
)


def _octal(n: int) -> str:
    return "0" + format(n, "o") if n else "0"


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> tuple[ipaddress.IPv4Address, str]:
    """An IPv4 address and one of the odd ways inet_aton lets you write it."""
    addr = draw(ipv4)
    n = int(addr)
    b = list(addr.packed)
    form = draw(
        st.sampled_from(
            ["dotted", "int", "hex", "octal", "two", "three", "mixed", "mapped", "bracket-mapped"]
        )
    )
    spelled = {
        "dotted": str(addr),
        "int": str(n),
        "hex": hex(n),
        "octal": ".".join(_octal(x) for x in b),
        "two": f"{b[0]}.{n & 0xFFFFFF}",
        "three": f"{b[0]}.{b[1]}.{n & 0xFFFF}",
        "mixed": f"{hex(b[0])}.{_octal(b[1])}.{b[2]}.{b[3]}",
        "mapped": f"::ffff:{addr}",
        "bracket-mapped": f"[::ffff:{addr}]",
    }[form]
    return addr, spelled


utc_datetimes = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(max_size=40)

phases = st.builds(
    Phase,
    name=st.sampled_from(["resolve", "connect", "tls", "processing", "transfer"]) | text,
    start=finite,
    duration=finite,
)
errors = st.builds(
    ProbeError, kind=st.sampled_from(ErrorKind), message=text, phase=st.none() | text
)
outcomes = st.builds(
    AssertionOutcome,
    name=text,
    passed=st.booleans(),
    expected=text,
    observed=text,
    severity=st.sampled_from(Status),
)
certs = st.builds(
    CertInfo,
    subject=text,
    issuer=text,
    sans=st.lists(text, max_size=3).map(tuple),
    not_before=utc_datetimes,
    not_after=utc_datetimes,
    sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    serial=st.text(alphabet="0123456789abcdef", max_size=20),
)
tls_infos = st.builds(
    TlsInfo,
    version=st.sampled_from(["TLSv1.2", "TLSv1.3"]),
    cipher=text,
    alpn=st.none() | st.sampled_from(["h2", "http/1.1"]),
    server_name=st.none() | text,
    verified=st.booleans(),
    chain=st.lists(certs, max_size=3).map(tuple),
)
results = st.builds(
    Result,
    kind=st.sampled_from(["http", "tcp"]) | text,
    target=text,
    status=st.sampled_from(Status),
    started_at=utc_datetimes,
    duration=finite,
    error=st.none() | errors,
    phases=st.lists(phases, max_size=6).map(tuple),
    metrics=st.dictionaries(text, finite | st.integers(-(2**53), 2**53), max_size=5),
    assertions=st.lists(outcomes, max_size=4).map(tuple),
    tls=st.none() | tls_infos,
    address=st.none() | text,
    attempts=st.integers(1, 10),
)
# Canaries contain a digit and a symbol, so they cannot collide with a word or name that a result
# legitimately contains (hypothesis once offered "AssertionOutcome").
secret_values = st.text(
    alphabet=string.ascii_letters + string.digits, min_size=16, max_size=40
).map(lambda s: f"{s[:8]}#7~{s[8:]}")
