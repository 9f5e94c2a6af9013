"""Every built-in kind is in the hostile suites' table, and the table says true things of it."""

from __future__ import annotations

import attrs
import pytest
from hostile_kinds import GOOD_SERVERS, PROFILES, STREAM_FAMILIES, Family, profile, secret_paths
from hostile_servers import CASES

from probekit.probes._registry import builtin_names, get_kind


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_kind_has_a_profile(name: str) -> None:
    assert profile(get_kind(name).name).name == name


def test_the_table_names_only_builtin_kinds() -> None:
    assert set(PROFILES) <= set(builtin_names())


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_profile_knows_every_secret_field_of_its_kind(name: str) -> None:
    # A new Secret field must join the canary suite.
    assert set(PROFILES[name].secrets) == secret_paths(get_kind(name).cls)


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_profile_knows_whether_its_kind_has_tls_and_a_proxy(name: str) -> None:
    kind = get_kind(name)
    fields = {f.name for f in attrs.fields(kind.cls)}
    assert PROFILES[name].tls is (kind.tls_field is not None)
    assert PROFILES[name].proxy is ("proxy" in fields)


@pytest.mark.parametrize("name", list(PROFILES))
def test_a_kind_that_meets_no_server_says_why(name: str) -> None:
    kind = PROFILES[name]
    assert (kind.family == "none") is bool(kind.exempt), kind
    if kind.family != "none":
        assert kind.family in GOOD_SERVERS


#: The protocol-independent stream cases: every stream family meets each of them.
PROTOCOL_INDEPENDENT = {
    "slowloris",
    "giant-head",
    "garbage",
    "tls-stall",
    "accept-then-silence",
    "rst",
    "never-accepts",
    "half-close",
    "banner-then-close",
}
#: What a DNS server can do wrong: over UDP, and over the TCP asked after a truncated reply (or
#: DNS over TLS for the TLS stall). A full backlog does not apply (UDP accepts nothing), nor do
#: HTTP bodies, endless lines or a closing banner (DNS has no lines and no banner).
DNS_CASES = {
    "slowloris",
    "lying-length-close",
    "lying-length-stall",
    "giant-head",
    "garbage",
    "garbage-after-truncation",
    "wrong-id",
    "not-a-response",
    "tls-stall",
    "accept-then-silence",
    "rst",
    "half-close",
}


@pytest.mark.parametrize("family", sorted(STREAM_FAMILIES))
def test_every_stream_family_meets_every_protocol_independent_case(family: Family) -> None:
    assert {c.name for c in CASES if c.applies(family)} >= PROTOCOL_INDEPENDENT


def test_the_dns_family_meets_the_cases_that_apply_to_dns() -> None:
    assert {c.name for c in CASES if c.applies("dns")} == DNS_CASES


def test_a_kind_without_a_server_meets_no_case() -> None:
    assert not any(c.applies("none") for c in CASES)
