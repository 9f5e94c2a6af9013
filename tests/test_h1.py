"""The lean HTTP/1.x response parser: every rule, a differential test against h11, and fuzzing."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit._errors import ProbeFailure
from probekit._h1 import (
    MAX_CHUNK_FRAMING,
    MAX_CHUNK_LINE,
    MAX_INTERIM,
    ResponseParser,
    header,
)
from probekit._result import ErrorKind

OK_HEAD = b"HTTP/1.1 200 OK\r\n"
CLOSED = "connection closed before the response ended"

# Feed everything at once, byte by byte, and in pieces of 7 bytes: the results must not differ.
STEPS = [0, 1, 7]


def feed_all(
    data: bytes, step: int = 0, *, head_request: bool = False, max_head_bytes: int = 64 * 1024
) -> tuple[ResponseParser, bytes]:
    """Feed ``data`` in pieces of ``step`` bytes (0: all at once), then EOF; return the body."""
    p = ResponseParser(head_request=head_request, max_head_bytes=max_head_bytes)
    pieces = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
    body = b"".join(chunk for piece in pieces for chunk in p.feed(piece))
    body += b"".join(p.feed(b""))
    return p, body


def error_of(data: bytes, step: int = 0, *, max_head_bytes: int = 64 * 1024) -> str:
    """The message of the ProbeFailure that feeding ``data`` (then EOF) raises."""
    with pytest.raises(ProbeFailure) as info:
        feed_all(data, step, max_head_bytes=max_head_bytes)
    assert info.value.kind is ErrorKind.PROTOCOL
    return info.value.message


def response(*headers: str, body: bytes = b"", status: bytes = OK_HEAD) -> bytes:
    return status + "".join(f"{h}\r\n" for h in headers).encode("latin-1") + b"\r\n" + body


# -- a whole response ------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_content_length_response(step: int) -> None:
    data = response("Server: nginx", "Content-Length: 5", "X-Two:  a  b \t", body=b"hello")
    p, body = feed_all(data, step)
    assert (p.status, p.reason, p.http_version) == (200, "OK", "1.1")
    assert p.headers == [("server", "nginx"), ("content-length", "5"), ("x-two", "a  b")]
    assert body == b"hello"
    assert p.head_done and p.done


def test_flags_follow_the_message() -> None:
    p = ResponseParser()
    assert (p.status, p.head_done, p.done, p.headers) == (0, False, False, [])
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n") == []
    assert (p.status, p.head_done) == (0, False)
    assert p.feed(b"\r\nab") == [b"ab"]
    assert (p.status, p.head_done, p.done) == (200, True, False)
    assert p.feed(b"cdEXTRA") == [b"cd"]
    assert p.done
    assert p.feed(b"more") == []
    assert p.feed(b"") == []


def test_header_lookup() -> None:
    headers = [("a", "1"), ("b", "2"), ("a", "3")]
    assert header(headers, "a") == "1"
    assert header(headers, "b") == "2"
    assert header(headers, "c") is None


# -- the status line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "version", "status", "reason"),
    [
        (b"HTTP/1.1 200 OK", "1.1", 200, "OK"),
        (b"HTTP/1.0 404 Not  Found", "1.0", 404, "Not  Found"),
        (b"HTTP/1.1 200", "1.1", 200, ""),
        (b"HTTP/1.1 200 ", "1.1", 200, ""),
        (b"HTTP/1.1 599 Caf\xe9\tx", "1.1", 599, "Caf\xe9\tx"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 301 Moved", "1.1", 301, "Moved"),
    ],
)
def test_status_lines(line: bytes, version: str, status: int, reason: str) -> None:
    p, _ = feed_all(line + b"\r\nContent-Length: 0\r\n\r\n")
    assert (p.http_version, p.status, p.reason) == (version, status, reason)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html>hello</html>\n", "does not start with an HTTP/1.x status line: b'<"),
        (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00", "does not start with an HTTP/1.x status line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "does not start with an HTTP/1.x"),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "does not start with an HTTP/1.x status line"),
        (b"http/1.1 200 OK\r\n\r\n", "does not start with an HTTP/1.x status line"),
        (b"HTTP/2 200\r\n\r\n", "unsupported HTTP version in status line: b'HTTP/2"),
        (b"HTTP/1.2 200 OK\r\n\r\n", "unsupported HTTP version"),
        (b"HTTP/0.9 200 OK\r\n\r\n", "unsupported HTTP version"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "invalid status code in status line: b'HTTP/1.1 20 OK'"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 200OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 600 Weird\r\n\r\n", "status code 600 out of range 100-599"),
        (b"HTTP/1.1 099 Low\r\n\r\n", "status code 99 out of range 100-599"),
        (b"HTTP/1.1 200 O\x00K\r\n\r\n", "invalid character in reason phrase"),
        (b"HTTP/1.1 200 O\rK\r\n\r\n", "invalid character in reason phrase"),
        (b"HTTP/1.1 200 OK\r\r\n\r\n", "invalid character in reason phrase"),
    ],
)
@pytest.mark.parametrize("step", STEPS)
def test_bad_status_lines(data: bytes, message: str, step: int) -> None:
    assert message in error_of(data, step)


@pytest.mark.parametrize("start", [b"<", b"HTTP/2", b"HTTP/1.1x", b"\x16\x03", b"HTTP/1.3"])
def test_garbage_is_rejected_before_any_line_ends(start: bytes) -> None:
    p = ResponseParser()
    with pytest.raises(ProbeFailure, match="HTTP"):
        p.feed(start)


@pytest.mark.parametrize("start", [b"H", b"HTTP/", b"HTTP/1.1", b"HTTP/1.0 ", b"HTTP/1.1 20"])
def test_a_prefix_of_a_status_line_waits_for_more(start: bytes) -> None:
    assert ResponseParser().feed(start) == []


def test_excerpts_are_short() -> None:
    message = error_of(b"GARBAGE" * 1000 + b"\r\n\r\n")
    assert len(message) < 200
    assert message.endswith("...")
    message = error_of(b"HTTP/1.1 200 OK\r\n" + b"X" * 5000 + b"\r\n\r\n")
    assert "header line without ':'" in message
    assert len(message) < 200


# -- line endings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\nA: 1\nContent-Length: 2\n\nhi",
        b"HTTP/1.1 200 OK\r\nA: 1\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\nA: 1\r\nContent-Length: 2\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 2\r\n\nhi",
    ],
)
@pytest.mark.parametrize("step", STEPS)
def test_bare_lf_is_accepted(data: bytes, step: int) -> None:
    p, body = feed_all(data, step)
    assert p.headers == [("a", "1"), ("content-length", "2")]
    assert body == b"hi"


def test_no_headers_at_all() -> None:
    for data in (b"HTTP/1.1 200 OK\r\n\r\nbody", b"HTTP/1.1 200 OK\n\nbody"):
        p, body = feed_all(data)
        assert p.headers == []
        assert body == b"body"


def test_bare_lf_blank_line_before_a_crlf_one_in_the_body() -> None:
    p, body = feed_all(b"HTTP/1.1 200 OK\nA: 1\n\nX: 2\r\n\r\n")
    assert p.headers == [("a", "1")]
    assert body == b"X: 2\r\n\r\n"


# -- headers ---------------------------------------------------------------------------------------


def test_headers_keep_order_and_duplicates_with_cleaned_names_and_values() -> None:
    p, _ = feed_all(
        response(
            "Set-Cookie: a=1",
            "X-Empty:",
            "X-Spaces: \t ",
            "SET-COOKIE:b=2",
            "X-Latin: caf\xe9 \xff",
            "!#$%&'*+-.^_`|~09azAZ: tok",
            "X-Inner:  a \t b  ",
            "Content-Length: 0",
        )
    )
    assert p.headers == [
        ("set-cookie", "a=1"),
        ("x-empty", ""),
        ("x-spaces", ""),
        ("set-cookie", "b=2"),
        ("x-latin", "caf\xe9 \xff"),
        ("!#$%&'*+-.^_`|~09azaz", "tok"),
        ("x-inner", "a \t b"),
        ("content-length", "0"),
    ]
    assert all(name.isascii() for name, _ in p.headers)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"Name : v", "invalid header name: b'Name : v'"),
        (b": v", "invalid header name"),
        (b"X(y): z", "invalid header name"),
        (b"X\xe9: z", "invalid header name"),
        (b"X\x00: z", "invalid header name"),
        (b"no colon here", "header line without ':': b'no colon here'"),
        (b"X: a\x00b", "invalid character in header value: b'X: a\\x00b'"),
        (b"X: a\rb", "invalid character in header value"),
        (b"X: a\r", "invalid character in header value"),
        (b"X: a\x7f", "invalid character in header value"),
        (b"X: a\x01", "invalid character in header value"),
        (b"X: a\x0bb", "invalid character in header value"),
        (b"X: a\x1b[0m", "invalid character in header value"),
    ],
)
@pytest.mark.parametrize("step", STEPS)
def test_bad_header_lines(line: bytes, message: str, step: int) -> None:
    data = OK_HEAD + b"A: 1\r\n" + line + b"\r\nB: 2\r\n\r\n"
    assert message in error_of(data, step)


@pytest.mark.parametrize("step", STEPS)
def test_obsolete_line_folding_is_joined_with_one_space(step: int) -> None:
    data = response("X: a", "  b", "\tc ", "Y: d \t", " \t e", "Z:", " f", "Content-Length: 0")
    p, _ = feed_all(data, step)
    assert p.headers == [("x", "a b c"), ("y", "d e"), ("z", "f"), ("content-length", "0")]


def test_folding_before_the_first_header_is_an_error() -> None:
    message = error_of(response(" folded", "X: a"))
    assert "header block starts with a continuation line" in message


def test_folded_line_is_still_checked() -> None:
    assert "invalid character in header value" in error_of(response("X: a", " b\x00"))


# -- interim responses -----------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_interim_responses_are_skipped(step: int) -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\nX-Progress: 1\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\nLink: </a.css>; rel=preload\n\n"
        + response("Content-Length: 2", body=b"ok")
    )
    p, body = feed_all(data, step)
    assert (p.status, p.reason, p.headers) == (200, "OK", [("content-length", "2")])
    assert body == b"ok"


def test_an_interim_response_alone_is_not_the_head() -> None:
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 100 Continue\r\nA: b\r\n\r\n") == []
    assert (p.status, p.head_done, p.headers, p.done) == (0, False, [], False)
    with pytest.raises(ProbeFailure, match=CLOSED):
        p.feed(b"")


def test_endless_interim_responses_are_refused_after_the_limit() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    for step in STEPS:
        p, body = feed_all(interim * MAX_INTERIM + response("Content-Length: 2", body=b"ok"), step)
        assert (p.status, body) == (200, b"ok")
        message = error_of(interim * (MAX_INTERIM + 1), step)
        assert message == f"more than {MAX_INTERIM} interim (1xx) responses"
    p = ResponseParser()
    with pytest.raises(ProbeFailure, match="interim"):
        keep_feeding(p, interim, 100 * len(interim))


def test_interim_heads_are_checked_too() -> None:
    assert "invalid header name" in error_of(b"HTTP/1.1 100 Continue\r\nBad Name: x\r\n\r\n")


@pytest.mark.parametrize("step", STEPS)
def test_101_is_final_without_a_body(step: int) -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    p, body = feed_all(data, step)
    assert (p.status, p.head_done, p.done, body) == (101, True, True, b"")
    assert p.headers == [("upgrade", "websocket")]


# -- the head limit --------------------------------------------------------------------------------


def test_head_limit_is_inclusive() -> None:
    data = response("X: " + "a" * 50)
    size = len(data)
    p, _ = feed_all(data, max_head_bytes=size)
    assert p.head_done
    for step in STEPS:
        message = error_of(data, step, max_head_bytes=size - 1)
        assert message == f"response head exceeds {size - 1} bytes"


def test_head_limit_applies_to_each_head() -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"a" * 60 + b"\r\n\r\n"
    final = response("X: " + "b" * 60, "Content-Length: 0")
    assert len(interim) > 64 and len(final) > 64
    limit = max(len(interim), len(final))
    for step in STEPS:
        p, _ = feed_all(interim * 3 + final, step, max_head_bytes=limit)
        assert p.status == 200
        assert "response head exceeds" in error_of(interim + final, step, max_head_bytes=limit - 1)


def keep_feeding(p: ResponseParser, piece: bytes, bound: int) -> None:
    """Feed ``piece`` until the parser gives up, checking what it holds stays under ``bound``."""
    for _ in range(100_000):
        p.feed(piece)
        assert len(p._buf) < bound


def feed_in_pieces(p: ResponseParser, data: bytes, piece: int, bound: int) -> None:
    for i in range(0, len(data), piece):
        p.feed(data[i : i + piece])
        assert len(p._buf) <= bound


def test_header_flood_is_stopped_as_it_arrives() -> None:
    p = ResponseParser(max_head_bytes=1024)
    p.feed(OK_HEAD)
    with pytest.raises(ProbeFailure, match="response head exceeds 1024 bytes"):
        keep_feeding(p, b"X-Flood: aaaaaaaaaaaaaaaa\r\n", 1024)
    assert len(p._buf) == 0


def test_endless_status_line_is_stopped() -> None:
    p = ResponseParser(max_head_bytes=1000)
    p.feed(b"HTTP/1.1 200 ")
    with pytest.raises(ProbeFailure, match="response head exceeds 1000 bytes"):
        keep_feeding(p, b"reason ", 1000)


def test_huge_single_feed_without_a_blank_line_is_not_kept() -> None:
    p = ResponseParser(max_head_bytes=1000)
    p.feed(OK_HEAD)
    with pytest.raises(ProbeFailure, match="response head exceeds 1000 bytes"):
        p.feed(b"X: y\r\n" * 100_000)
    assert len(p._buf) == 0


# -- body framing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("step", STEPS)
def test_no_body_statuses(status: int, step: int) -> None:
    data = response("Content-Length: 10", status=b"HTTP/1.1 %d X\r\n" % status) + b"ignored"
    p, body = feed_all(data, step)
    assert (p.status, p.done, body) == (status, True, b"")


@pytest.mark.parametrize("framing", ["Content-Length: 100", "Transfer-Encoding: chunked", ""])
def test_head_request_has_no_body(framing: str) -> None:
    p = ResponseParser(head_request=True)
    assert p.feed(response(framing) + b"trailing garbage") == []
    assert p.done and p.status == 200


@pytest.mark.parametrize("step", STEPS)
def test_content_length_stops_at_the_length(step: int) -> None:
    p, body = feed_all(response("Content-Length: 3", body=b"abcdef"), step)
    assert body == b"abc"
    assert p.done


def test_content_length_zero_is_done_with_the_head() -> None:
    p = ResponseParser()
    assert p.feed(response("Content-Length: 0")) == []
    assert p.done


def test_body_is_passed_through_as_it_arrives() -> None:
    p = ResponseParser()
    assert p.feed(response("Content-Length: 3000", body=b"x" * 100)) == [b"x" * 100]
    for _ in range(28):
        piece = bytes(100)
        assert p.feed(piece) == [piece]
        assert len(p._buf) == 0
    assert p.feed(b"y" * 150) == [b"y" * 100]
    assert p.done


@pytest.mark.parametrize(
    "values",
    [
        ["5"],
        [" 5 "],
        ["5, 5"],
        ["5,5,5"],
        ["5", "5"],
        ["5", "5, 5"],
        ["005"],
    ],
)
def test_content_length_variants(values: list[str]) -> None:
    p, body = feed_all(response(*(f"Content-Length: {v}" for v in values), body=b"hello!"))
    assert body == b"hello"
    assert p.done


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["5", "6"], "conflicting Content-Length values: 5 and 6"),
        (["5, 6"], "conflicting Content-Length values: 5 and 6"),
        (["abc"], "invalid Content-Length: b'abc'"),
        (["-1"], "invalid Content-Length"),
        (["+5"], "invalid Content-Length"),
        (["5 5"], "invalid Content-Length"),
        ([""], "invalid Content-Length"),
        (["5,"], "invalid Content-Length"),
        (["0x10"], "invalid Content-Length"),
        (["1_0"], "invalid Content-Length"),
        (["\xb2"], "invalid Content-Length"),
        (["1" * 19], "Content-Length has more than 18 digits"),
    ],
)
def test_bad_content_length(values: list[str], message: str) -> None:
    assert message in error_of(response(*(f"Content-Length: {v}" for v in values), body=b"x"))


def test_eighteen_digits_are_allowed() -> None:
    p = ResponseParser()
    p.feed(response("Content-Length: " + "9" * 18, body=b"x"))
    assert p.head_done and not p.done


@pytest.mark.parametrize(
    "data",
    [
        response("Content-Length: 10", body=b"short"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 2",
        b"",
    ],
)
def test_eof_before_the_end(data: bytes) -> None:
    assert error_of(data) == CLOSED


@pytest.mark.parametrize(
    "data",
    [
        response(body=b"until the end"),
        response("Transfer-Encoding: gzip", "Content-Length: 2", body=b"until the end"),
        response("Transfer-Encoding: chunked, gzip", body=b"until the end"),
        response(body=b"until the end", status=b"HTTP/1.0 200 OK\r\n"),
    ],
)
@pytest.mark.parametrize("step", STEPS)
def test_read_until_eof(data: bytes, step: int) -> None:
    p = ResponseParser()
    pieces = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
    body = b"".join(c for piece in pieces for c in p.feed(piece))
    assert (p.head_done, p.done) == (True, False)
    assert p.feed(b"") == []
    assert p.done
    assert body == b"until the end"


@pytest.mark.parametrize(
    "codings",
    [
        ["chunked"],
        ["Chunked"],
        [" CHUNKED "],
        ["gzip, chunked"],
        ["gzip", "chunked"],
        ["gzip,  , chunked,"],
    ],
)
def test_chunked_is_the_final_coding(codings: list[str]) -> None:
    headers = [f"Transfer-Encoding: {c}" for c in codings]
    p, body = feed_all(response(*headers, "Content-Length: bad", body=b"2\r\nok\r\n0\r\n\r\n"))
    assert body == b"ok"
    assert p.done


def test_chunked_twice_is_an_error() -> None:
    message = error_of(response("Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"))
    assert "Transfer-Encoding applies chunked more than once" in message


# -- chunked bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [*STEPS, 2, 3])
def test_chunked_body(step: int) -> None:
    chunks = b"5\r\nhello\r\nA;name=value;flag\r\n0123456789\r\nf \t;x\r\n" + b"y" * 15 + b"\r\n"
    chunks += b"0000000000000001\n!\n0\r\nExpires: never\r\nX-Checksum: 1\r\n  folded\r\n\r\n"
    data = response("Transfer-Encoding: chunked", "X: 1", body=chunks + b"ignored")
    p, body = feed_all(data, step)
    assert body == b"hello0123456789" + b"y" * 15 + b"!"
    assert p.headers == [("transfer-encoding", "chunked"), ("x", "1")]
    assert p.done


def test_chunk_data_is_passed_through() -> None:
    p = ResponseParser()
    assert p.feed(response("Transfer-Encoding: chunked", body=b"1000\r\nab")) == [b"ab"]
    piece = b"z" * 100
    assert p.feed(piece) == [piece]
    assert len(p._buf) == 0


def test_done_exactly_after_the_trailers() -> None:
    p = ResponseParser()
    p.feed(response("Transfer-Encoding: chunked", body=b"0\r\nA: b\r\n"))
    assert not p.done
    p.feed(b"\r")
    assert not p.done
    assert p.feed(b"\nafter") == []
    assert p.done


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        (b"xyz\r\n", "invalid chunk size line: b'xyz'"),
        (b"\r\n", "invalid chunk size line: b''"),
        (b" 5\r\nhello\r\n", "invalid chunk size line"),
        (b"-5\r\n", "invalid chunk size line"),
        (b"0x5\r\n", "invalid chunk size line"),
        (b"5 5\r\n", "invalid chunk size line"),
        (b"1_0\r\n", "invalid chunk size line"),
        (b"5\r\r\nhello", "invalid chunk size line"),
        (b"1" * 17 + b"\r\n", "chunk size has more than 16 hex digits"),
        (b"5\r\nhelloX\r\n0\r\n\r\n", "chunk data not followed by CRLF: b'X"),
        (b"5\r\nhello\rX\r\n0\r\n\r\n", "chunk data not followed by CRLF: b'\\rX"),
        (b"5\r\nhello\r\r\n0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5\r\nhello 0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5;" + b"e" * MAX_CHUNK_LINE + b"\r\n", "chunk size line exceeds 4096 bytes"),
        (b"0\r\nno colon\r\n\r\n", "trailer line without ':'"),
        (b"0\r\nBad Name: x\r\n\r\n", "invalid trailer name"),
        (b"0\r\nX: a\x00\r\n\r\n", "invalid character in trailer value"),
        (b"0\r\n folded\r\n\r\n", "trailer block starts with a continuation line"),
        (b"0\r\nX: a\r\n b\x01\r\n\r\n", "invalid character in trailer value"),
    ],
)
@pytest.mark.parametrize("step", STEPS)
def test_bad_chunked_bodies(chunks: bytes, message: str, step: int) -> None:
    assert message in error_of(response("Transfer-Encoding: chunked", body=chunks), step)


def test_chunk_size_line_limit_is_inclusive() -> None:
    line = b"5;" + b"e" * (MAX_CHUNK_LINE - 4) + b"\r\n"
    assert len(line) == MAX_CHUNK_LINE
    for step in STEPS:
        p, body = feed_all(
            response("Transfer-Encoding: chunked", body=line + b"hello\r\n0\r\n\r\n"), step
        )
        assert body == b"hello"
        assert p.done
        message = error_of(response("Transfer-Encoding: chunked", body=b"5;e" + line), step)
        assert message == "chunk size line exceeds 4096 bytes"


def test_chunk_extension_flood_is_refused() -> None:
    # 4 KB of extension per byte of data: the framing budget runs out after about 16 chunks.
    flood = b"1;" + b"e" * 4000 + b"\r\nx\r\n"
    p = ResponseParser()
    p.feed(response("Transfer-Encoding: chunked"))
    with pytest.raises(ProbeFailure, match="chunked framing outweighs the data"):
        keep_feeding(p, flood, MAX_CHUNK_FRAMING + 2 * len(flood))


def test_tiny_chunk_flood_is_refused() -> None:
    flood = b"1\r\nx\r\n"
    p = ResponseParser()
    p.feed(response("Transfer-Encoding: chunked"))
    with pytest.raises(ProbeFailure, match="chunked framing outweighs the data"):
        keep_feeding(p, flood * 1000, MAX_CHUNK_FRAMING * 2 + 1000 * len(flood))


@pytest.mark.parametrize("step", STEPS)
def test_chunk_extensions_within_the_framing_budget_are_fine(step: int) -> None:
    # Extensions up to the budget, then chunks whose data pays for their framing.
    ext = b"1;" + b"e" * 1000 + b"\r\nx\r\n"
    small = b"3\r\nabc\r\n"
    count = MAX_CHUNK_FRAMING // 1010
    chunks = ext * count + small * 5000 + b"0\r\n\r\n"
    p, body = feed_all(response("Transfer-Encoding: chunked", body=chunks), step or 4096)
    assert p.done
    assert body == b"x" * count + b"abc" * 5000


def test_trailers_share_the_head_budget() -> None:
    trailers = b"0\r\n" + b"X: " + b"t" * 90 + b"\r\n" + b"Y: " + b"t" * 90 + b"\r\n\r\n"
    data = response("Transfer-Encoding: chunked", body=trailers)
    for step in STEPS:
        p, _ = feed_all(data, step, max_head_bytes=len(trailers) - 3)
        assert p.done
        message = error_of(data, step, max_head_bytes=len(trailers) - 4)
        assert message == f"response trailers exceed {len(trailers) - 4} bytes"


def test_endless_trailers_are_stopped() -> None:
    p = ResponseParser(max_head_bytes=1000)
    p.feed(response("Transfer-Encoding: chunked", body=b"0\r\n"))
    with pytest.raises(ProbeFailure, match="response trailers exceed 1000 bytes"):
        keep_feeding(p, b"X: yyyyyyy\r\n", 1000)


@pytest.mark.parametrize(
    "chunks",
    [
        b"5\r\nhel",
        b"5\r\nhello",
        b"5\r\nhello\r",
        b"5\r\nhello\r\n",
        b"5",
        b"0\r\n",
        b"0\r\nA: b\r\n",
    ],
)
def test_eof_inside_a_chunked_body(chunks: bytes) -> None:
    for step in STEPS:
        assert error_of(response("Transfer-Encoding: chunked", body=chunks), step) == CLOSED


# -- after the end, after an error -----------------------------------------------------------------


def test_a_failed_parser_stays_failed() -> None:
    p = ResponseParser()
    with pytest.raises(ProbeFailure) as first:
        p.feed(b"HTTP/1.1 200 OK\r\nbad\r\n\r\n")
    with pytest.raises(ProbeFailure) as again:
        p.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    assert again.value is first.value
    with pytest.raises(ProbeFailure):
        p.feed(b"")


def test_max_head_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ResponseParser(max_head_bytes=0)


# -- differential test against h11 -----------------------------------------------------------------

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHARS = "".join(map(chr, range(0x21, 0x7F))) + "\x80\x85\xa0\xe9\xff"
_FRAMING = {"content-length", "transfer-encoding"}

names = st.text(_TCHARS, min_size=1, max_size=12).filter(lambda n: n.lower() not in _FRAMING)
words = st.text(_VCHARS, min_size=1, max_size=12)
values = st.builds(
    lambda lead, inner, trail: lead + inner + trail,
    st.sampled_from(["", " ", "  ", "\t", " \t"]),
    st.lists(words, max_size=3).map(" ".join),
    st.sampled_from(["", " ", "\t"]),
)
eols = st.sampled_from(["\r\n", "\r\n", "\n"])


Field = tuple[str, tuple[str, str]]  # the header's lines as sent, and (name, value) as parsed


@st.composite
def fields(draw: st.DrawFn) -> Field:
    """One header, perhaps with obs-fold continuation lines, and what a parser should report."""
    name, value = draw(names), draw(values)
    folds = draw(st.lists(words, max_size=2)) if value.strip(" \t") else []
    sent = value.rstrip(" \t") if folds else value
    text = f"{name}:{sent}{draw(eols)}"
    for word in folds:
        text += draw(st.sampled_from([" ", "\t", "  "])) + word + draw(eols)
    return text, (name.lower(), " ".join([value.strip(" \t"), *folds]))


def field_block(max_size: int) -> st.SearchStrategy[list[Field]]:
    return st.lists(fields(), max_size=max_size)


def framing_fields(draw: st.DrawFn, framing: str, length: int) -> list[Field]:
    if framing == "chunked":
        coding = draw(st.sampled_from(["chunked", "Chunked", " CHUNKED "]))
        return [(f"Transfer-Encoding:{coding}\r\n", ("transfer-encoding", coding.strip()))]
    sent = draw(
        st.sampled_from([[f"{length}"], [f" {length} "], [f"{length}"] * 2, [f"{length},{length}"]])
    )
    return [(f"Content-Length:{v}{draw(eols)}", ("content-length", v.strip())) for v in sent]


def chunk(draw: st.DrawFn, content: bytes) -> bytes:
    """``content`` in the chunked coding, with random chunk sizes, extensions and trailers."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(content) - 1)), max_size=5)))
    out = b""
    for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True):
        if piece := content[a:b]:
            size = draw(st.sampled_from(["{:x}", "{:X}", "{:04x}"])).format(len(piece))
            ext = draw(st.sampled_from(["", ";a=b", ";flag", ';q="x y"']))
            out += f"{size}{ext}\r\n".encode() + piece + b"\r\n"
    trailers = "".join(text for text, _ in draw(field_block(3)))
    return out + b"0\r\n" + trailers.encode("latin-1") + draw(eols).encode()


