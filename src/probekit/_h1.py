"""A lean, strict, incremental parser for one HTTP/1.x response.

The HTTP probe sends exactly one request with ``Connection: close`` on a fresh connection and
reads exactly one response, so this parser knows nothing about requests, keep-alive, pipelining
or upgrades: it turns the bytes of one response into a status, headers and body chunks.

Rules (RFC 9110 / RFC 9112), and the choices made where the RFCs leave room:

* The status line is ``HTTP/1.0`` or ``HTTP/1.1``, a space, a status code from 100 to 599 and an
  optional reason phrase (``HTTP/1.1 200`` and ``HTTP/1.1 200 `` are fine). Anything else is
  rejected; a first line that can no longer become ``HTTP/1.x`` is rejected as soon as it arrives
  (an HTTP/0.9 body, a TLS record, an HTTP/2 frame), not when the head limit runs out.
* Lines end in CRLF; a bare LF is accepted too (one trailing CR is stripped).
* Header names are RFC 9110 tokens; values are stripped of spaces and tabs at both ends and may
  hold visible ASCII, spaces, tabs and obs-text (0x80-0xFF, decoded as latin-1). Any other
  control character (NUL, a bare CR, DEL, ...) is an error. Obsolete line folding is
  *accepted*: a line starting with a space or tab is joined onto the previous line, and the
  whitespace around the fold becomes exactly one space (RFC 9112 section 5.2 allows replacing
  an obs-fold with spaces); a continuation line before the first header is an error.
* Interim 1xx responses other than 101 are parsed and discarded; 101 is final and has no body.
  More than ``MAX_INTERIM`` (10) interim responses are an error: an endless stream of
  ``100 Continue`` would otherwise keep the parser busy for the whole deadline.
* Each head (status line, headers and the blank line) may be at most ``max_head_bytes``; the
  limit is checked as bytes arrive, so the parser never holds more than that waiting for the
  blank line. Trailers share one budget of ``max_head_bytes``.
* Body framing follows RFC 9112 section 6.3: no body for a HEAD request, 1xx, 204 and 304; a
  Transfer-Encoding whose final coding is ``chunked`` means chunked (Content-Length is then
  ignored, unchecked); ``chunked`` listed more than once is an error; any other
  Transfer-Encoding means "read until the connection closes". Otherwise Content-Length decides:
  ASCII digits only, at most 18 of them, repeated headers and comma lists allowed when all
  values are equal. With no framing at all the body runs until EOF, which then ends the
  message cleanly.
* Chunk sizes are 1 to 16 hex digits, optionally followed by spaces/tabs and ``;extensions``
  (ignored); the size line may be at most 4096 bytes. Chunk data must be followed by exactly
  CRLF (or LF). Trailer lines after the last chunk are validated like header lines and
  discarded. The size lines together may outweigh the data they frame by at most
  ``MAX_CHUNK_FRAMING`` (64 KiB) bytes, which bounds the work per byte of body: floods of
  chunk extensions or of one-byte chunks are refused, not parsed until the deadline.

Body bytes are handed back as they arrive; the parser only ever buffers an incomplete head, an
incomplete chunk-size or trailer line, or a lone CR after chunk data. Every malformed input
raises :class:`ProbeFailure` with :attr:`ErrorKind.PROTOCOL`; after that the parser stays failed
and raises the same error again.
"""

from __future__ import annotations

import re

from ._exceptions import ProbeFailure
from ._result import ErrorKind

__all__ = ["MAX_CHUNK_FRAMING", "MAX_CHUNK_LINE", "MAX_INTERIM", "ResponseParser", "header"]

#: The longest chunk-size line (size, extensions and line ending) accepted.
MAX_CHUNK_LINE = 4096
#: How far the chunked framing (size lines, with their extensions) may outweigh the data it
#: frames, in bytes. Each chunk costs the parser a fixed amount of work, so a body of one-byte
#: chunks, or of 4 KB of extensions per byte, would burn CPU for the whole deadline; a body whose
#: framing costs more than its data, past this allowance, is refused instead.
MAX_CHUNK_FRAMING = 64 * 1024
#: How many interim (1xx) responses may precede the final one.
MAX_INTERIM = 10

