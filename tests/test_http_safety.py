"""Regression tests for the HTTP probe's safety and honesty faults of issue 11.

Each test is named after the fault it would have caught. Every server here is on loopback, and
every check dials through the guarded connector of ``conftest.py``.
"""

from __future__ import annotations

import pytest

from probekit import DefinitionError, DefinitionErrors, HttpProbe, Proxy, build_probe

CANARY = "Canary-pw-7f3a9"

# -- definition errors never repeat a URL's password --------------------------------------------

URLS_WITH_A_PASSWORD = [
    f"ftp://u:{CANARY}@db.internal/",
    f"http://u:{CANARY}@/x",
    f"htps://u:{CANARY}@intranet.test/",
    f"http://u:{CANARY}@b\u00fccher..test/",
    f"http://u:{CANARY}@host:99999/",
    f"http://u:{CANARY}@host:port/",
    f"http://u:{CANARY}@[::1/",
    f"http://u:pa/{CANARY}@host/",
    f"http://u:{CANARY}:more@host/",
    f"http:u:{CANARY}@host/",
    f"u:{CANARY}@host",
    f"http://u:{CANARY}@host/ x",
]


def _assert_no_canary(exc: BaseException) -> None:
    texts = [str(exc), repr(exc)]
    for error in getattr(exc, "errors", ()):
        texts += [str(error), repr(error), error.message]
    for text in texts:
        assert CANARY not in text, text


@pytest.mark.parametrize("url", URLS_WITH_A_PASSWORD)
def test_url_definition_error_does_not_repeat_the_password(url: str) -> None:
    with pytest.raises(DefinitionError) as info:
        HttpProbe(url)
    assert info.value.path == "url"
    _assert_no_canary(info.value)
    with pytest.raises(DefinitionErrors) as many:
        build_probe({"kind": "http", "url": url})
    assert [e.path for e in many.value.errors] == ["url"]
    _assert_no_canary(many.value)


@pytest.mark.parametrize(
    "url",
    [
        f"https://u:{CANARY}@proxy:3128",
        f"http://u:{CANARY}@proxy:3128",
        f"socks5://u:{CANARY}@proxy:1080",
        f"http://u:{CANARY}@proxy:99999",
        f"http://u:{CANARY}@/",
    ],
)
def test_proxy_definition_error_does_not_repeat_the_password(url: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Proxy(url)
    assert info.value.path == "proxy"
    _assert_no_canary(info.value)
    with pytest.raises(DefinitionErrors) as many:
        build_probe({"kind": "http", "url": "http://h/", "proxy": {"url": url}})
    _assert_no_canary(many.value)


def test_url_definition_error_masks_the_password_but_names_the_rest() -> None:
    with pytest.raises(DefinitionError) as info:
        HttpProbe(f"ftp://u:{CANARY}@db.internal/")
    assert "'ftp://u:<secret>@db.internal/'" in info.value.message
