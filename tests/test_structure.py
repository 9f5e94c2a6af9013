"""The one structuring engine: strict types, every problem with its path, policies, hooks.

Definitions, control-channel frames and result JSON all go through ``probekit._structure``; the
tests here pin the engine itself, with small classes of their own, and show that one call reads
a probe definition and a protocol frame alike.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attr
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probekit import (
    DefinitionError,
    DefinitionErrors,
    HttpProbe,
    Result,
    Secret,
    build_probe,
    result_from_json,
)
from probekit._definitions import PROBES
from probekit._structure import (
    STRICT,
    Policy,
    Structurer,
    Tagged,
    did_you_mean,
    engine,
    has_surrogates,
    plain_secret,
    show,
    structure,
)
from probekit.protocol import PROTOCOL_VERSION, Drain, Sync, decode


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


@attrs.frozen
class Limits:
    low: int
    high: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.low > self.high:
            raise DefinitionError("low", f"must not be above high ({self.high})")


@attrs.frozen
class Sample:
    name: str
    count: int = 0
    ratio: float = 0.5
    enabled: bool = True
    mode: Literal["fast", "slow"] = "fast"
    colour: Colour = Colour.RED
    tags: tuple[str, ...] = ()
    pair: tuple[int, str] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    labels: Mapping[str, int] = attrs.field(factory=dict)
    limits: Limits | None = None
    history: tuple[Limits, ...] = ()
    at: dt.datetime | None = None
    token: Secret | None = None
    raw: bytes | None = None
    extra: Any = None
    either: int | str = 0


@attrs.frozen
class Node:
    """A class that contains itself."""

    value: int
    children: tuple[Node, ...] = ()


def problems(hint: Any, data: Any, policy: Policy = STRICT, path: str = "") -> list[str]:
    with pytest.raises(DefinitionErrors) as info:
        structure(hint, data, policy=policy, path=path)
    return [str(e) for e in info.value.errors]


# -- every problem, with its path -----------------------------------------------------------------


def test_every_problem_in_a_nested_value_is_reported_with_its_path() -> None:
    data = {
        "name": 7,
        "count": "3",
        "tags": ["a", 2, "c", None],
        "limits": {"low": "1", "hihg": 2},
        "history": [{"low": 1}, {"low": 5, "high": 2}, [], {"high": 3}],
        "labels": {"a": 1, "b": 2.5},
        "colour": "blue",
    }
    assert problems(Sample, data, path="samples[4]") == [
        "samples[4].name: expected a string, got 7",
        "samples[4].count: expected an integer, got a string",
        "samples[4].tags[1]: expected a string, got 2",
        "samples[4].tags[3]: expected a string, got null",
        "samples[4].limits.low: expected an integer, got a string",
        "samples[4].limits.hihg: unknown field (did you mean 'high'?)",
        "samples[4].history[1].low: must not be above high (2.0)",
        "samples[4].history[2]: expected an object, got an array",
        "samples[4].history[3].low: required field missing",
        "samples[4].labels['b']: expected an integer, got 2.5",
        "samples[4].colour: 'blue' is not a valid Colour",
    ]


def test_a_valid_value_is_built() -> None:
    sample = structure(
        Sample,
        {
            "name": "n",
            "count": 3,
            "ratio": 2,
            "enabled": False,
            "mode": "slow",
            "colour": "green",
            "tags": ["a", "b"],
            "pair": [1, "x"],
            "headers": {"A": "1", "B": "2"},
            "labels": {"x": 1},
            "limits": {"low": 0, "high": 3},
            "history": [{"low": 0}],
            "at": "2026-11-26T14:22:14+01:00",
            "token": "t0ken",
            "raw": "é",
            "extra": {"free": ["json", 1]},
            "either": "word",
        },
    )
    assert sample == Sample(
        name="n",
        count=3,
        ratio=2.0,
        enabled=False,
        mode="slow",
        colour=Colour.GREEN,
        tags=("a", "b"),
        pair=(1, "x"),
        headers=(("A", "1"), ("B", "2")),
        labels={"x": 1},
        limits=Limits(0, 3.0),
        history=(Limits(0),),
        at=dt.datetime(2026, 11, 26, 13, 22, 14, tzinfo=dt.UTC),
        token=Secret("t0ken"),
        raw="é".encode(),
        extra={"free": ["json", 1]},
        either="word",
    )
    assert type(sample.ratio) is float
    assert type(sample.tags) is tuple


def test_missing_fields_and_unknown_keys() -> None:
    assert problems(Limits, {}) == ["low: required field missing"]
    assert problems(Sample, {"nmae": "x", "count": 1, 5: 1}) == [
        "nmae: unknown field (did you mean 'name'?)",
        "5: unknown field",
        "name: required field missing",
    ]
    ignoring = Policy(unknown_keys="ignore")
    assert structure(Limits, {"low": 1, "later": True}, policy=ignoring) == Limits(1)


def test_first_error_stops_at_the_first_problem() -> None:
    first = Policy(first_error=True)
    assert problems(Sample, {"name": 1, "count": "x"}, first) == ["name: expected a string, got 1"]
    assert problems(Sample, {"tags": [1, 2, 3], "name": "n"}, first) == [
        "tags[0]: expected a string, got 1"
    ]
    many = {"history": [{"high": 0}] * 10_000, "name": "n"}
    assert problems(Sample, many, first) == ["history[0].low: required field missing"]
    assert len(problems(Sample, many)) == 10_000


def test_did_you_mean() -> None:
    assert did_you_mean("colour", ["color", "count"]) == " (did you mean 'color'?)"
    assert did_you_mean("zzz", ["color", "count"]) == ""
    assert did_you_mean(7, ["color"]) == ""


# -- strict scalars -------------------------------------------------------------------------------

SCALARS: list[tuple[str, Any, str]] = [
    ("count", True, "expected an integer, got True"),
    ("count", "7", "expected an integer, got a string"),
    ("count", 7.9, "expected an integer, got 7.9"),
    ("count", 7.0, "expected an integer, got 7.0"),
    ("count", None, "expected an integer, got null"),
    ("ratio", math.nan, "nan is not a finite number"),
    ("ratio", math.inf, "inf is not a finite number"),
    ("ratio", -math.inf, "-inf is not a finite number"),
    ("ratio", False, "expected a number, got False"),
    ("ratio", "0.5", "expected a number, got a string"),
    ("enabled", 1, "expected true or false, got 1"),
    ("enabled", "false", "expected true or false, got a string"),
    ("name", b"bytes", "expected a string, got bytes"),
    ("name", "\ud800", "is not valid Unicode (a lone surrogate)"),
    ("raw", 5, "expected a string, got 5"),
    ("mode", "Fast", "'Fast' is not one of 'fast', 'slow'"),
    ("mode", ["fast"], "an array is not one of 'fast', 'slow'"),
    ("colour", 1, "1 is not a valid Colour"),
    ("at", "yesterday", "expected an ISO 8601 timestamp, got 'yesterday'"),
    ("at", 0, "expected an ISO 8601 timestamp, got 0"),
    ("token", 5, "a secret must be a string, got 5"),
    ("token", "<secret>", "a masked '<secret>' cannot be loaded back as a secret"),
]


@pytest.mark.parametrize(("field", "value", "message"), SCALARS)
def test_scalars_are_strict(field: str, value: Any, message: str) -> None:
    assert problems(Sample, {"name": "n", field: value}) == [f"{field}: {message}"]


def test_numbers_that_are_exact() -> None:
    sample = structure(Sample, {"name": "n", "count": 2**60, "ratio": 3, "either": 4})
    assert (sample.count, sample.ratio, sample.either) == (2**60, 3.0, 4)
    assert structure(float, 1e308) == 1e308
    assert structure(bool, False) is False


def test_a_naive_timestamp_is_utc_and_an_enum_member_is_itself() -> None:
    sample = structure(Sample, {"name": "n", "at": "2026-01-01T00:00:00", "colour": Colour.GREEN})
    assert sample.at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert sample.colour is Colour.GREEN


# -- containers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "tags: expected an array, got a string"),
        ({"a": "b"}, "tags: expected an array, got an object"),
        (b"ab", "tags: expected an array, got bytes"),
        (frozenset({"a"}), "tags: expected an array, got frozenset({'a'})"),
    ],
    ids=["string", "object", "bytes", "set"],
)
def test_tuples_are_read_from_arrays_only(value: Any, message: str) -> None:
    assert problems(Sample, {"name": "n", "tags": value}) == [message]


def test_fixed_tuples_and_pairs() -> None:
    assert problems(Sample, {"name": "n", "pair": [1]}) == ["pair: expected 2 items, got 1"]
    assert problems(Sample, {"name": "n", "pair": ["1", 2]}) == [
        "pair[0]: expected an integer, got a string",
        "pair[1]: expected a string, got 2",
    ]
    assert problems(Sample, {"name": "n", "headers": {"A": 1}}) == [
        "headers[0][1]: expected a string, got 1"
    ]
    assert structure(Sample, {"name": "n", "pair": (1, "x")}).pair == (1, "x")


def test_mappings_type_their_keys_and_values() -> None:
    assert problems(dict[int, str], {1: "a", "2": "b", 3: 4}) == [
        "['2']: expected an integer, got a string",
        "[3]: expected a string, got 4",
    ]
    assert problems(Mapping[str, int], [1]) == ["expected an object, got an array"]
    assert structure(list[int], [1, 2]) == [1, 2]


def test_unions_try_each_member_in_turn() -> None:
    assert structure(int | str, "x") == "x"
    assert structure(int | str | None, None) is None
    assert problems(int | str, 2.5) == ["expected an integer, got 2.5"]
    assert problems(Sample, {"name": "n", "either": None}) == [
        "either: expected an integer, got null"
    ]


@attr.s(frozen=True)
class Untyped:
    anything = attr.ib()  # type: ignore[var-annotated]


def test_a_field_without_an_annotation_takes_anything() -> None:
    assert structure(Untyped, {"anything": [1, {"a": None}]}) == Untyped([1, {"a": None}])


def test_a_type_the_engine_does_not_know() -> None:
    assert problems(complex, 1) == ["cannot load a value of type <class 'complex'>"]


def test_a_class_that_contains_itself() -> None:
    tree = {"value": 1, "children": [{"value": 2, "children": [{"value": "3"}]}]}
    assert problems(Node, tree) == [
        "children[0].children[0].value: expected an integer, got a string"
    ]
    tree["children"][0]["children"][0]["value"] = 3  # type: ignore[index]
    assert structure(Node, tree) == Node(1, (Node(2, (Node(3),)),))


def test_a_problem_deep_down_is_read_once_not_once_per_level() -> None:
    deep: dict[str, Any] = {"value": "bad"}
    for _ in range(80):
        deep = {"value": 0, "children": [{"value": 0}, deep, {"value": 1}]}
    started = time.perf_counter()
    [message] = problems(Node, deep)
    assert message == ".".join(["children[1]"] * 80) + ".value: expected an integer, got a string"
    assert time.perf_counter() - started < 1.0


# -- hooks, tags, secrets -------------------------------------------------------------------------


@attrs.frozen
class Ping:
    host: str
    steps: tuple[str, ...] = ()


def _steps(data: Any, path: str) -> tuple[str, ...]:
    """Steps written as one string, separated by ';' (each must be non-empty)."""
    if not isinstance(data, str):
        raise DefinitionError(path, "steps are one string")
    parts = tuple(data.split(";"))
    errors = [DefinitionError(f"{path}[{i}]", "empty step") for i, p in enumerate(parts) if not p]
    if errors:
        raise DefinitionErrors(errors)
    return parts


def _resolve(name: str) -> tuple[type, Mapping[str, Any]]:
    if name == "ping":
        return Ping, {"steps": _steps}
    if name == "limits":
        return Limits, {}
    raise DefinitionError("", f"unknown thing {name!r}{did_you_mean(name, ['ping', 'limits'])}")


THINGS = Tagged(key="what", missing="a thing names what it is", resolve=_resolve)


def test_a_field_hooks_errors_are_placed_under_its_path() -> None:
    assert structure(THINGS, {"what": "ping", "host": "h", "steps": "a;b"}) == Ping("h", ("a", "b"))
    assert problems(THINGS, {"what": "ping", "host": 1, "steps": "a;;b;"}, path="things[2]") == [
        "things[2].host: expected a string, got 1",
        "things[2].steps[1]: empty step",
        "things[2].steps[3]: empty step",
    ]
    assert problems(THINGS, {"what": "ping", "host": "h", "steps": []}) == [
        "steps: steps are one string"
    ]


def test_tagged_families() -> None:
    assert structure(THINGS, {"what": "limits", "low": 1}) == Limits(1)
    assert problems(THINGS, {"low": 1}) == ["what: required: a thing names what it is"]
    assert problems(THINGS, {"what": 3}) == ["what: expected a string, got 3"]
    assert problems(THINGS, {"what": "pnig"}) == [
        "what: unknown thing 'pnig' (did you mean 'ping'?)"
    ]
    assert problems(THINGS, "ping") == ["expected an object, got a string"]
    assert problems(list[THINGS], [{"what": "limits", "low": 1, "hgih": 2}]) == [  # type: ignore[valid-type]
        "[0].hgih: unknown field (did you mean 'high'?)"
    ]


def test_a_registered_type_hook() -> None:
    class Port(int):
        pass

    def port(data: Any, path: str) -> Port:
        if type(data) is not int or not 0 < data < 65536:
            raise DefinitionError(path, f"expected a port number, got {show(data)}")
        return Port(data)

    local = Structurer()
    local.register(Port, port)
    assert local.structure(Port, 443) == Port(443)
    assert local.structure(list[Port], [1, 2]) == [1, 2]
    with pytest.raises(DefinitionErrors, match=r"ports\[1\]: expected a port number, got 0"):
        local.structure(list[Port], [1, 0], path="ports")
    with pytest.raises(DefinitionErrors, match="cannot load a value"):
        engine.structure(Port, 443)  # registered with the other engine only


def test_the_secret_policy_is_the_calls() -> None:
    def vault(data: Any) -> Secret:
        if data == {"vault": "db"}:
            return Secret("from-vault")
        raise DefinitionError("vault", "no such entry")

    policy = Policy(secrets=vault)
    assert structure(
        Sample, {"name": "n", "token": {"vault": "db"}}, policy=policy
    ).token == Secret("from-vault")
    assert problems(Sample, {"name": "n", "token": {"vault": "x"}}, policy) == [
        "token.vault: no such entry"
    ]
    assert plain_secret(Secret("s")) == Secret("s")
    assert plain_secret("s") == Secret("s")


def test_strings_are_quoted_only_when_the_policy_says() -> None:
    assert problems(Limits, {"low": "canary-7#x"}) == ["low: expected an integer, got a string"]
    quoting = Policy(show_strings=True)
    assert problems(Limits, {"low": "canary-7#x"}, quoting) == [
        "low: expected an integer, got 'canary-7#x'"
    ]
    assert show("x" * 100) == "'" + "x" * 56 + "..."
    assert len(show("x" * 100)) == 60
    assert show({"a": 1}) == "an object"
    assert show(b"k", reveal=False) == "bytes"
    assert has_surrogates("a\ud800") and not has_surrogates("é")


# -- the same engine for definitions and frames ---------------------------------------------------


def test_one_call_reads_a_definition_and_a_frame() -> None:
    definition = {"kind": "http", "url": "http://intranet.test/", "max_redirects": 3}
    upsert = {"monitor_id": "web", "revision": 1, "interval": 30, "definition": definition}
    frame: dict[str, Any] = {
        "full": True,
        "revision": 4,
        "upserts": [{"monitor_id": "web", "revision": 1, "interval": 30, "definition": definition}],
        "deletes": [],
    }
    probe = structure(PROBES, definition)
    assert isinstance(probe, HttpProbe)
    assert probe == build_probe(definition)
    sync = structure(Sync, frame)
    assert sync.upserts[0].definition == definition
    assert decode(json.dumps({"type": "sync", "version": PROTOCOL_VERSION, **frame})) == sync
    assert problems(PROBES, {**definition, "max_redirects": "3"}) == [
        "max_redirects: expected an integer, got a string"
    ]
    assert problems(Sync, {**frame, "revision": "4"}) == [
        "revision: expected an integer, got a string"
    ]
    # a frame's validators place their problems under the frame's paths too
    assert problems(Sync, {**frame, "upserts": [upsert, upsert]}) == [
        "upserts[1].monitor_id: 'web' appears twice"
    ]
    assert structure(Drain, {}) == Drain()


def test_result_json_is_read_strictly_with_paths() -> None:
    data = {
        "kind": "http",
        "target": "t",
        "status": "up",
        "started_at": "2026-11-26T14:22:14+00:00",
        "duration": "0.5",
        "phases": [{"name": "connect", "start": 0, "duration": True}],
        "schema_version": 1,
        "monitor": "ignored",
    }
    with pytest.raises(DefinitionErrors) as info:
        result_from_json(json.dumps(data))
    assert [str(e) for e in info.value.errors] == [
        "duration: expected a number, got '0.5'",
        "phases[0].duration: expected a number, got True",
    ]
    data.update(duration=0.5, phases=[])
    assert isinstance(result_from_json(json.dumps(data)), Result)


# -- the generated fast path and the careful path agree -------------------------------------------

_AWKWARD: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, 0, -1, 2.5, math.inf, "", "x", "fast", [], {}, [1]]
)
_VALUES = st.dictionaries(
    st.sampled_from(["name", "count", "ratio", "enabled", "mode", "tags", "limits", "nmae"]),
    _AWKWARD | st.builds(lambda low: {"low": low}, _AWKWARD),
)


def _outcome(read: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", read())
    except Exception as exc:
        return ("refused", [str(e) for e in getattr(exc, "errors", [exc])])


@given(_VALUES)
def test_the_fast_path_and_the_careful_path_agree(data: dict[str, Any]) -> None:
    careful = engine.compiled_class(Sample).read
    assert _outcome(lambda: structure(Sample, data)) == _outcome(lambda: careful(data, STRICT))
