"""The control-channel protocol: every message round-trips, every bad frame is a ProtocolError.

The fuzz tests feed ``decode`` arbitrary bytes, arbitrary JSON and mutated valid messages; the
property is always the same: a valid message that encodes again, or a ProtocolError whose reply
encodes, and nothing else.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import DefinitionError, Phase, ProtocolVersionError, Result, Secret, Status
from probekit.protocol import (
    ERROR_CODES,
    FROM_CONTROL,
    FROM_INSTANCE,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    Drain,
    Error,
    Heartbeat,
    Hello,
    Message,
    MonitorDefinition,
    ProtocolError,
    ResultEnvelope,
    Results,
    Run,
    Sync,
    decode,
    encode,
    error_reply,
)
from strategies import results, secret_values

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
FUZZ = settings(max_examples=300, deadline=dt.timedelta(seconds=2))

# -- strategies -----------------------------------------------------------------------------------

ids = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"]) | st.just(" "),
    min_size=1,
    max_size=40,
).filter(str.isprintable)
revisions = st.integers(0, 2**53 - 1)
counts = revisions
seconds = st.floats(min_value=0.001, max_value=1e6) | st.integers(1, 86_400)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
kinds = st.sampled_from(["http", "tcp", "dns", "icmp"]) | ids
definitions = st.builds(lambda kind, rest: {**rest, "kind": kind}, kinds, json_objects)
aware_datetimes = st.datetimes(
    min_value=dt.datetime(1970, 1, 2),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.just(dt.UTC)
    | st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)

hellos = st.builds(
    Hello,
    checkpoint_id=ids,
    instance_id=ids,
    software_version=ids,
    kinds=st.lists(kinds, max_size=5).map(tuple),
    holdings=st.dictionaries(ids, revisions, max_size=5),
    mode=st.sampled_from(["driven", "autonomous"]),
    heartbeat_interval=seconds,
)
monitor_definitions = st.builds(
    MonitorDefinition, monitor_id=ids, revision=revisions, interval=seconds, definition=definitions
)


@st.composite
def syncs(draw: st.DrawFn) -> Sync:
    full = draw(st.booleans())
    upserts = draw(st.lists(monitor_definitions, max_size=4, unique_by=lambda m: m.monitor_id))
    taken = {m.monitor_id for m in upserts}
    deletes = (
        () if full else tuple(draw(st.lists(ids.filter(lambda i: i not in taken), max_size=4)))
    )
    return Sync(
        full=full,
        revision=draw(revisions),
        upserts=tuple(upserts),
        deletes=deletes,
        autonomous=draw(st.booleans()),
    )


@st.composite
def runs(draw: st.DrawFn) -> Run:
    target = draw(st.sampled_from(["monitor", "inline", "both"]))
    return Run(
        request_id=draw(ids),
        reason=draw(st.sampled_from(["scheduled", "confirm", "adhoc"])),
        monitor_id=draw(ids) if target != "inline" else None,
        definition=draw(definitions) if target != "monitor" else None,
        deadline=draw(st.none() | seconds),
    )


@st.composite
def envelopes(draw: st.DrawFn) -> ResultEnvelope:
    placed_by = draw(st.sampled_from(["monitor", "request", "both"]))
    return ResultEnvelope(
        result_id=draw(st.uuids().map(lambda u: u.hex) | ids),
        monitor_id=draw(ids) if placed_by != "request" else None,
        request_id=draw(ids) if placed_by != "monitor" else None,
        reason=draw(st.sampled_from(["scheduled", "confirm", "adhoc"]) | ids),
        instance_id=draw(ids),
        result=draw(results),
    )


results_messages = st.builds(Results, results=st.lists(envelopes(), max_size=4).map(tuple))
acks = st.builds(Ack, result_ids=st.lists(ids, max_size=6).map(tuple))
heartbeats = st.builds(
    Heartbeat,
    in_flight=counts,
    queue_depth=counts,
    spool_depth=counts,
    spool_dropped=counts,
    reconnects=counts,
    policy=json_objects,
    sent_at=aware_datetimes,
)
drains = st.builds(Drain, reason=st.text(max_size=100))
errors = st.builds(
    Error,
    code=st.sampled_from(sorted(ERROR_CODES)),
    message=st.text(max_size=200),
    ref=st.none() | ids,
)

STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: hellos,
    Sync: syncs(),
    Run: runs(),
    Results: results_messages,
    Ack: acks,
    Heartbeat: heartbeats,
    Drain: drains,
    Error: errors,
}
messages: st.SearchStrategy[Message] = st.one_of(*STRATEGIES.values())

# Values that trip lenient converters or bounds: numbers as strings, bools as numbers, ids too long.
# Copied on each draw, so a mutation cannot change the samples themselves.
_AWKWARD = [None, True, False, 0, -1, 7.5, 2**53, 10**30, "", "7", "false", "x" * 201, "\x00",
            "\ud800", "sideways", [], {}, [1, "a"], {"kind": 5}, 1e308]  # fmt: skip
awkward = st.sampled_from(_AWKWARD).map(copy.deepcopy)


def _result(**changes: Any) -> Result:
    base = Result(
        kind="http",
        target="https://intranet.example/health",
        status=Status.UP,
        started_at=dt.datetime(2026, 11, 26, 14, 22, 14, tzinfo=dt.UTC),
        duration=0.05,
        phases=(Phase(name="resolve", start=0.0, duration=0.001),),
        metrics={"status_code": 200},
    )
    return attrs.evolve(base, **changes)


def _envelope(**changes: Any) -> ResultEnvelope:
    fields: dict[str, Any] = {
        "result_id": "9f1c0e5d2b7a4c3e8f6a1b2c3d4e5f60",
        "monitor_id": "web-health",
        "request_id": "req-1",
        "reason": "scheduled",
        "instance_id": "dc1-a",
        "result": _result(),
    }
    return ResultEnvelope(**{**fields, **changes})


def _frame(**fields: Any) -> str:
    return json.dumps({"version": PROTOCOL_VERSION, **fields})


def _check_decode(frame: str | bytes) -> None:
    """decode gives a message that encodes again, or a ProtocolError whose reply encodes."""
    refused: ProtocolError | None = None
    try:
        message = decode(frame)
    except ProtocolError as exc:
        refused = exc
    if refused is not None:
        assert refused.code in ERROR_CODES
        reply = error_reply(refused)
        assert decode(encode(reply)) == reply
    else:
        assert type(message) in MESSAGE_TYPES.values()
        assert decode(encode(message)) == message


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.type)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    text = encode(message)
    decoded = decode(text)
    assert type(decoded) is cls
    assert decoded == message
    assert decode(text.encode()) == message


@given(messages)
def test_frames_are_compact_objects_that_start_with_type_and_version(message: Message) -> None:
    text = encode(message)
    data = json.loads(text)
    assert list(data)[:2] == ["type", "version"]
    assert data["type"] == type(message).type
    assert data["version"] == PROTOCOL_VERSION == 1
    assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def test_message_types_and_directions() -> None:
    assert set(MESSAGE_TYPES) == {
        "hello", "sync", "run", "results", "ack", "heartbeat", "drain", "error"
    }  # fmt: skip
    for name, cls in MESSAGE_TYPES.items():
        assert cls.type == name
        assert attrs.has(cls)
    both_ways = FROM_INSTANCE & FROM_CONTROL
    assert set(MESSAGE_TYPES.values()) == FROM_INSTANCE | FROM_CONTROL
    assert both_ways == {Error}


def test_a_result_keeps_its_shared_json_form() -> None:
    text = encode(Results(results=(_envelope(),)))
    result = json.loads(text)["results"][0]["result"]
    assert result["status"] == "up"
    assert result["started_at"] == "2026-11-26T14:22:14+00:00"
    assert result["schema_version"] == 1


# -- refusals -------------------------------------------------------------------------------------

_VALID_RUN = {"type": "run", "request_id": "req-7", "reason": "adhoc", "monitor_id": "web"}
_VALID_SYNC = {"type": "sync", "full": False, "revision": 3, "upserts": [], "deletes": []}
_UPSERT = {"monitor_id": "web", "revision": 1, "interval": 30, "definition": {"kind": "http"}}
_HELLO = {
    "type": "hello",
    "checkpoint_id": "dc1",
    "instance_id": "dc1-a",
    "software_version": "0.1.0",
    "kinds": ["http"],
    "holdings": {},
}
_HEARTBEAT = {
    "type": "heartbeat",
    "in_flight": 0,
    "queue_depth": 0,
    "spool_depth": 0,
    "spool_dropped": 0,
    "reconnects": 0,
    "policy": {},
    "sent_at": "2026-11-26T14:22:14+00:00",
}


def _results_frame(mutate: Callable[[dict[str, Any]], None]) -> str:
    data = json.loads(encode(Results(results=(_envelope(), _envelope(), _envelope()))))
    mutate(data)
    return json.dumps(data)


def _set_status(data: dict[str, Any]) -> None:
    data["results"][2]["result"]["status"] = "sideways"


def _drop_kind(data: dict[str, Any]) -> None:
    del data["results"][0]["result"]["kind"]


def _bad_metric(data: dict[str, Any]) -> None:
    data["results"][1]["result"]["metrics"]["status_code"] = "200"


def _bad_phase(data: dict[str, Any]) -> None:
    data["results"][0]["result"]["phases"][0]["duration"] = True


def _bad_schema(data: dict[str, Any]) -> None:
    data["results"][1]["result"]["schema_version"] = 2


def _empty_result_id(data: dict[str, Any]) -> None:
    data["results"][0]["result_id"] = ""


def _bad_timestamp(data: dict[str, Any]) -> None:
    data["results"][0]["result"]["started_at"] = "yesterday"


REFUSED: list[tuple[str, str | bytes, str, str]] = [
    # (case, frame, code, the message contains)
    ("not json", "{nope", "bad_json", "not JSON"),
    ("empty frame", "", "bad_json", "not JSON"),
    ("not utf-8", b'{"type":"ack","version":1,"result_ids":["\xff"]}', "bad_json", "UTF-8"),
    ("lone surrogate in text", '{"type":"ack","version":1,"x":"\ud800"}', "bad_json", "UTF-8"),
    ("utf-8 bom", "\ufeff" + _frame(type="drain"), "bad_json", "not JSON"),
    ("NaN", '{"type":"drain","version":1,"x":NaN}', "bad_json", "NaN"),
    ("Infinity", '{"type":"drain","version":1,"x":-Infinity}', "bad_json", "Infinity"),
    ("duplicate keys", '{"type":"ack","type":"drain","version":1}', "bad_json", "duplicate"),
    ("huge integer", '{"version":' + "9" * 5000 + "}", "bad_json", "not JSON"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, "bad_json", "nested too deeply"),
    ("an array", "[1, 2]", "bad_json", "JSON object"),
    ("a string", '"hello"', "bad_json", "JSON object"),
    ("no version", json.dumps({"type": "ack", "result_ids": []}), "bad_version", "no version"),
    ("version 2", _frame(type="drain", version=2), "bad_version", "version 2"),
    ("version as text", _frame(type="drain", version="1"), "bad_version", "version '1'"),
    ("version as true", _frame(type="drain", version=True), "bad_version", "version True"),
    ("version as float", _frame(type="drain", version=1.0), "bad_version", "version 1.0"),
    ("no type", _frame(reason="x"), "unknown_type", "no type"),
    ("unknown type", _frame(type="reboot"), "unknown_type", "'reboot'"),
    ("type not a string", _frame(type=["run"]), "unknown_type", "an array"),
    ("a Status that is not", _results_frame(_set_status), "bad_field",
     "results[2].result.status: 'sideways' is not a valid Status"),
    ("missing field deep down", _results_frame(_drop_kind), "bad_field",
     "results[0].result.kind: required field missing"),
    ("a metric as text", _results_frame(_bad_metric), "bad_field",
     "results[1].result.metrics['status_code']: expected a number, got '200'"),
    ("a bool for a float", _results_frame(_bad_phase), "bad_field",
     "results[0].result.phases[0].duration: expected a number, got True"),
    ("result schema version", _results_frame(_bad_schema), "bad_field",
     "results[1].result.schema_version: unsupported result schema version 2"),
    ("empty result id", _results_frame(_empty_result_id), "bad_field",
     "results[0].result_id: must not be empty"),
    ("bad timestamp", _results_frame(_bad_timestamp), "bad_field", "results[0].result.started_at"),
    ("results not an array", _frame(type="results", results={}), "bad_field",
     "results: expected an array, got an object"),
    ("missing field", _frame(type="ack"), "bad_field", "result_ids: required field missing"),
    ("a string is not an array", _frame(type="ack", result_ids="abc"), "bad_field",
     "result_ids: expected an array, got 'abc'"),
    ("'false' is not false", _frame(**{**_VALID_SYNC, "full": "false"}), "bad_field",
     "full: expected true or false, got 'false'"),
    ("'3' is not 3", _frame(**{**_VALID_SYNC, "revision": "3"}), "bad_field",
     "revision: expected an integer, got '3'"),
    ("3.5 is not an integer", _frame(**{**_VALID_SYNC, "revision": 3.5}), "bad_field",
     "revision: expected an integer, got 3.5"),
    ("negative revision", _frame(**{**_VALID_SYNC, "revision": -1}), "bad_field",
     "revision: must be between 0"),
    ("revision beyond 2**53", _frame(**{**_VALID_SYNC, "revision": 2**53}), "bad_field",
     "revision: must be between 0"),
    ("zero interval", _frame(**{**_VALID_SYNC, "upserts": [{**_UPSERT, "interval": 0}]}),
     "bad_field", "upserts[0].interval: must be a finite number of seconds above 0"),
    ("infinite interval", '{"type":"sync","version":1,"full":true,"revision":1,"deletes":[],'
     '"upserts":[{"monitor_id":"w","revision":1,"interval":1e999,"definition":{"kind":"x"}}]}',
     "bad_field", "upserts[0].interval: inf is not a finite number"),
    ("definition without kind",
     _frame(**{**_VALID_SYNC, "upserts": [{**_UPSERT, "definition": {}}]}), "bad_field",
     "upserts[0].definition.kind: required field missing"),
    ("definition not an object",
     _frame(**{**_VALID_SYNC, "upserts": [{**_UPSERT, "definition": "http://x"}]}),
     "bad_field", "upserts[0].definition: expected an object"),
    ("definition too deep", _frame(**{**_VALID_RUN, "definition": {
        "kind": "http", "x": json.loads("[" * 40 + "]" * 40)}}),
     "bad_field", "definition.x[0][0]"),
    ("lone surrogate in a definition", _frame(**{**_VALID_RUN, "definition": {
        "kind": "http", "url": "\ud800"}}),
     "bad_field", "definition.url: is not valid Unicode"),
    ("upserted twice", _frame(**{**_VALID_SYNC, "upserts": [_UPSERT, _UPSERT]}), "bad_field",
     "upserts[1].monitor_id: 'web' appears twice"),
    ("upserted and deleted", _frame(**{**_VALID_SYNC, "upserts": [_UPSERT], "deletes": ["web"]}),
     "bad_field", "deletes[0]: 'web' is both upserted and deleted"),
    ("deletes in a full sync", _frame(**{**_VALID_SYNC, "full": True, "deletes": ["x"]}),
     "bad_field", "deletes: must be empty in a full sync"),
    ("run of nothing", _frame(**{**_VALID_RUN, "monitor_id": None}), "bad_field",
     "monitor_id: a run needs a monitor_id, a definition, or both"),
    ("unknown reason", _frame(**{**_VALID_RUN, "reason": "whim"}), "bad_field",
     "reason: 'whim' is not one of 'scheduled', 'confirm', 'adhoc'"),
    ("zero deadline", _frame(**{**_VALID_RUN, "deadline": 0}), "bad_field", "deadline:"),
    ("id too long", _frame(**{**_VALID_RUN, "request_id": "r" * 201}), "bad_field",
     "request_id: is longer than 200 characters"),
    ("id with a newline", _frame(**{**_VALID_RUN, "monitor_id": "web\nINFO forged log line"}),
     "bad_field", "monitor_id: contains a control or unprintable character"),
    ("holding revision as text", _frame(**{**_HELLO, "holdings": {"web": "3"}}), "bad_field",
     "holdings['web']: expected an integer, got '3'"),
    ("empty kind", _frame(**{**_HELLO, "kinds": ["http", ""]}), "bad_field",
     "kinds[1]: must not be empty"),
    ("unknown mode", _frame(**{**_HELLO, "mode": "chaotic"}), "bad_field", "mode: 'chaotic'"),
    ("negative count", _frame(**{**_HEARTBEAT, "reconnects": -1}), "bad_field", "reconnects:"),
    ("policy not an object", _frame(**{**_HEARTBEAT, "policy": []}), "bad_field",
     "policy: expected an object, got an array"),
    ("timestamp not a string", _frame(**{**_HEARTBEAT, "sent_at": 0}), "bad_field", "sent_at:"),
    ("unknown error code", _frame(type="error", code="oops", message=""), "bad_field",
     "code: 'oops' is not one of"),
    ("error message too long", _frame(type="error", code="internal", message="m" * 4097),
     "bad_field", "message: is longer than 4096 characters"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "code", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused_frames_name_the_problem(frame: str | bytes, code: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.code == code
    assert fragment in caught.value.message
    reply = error_reply(caught.value)
    assert reply.code == code
    assert decode(encode(reply)) == reply


def test_too_large_is_checked_before_parsing() -> None:
    frame = "[" * (MAX_FRAME_BYTES + 1)  # would be "nested too deeply" if it were parsed
    with pytest.raises(ProtocolError, match="too_large") as caught:
        decode(frame)
    assert caught.value.code == "too_large"
    with pytest.raises(ProtocolError, match="too_large"):
        decode(frame.encode())
    with pytest.raises(ProtocolError, match="too_large"):
        decode(_frame(type="drain", reason="x" * 100), max_bytes=64)


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    frame = encode(Drain(reason="é" * 40))
    assert len(frame) <= 100 < len(frame.encode())
    with pytest.raises(ProtocolError, match="too_large"):
        decode(frame, max_bytes=100)
    assert decode(frame, max_bytes=len(frame.encode())) == Drain(reason="é" * 40)


def test_bad_version_is_also_a_protocol_version_error() -> None:
    with pytest.raises(ProtocolVersionError) as caught:
        decode(_frame(type="hello", version=2))
    assert isinstance(caught.value, ProtocolError)
    assert caught.value.code == "bad_version"
    assert caught.value.close_code == 1002


def test_close_codes() -> None:
    assert ProtocolError("unauthorized", "token refused").close_code == 1008
    for code in ERROR_CODES - {"bad_version", "unauthorized"}:
        assert ProtocolError(code, "x").close_code is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown protocol error code"):
        ProtocolError("nope", "x")  # type: ignore[arg-type]


def test_version_is_checked_before_type() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(_frame(type="reboot", version=9))
    assert caught.value.code == "bad_version"


def test_accept_refuses_messages_from_the_wrong_side() -> None:
    run = encode(Run(request_id="r1", reason="adhoc", monitor_id="web"))
    assert isinstance(decode(run, accept=FROM_CONTROL), Run)
    with pytest.raises(ProtocolError, match="'run' messages are not accepted") as caught:
        decode(run, accept=FROM_INSTANCE)
    assert caught.value.code == "unknown_type"
    hello = encode(
        Hello(checkpoint_id="c", instance_id="i", software_version="1", kinds=(), holdings={})
    )
    with pytest.raises(ProtocolError, match="unknown_type"):
        decode(hello, accept=FROM_CONTROL)
    error = encode(Error(code="internal", message="x"))
    assert decode(error, accept=FROM_INSTANCE) == decode(error, accept=FROM_CONTROL)


def test_a_refused_run_names_its_request() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(_frame(**{**_VALID_RUN, "deadline": -5}))
    assert caught.value.ref == "req-7"
    assert error_reply(caught.value).ref == "req-7"
    with pytest.raises(ProtocolError) as caught:
        decode(_frame(**{**_VALID_RUN, "request_id": "x" * 300, "deadline": -5}))
    assert caught.value.ref is None


def test_unknown_fields_are_ignored() -> None:
    frame = _frame(type="drain", reason="upgrade", added_in_a_later_release={"x": 1})
    assert decode(frame) == Drain(reason="upgrade")


def test_unknown_fields_are_ignored_at_every_level() -> None:
    envelope = _envelope()
    data = json.loads(encode(Results(results=(envelope,))))
    data["results"][0]["added_later"] = 1
    data["results"][0]["result"]["phases"][0]["added_later"] = [True]
    assert decode(json.dumps(data)) == Results(results=(envelope,))


def test_only_the_first_problem_is_reported() -> None:
    frame = _frame(**{**_VALID_SYNC, "full": "yes", "revision": "3", "deletes": [1, 2]})
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.message == "full: expected true or false, got 'yes'"


def test_error_reply() -> None:
    reply = error_reply(ProtocolError("bad_field", "x" * 10_000, ref="r1"))
    assert len(reply.message) == 4096
    assert reply.ref == "r1"
    reply = error_reply(ProtocolError("bad_field", "bad \ud800 text", ref="bad\nref"))
    assert reply.ref is None
    assert decode(encode(reply)) == reply
    # Anything that is not a ProtocolError is this side's bug: say only its class.
    reply = error_reply(KeyError("secret detail"))
    assert reply == Error(code="internal", message="internal error (KeyError)")


def test_decode_refuses_non_frames_as_a_programming_error() -> None:
    with pytest.raises(TypeError):
        decode(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        decode("{}", max_bytes=0)
    assert decode(bytearray(encode(Drain()).encode())) == Drain()


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError, match="not a protocol message"):
        encode(_result())  # type: ignore[arg-type]
    nan = Results(results=(_envelope(result=_result(duration=float("nan"))),))
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode(nan)
    surrogate = Results(results=(_envelope(result=_result(target="\ud800")),))
    with pytest.raises(ValueError, match="lone surrogate"):
        encode(surrogate)


# -- constructors refuse what the wire refuses ---------------------------------------------------

_NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
INVALID: list[tuple[str, Callable[[], object], str]] = [
    ("empty id", lambda: Ack(result_ids=("",)), "result_ids[0]: must not be empty"),
    ("list not tuple", lambda: Ack(result_ids=["a"]), "result_ids: expected a tuple"),  # type: ignore[arg-type]
    ("run of nothing", lambda: Run(request_id="r", reason="adhoc"), "monitor_id:"),
    ("bad reason", lambda: Run(request_id="r", reason="x", monitor_id="m"), "reason:"),  # type: ignore[arg-type]
    ("zero interval",
     lambda: MonitorDefinition(monitor_id="m", revision=1, interval=0, definition={"kind": "x"}),
     "interval:"),
    ("nan deadline",
     lambda: Run(request_id="r", reason="adhoc", monitor_id="m", deadline=float("nan")),
     "deadline:"),
    ("no kind", lambda: MonitorDefinition(monitor_id="m", revision=1, interval=1, definition={}),
     "definition.kind: required field missing"),
    ("an object in a definition",
     lambda: Run(request_id="r", reason="adhoc", definition={"kind": "x", "at": _NOW}),
     "definition.at: a datetime has no JSON form"),
    ("a non-string key",
     lambda: Run(request_id="r", reason="adhoc", definition={"kind": "x", "h": {1: 2}}),
     "definition.h: object key 1 is not a string"),
    ("naive time", lambda: Heartbeat(in_flight=0, queue_depth=0, spool_depth=0, spool_dropped=0,
     reconnects=0, policy={}, sent_at=dt.datetime(2026, 1, 1)), "sent_at: must be timezone-aware"),
    ("bool as count", lambda: Heartbeat(in_flight=True, queue_depth=0, spool_depth=0,
     spool_dropped=0, reconnects=0, policy={}, sent_at=_NOW), "in_flight: expected an integer"),
    ("full sync with deletes",
     lambda: Sync(full=True, revision=1, upserts=(), deletes=("m",)), "deletes:"),
    ("result without ids", lambda: _envelope(monitor_id=None, request_id=None), "monitor_id:"),
    ("future result schema", lambda: _envelope(result=_result(schema_version=2)),
     "result.schema_version"),
    ("unknown error code", lambda: Error(code="nope", message=""), "code:"),  # type: ignore[arg-type]
    ("holding with a bad id", lambda: Hello(checkpoint_id="c", instance_id="i",
     software_version="1", kinds=(), holdings={"": 1}), "holdings['']: must not be empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_constructors_refuse_invalid_values(build: Callable[[], object], fragment: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        build()
    assert fragment in str(caught.value)


# -- secrets --------------------------------------------------------------------------------------


@given(secret_values)
def test_a_secret_in_a_definition_is_never_sent(value: str) -> None:
    definition = {
        "kind": "http",
        "url": "https://intranet.example/",
        "auth": {"username": "probe", "password": Secret(value)},
        "headers": [["Authorization", Secret(value)]],
    }
    sent: list[Message] = [
        Sync(
            full=True,
            revision=1,
            upserts=(
                MonitorDefinition(monitor_id="m", revision=1, interval=30, definition=definition),
            ),
            deletes=(),
        ),
        Run(request_id="r", reason="adhoc", definition=definition),
        Heartbeat(
            in_flight=0,
            queue_depth=0,
            spool_depth=0,
            spool_dropped=0,
            reconnects=0,
            policy={"proxy_password": Secret(value)},
            sent_at=_NOW,
        ),
    ]
    for message in sent:
        text = encode(message)
        assert value not in text
        assert '"<secret>"' in text
        assert value not in repr(message)


# -- fuzzing: decode never raises anything but ProtocolError --------------------------------------


@FUZZ
@given(st.binary(max_size=2_000))
def test_arbitrary_bytes(frame: bytes) -> None:
    _check_decode(frame)


@FUZZ
@given(st.text(max_size=2_000))
def test_arbitrary_text(frame: str) -> None:
    _check_decode(frame)


@FUZZ
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    _check_decode(json.dumps(value))


@FUZZ
@given(st.dictionaries(st.sampled_from(["type", "version", "reason", "results"]), json_values))
def test_arbitrary_json_objects_with_protocol_keys(value: dict[str, Any]) -> None:
    _check_decode(json.dumps(value))


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(_paths(child, (*path, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_paths(child, (*path, index)))
    return found


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A valid message with one to three of its values replaced, removed or added."""
    doc: Any = json.loads(encode(draw(messages)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        replacement = draw(awkward | json_values)
        if not path:
            doc = replacement
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = replacement
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = replacement
        else:
            parent.insert(path[-1], replacement)
    return json.dumps(doc)


@FUZZ
@given(mutated_frames())
def test_mutated_messages(frame: str) -> None:
    _check_decode(frame)


@FUZZ
@given(messages, st.data())
def test_truncated_and_corrupted_frames(message: Message, data: st.DataObject) -> None:
    raw = encode(message).encode()
    cut = data.draw(st.integers(0, len(raw)))
    _check_decode(raw[:cut])
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        _check_decode(raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1 :])


HOSTILE = {
    "open brackets": "[" * MAX_FRAME_BYTES,
    "open objects": '{"a":' * (MAX_FRAME_BYTES // 5),
    "one huge number": "9" * MAX_FRAME_BYTES,
    "one huge string": '"' + "a" * (MAX_FRAME_BYTES - 2) + '"',
    "many keys": "{" + ",".join(f'"{i}":0' for i in range(100_000)) + "}",
    "deep definition": json.dumps({**_VALID_RUN, "definition": {"kind": "x", "d": json.loads(
        "[" * 900 + "]" * 900)}}),
    "wide definition": json.dumps(
        {**_VALID_RUN, "definition": {"kind": "x", "d": [[0] * 10] * 20_000}}),
    "many results": _frame(type="results", results=[{"result_id": "x"}] * 50_000),
}  # fmt: skip


@pytest.mark.parametrize("frame", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_frames_are_refused_quickly(frame: str) -> None:
    assert len(frame.encode()) <= MAX_FRAME_BYTES
    started = time.perf_counter()
    _check_decode(frame)
    assert time.perf_counter() - started < 2.0


# -- the document ---------------------------------------------------------------------------------


def test_the_protocol_document_covers_every_message_field_and_code() -> None:
    text = DOC.read_text()
    sections = re.split(r"^### ", text, flags=re.M)
    for name, cls in MESSAGE_TYPES.items():
        section = next((s for s in sections if s.startswith(f"`{name}`")), None)
        assert section is not None, f"no section for {name}"
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in section, f"{name}.{field.name} is not documented"
        assert '```json\n{"type":"' + name + '"' in section, f"no example for {name}"
    for part in (MonitorDefinition, ResultEnvelope):
        for field in attrs.fields(part):
            assert f"`{field.name}`" in text
    for code in ERROR_CODES:
        assert f"`{code}`" in text
    for close_code in ("1000", "1001", "1002", "1008", "1009", "1011"):
        assert close_code in text


def test_the_documented_examples_decode() -> None:
    examples = re.findall(r"^```json\n(\{\"type\".*?)^```", DOC.read_text(), flags=re.M | re.S)
    assert len(examples) >= len(MESSAGE_TYPES)
    for example in examples:
        message = decode(example)
        assert decode(encode(message)) == message