Case = tuple[bytes, str, int, list[tuple[str, str]], bytes]


@st.composite
def responses(draw: st.DrawFn) -> Case:
    """A valid response: (bytes on the wire, request method, status, headers, body)."""
    method = draw(st.sampled_from(["GET", "GET", "HEAD"]))
    wire = ""
    for code in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        interim = "".join(text for text, _ in draw(field_block(2)))
        wire += f"HTTP/1.1 {code} Interim{draw(eols)}{interim}{draw(eols)}"
    version = draw(st.sampled_from(["1.1", "1.0"]))
    status = draw(st.sampled_from([200, 204, 304, 404]) | st.integers(200, 599))
    reason = draw(st.sampled_from(["", " ", " OK", " Not Found", " caf\xe9"]))
    framing = draw(
        st.sampled_from(
            ["length", "chunked", "chunked", "close"] if version == "1.1" else ["length", "close"]
        )
    )
    body = draw(st.binary(max_size=300))
    has_body = method != "HEAD" and status not in (204, 304)
    if framing == "close" and not has_body:
        framing = "length"  # h11 would wait for the close where this parser knows better
    length = len(body) if has_body else draw(st.integers(0, 1000))  # any length without a body
    block = draw(field_block(8))
    if framing != "close":
        at = draw(st.integers(0, len(block)))
        block[at:at] = framing_fields(draw, framing, length)
    wire += f"HTTP/{version} {status}{reason}{draw(eols)}"
    wire += "".join(text for text, _ in block) + draw(eols)
    encoded = wire.encode("latin-1")
    if has_body:
        encoded += chunk(draw, body) if framing == "chunked" else body
    else:
        body = b""
    return encoded, method, status, [parsed for _, parsed in block], body