_EXCERPT = 80

# Parser states.
_HEAD = 0
_LENGTH = 1  # Content-Length body, _remaining bytes to go
_UNTIL_EOF = 2  # body delimited by the connection closing
_CHUNK_SIZE = 3
_CHUNK_DATA = 4  # _remaining bytes of the current chunk to go
_CHUNK_END = 5  # the CRLF after chunk data
_TRAILER = 6
_DONE = 7
_FAILED = 8

# The full status line; a token, field values and reason phrases allow HTAB, SP, VCHAR and
# obs-text. Possessive quantifiers keep every match linear in the input.
_STATUS_RE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*+))?")
_PREFIXES = (b"HTTP/1.1 ", b"HTTP/1.0 ")
_TCHAR = r"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_VALUE = r"[\t\x20-\x7e\x80-\xff]"
# One well-formed header line, decoded as latin-1; used with findall over a whole header block.
_FIELD_LINE_RE = re.compile(rf"^({_TCHAR}++):[ \t]*+({_VALUE}*+)\r?\n", re.MULTILINE)
_TOKEN_RE = re.compile(rf"{_TCHAR}++")
_VALUE_RE = re.compile(rf"{_VALUE}*+")
_HEX_RE = re.compile(rb"[0-9A-Fa-f]++")
_NO_BODY_STATUS = frozenset({101, 204, 304})
_CLOSED = "connection closed before the response ended"


def _excerpt(data: bytes | bytearray | str) -> str:
    """A short, printable rendering of offending input for an error message."""
    if isinstance(data, str):  # a header line, decoded as latin-1: show the bytes again
        data = data.encode("latin-1")
    text = repr(bytes(data[:_EXCERPT]))
    return text + "..." if len(data) > _EXCERPT else text


