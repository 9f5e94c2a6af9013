"""The control-channel protocol: typed messages and their JSON frames.

A checkpoint instance and its control plane talk over one WebSocket connection in JSON text
frames. Each frame is one JSON object with a ``type`` and the protocol ``version``; here each is a
frozen attrs value. Both sides import this module, and ``docs/protocol.md`` describes the same
thing for implementations in other languages.

``encode(message)`` gives a frame's text, ``decode(frame)`` gives the typed message back or raises
:class:`ProtocolError`, and nothing else, whatever the frame holds. ``error_reply(exc)`` turns the
error into the ``error`` message to send back.

Constraints (id lengths, positive intervals, the rules between fields) are attrs validators on the
message classes, so a message that would be refused on the wire cannot be built in Python either:
the constructor raises :class:`~probekit.DefinitionError` with the field path.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

import attrs

from ._exceptions import (
    ERROR_CODES,
    DefinitionError,
    DefinitionErrors,
    ErrorCode,
    ProtocolError,
    ProtocolVersionError,
)
from ._result import SCHEMA_VERSION, Result
from ._secret import Secret
from ._serialization import converter
from ._structure import Policy, plain_secret, structure
from ._structure import has_surrogates as _has_surrogates
from ._structure import show as _show
from ._validate import MAX_ID_LENGTH, check_id, is_id, optional_seconds, seconds

__all__ = [
    "ERROR_CODES",
    "FROM_CONTROL",
    "FROM_INSTANCE",
    "ERROR_BUDGET",
    "ERROR_WINDOW",
    "MAX_FRAME_BYTES",
    "MAX_ID_LENGTH",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "ROLE_HEADER",
    "Ack",
    "Drain",
    "Error",
    "ErrorBudget",
    "ErrorCode",
    "Heartbeat",
    "Hello",
    "Message",
    "MonitorDefinition",
    "ProtocolError",
    "ResultEnvelope",
    "Results",
    "Run",
    "Sync",
    "TOO_MANY_ERRORS_CLOSE",
    "TOO_MANY_ERRORS_REASON",
    "decode",
    "encode",
    "error_reply",
]

#: The protocol version this module speaks; a frame with any other ``version`` is refused.
PROTOCOL_VERSION: Final = 1
#: The largest frame ``decode`` reads by default: 1 MiB of UTF-8.
MAX_FRAME_BYTES: Final = 1_048_576
#: A receiver that has sent more than this many ``error`` replies on one connection within
#: :data:`ERROR_WINDOW` seconds closes it with :data:`TOO_MANY_ERRORS_CLOSE` (see
#: :class:`ErrorBudget`).
ERROR_BUDGET: Final = 10
ERROR_WINDOW: Final = 60.0
TOO_MANY_ERRORS_CLOSE: Final = 1002
TOO_MANY_ERRORS_REASON: Final = "too many errors"
#: The HTTP header of a standby control plane's 503 answer to a connection (value
#: ``standby``): the checkpoint moves to its next control-plane URL at once, without backoff.
ROLE_HEADER: Final = "Probekit-Role"
#: Longest ``error.message`` and ``drain.reason``.
MAX_TEXT_LENGTH: Final = 4096
#: Deepest nesting of the free-form JSON in a definition or a policy summary.
MAX_JSON_DEPTH: Final = 32
#: Counts and revisions stay within the integers every JSON implementation reads exactly.
MAX_INT: Final = 2**53 - 1

Mode: TypeAlias = Literal["driven", "autonomous"]
RunReason: TypeAlias = Literal["scheduled", "confirm", "adhoc"]

_MAX_ERROR_MESSAGE: Final = 1000


class _UnsupportedVersion(ProtocolError, ProtocolVersionError):
    """A ``bad_version`` refusal, catchable as either exception."""


# -- validators -----------------------------------------------------------------------------------
# Each raises DefinitionError naming the field, so the same check gives a constructor error in
# Python and a bad_field reply (with the full path) on the wire.


def _id(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_id(attribute.name, value, blank=True)


def _optional_id(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_id(attribute.name, value, blank=True)


def _ids(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not tuple:
        raise DefinitionError(attribute.name, f"expected a tuple, got {_show(value)}")
    for i, item in enumerate(value):
        check_id(f"{attribute.name}[{i}]", item, blank=True)


def _text(limit: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if type(value) is not str:
            raise DefinitionError(attribute.name, f"expected a string, got {_show(value)}")
        if len(value) > limit:
            raise DefinitionError(attribute.name, f"is longer than {limit} characters")
        if _has_surrogates(value):
            raise DefinitionError(attribute.name, "is not valid Unicode (a lone surrogate)")

    return check


def _check_count(path: str, value: object) -> None:
    if type(value) is not int:
        raise DefinitionError(path, f"expected an integer, got {_show(value)}")
    if not 0 <= value <= MAX_INT:
        raise DefinitionError(path, f"must be between 0 and {MAX_INT}, got {value}")


def _count(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_count(attribute.name, value)


def _bool(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not bool:
        raise DefinitionError(attribute.name, f"expected true or false, got {_show(value)}")


def _one_of(
    choices: Collection[str],
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if type(value) is not str or value not in choices:
            allowed = ", ".join(repr(c) for c in sorted(choices))
            raise DefinitionError(attribute.name, f"{_show(value)} is not one of {allowed}")

    return check


def _check_json(path: str, value: object) -> None:
    """Check that ``value`` is plain JSON (secrets allowed: they encode as ``"<secret>"``).

    Iterative, with a depth limit, so a hostile document cannot exhaust the stack.
    """
    stack: list[tuple[str, object, int]] = [(path, value, 0)]
    while stack:
        where, item, depth = stack.pop()
        kind = type(item)
        if item is None or kind in (bool, int, Secret):
            continue
        if kind is float:
            assert isinstance(item, float)
            if not math.isfinite(item):
                raise DefinitionError(where, f"{item!r} is not a finite number")
        elif kind is str:
            assert isinstance(item, str)
            if _has_surrogates(item):
                raise DefinitionError(where, "is not valid Unicode (a lone surrogate)")
        elif kind is dict or kind is list or kind is tuple:
            if depth >= MAX_JSON_DEPTH:
                raise DefinitionError(where, f"is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if type(key) is not str or _has_surrogates(key):
                        raise DefinitionError(where, f"object key {_show(key)} is not a string")
                    step = f".{key}" if key.isidentifier() else f"[{key!r}]"
                    stack.append((f"{where}{step}", child, depth + 1))
            else:
                assert isinstance(item, list | tuple)
                stack.extend((f"{where}[{i}]", child, depth + 1) for i, child in enumerate(item))
        else:
            raise DefinitionError(where, f"a {kind.__name__} has no JSON form")


def _check_object(path: str, value: object) -> None:
    if type(value) is not dict:
        raise DefinitionError(path, f"expected an object, got {_show(value)}")
    _check_json(path, value)


def _check_definition(path: str, value: object) -> None:
    _check_object(path, value)
    assert isinstance(value, dict)
    if "kind" not in value:
        raise DefinitionError(f"{path}.kind", "required field missing")
    check_id(f"{path}.kind", value["kind"], blank=True)


def _definition(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_definition(attribute.name, value)


def _optional_definition(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_definition(attribute.name, value)


def _object(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_object(attribute.name, value)


def _aware(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dt.datetime):
        raise DefinitionError(attribute.name, f"expected a datetime, got {_show(value)}")
    if value.utcoffset() is None:
        raise DefinitionError(attribute.name, "must be timezone-aware (UTC)")


def _tuple_of(kind: type) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if type(value) is not tuple:
            raise DefinitionError(attribute.name, f"expected a tuple, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, kind):
                raise DefinitionError(
                    f"{attribute.name}[{i}]", f"expected a {kind.__name__}, got {_show(item)}"
                )

    return check


# -- messages -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Hello:
    """instance → control, first on every connection: who this instance is and what it holds.

    ``holdings`` maps each monitor id the instance already holds a definition for to that
    definition's revision, so the control plane can answer with a delta instead of everything.
    ``heartbeat_interval`` is how often, in seconds, the instance will send ``heartbeat``.
    """

    type: ClassVar[str] = "hello"

    checkpoint_id: str = attrs.field(validator=_id)
    instance_id: str = attrs.field(validator=_id)
    software_version: str = attrs.field(validator=_id)
    kinds: tuple[str, ...] = attrs.field(validator=_ids)
    holdings: dict[str, int] = attrs.field()
    mode: Mode = attrs.field(default="driven", validator=_one_of(get_args(Mode)))
    heartbeat_interval: float = attrs.field(default=10.0, validator=seconds)

    @holdings.validator
    def _check_holdings(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if type(value) is not dict:
            raise DefinitionError(attribute.name, f"expected a dict, got {_show(value)}")
        for monitor_id, revision in value.items():
            where = f"holdings[{monitor_id!r}]"
            check_id(where, monitor_id, blank=True)
            _check_count(where, revision)


@attrs.frozen(kw_only=True)
class MonitorDefinition:
    """One monitor as the control plane assigns it: what to run and how often.

    ``definition`` is the probe definition as plain JSON (``{"kind": "http", "url": ...}``); this
    layer checks only that it is a JSON object with a ``kind``. Whoever builds the probe from it
    validates the rest.
    """

    monitor_id: str = attrs.field(validator=_id)
    revision: int = attrs.field(validator=_count)
    interval: float = attrs.field(validator=seconds)
    definition: dict[str, Any] = attrs.field(validator=_definition)


@attrs.frozen(kw_only=True)
class Sync:
    """control → instance: monitor definitions, all of them (``full``) or what changed.

    A full sync replaces everything the instance holds with ``upserts`` (``deletes`` is then
    empty). A delta adds or replaces ``upserts`` and drops ``deletes``. ``revision`` is the control
    plane's definitions revision. ``autonomous`` tells the instance to run its definitions on its
    own schedule even while connected.
    """

    type: ClassVar[str] = "sync"

    full: bool = attrs.field(validator=_bool)
    revision: int = attrs.field(validator=_count)
    upserts: tuple[MonitorDefinition, ...] = attrs.field(validator=_tuple_of(MonitorDefinition))
    deletes: tuple[str, ...] = attrs.field(validator=_ids)
    autonomous: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for i, upsert in enumerate(self.upserts):
            if upsert.monitor_id in seen:
                raise DefinitionError(
                    f"upserts[{i}].monitor_id", f"{upsert.monitor_id!r} appears twice"
                )
            seen.add(upsert.monitor_id)
        if self.full and self.deletes:
            raise DefinitionError("deletes", "must be empty in a full sync")
        for i, monitor_id in enumerate(self.deletes):
            if monitor_id in seen:
                raise DefinitionError(
                    f"deletes[{i}]", f"{monitor_id!r} is both upserted and deleted"
                )


@attrs.frozen(kw_only=True)
class Run:
    """control → instance: run one check now and report its result.

    Name a monitor the instance holds (``monitor_id``), send the definition inline
    (``definition``), or both: then the inline definition runs and its result is attributed to
    ``monitor_id`` (a confirm run on an instance that does not hold the monitor, or a test of an
    unsaved edit); it does not replace the held definition. ``deadline`` is the seconds the
    check may take, or None for the instance's default.
    """

    type: ClassVar[str] = "run"

    request_id: str = attrs.field(validator=_id)
    reason: RunReason = attrs.field(validator=_one_of(get_args(RunReason)))
    monitor_id: str | None = attrs.field(default=None, validator=_optional_id)
    definition: dict[str, Any] | None = attrs.field(default=None, validator=_optional_definition)
    deadline: float | None = attrs.field(default=None, validator=optional_seconds)

    def __attrs_post_init__(self) -> None:
        if self.monitor_id is None and self.definition is None:
            raise DefinitionError("monitor_id", "a run needs a monitor_id, a definition, or both")


@attrs.frozen(kw_only=True)
class ResultEnvelope:
    """One result on its way to the control plane, with the ids that place it.

    ``result_id`` is globally unique (the control plane deduplicates on it). ``request_id`` is the
    ``run`` this answers, or None when the instance ran the monitor on its own schedule.
    """

    result_id: str = attrs.field(validator=_id)
    monitor_id: str | None = attrs.field(validator=_optional_id)
    request_id: str | None = attrs.field(validator=_optional_id)
    reason: str = attrs.field(validator=_id)
    instance_id: str = attrs.field(validator=_id)
    result: Result = attrs.field()

    @result.validator
    def _check_result(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, Result):
            raise DefinitionError(attribute.name, f"expected a Result, got {_show(value)}")
        if value.schema_version != SCHEMA_VERSION:
            raise DefinitionError(
                "result.schema_version",
                f"unsupported result schema version {value.schema_version!r}",
            )

    def __attrs_post_init__(self) -> None:
        if self.monitor_id is None and self.request_id is None:
            raise DefinitionError("monitor_id", "a result needs a monitor_id, a request_id or both")


@attrs.frozen(kw_only=True)
class Results:
    """instance → control: a batch of results, each sent until its id is acked."""

    type: ClassVar[str] = "results"

    results: tuple[ResultEnvelope, ...] = attrs.field(validator=_tuple_of(ResultEnvelope))


@attrs.frozen(kw_only=True)
class Ack:
    """control → instance: these result ids are durably stored; the instance may forget them."""

    type: ClassVar[str] = "ack"

    result_ids: tuple[str, ...] = attrs.field(validator=_ids)


@attrs.frozen(kw_only=True)
class Heartbeat:
    """instance → control: I am alive, and this is how I am doing.

    Counts are as of ``sent_at`` (UTC); ``reconnects`` is a total since the instance started and
    ``spool_dropped`` one since its spool was created (it is kept in the spool, across
    restarts, so no eviction goes unreported). ``policy`` summarises the local egress policy
    (free-form JSON).
    """

    type: ClassVar[str] = "heartbeat"

    in_flight: int = attrs.field(validator=_count)
    queue_depth: int = attrs.field(validator=_count)
    spool_depth: int = attrs.field(validator=_count)
    spool_dropped: int = attrs.field(validator=_count)
    reconnects: int = attrs.field(validator=_count)
    policy: dict[str, Any] = attrs.field(validator=_object)
    sent_at: dt.datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Drain:
    """control → instance: finish what is in flight, deliver the results, then close."""

    type: ClassVar[str] = "drain"

    reason: str = attrs.field(default="", validator=_text(MAX_TEXT_LENGTH))


@attrs.frozen(kw_only=True)
class Error:
    """Either way: the peer's last frame (or the request ``ref``) was refused, and why."""

    type: ClassVar[str] = "error"

    code: ErrorCode = attrs.field(validator=_one_of(ERROR_CODES))
    message: str = attrs.field(validator=_text(MAX_TEXT_LENGTH))
    ref: str | None = attrs.field(default=None, validator=_optional_id)


