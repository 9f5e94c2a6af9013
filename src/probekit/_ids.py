"""Identifiers the control plane hands out (request ids, alert ids): UUIDv7, RFC 9562.

A UUIDv7 starts with the Unix time in milliseconds, so ids sort in the order they were made, and
carries 74 more bits: 12 that count within a millisecond (so ids made in one process sort even
within a millisecond) and 62 random ones (so ids made by different processes, or by one process
before and after a restart, do not collide).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable

__all__ = ["IdGenerator", "new_id"]

_COUNTER_MAX = 0xFFF


class IdGenerator:
    """Makes UUIDv7 strings (``0190a5c2-...``), strictly increasing within one generator.

    ``clock`` gives the wall-clock time in nanoseconds (``time.time_ns`` by default). If it goes
    backwards, or more than 4096 ids are made in one millisecond, the generator keeps counting
    from the last millisecond it used, so its ids still increase.
    """

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._millis = -1
        self._counter = 0

    def __call__(self) -> str:
        with self._lock:
            millis = self._clock() // 1_000_000
            if millis > self._millis:
                self._millis = millis
                self._counter = secrets.randbits(11)  # room to count on within the millisecond
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:
                self._millis += 1
                self._counter = 0
            millis, counter = self._millis, self._counter
        value = (millis & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76  # version 7
        value |= counter << 64
        value |= 0b10 << 62  # the RFC 9562 variant
        value |= secrets.randbits(62)
        return str(uuid.UUID(int=value))


#: The process-wide generator.
new_id = IdGenerator()
