"""The bytes of FTP (RFC 959, 2228, 2428, 3659) as the FTP probe reads them: replies (one line or
several), the data address of a ``PASV`` or ``EPSV`` reply, ``SIZE`` and ``MDTM`` answers, and a
listing counted as it streams past.

Every function here takes whatever a server sent and returns a classified value: a parsed
result, or :class:`Malformed` saying what is wrong. None of them raises on any input, and none
keeps more than a bounded amount of what it was given (the Hypothesis tests in
``tests/test_ftp.py`` feed them arbitrary bytes). Private to :mod:`probekit.probes.ftp`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

import attrs

__all__ = [
    "Endpoint",
    "ListingCounter",
    "Malformed",
    "Reply",
    "ReplyAssembler",
    "parse_epsv",
    "parse_mdtm",
    "parse_mlst",
    "parse_pasv",
    "parse_reply",
    "parse_size",
]

#: Characters of a reply's text kept for messages (a reply line may be long; the text is not).
TEXT_LIMIT: Final = 200

_CODE = re.compile(rb"\A([1-5][0-9][0-9])([ -]?)")
_PASV = re.compile(
    rb"([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3})"
)
# RFC 2428: "(<d><d><d><port><d>)", where <d> is one printable ASCII character (33-126), the
# same four times; the two fields between the first three are empty in a 229 reply.
_EPSV = re.compile(rb"\(([\x21-\x7e])\1\1([0-9]{1,5})\1\)")
_MDTM = re.compile(
    rb"\A([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})(\.[0-9]{1,9})?\Z"
)
_SIZE = re.compile(rb"\A[0-9]{1,20}\Z")


@attrs.frozen
class Malformed:
    """Bytes that are not what the protocol says; ``reason`` is for a message."""

    reason: str


@attrs.frozen
class Reply:
    """One complete reply: its three-digit ``code`` and the text of its lines (code, separator
    and line end removed; each line at most :data:`TEXT_LIMIT` characters, decoded leniently)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The text of every line, joined by spaces."""
        return " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        """A 1xx, 2xx or 3xx reply."""
        return self.code < 400

    def __str__(self) -> str:
        text = self.text
        if len(text) > TEXT_LIMIT:
            text = text[:TEXT_LIMIT] + "…"
        return f"{self.code} {text}".rstrip()


def _text(data: bytes) -> str:
    text = data.rstrip(b"\r\n").decode("utf-8", "replace")
    return text[:TEXT_LIMIT]


class ReplyAssembler:
    """Put one reply together from the lines of the control connection, one at a time.

    :meth:`feed` takes a line (with or without its line end) and returns ``None`` while a
    multi-line reply (``123-first`` … ``123 last``, RFC 959 4.2) goes on, the :class:`Reply`
    when it is complete, or :class:`Malformed` (the first line has no code, or more than
    ``max_lines`` lines). Lines between the first and the last may be anything; only their
    first :data:`TEXT_LIMIT` characters, and at most ``keep_lines`` lines, are kept.
    """

    __slots__ = ("_code", "_count", "_lines", "keep_lines", "max_lines")

    def __init__(self, *, max_lines: int = 1000, keep_lines: int = 50) -> None:
        self.max_lines = max_lines
        self.keep_lines = keep_lines
        self._code: bytes | None = None
        self._lines: list[str] = []
        self._count = 0

    @property
    def started(self) -> bool:
        """Whether a multi-line reply has begun and not ended."""
        return self._code is not None

    def feed(self, line: bytes) -> Reply | Malformed | None:
        if self._code is None:
            match = _CODE.match(line)
            if match is None:
                return Malformed(f"not an FTP reply: {_text(line)[:80]!r}")
            code, separator = match.group(1), match.group(2)
            rest = line[match.end() :]
            if separator == b"" and rest.rstrip(b"\r\n"):
                return Malformed(f"not an FTP reply: {_text(line)[:80]!r}")
            if separator == b"-":
                self._code = code
                self._lines = [_text(rest)]
                self._count = 1
                return None
            return Reply(int(code), (_text(rest),))
        self._count += 1
        if line[:3] == self._code and line[3:4] in (b" ", b"\r", b"\n", b""):
            lines = (*self._lines, _text(line[4:]))
            reply = Reply(int(self._code), lines)
            self._code = None
            self._lines = []
            return reply
        if self._count >= self.max_lines:
            self._code = None
            return Malformed(f"a multi-line reply of more than {self.max_lines} lines")
        if len(self._lines) < self.keep_lines:
            self._lines.append(_text(line))
        return None


def parse_reply(data: bytes, *, max_lines: int = 1000) -> Reply | Malformed | None:
    """The first reply in ``data`` (lines ending in ``\\n``); ``None`` when it is incomplete."""
    assembler = ReplyAssembler(max_lines=max_lines)
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return None
        outcome = assembler.feed(data[start : end + 1])
        if outcome is not None:
            return outcome
        start = end + 1


@attrs.frozen
class Endpoint:
    """The data address a passive reply announced: ``host`` is ``None`` for ``EPSV`` (the data
    connection goes to the control connection's address, RFC 2428)."""

    host: str | None
    port: int


def parse_pasv(text: bytes | str) -> Endpoint | Malformed:
    """The address of a ``227`` reply: six numbers ``h1,h2,h3,h4,p1,p2`` anywhere in its text
    (RFC 959 leaves the wrapping free; most servers write ``(…)``)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    match = _PASV.search(data)
    if match is None:
        return Malformed("no h1,h2,h3,h4,p1,p2 address in the PASV reply")
    numbers = [int(n) for n in match.groups()]
    if any(n > 255 for n in numbers):
        return Malformed("a number above 255 in the PASV address")
    port = numbers[4] * 256 + numbers[5]
    if port == 0:
        return Malformed("port 0 in the PASV address")
    return Endpoint(".".join(str(n) for n in numbers[:4]), port)


def parse_epsv(text: bytes | str) -> Endpoint | Malformed:
    """The port of a ``229`` reply: ``(|||port|)`` with any one delimiter (RFC 2428)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    match = _EPSV.search(data)
    if match is None:
        return Malformed("no (|||port|) in the EPSV reply")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        return Malformed(f"port {port} in the EPSV reply")
    return Endpoint(None, port)


def parse_size(text: bytes | str) -> int | Malformed:
    """The number of a ``213`` reply to ``SIZE`` (RFC 3659)."""
    data = (text.encode("utf-8", "replace") if isinstance(text, str) else text).strip()
    if not _SIZE.match(data):
        return Malformed("the SIZE reply is not a number")
    return int(data)


def parse_mdtm(text: bytes | str) -> dt.datetime | Malformed:
    """The time of a ``213`` reply to ``MDTM`` (``YYYYMMDDHHMMSS[.sss]``, UTC, RFC 3659)."""
    data = (text.encode("utf-8", "replace") if isinstance(text, str) else text).strip()
    match = _MDTM.match(data)
    if match is None:
        return Malformed("the MDTM reply is not YYYYMMDDHHMMSS")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        return dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=dt.UTC)
    except ValueError:
        return Malformed("the MDTM reply is not a valid time")