Message: TypeAlias = Hello | Sync | Run | Results | Ack | Heartbeat | Drain | Error

#: Each message class by its ``type`` name.
MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = {
    cls.type: cls for cls in (Hello, Sync, Run, Results, Ack, Heartbeat, Drain, Error)
}
_MESSAGE_CLASSES: Final = frozenset(MESSAGE_TYPES.values())
#: What a control plane accepts: ``decode(frame, accept=FROM_INSTANCE)``.
FROM_INSTANCE: Final[frozenset[type[Message]]] = frozenset({Hello, Results, Heartbeat, Error})
#: What an instance accepts: ``decode(frame, accept=FROM_CONTROL)``.
FROM_CONTROL: Final[frozenset[type[Message]]] = frozenset({Sync, Run, Ack, Drain, Error})


# -- reading frames -------------------------------------------------------------------------------
# A peer's frame is read by the one structuring engine with exact types (no "7" for 7, no 7.9 for
# an int, no "false" for false). Keys this side does not know are skipped, so a newer peer can add
# fields; the first problem is enough to refuse a frame, so a hostile one is not listed in full.

_FRAMES: Final = Policy(
    unknown_keys="ignore", first_error=True, show_strings=True, secrets=plain_secret
)


# -- frames ---------------------------------------------------------------------------------------