def _fail(message: str) -> ProbeFailure:
    return ProbeFailure(ErrorKind.PROTOCOL, message)


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of the header ``name`` (lower case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _status_error(line: bytes | bytearray) -> ProbeFailure:
    """Say what is wrong with a status line that did not match."""
    shown = _excerpt(line)
    if line[:9] not in _PREFIXES:
        if line[:5] == b"HTTP/":
            return _fail(f"unsupported HTTP version in status line: {shown}")
        return _fail(f"response does not start with an HTTP/1.x status line: {shown}")
    code = line[9:12]
    if len(code) != 3 or not code.isdigit() or line[12:13] not in (b"", b" "):
        return _fail(f"invalid status code in status line: {shown}")
    if not 100 <= int(code) <= 599:
        return _fail(f"status code {int(code)} out of range 100-599: {shown}")
    return _fail(f"invalid character in reason phrase: {shown}")


def _status_line(src: bytes | bytearray, start: int, nl1: int) -> re.Match[bytes]:
    """Match the status line ``src[start:nl1]`` (less a trailing CR) or say what is wrong."""
    stop = nl1 - 1 if nl1 > start and src[nl1 - 1] == 13 else nl1
    match = _STATUS_RE.fullmatch(src, start, stop)
    if match is None:
        raise _status_error(src[start:stop])
    return match


def _content_length(values: list[str]) -> int:
    """The one length all Content-Length headers (and their comma lists) agree on."""
    length = -1
    for value in values:
        for part in value.split(","):
            digits = part.strip(" \t")
            if not (digits.isascii() and digits.isdigit()):
                raise _fail(f"invalid Content-Length: {_excerpt(value)}")
            if len(digits) > 18:
                raise _fail(f"Content-Length has more than 18 digits: {_excerpt(value)}")
            number = int(digits)
            if length < 0:
                length = number
            elif number != length:
                raise _fail(f"conflicting Content-Length values: {length} and {number}")
    return length


def _fold(text: str, what: str) -> list[str]:
    """Split a header block into logical lines, joining obs-fold continuations."""
    lines: list[str] = []
    for raw in text.split("\n")[:-1]:
        line = raw[:-1] if raw[-1:] == "\r" else raw
        if line[:1] in (" ", "\t"):
            if not lines:
                raise _fail(f"{what} block starts with a continuation line: {_excerpt(line)}")
            lines[-1] = lines[-1].rstrip(" \t") + " " + line.lstrip(" \t")
        else:
            lines.append(line)
    return lines


def _field(line: str, what: str) -> tuple[str, str]:
    """Parse one logical header (or trailer) line, naming the first problem found."""
    name, colon, value = line.partition(":")
    if not colon:
        raise _fail(f"{what} line without ':': {_excerpt(line)}")
    if _TOKEN_RE.fullmatch(name) is None:
        raise _fail(f"invalid {what} name: {_excerpt(line)}")
    if _VALUE_RE.fullmatch(value) is None:
        raise _fail(f"invalid character in {what} value: {_excerpt(line)}")
    return name.lower(), value.strip(" \t")


def _fields_slow(text: str) -> list[tuple[str, str]]:
    return [_field(line, "header") for line in _fold(text, "header")]


class ResponseParser:
    """Incremental parser for one HTTP/1.x response."""

    __slots__ = (
        "_buf",
        "_error",
        "_framing_left",
        "_head_request",
        "_interim",
        "_line1",
        "_max_head",
        "_remaining",
        "_scan",
        "_state",
        "_trailer_bytes",
        "done",
        "head_done",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    head_done: bool
    done: bool

    def __init__(self, *, head_request: bool = False, max_head_bytes: int = 64 * 1024) -> None:
        if max_head_bytes < 1:
            raise ValueError("max_head_bytes must be positive")
        self.status = 0
        self.reason = ""
        self.http_version = ""
        self.headers = []
        self.head_done = False
        self.done = False
        self._head_request = head_request
        self._max_head = max_head_bytes
        self._state = _HEAD
        self._buf = bytearray()
        self._scan = 0  # where the next search in _buf starts (head state)
        self._line1 = -1  # index of the status line's LF in _buf, once seen (head state)
        self._remaining = 0
        self._trailer_bytes = 0
        self._interim = 0
        self._framing_left = MAX_CHUNK_FRAMING
        self._error: ProbeFailure | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Feed bytes read from the connection; b"" means EOF.

        Returns the body bytes (transfer framing removed) that became available with this call,
        as a list of chunks (often empty or one item). Sets head_done / done as they become
        true. After done, further data is ignored (returns []). Raises
        ProbeFailure(ErrorKind.PROTOCOL, ...) on invalid input, on exceeding limits, and on EOF
        before the message is complete.
        """
        state = self._state
        if data:
            if state == _LENGTH:  # the common continuation: more of a Content-Length body
                remaining = self._remaining
                size = len(data)
                if size < remaining:
                    self._remaining = remaining - size
                    return [data]
                self._finish()
                return [data[:remaining]] if remaining < size else [data]
            if state == _UNTIL_EOF:
                return [data]
        if state == _DONE:
            return []
        if state == _FAILED and self._error is not None:
            raise self._error
        try:
            if not data:
                if state == _UNTIL_EOF:
                    self._finish()
                    return []
                raise _fail(_CLOSED)
            return self._run(data)
        except ProbeFailure as exc:
            self._state = _FAILED
            self._error = exc
            self._buf = bytearray()
            raise

    def _finish(self) -> None:
        self._state = _DONE
        self.done = True
        self._remaining = 0

    def _run(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _HEAD:
                pos = self._head(data, pos)
            elif state in (_LENGTH, _CHUNK_DATA):
                remaining = self._remaining
                if end - pos < remaining:
                    out.append(data[pos:] if pos else data)
                    self._remaining = remaining - (end - pos)
                    break
                stop = pos + remaining
                out.append(data[pos:stop])
                pos = stop
                if state == _LENGTH:
                    self._finish()
                    break
                self._remaining = 0
                self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                pos = self._chunk_size(data, pos)
            elif state == _CHUNK_END:
                pos = self._chunk_end(data, pos)
            elif state == _TRAILER:
                pos = self._trailer(data, pos)
            elif state == _UNTIL_EOF:
                out.append(data[pos:] if pos else data)
                break
            else:  # _DONE: anything after the end of the message is ignored
                break
        return out

    # -- the head ------------------------------------------------------------------------------

    def _head(self, data: bytes, pos: int) -> int:
        """Parse a head starting at ``data[pos]`` (after whatever ``_buf`` holds).

        Returns the position after the head, or ``len(data)`` when the head is incomplete and
        the rest of the data has been buffered.
        """
        buf = self._buf
        src: bytes | bytearray
        match: re.Match[bytes] | None = None
        if buf:
            old = len(buf)
            # Only what could still belong to a head within the limit is copied.
            buf += data[pos : pos + self._max_head - old]
            src, start, base = buf, 0, old - pos  # data index = src index - base
            scan = self._scan
            nl1 = self._line1
        else:
            src, start, base = data, pos, 0
            scan = pos
            nl1 = -1
        if nl1 < 0:
            nl1 = src.find(b"\n", scan)
            if nl1 < 0:
                first = src[start : start + 9]
                if not (_PREFIXES[0].startswith(first) or _PREFIXES[1].startswith(first)):
                    raise _status_error(src[start : start + _EXCERPT + 1])
                return self._more(data, src, start, len(src), -1)
            match = _status_line(src, start, nl1)  # a bad status line fails at once
            scan = nl1
        # The head ends at the first empty line: "\n\r\n" or "\n\n".
        crlf = src.find(b"\n\r\n", scan)
        lf = src.find(b"\n\n", scan, crlf + 1 if crlf >= 0 else len(src))
        if lf >= 0:
            block_end, head_end = lf + 1, lf + 2
        elif crlf >= 0:
            block_end, head_end = crlf + 1, crlf + 3
        else:
            return self._more(data, src, start, max(len(src) - 2, nl1), nl1)
        if head_end - start > self._max_head:
            raise _fail(f"response head exceeds {self._max_head} bytes")
        if match is None:
            match = _status_line(src, start, nl1)
        if block_end > nl1 + 1:
            text = src[nl1 + 1 : block_end].decode("latin-1")
            fields = _FIELD_LINE_RE.findall(text)
            if len(fields) == text.count("\n"):
                headers = [(name.lower(), value.rstrip(" \t")) for name, value in fields]
            else:
                headers = _fields_slow(text)
        else:
            headers = []
        if src is buf:
            self._buf = bytearray()
            self._line1 = -1
        version, code, reason = match.groups()
        status = int(code)
        if status < 200 and status != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise _fail(f"more than {MAX_INTERIM} interim (1xx) responses")
            return head_end - base  # an interim response: discarded, the next head follows
        self.http_version = "1.1" if version == b"1" else "1.0"
        self.status = status
        self.reason = reason.decode("latin-1").strip(" \t") if reason else ""
        self.headers = headers
        self.head_done = True
        self._framing(status, headers)
        return head_end - base

    def _more(self, data: bytes, src: bytes | bytearray, start: int, scan: int, nl1: int) -> int:
        """Keep an incomplete head (``src[start:]``) for the next feed, within the limit."""
        if len(src) - start >= self._max_head:
            raise _fail(f"response head exceeds {self._max_head} bytes")
        if src is not self._buf:
            self._buf = bytearray(src[start:])
            scan -= start
            if nl1 >= 0:
                nl1 -= start
        self._scan = scan
        self._line1 = nl1
        return len(data)

    def _framing(self, status: int, headers: list[tuple[str, str]]) -> None:
        if self._head_request or status in _NO_BODY_STATUS:
            self._finish()
            return
        lengths: list[str] | None = None
        encodings: list[str] | None = None
        for name, value in headers:
            if name == "content-length":
                if lengths is None:
                    lengths = [value]
                else:
                    lengths.append(value)
            elif name == "transfer-encoding":
                if encodings is None:
                    encodings = [value]
                else:
                    encodings.append(value)
        if encodings is not None:  # Transfer-Encoding wins; Content-Length is ignored
            codings = [c.strip(" \t").lower() for v in encodings for c in v.split(",")]
            codings = [c for c in codings if c]
            if codings.count("chunked") > 1:
                raise _fail("Transfer-Encoding applies chunked more than once")
            self._state = _CHUNK_SIZE if codings and codings[-1] == "chunked" else _UNTIL_EOF
            return
        if lengths is None:
            self._state = _UNTIL_EOF
            return
        value = lengths[0]
        if len(lengths) == 1 and value.isdigit() and value.isascii() and len(value) <= 18:
            length = int(value)
        else:
            length = _content_length(lengths)
        if length:
            self._state = _LENGTH
            self._remaining = length
        else:
            self._finish()

    # -- chunked bodies ------------------------------------------------------------------------

    def _line(self, data: bytes, pos: int, limit: int) -> tuple[bytes | None, int]:
        """Take one line (at most ``limit`` bytes with its LF) starting at ``data[pos]``.

        Returns the line without its line ending and the position after it, or ``(None,
        len(data))`` when the line is incomplete and has been buffered.
        """
        buf = self._buf
        have = len(buf)
        nl = data.find(b"\n", pos, pos + limit - have)
        if nl < 0:
            if have + len(data) - pos >= limit:
                if self._state == _CHUNK_SIZE:
                    raise _fail(f"chunk size line exceeds {MAX_CHUNK_LINE} bytes")
                raise _fail(f"response trailers exceed {self._max_head} bytes")
            buf += data[pos:]
            return None, len(data)
        line = data[pos:nl]
        if have:
            line = bytes(buf) + line
            buf.clear()
        if line[-1:] == b"\r":
            line = line[:-1]
        return line, nl + 1

    def _chunk_size(self, data: bytes, pos: int) -> int:
        line, pos = self._line(data, pos, MAX_CHUNK_LINE)
        if line is None:
            return pos
        digits = line.partition(b";")[0].rstrip(b" \t")
        if _HEX_RE.fullmatch(digits) is None:
            raise _fail(f"invalid chunk size line: {_excerpt(line)}")
        if len(digits) > 16:
            raise _fail(f"chunk size has more than 16 hex digits: {_excerpt(line)}")
        size = int(digits, 16)
        # Each size line is paid for by the data it announces (credited now: the data must
        # arrive before the next size line is parsed).
        left = self._framing_left - len(line) - 2 + size
        if left < 0:
            raise _fail(
                f"chunked framing outweighs the data by more than {MAX_CHUNK_FRAMING} bytes "
                "(chunk extensions or tiny chunks)"
            )
        self._framing_left = left
        if size:
            self._state = _CHUNK_DATA
            self._remaining = size
        else:
            self._state = _TRAILER
        return pos

    def _chunk_end(self, data: bytes, pos: int) -> int:
        if self._buf:  # a CR arrived at the end of the previous feed
            if data[pos] != 10:
                shown = _excerpt(b"\r" + data[pos : pos + _EXCERPT])
                raise _fail(f"chunk data not followed by CRLF: {shown}")
            self._buf.clear()
            self._state = _CHUNK_SIZE
            return pos + 1
        byte = data[pos]
        if byte == 10:
            self._state = _CHUNK_SIZE
            return pos + 1
        if byte == 13:
            if pos + 1 == len(data):
                self._buf += b"\r"
                return pos + 1
            if data[pos + 1] == 10:
                self._state = _CHUNK_SIZE
                return pos + 2
        raise _fail(f"chunk data not followed by CRLF: {_excerpt(data[pos : pos + _EXCERPT + 1])}")

    def _trailer(self, data: bytes, pos: int) -> int:
        used = self._trailer_bytes
        have = len(self._buf)
        line, new_pos = self._line(data, pos, self._max_head - used)
        if line is None:
            return new_pos
        self._trailer_bytes = used + have + new_pos - pos
        if not line:
            self._finish()
            return new_pos
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t"):  # obs-fold: only needs a line to continue
            if not used:
                raise _fail(f"trailer block starts with a continuation line: {_excerpt(line)}")
            if _VALUE_RE.fullmatch(text) is None:
                raise _fail(f"invalid character in trailer value: {_excerpt(line)}")
        else:
            _field(text, "trailer")
        return new_pos

    # -- the end -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<ResponseParser status={self.status} head_done={self.head_done} "
            f"done={self.done} state={self._state}>"
        )