def parse_mlst(lines: tuple[str, ...]) -> dict[str, str] | Malformed:
    """The facts of a ``250`` reply to ``MLST`` (RFC 3659 7.2): the one line of the form
    `` fact=value;fact=value; pathname``, fact names lower-cased. The pathname is left out."""
    for line in lines:
        if not line.startswith(" ") or "=" not in line:
            continue
        facts_text = line[1:].split(" ", 1)[0]
        facts: dict[str, str] = {}
        for fact in facts_text.split(";"):
            name, equals, value = fact.partition("=")
            if equals and name:
                facts[name.lower()] = value
        if facts:
            return facts
    return Malformed("no facts in the MLST reply")


class ListingCounter:
    """Count the entries of a directory listing as its bytes stream past, keeping none of them.

    An entry is a line that is not blank and not the ``total N`` summary line of ``ls -l``
    style listings. :meth:`feed` takes chunks split anywhere; :meth:`finish` counts a last line
    without a line end. Only the first few bytes of the current line are kept (to recognise a
    ``total`` line), so a listing of any size costs the same memory.
    """

    __slots__ = ("_head", "_nonblank", "bytes", "entries")

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0
        self._head = b""
        self._nonblank = False

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if len(self._head) < 8:
                self._head += piece[: 8 - len(self._head)]
            if not self._nonblank and piece.strip():
                self._nonblank = True
            if end < 0:
                return
            self._end_line()
            start = end + 1

    def finish(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        if self._nonblank and not _is_total(self._head):
            self.entries += 1
        self._head = b""
        self._nonblank = False


def _is_total(head: bytes) -> bool:
    return head.lower().startswith(b"total ")
