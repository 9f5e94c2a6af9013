"""The probe kind ``echo``: send a word and a newline to HOST:PORT, expect the same line back.

A third-party kind written with probekit's public SDK only (``probekit`` and
``probekit.probes``), declared to probekit by the entry point
``echo = "probekit_echo_plugin:KIND"`` of the group ``probekit.probes``.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from probekit import DefinitionError, Timeouts
from probekit.probes import (
    Attempt,
    ErrorKind,
    HostPort,
    Metric,
    Option,
    ProbeBase,
    ProbeFailure,
    ProbeKind,
)

__all__ = ["KIND", "EchoProbe"]

#: The longest echoed line read back, in bytes.
MAX_LINE = 4096


def _check_port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 65535:
        raise DefinitionError("port", f"expected a port number (1-65535), got {value}")


def _check_word(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or "\n" in value or "\r" in value:
        raise DefinitionError("word", f"expected a non-empty word on one line, got {value!r}")
    if len(value.encode()) >= MAX_LINE:
        raise DefinitionError("word", f"expected fewer than {MAX_LINE} bytes")


@attrs.frozen
class EchoProbe(ProbeBase):
    """Send ``word`` and a newline; UP when the server sends the same line back."""

    kind: ClassVar[str] = "echo"

    host: str
    port: int = attrs.field(validator=_check_port)
    word: str = attrs.field(default="hello", validator=_check_word)
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port)
        with attempt.phase("exchange"):
            await attempt.write(conn, self.word.encode() + b"\n")
            line = await attempt.read_line(conn, max_bytes=MAX_LINE, what="echo")
            attempt.metric("echo_bytes", len(line))
            if line.rstrip(b"\r\n") != self.word.encode():
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"expected {self.word!r} echoed back, got {line!r}"
                )


KIND = ProbeKind(
    name="echo",
    cls=EchoProbe,
    summary="send a word to HOST:PORT and expect it echoed back on one line",
    target=HostPort(),
    options=(
        Option(("--word",), field="word", metavar="WORD", help="the word to send (default hello)"),
    ),
    metrics=(
        Metric("echo_bytes", "probekit_echo_bytes", "Bytes of the echoed line, newline included."),
    ),
)