def encode(message: Message) -> str:
    """The compact JSON text of one frame: ``{"type": ..., "version": 1, ...fields}``.

    A ``Secret`` anywhere inside a definition or policy is written as ``"<secret>"``. Raises
    ``ValueError`` for a message JSON cannot carry (a non-finite float or a lone surrogate inside a
    ``Result``), which is the sender's bug, not the peer's.
    """
    cls = type(message)
    if cls not in _MESSAGE_CLASSES:
        raise TypeError(f"not a protocol message: {cls.__name__}")
    frame = {"type": message.type, "version": PROTOCOL_VERSION, **converter.unstructure(message)}
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if _has_surrogates(text):
        raise ValueError("a string in the message is not valid Unicode (a lone surrogate)")
    return text


def decode(
    frame: str | bytes | bytearray,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    accept: Collection[type[Message]] | None = None,
) -> Message:
    """Read one frame into its message, or raise :class:`ProtocolError`.

    ``frame`` is the text of a WebSocket text frame (``str``, or its UTF-8 ``bytes``). A frame
    over ``max_bytes`` is refused before it is parsed. ``accept`` limits which message classes
    this side takes (:data:`FROM_INSTANCE` on a control plane, :data:`FROM_CONTROL` on an
    instance); another type is refused as ``unknown_type``.

    Checks run in this order: size (``too_large``), UTF-8 and JSON (``bad_json``), a JSON object
    (``bad_json``), ``version`` (``bad_version``), ``type`` (``unknown_type``), then the fields
    (``bad_field``, the message starting with the field path). No other exception escapes.
    """
    if type(max_bytes) is not int or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    raw = _parse(frame, max_bytes)
    if type(raw) is not dict:
        raise ProtocolError("bad_json", f"a frame must be a JSON object, got {_show(raw)}")
    version = raw.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:
        what = "has no version" if version is None else f"has version {_show(version)}"
        raise _UnsupportedVersion(
            "bad_version", f"the frame {what}; this side speaks version {PROTOCOL_VERSION}"
        )
    name = raw.get("type")
    cls = MESSAGE_TYPES.get(name) if type(name) is str else None
    if cls is None:
        what = "has no type" if name is None else f"has type {_show(name)}, which is unknown"
        raise ProtocolError("unknown_type", f"the frame {what}")
    if accept is not None and cls not in accept:
        raise ProtocolError("unknown_type", f"{name!r} messages are not accepted from this peer")
    try:
        message: Message = structure(cls, raw, policy=_FRAMES)
    except Exception as exc:  # the contract: whatever fails, the peer sent a bad field
        if isinstance(exc, DefinitionErrors) and exc.errors:
            text = str(exc.errors[0])
        else:
            text = str(exc) or type(exc).__name__
        if len(text) > _MAX_ERROR_MESSAGE:
            text = text[: _MAX_ERROR_MESSAGE - 3] + "..."
        raise ProtocolError("bad_field", text, ref=_ref(raw)) from exc
    return message


