"""Shared hypothesis strategies: IP addresses and their spellings, results, secrets."""

from __future__ import annotations

import base64
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

# -- probe definitions as plain data, for every built-in kind ------------------------------------
#
# Mostly well-formed (so the builders' deeper checks run), with odd values mixed in everywhere a
# value goes; `definitions` draws from every built-in kind and `DEFINITIONS` must name them all
# (tests/hostile/test_fuzz.py checks), so a new kind brings its strategy.

_AWKWARD_SCALARS = [None, True, False, 0, -1, 1.5, 2**64, float("inf"), "", "\x00", "\ud800"]
json_scalars = (
    st.sampled_from(_AWKWARD_SCALARS)
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _or_odd(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly ``strategy``, sometimes any JSON value in its place."""
    return st.one_of(strategy, strategy, strategy, json_values)


spelled_hosts = st.one_of(
    st.sampled_from(
        [
            "127.0.0.1",
            "localhost",
            "db.internal",
            "::1",
            "[::1]",
            "fe80::1%eth0",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "2002:a9fe:a9fe::1",
            "\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14",
            "b\u00fccher.example",
            "xn--",
            "a" * 300,
            "host/with/slash",
            "host name",
            "",
        ]
    ),
    st.text(max_size=30),
    st.from_regex(r"\A[a-z0-9.-]{1,40}\Z"),
)
ports = st.one_of(st.integers(1, 65535), st.sampled_from([0, -1, 65536, 2**31]))
secret_refs = st.one_of(
    st.text(min_size=1, max_size=30),
    st.just({"secret": "api"}),
    st.just({"secret": "missing"}),
    st.just({"env": "HOME"}),
    st.just({"file": "/etc/hostname"}),
    st.dictionaries(st.sampled_from(["secret", "env", "file", "x"]), json_scalars, max_size=2),
)
timeouts = st.fixed_dictionaries(
    {},
    optional={
        name: _or_odd(st.floats(min_value=0.001, max_value=60) | st.integers(0, 60))
        for name in ("total", "resolve", "connect", "tls", "read")
    },
)
tls_options = st.fixed_dictionaries(
    {},
    optional={
        "verify": _or_odd(st.booleans()),
        "server_name": _or_odd(spelled_hosts),
        "min_version": _or_odd(st.sampled_from(["TLSv1.2", "TLSv1.3", "SSLv3"])),
        "max_version": _or_odd(st.sampled_from(["TLSv1.2", "TLSv1.3"])),
        "alpn": _or_odd(st.lists(st.sampled_from(["h2", "http/1.1", ""]), max_size=3)),
        "ca_file": _or_odd(st.sampled_from(["/nonexistent/ca.pem", ""])),
        "client_key_password": secret_refs,
    },
)
regexes = st.sampled_from(["^OK", "PONG", "(", "a{99999}", "[", r"\d+", "(?P<x>", ""]) | st.text(
    max_size=10
)
assertion_objects = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("status_in")},
        optional={
            "codes": _or_odd(st.lists(st.integers(0, 700), max_size=3)),
            "ranges": _or_odd(st.lists(st.lists(st.integers(0, 700), max_size=3), max_size=2)),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("body_contains"), "text": _or_odd(st.text(max_size=10))},
        optional={"negate": _or_odd(st.booleans())},
    ),
    st.fixed_dictionaries({"type": st.just("body_matches"), "pattern": _or_odd(regexes)}),
    st.fixed_dictionaries(
        {"type": st.just("header_matches"), "name": _or_odd(st.text(max_size=8))},
        optional={"pattern": _or_odd(regexes), "allow_missing": _or_odd(st.booleans())},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("json_path"),
            "path": _or_odd(st.sampled_from(["$.a", "$[0]", "a..b", ""])),
        },
        optional={
            "op": _or_odd(st.sampled_from(["eq", "ne", "lt", "gt", "contains", "matches", "x"])),
            "value": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["response_time", "cert_expiry"])},
        optional={
            "warn": _or_odd(st.floats(0, 10)),
            "crit": _or_odd(st.floats(0, 10)),
            "warn_days": _or_odd(st.floats(0, 100)),
            "crit_days": _or_odd(st.floats(0, 100)),
        },
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["tls_required", "tls_forbidden", "nope"])}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)
assertion_lists = _or_odd(st.lists(assertion_objects, max_size=3))
proxies = st.fixed_dictionaries(
    {
        "url": _or_odd(
            st.sampled_from(["http://127.0.0.1:3128", "http://u:p@proxy:1", "socks5://x", ""])
        )
    },
    optional={"username": _or_odd(st.text(max_size=8)), "password": secret_refs},
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", "", "javascript"]))
    host = draw(spelled_hosts)
    if ":" in host and not host.startswith("[") and draw(st.booleans()):
        host = f"[{host.replace('%', '%25')}]"
    port = draw(st.none() | st.integers(-1, 70000).map(str) | st.just("") | st.text(max_size=4))
    userinfo = draw(st.sampled_from(["", "", "user@", "user:pw@", ":@"]))
    path = draw(st.sampled_from(["", "/", "/health", "/a b", "/\x7f", "/\u00e9", "/?q=1#f"]))
    authority = host if port is None else f"{host}:{port}"
    return f"{scheme}://{userinfo}{authority}{path}"


header_pairs = st.lists(
    st.tuples(
        st.sampled_from(["X-A", "Host", "Content-Length", "bad name", ""]) | st.text(max_size=6),
        st.text(max_size=12),
    ),
    max_size=3,
)
http_definitions = st.fixed_dictionaries(
    {"kind": st.just("http"), "url": _or_odd(urls())},
    optional={
        "method": _or_odd(st.sampled_from(["GET", "POST", "HEAD", "get", "", "G T"])),
        "headers": _or_odd(
            header_pairs.map(lambda p: [list(x) for x in p]) | header_pairs.map(dict)
        ),
        "query": _or_odd(header_pairs.map(dict)),
        "body": _or_odd(st.text(max_size=20)),
        "basic_auth": _or_odd(
            st.fixed_dictionaries({"username": st.text(max_size=8), "password": secret_refs})
        ),
        "bearer_token": secret_refs,
        "follow_redirects": _or_odd(st.booleans()),
        "max_redirects": _or_odd(st.integers(-1, 30)),
        "tls": _or_odd(tls_options),
        "host_header": _or_odd(spelled_hosts),
        "http_version": _or_odd(st.sampled_from(["1.1", "2", "3"])),
        "proxy": _or_odd(proxies),
        "ip_family": _or_odd(st.sampled_from(["any", "ipv4", "ipv6", "ipx"])),
        "assertions": assertion_lists,
        "max_body_bytes": _or_odd(st.integers(-1, 2**40)),
        "fail_on_body_limit": _or_odd(st.booleans()),
        "timeouts": _or_odd(timeouts),
    },
)
tcp_steps = st.lists(
    st.one_of(
        st.fixed_dictionaries({"send": _or_odd(st.text(max_size=10))}),
        st.fixed_dictionaries({"send_hex": _or_odd(st.sampled_from(["0d0a", "zz", "", "0"]))}),
        st.fixed_dictionaries({"expect": _or_odd(regexes)}),
        st.fixed_dictionaries({"expect_exact": _or_odd(st.text(max_size=10))}),
        st.fixed_dictionaries({"starttls": _or_odd(tls_options | st.none())}),
        st.dictionaries(st.text(max_size=6), json_values, max_size=2),
    ),
    max_size=4,
)
tcp_definitions = st.fixed_dictionaries(
    {"kind": st.just("tcp"), "host": _or_odd(spelled_hosts), "port": _or_odd(ports)},
    optional={
        "tls": _or_odd(tls_options | st.none()),
        "steps": _or_odd(tcp_steps),
        "max_bytes": _or_odd(st.integers(-1, 2**40)),
        "assertions": assertion_lists,
        "ip_family": _or_odd(st.sampled_from(["any", "ipv4", "ipv6", "ipx"])),
        "proxy": _or_odd(proxies),
        "timeouts": _or_odd(timeouts),
    },
)
redis_definitions = st.fixed_dictionaries(
    {"kind": st.just("redis"), "host": _or_odd(spelled_hosts)},
    optional={
        "port": _or_odd(ports),
        "password": secret_refs,
        "username": _or_odd(st.text(max_size=8)),
        "tls": _or_odd(tls_options | st.none()),
        "info": _or_odd(st.booleans()),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)
mail_addresses = st.sampled_from(
    ["", "probe@example.test", "a b@x", "<x>", "p\x00@x", "x" * 300, "\u00e9@x.test"]
) | st.text(max_size=12)
starttls_modes = st.sampled_from(["required", "optional", "off", "OFF", ""])
ip_families = st.sampled_from(["any", "ipv4", "ipv6", "ipx"])
user_names = st.sampled_from(["probe", "", "a b", "a\x00b", "a\r\nb", "\u00e9"]) | st.text(
    max_size=8
)


def _mail_fields(
    kind: str, **extra: st.SearchStrategy[object]
) -> st.SearchStrategy[dict[str, object]]:
    """The fields smtp, imap and pop3 share, and ``extra``."""
    return st.fixed_dictionaries(
        {"kind": st.just(kind), "host": _or_odd(spelled_hosts)},
        optional={
            "port": _or_odd(ports | st.none()),
            "tls": _or_odd(tls_options | st.none()),
            "starttls": _or_odd(starttls_modes),
            "starttls_options": _or_odd(tls_options | st.none()),
            "username": _or_odd(user_names),
            "password": secret_refs,
            "ip_family": _or_odd(ip_families),
            "assertions": assertion_lists,
            "timeouts": _or_odd(timeouts),
            **extra,
        },
    )


smtp_definitions = _mail_fields(
    "smtp",
    helo_name=_or_odd(
        st.sampled_from(["probe.example", "[127.0.0.1]", "[IPv6:::1]", "bad name", "", "a" * 300])
    ),
    plaintext_auth=_or_odd(st.booleans()),
    mail_from=_or_odd(mail_addresses),
    rcpt_to=_or_odd(st.lists(mail_addresses, max_size=3)),
    expect_banner=_or_odd(regexes),
)
imap_definitions = _mail_fields(
    "imap",
    mailbox=_or_odd(st.sampled_from(["INBOX", "Archive/2024", "Entw\u00fcrfe", "a&b", "", "a\rb"])),
)
pop3_definitions = _mail_fields("pop3", stat=_or_odd(st.booleans()))
ftp_definitions = _mail_fields(
    "ftp",
    path=_or_odd(
        st.sampled_from(["/", "/incoming", "a b", "", "/a\r\nDELE x", "\u00e9"]) | st.none()
    ),
    operation=_or_odd(st.sampled_from(["list", "stat", "read", ""])),
    min_entries=_or_odd(st.integers(-1, 5) | st.none()),
    max_entries=_or_odd(st.integers(-1, 200_000)),
    max_listing_bytes=_or_odd(st.integers(-1, 1 << 30)),
    pasv_address=_or_odd(st.sampled_from(["same", "control", "announced", "any", ""])),
)
dns_names = st.one_of(
    spelled_hosts,
    st.sampled_from(
        [".", "example.test.", "a..b", "-a.test", "_sip._tcp.example.test", "a" * 64 + ".test"]
    ),
    st.lists(st.from_regex(r"\A[a-z0-9-]{1,70}\Z"), min_size=1, max_size=6).map(".".join),
)
base64_keys = st.sampled_from(
    ["c2VjcmV0LWtleS0xMjM0NTY=", "not base64!", "", "====", "AA=="]
) | st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode())
dns_definitions = st.fixed_dictionaries(
    {"kind": st.just("dns"), "name": _or_odd(dns_names)},
    optional={
        "type": _or_odd(st.sampled_from(["A", "aaaa", "TXT", "PTR", "SOA", "ANY", "TYPE65", ""])),
        "server": _or_odd(spelled_hosts | st.none()),
        "port": _or_odd(ports),
        "transport": _or_odd(st.sampled_from(["udp", "tcp", "UDP", "quic"])),
        "tls": _or_odd(tls_options | st.none()),
        "valid_rcodes": _or_odd(
            st.lists(st.sampled_from(["NOERROR", "nxdomain", "SERVFAIL", "BOGUS", ""]), max_size=3)
        ),
        "recursion": _or_odd(st.booleans()),
        "expect_answers": _or_odd(
            st.lists(st.sampled_from(["192.0.2.1", "::1", "mail.example.", "", " "]), max_size=3)
        ),
        "answers_match": _or_odd(regexes | st.none()),
        "answers_not_match": _or_odd(regexes | st.none()),
        "min_answers": _or_odd(st.integers(-1, 5) | st.none()),
        "max_answers": _or_odd(st.integers(-1, 5) | st.none()),
        "tsig_name": _or_odd(dns_names | st.none()),
        "tsig_key": st.one_of(secret_refs, base64_keys),
        "tsig_algorithm": _or_odd(st.sampled_from(["hmac-sha256", "hmac-md5", "HMAC-SHA1", "x"])),
        "max_bytes": _or_odd(st.integers(-1, 70000)),
        "ip_family": _or_odd(ip_families),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)
seconds = st.floats(min_value=0, max_value=120, allow_nan=False) | st.integers(-1, 120)
ratios = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
icmp_definitions = st.fixed_dictionaries(
    {"kind": st.just("icmp"), "host": _or_odd(spelled_hosts)},
    optional={
        "count": _or_odd(st.integers(-1, 200)),
        "ping_interval": _or_odd(seconds),
        "size": _or_odd(st.integers(-1, 70000)),
        "ttl": _or_odd(st.integers(-1, 300) | st.none()),
        "rtt_warn": _or_odd(seconds | st.none()),
        "rtt_crit": _or_odd(seconds | st.none()),
        "loss_warn": _or_odd(ratios | st.none()),
        "loss_crit": _or_odd(ratios | st.none()),
        "ip_family": _or_odd(ip_families),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)
tls_definitions = st.fixed_dictionaries(
    {"kind": st.just("tls"), "host": _or_odd(spelled_hosts)},
    optional={
        "port": _or_odd(ports),
        "starttls": _or_odd(
            st.sampled_from(["none", "smtp", "imap", "pop3", "ftp", "postgres", "SMTP", ""])
        ),
        "server_name": _or_odd(spelled_hosts | st.none()),
        "verify": _or_odd(st.booleans()),
        "tls": _or_odd(tls_options | st.none()),
        "min_version": _or_odd(st.sampled_from(["TLSv1.2", "TLSv1.3", "1.3", "SSLv3"]) | st.none()),
        "cert_warn_days": _or_odd(seconds | st.none()),
        "cert_crit_days": _or_odd(seconds | st.none()),
        "expect_subject": _or_odd(st.sampled_from(["CN=example.test", "", " "]) | st.none()),
        "expect_issuer": _or_odd(st.sampled_from(["O=Internal CA", ""]) | st.none()),
        "expect_san": _or_odd(
            st.lists(st.sampled_from(["example.test", "127.0.0.1", "", "*.x"]), max_size=3)
        ),
        "fingerprint_sha256": _or_odd(
            st.sampled_from(["ab" * 32, "AB:" * 31 + "AB", "abc", "zz" * 32]) | st.none()
        ),
        "ip_family": _or_odd(ip_families),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)
fingerprints = st.sampled_from(
    ["SHA256:" + "A" * 43, "SHA256:" + "b" * 43 + "=", "SHA256:short", "MD5:aa:bb", "", " "]
)


def _ssh_fields(
    kind: str, **extra: st.SearchStrategy[object]
) -> st.SearchStrategy[dict[str, object]]:
    """The fields ssh and sftp share, and ``extra``."""
    return st.fixed_dictionaries(
        {"kind": st.just(kind), "host": _or_odd(spelled_hosts)},
        optional={
            "port": _or_odd(ports),
            "username": _or_odd(user_names),
            "password": secret_refs,
            "private_key": secret_refs,
            "passphrase": secret_refs,
            "host_key_fingerprint": _or_odd(fingerprints | st.none()),
            "host_key_algorithm": _or_odd(
                st.sampled_from(["ssh-ed25519", "rsa-sha2-256", "ssh-dss", ""]) | st.none()
            ),
            "expect_version": _or_odd(st.sampled_from(["OpenSSH_9.2p1", "a b", ""]) | st.none()),
            "expect_protocol": _or_odd(st.sampled_from(["2.0", "1.99", ""]) | st.none()),
            "ip_family": _or_odd(ip_families),
            "assertions": assertion_lists,
            "timeouts": _or_odd(timeouts),
            **extra,
        },
    )


ssh_definitions = _ssh_fields(
    "ssh",
    command=_or_odd(st.sampled_from(["uptime", "", " ", "a\x00b", "echo $HOME"]) | st.none()),
    expect_exit_status=_or_odd(st.integers(-1, 256) | st.none()),
    max_output_bytes=_or_odd(st.integers(-1, 2**27)),
)
sftp_definitions = _ssh_fields(
    "sftp",
    path=_or_odd(st.sampled_from([".", "/upload", "", "a\x00b", "~/x"])),
    operation=_or_odd(st.sampled_from(["stat", "list", "read", "delete", ""])),
    max_age=_or_odd(seconds | st.none()),
    max_bytes=_or_odd(st.integers(-1, 2**31)),
    max_entries=_or_odd(st.integers(-1, 10**8)),
)
postgres_definitions = st.fixed_dictionaries(
    {"kind": st.just("postgres"), "host": _or_odd(spelled_hosts)},
    optional={
        "port": _or_odd(ports),
        "starttls": _or_odd(starttls_modes),
        "starttls_options": _or_odd(tls_options | st.none()),
        "username": _or_odd(user_names | st.none()),
        "password": secret_refs,
        "database": _or_odd(st.sampled_from(["app", "", "a\x00b", "\u00e9"]) | st.none()),
        "plaintext_auth": _or_odd(st.booleans()),
        "query": _or_odd(st.sampled_from(["SELECT 1", "", " ", "a\x00"]) | st.none()),
        "expect": _or_odd(st.text(max_size=8) | st.none()),
        "min_rows": _or_odd(st.integers(-1, 5) | st.none()),
        "max_rows": _or_odd(st.integers(-1, 5) | st.none()),
        "query_warning": _or_odd(
            st.sampled_from(["10", "10:", "~:10", "10:20", "@10:20", "20:10", "x", ""]) | st.none()
        ),
        "query_critical": _or_odd(st.sampled_from(["5", "@0:0", ":", "nan:1"]) | st.none()),
        "ip_family": _or_odd(ip_families),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)

mysql_definitions = st.fixed_dictionaries(
    {"kind": st.just("mysql"), "host": _or_odd(spelled_hosts)},
    optional={
        "port": _or_odd(ports),
        "starttls": _or_odd(starttls_modes),
        "starttls_options": _or_odd(tls_options | st.none()),
        "username": _or_odd(user_names | st.none()),
        "password": secret_refs,
        "database": _or_odd(st.sampled_from(["probe", "", "a\x00b", "x" * 300]) | st.none()),
        "query": _or_odd(st.sampled_from(["SELECT 1", "", " ", "\ud800", "x" * 70000]) | st.none()),
        "expect_value": _or_odd(st.sampled_from(["1", "", "NULL"]) | st.none()),
        "min_rows": _or_odd(st.integers(-1, 5) | st.none()),
        "max_rows": _or_odd(st.integers(-1, 5) | st.none()),
        "get_server_public_key": _or_odd(st.booleans()),
        "ip_family": _or_odd(ip_families),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)
mssql_definitions = st.fixed_dictionaries(
    {"kind": st.just("mssql"), "host": _or_odd(spelled_hosts)},
    optional={
        "port": _or_odd(ports),
        "encryption": _or_odd(st.sampled_from(["required", "optional", "off", "ON", ""])),
        "tls": _or_odd(tls_options | st.none()),
        "username": _or_odd(user_names | st.none()),
        "password": secret_refs,
        "database": _or_odd(st.sampled_from(["probe", "", "x" * 200]) | st.none()),
        "ip_family": _or_odd(ip_families),
        "assertions": assertion_lists,
        "timeouts": _or_odd(timeouts),
    },
)

placeholder_texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["{{token}}", "{{ id }}", "{{nope}}", "{{", "a{{id}}b", "{{1x}}", "}}"]),
)
api_steps = st.lists(
    st.fixed_dictionaries(
        {"name": _or_odd(st.sampled_from(["login", "read", "a-b", "", "bad name", "x" * 41]))},
        optional={
            "url": _or_odd(urls() | st.sampled_from(["{{next}}", "http://127.0.0.1/items/{{id}}"])),
            "method": _or_odd(st.sampled_from(["GET", "POST", "DELETE", "get"])),
            "headers": _or_odd(
                st.dictionaries(
                    st.sampled_from(["X-A", "Authorization", "bad name"]),
                    placeholder_texts,
                    max_size=2,
                )
            ),
            "body": _or_odd(placeholder_texts),
            "json": _or_odd(json_values),
            "form": _or_odd(st.dictionaries(st.text(max_size=4), placeholder_texts, max_size=2)),
            "bearer_token": _or_odd(placeholder_texts | secret_refs),
            "assertions": assertion_lists,
            "extract": _or_odd(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": _or_odd(st.sampled_from(["token", "id", "next", "1x"]))},
                        optional={
                            "source": _or_odd(
                                st.sampled_from(
                                    ["json", "regex", "header", "cookie", "status", "location", "x"]
                                )
                            ),
                            "path": _or_odd(
                                st.sampled_from(["$.token", "(a", "id=(\\d+)", "X-Id"])
                            ),
                            "group": _or_odd(st.integers(-1, 3)),
                            "secret": _or_odd(st.booleans()),
                        },
                    ),
                    max_size=2,
                )
            ),
            "max_attempts": _or_odd(st.integers(-1, 12)),
            "retry_wait": _or_odd(st.floats(-1, 5)),
            "continue_on_failure": _or_odd(st.booleans()),
            "always_run": _or_odd(st.booleans()),
            "timeouts": _or_odd(timeouts),
        },
    ),
    max_size=4,
)
#: Plain, valid step lists: the odd ones above rarely build, so these keep valid definitions
#: (and the checks past the first refusal) in reach of every run.
plain_api_steps = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["login", "create", "read", "delete"]),
            "url": st.sampled_from(["http://127.0.0.1/", "http://127.0.0.1/items/{{id}}"]),
        },
        optional={
            "method": st.sampled_from(["GET", "POST", "DELETE"]),
            "extract": st.just([{"name": "id", "source": "json", "path": "$.id"}]),
            "always_run": st.booleans(),
        },
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda step: step["name"],
)
api_definitions = st.fixed_dictionaries(
    {"kind": st.just("api"), "steps": _or_odd(api_steps | plain_api_steps)},
    optional={
        "variables": _or_odd(
            st.dictionaries(
                st.sampled_from(["token", "id", "1x", ""]),
                st.text(max_size=6) | secret_refs,
                max_size=2,
            )
        ),
        "capture": _or_odd(st.booleans()),
        "cleanup_grace": _or_odd(st.floats(-1, 20)),
        "tls": _or_odd(tls_options),
        "ip_family": _or_odd(ip_families),
        "timeouts": _or_odd(timeouts),
    },
)
script_definitions = st.fixed_dictionaries(
    {"kind": st.just("script"), "path": _or_odd(st.sampled_from(["check.py", "", "a\0b.py"]))},
    optional={
        "function": _or_odd(st.sampled_from(["check", "login", "not valid", "1x"])),
        "tls": _or_odd(tls_options),
        "ip_family": _or_odd(ip_families),
        "max_body_bytes": _or_odd(st.integers(-1, 2**20) | st.none()),
        "timeouts": _or_odd(timeouts),
    },
)


#: A definition strategy per built-in kind.
DEFINITIONS: dict[str, st.SearchStrategy[dict[str, object]]] = {
    "http": http_definitions,
    "tcp": tcp_definitions,
    "redis": redis_definitions,
    "smtp": smtp_definitions,
    "imap": imap_definitions,
    "pop3": pop3_definitions,
    "ftp": ftp_definitions,
    "dns": dns_definitions,
    "icmp": icmp_definitions,
    "tls": tls_definitions,
    "ssh": ssh_definitions,
    "sftp": sftp_definitions,
    "postgres": postgres_definitions,
    "mysql": mysql_definitions,
    "mssql": mssql_definitions,
    "api": api_definitions,
    "script": script_definitions,
}
definitions = st.one_of(*DEFINITIONS.values())