def h11_parse(wire: bytes, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(method=method, target="/", headers=[("Host", "x"), ("Connection", "close")])
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    conn.receive_data(b"")
    status = 0
    headers: list[tuple[str, str]] = []
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = [(k.decode("ascii"), v.decode("latin-1")) for k, v in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body
        elif not isinstance(event, h11.InformationalResponse):
            raise AssertionError(f"unexpected h11 event {event!r}")


def h11_view(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Our headers as h11 reports them: one Content-Length with one value, lower-cased codings."""
    out: list[tuple[str, str]] = []
    seen_length = False
    for name, value in headers:
        if name == "content-length":
            if seen_length:
                continue
            seen_length = True
            value = value.split(",")[0].strip(" \t")
        elif name == "transfer-encoding":
            value = value.lower()
        out.append((name, value))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given points (modulo its length), without empty pieces (EOF)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [piece for piece in pieces if piece]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=responses(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_agrees_with_h11(case: Case, cuts: list[int]) -> None:
    wire, method, status, headers, body = case
    p = ResponseParser(head_request=method == "HEAD")
    got = b""
    for piece in split(wire, cuts):
        got += b"".join(p.feed(piece))
    got += b"".join(p.feed(b""))
    assert p.done
    assert p.status == status
    assert p.headers == headers
    assert got == body
    h11_status, h11_headers, h11_body = h11_parse(wire, method)
    assert (p.status, h11_view(p.headers), got) == (h11_status, h11_headers, h11_body)


# -- fuzzing ---------------------------------------------------------------------------------------

_SEEDS = [
    response("Content-Length: 5", "X: y", body=b"hello"),
    response("Transfer-Encoding: chunked", body=b"5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n"),
    b"HTTP/1.1 100 Continue\r\n\r\n" + response("X: a", " b", body=b"until eof"),
    b"HTTP/1.0 204 No Content\nContent-Length: 3\n\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid response with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["replace", "insert", "delete"]))
        junk = draw(
            st.binary(min_size=1, max_size=3)
            | st.sampled_from([b"\r", b"\n", b":", b" ", b"0", b";"])
        )
        if what == "replace":
            data[at : at + len(junk)] = junk
        elif what == "insert":
            data[at:at] = junk
        else:
            del data[at : at + len(junk)]
    return bytes(data)


def _fuzz(data: bytes, cuts: list[int], head_request: bool, max_head_bytes: int) -> None:
    p = ResponseParser(head_request=head_request, max_head_bytes=max_head_bytes)
    received = 0
    failure: ProbeFailure | None = None
    try:
        for piece in [*split(data, cuts), b""]:
            chunks = p.feed(piece)
            assert all(isinstance(c, bytes) and c for c in chunks)
            received += sum(map(len, chunks))
            assert len(p._buf) <= max(max_head_bytes, MAX_CHUNK_LINE)
            if p.done:
                break
    except ProbeFailure as exc:
        failure = exc
    if failure is not None:
        assert failure.kind is ErrorKind.PROTOCOL
        assert failure.message
    else:
        assert p.done and p.head_done and 100 <= p.status <= 599
        assert received <= len(data)


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=400) | st.builds(lambda b: b"HTTP/1.1 " + b, st.binary(max_size=400)),
    cuts=st.lists(st.integers(0, 1000), max_size=10),
    head_request=st.booleans(),
    max_head_bytes=st.sampled_from([16, 100, 64 * 1024]),
)
def test_arbitrary_bytes_parse_or_fail_cleanly(
    data: bytes, cuts: list[int], head_request: bool, max_head_bytes: int
) -> None:
    _fuzz(data, cuts, head_request, max_head_bytes)


@settings(max_examples=500, deadline=None)
@given(
    data=mutated(),
    cuts=st.lists(st.integers(0, 1000), max_size=10),
    head_request=st.booleans(),
    max_head_bytes=st.sampled_from([40, 64 * 1024]),
)
def test_mutated_responses_parse_or_fail_cleanly(
    data: bytes, cuts: list[int], head_request: bool, max_head_bytes: int
) -> None:
    _fuzz(data, cuts, head_request, max_head_bytes)


@settings(max_examples=50, deadline=None)
@given(
    line=st.binary(min_size=1, max_size=64),
    piece=st.integers(1, 5000),
    max_head_bytes=st.integers(64, 8192),
)
def test_header_flood_keeps_memory_bounded(line: bytes, piece: int, max_head_bytes: int) -> None:
    p = ResponseParser(max_head_bytes=max_head_bytes)
    flood = (b"X-" + line.replace(b"\n", b"").replace(b"\r", b"") + b": v\r\n") * 2000
    p.feed(OK_HEAD)
    with pytest.raises(ProbeFailure) as info:
        feed_in_pieces(p, flood, piece, max_head_bytes + 4096)
    assert info.value.kind is ErrorKind.PROTOCOL