def error_reply(exc: BaseException) -> Error:
    """The ``error`` message answering ``exc``.

    A :class:`ProtocolError` keeps its code, message and ``ref``. Anything else becomes
    ``internal`` naming only the exception's class, so no detail of this side leaks to the peer.
    """
    if isinstance(exc, ProtocolError):
        message = exc.message
        if _has_surrogates(message):
            message = message.encode("utf-8", "backslashreplace").decode()
        if len(message) > MAX_TEXT_LENGTH:
            message = message[: MAX_TEXT_LENGTH - 3] + "..."
        ref = exc.ref if is_id(exc.ref, blank=True) else None
        return Error(code=exc.code, message=message, ref=ref)
    return Error(code="internal", message=f"internal error ({type(exc).__name__})")


class ErrorBudget:
    """The ``error`` replies one side has sent on one connection, against the protocol's budget.

    Call :meth:`spend` with a monotonic time for each ``error`` sent in answer to a frame this
    side refused; it returns True once more than ``limit`` were sent within ``window`` seconds,
    and the caller then closes the connection with :data:`TOO_MANY_ERRORS_CLOSE`.
    """

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int = ERROR_BUDGET, window: float = ERROR_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: collections.deque[float] = collections.deque()

    def spend(self, now: float) -> bool:
        """Count one error reply sent at ``now``; True when the budget is exceeded."""
        times = self._times
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) > self.limit

    @property
    def exceeded(self) -> bool:
        """More than ``limit`` error replies were counted within the last window (as of the last
        :meth:`spend`)."""
        return len(self._times) > self.limit


def _parse(frame: str | bytes | bytearray, max_bytes: int) -> Any:
    if isinstance(frame, str):
        _check_size(len(frame), max_bytes)
        if not frame.isascii():
            try:
                _check_size(len(frame.encode()), max_bytes)
            except UnicodeEncodeError:
                raise ProtocolError(
                    "bad_json", "the frame is not valid UTF-8 (a lone surrogate)"
                ) from None
        text = frame
    elif isinstance(frame, bytes | bytearray):
        _check_size(len(frame), max_bytes)
        try:
            text = bytes(frame).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                "bad_json", f"the frame is not valid UTF-8 (at byte {exc.start})"
            ) from None
    else:
        raise TypeError(f"a frame is str or bytes, not {type(frame).__name__}")
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            "bad_json", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ProtocolError("bad_json", "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ProtocolError(
            "too_large", f"the frame is {size} bytes or more; the limit is {max_bytes}"
        )


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_show(key)}")
            seen.add(key)
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _ref(raw: Mapping[str, Any]) -> str | None:
    request_id = raw.get("request_id")
    return request_id if is_id(request_id, blank=True) else None
