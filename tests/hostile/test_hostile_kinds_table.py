"""Every built-in kind is in the hostile suites' table, and the table says true things of it."""

from __future__ import annotations

import attrs
import pytest
from hostile_kinds import PROFILES, profile, secret_paths

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
