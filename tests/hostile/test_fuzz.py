"""Fuzzing the two doors data comes in by: definitions (``build_probe``) and control frames
(``probekit.protocol.decode``).

The contract: a definition builds a probe, or raises :class:`DefinitionError` whose every problem
names the field at fault (a path), and a built probe can be shown and turned back into plain data
that builds again. A frame decodes to a message, or raises :class:`ProtocolError` with a known
code. Anything else (another exception, an error without a path) is a failure.

The default run uses the suite's small Hypothesis profile; ``nox -s fuzz`` runs these four tests
with the ``fuzz`` profile (tests/hostile/conftest.py): 25,000 examples each, 100,000 in all.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import find, given
from hypothesis import strategies as st

from probekit import DefinitionError, DefinitionErrors, Secret, build_probe, probe_to_dict
from probekit import protocol as p
from probekit.probes._registry import builtin_names
from strategies import DEFINITIONS, definitions, json_values
from test_protocol import messages, mutated_frames

SECRETS = {"api": Secret("fuzz-secret-9#q")}


def check_definition(data: Any) -> Any:
    """Build ``data``; return the probe, or None when it was refused as the contract says."""
    try:
        probe = build_probe(data, secrets=SECRETS)
    except DefinitionError as exc:
        problems = exc.errors if isinstance(exc, DefinitionErrors) else [exc]
        assert problems, "a DefinitionErrors with no problems"
        for problem in problems:
            # The root of a definition that is not an object has the empty path; every other
            # problem names its field.
            if isinstance(data, dict):
                assert problem.path, f"no path: {problem!r} for {data!r}"
            assert problem.message
        return None
    repr(probe)
    assert probe.target
    plain = probe_to_dict(probe)
    json.dumps(plain)
    # What a probe says it is builds again, unless it holds a secret: the plain form masks it,
    # and loading the mask back is refused (it would check with "<secret>" as the credential).
    try:
        build_probe(plain)
    except DefinitionError as exc:
        if not _masked_secret(exc):
            raise
    return probe


def _masked_secret(exc: DefinitionError) -> bool:
    """Every problem is a masked ``"<secret>"`` given back where a secret goes."""
    problems = exc.errors if isinstance(exc, DefinitionErrors) else [exc]
    return all('masked "<secret>" cannot be loaded back' in p.message for p in problems)


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
def mutated_definitions(draw: st.DrawFn) -> Any:
    """A generated definition with one to three values replaced, removed or added."""
    doc: Any = copy.deepcopy(draw(definitions))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        replacement = draw(json_values)
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
    return doc


def check_frame(frame: str | bytes) -> None:
    """Decode ``frame``: a message that encodes again, or a ProtocolError whose reply encodes.
    A run or sync that carries definitions has them built as a checkpoint would."""
    refused: p.ProtocolError | None = None
    try:
        message = p.decode(frame)
    except p.ProtocolError as exc:
        refused = exc
    if refused is not None:
        assert refused.code in p.ERROR_CODES
        reply = p.error_reply(refused)
        assert p.decode(p.encode(reply)) == reply
        return
    assert p.decode(p.encode(message)) == message
    carried: list[Any] = []
    if isinstance(message, p.Run) and message.definition is not None:
        carried.append(message.definition)
    if isinstance(message, p.Sync):
        carried.extend(m.definition for m in message.upserts)
    for definition in carried:
        check_definition(definition)


def _run_frame(definition: Any) -> str:
    frame = {"type": "run", "version": p.PROTOCOL_VERSION, "request_id": "r-1", "reason": "adhoc"}
    return json.dumps({**frame, "definition": definition})


def _sync_frame(items: list[Any]) -> str:
    upserts = [
        {"monitor_id": f"m{i}", "revision": 1, "interval": 30, "definition": d}
        for i, d in enumerate(items)
    ]
    frame = {"type": "sync", "version": p.PROTOCOL_VERSION, "full": True, "revision": 1}
    return json.dumps({**frame, "upserts": upserts, "deletes": []})


def test_an_unknown_field_named_empty_has_a_path() -> None:
    with pytest.raises(DefinitionError) as info:
        build_probe({"kind": "tcp", "host": "127.0.0.1", "port": 1, "": []})
    assert all(e.path for e in info.value.errors)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"kind": "http", "url": "http://db.internal/", "body": "\ud800"}, "body"),
        (
            {"kind": "tcp", "host": "db.internal", "port": 1, "steps": [{"send": "\ud800"}]},
            "steps[0]",
        ),
        (
            {
                "kind": "tcp",
                "host": "db.internal",
                "port": 1,
                "steps": [{"expect_exact": "\udfff"}],
            },
            "steps[0]",
        ),
    ],
)
def test_text_that_is_not_unicode_is_a_definition_error(data: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        build_probe(data)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize("url", ["http://[:]", "http://127.0.0.1:[", "http://[::1/"])
def test_a_url_with_broken_brackets_is_an_error_of_the_url_field(url: str) -> None:
    with pytest.raises(DefinitionError) as info:
        build_probe({"kind": "http", "url": url})
    assert all(e.path == "url" for e in info.value.errors)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "dns", "name": "example.test", "tsig_name": "key.", "tsig_key": "c2VjcmV0"},
         "tsig_key"),
        ({"kind": "redis", "host": "127.0.0.1", "password": "pw"}, "password"),
        ({"kind": "http", "url": "http://h/", "bearer_token": "tok"}, "bearer_token"),
    ],
)  # fmt: skip
def test_a_masked_secret_from_a_plain_form_is_refused_by_name(
    data: dict[str, Any], field: str
) -> None:
    plain = probe_to_dict(build_probe(data))
    assert plain[field] == "<secret>"
    with pytest.raises(DefinitionErrors) as info:
        build_probe(plain)
    assert [e.path for e in info.value.errors] == [field]
    assert 'give {"secret": NAME}' in str(info.value)


def test_every_builtin_kind_has_a_definition_strategy() -> None:
    assert set(DEFINITIONS) == set(builtin_names())


@pytest.mark.parametrize("kind", sorted(DEFINITIONS))
def test_each_strategy_reaches_a_valid_definition(kind: str) -> None:
    # Otherwise the fuzzing would only ever exercise the first check that refuses.
    found = find(DEFINITIONS[kind], lambda d: check_definition(d) is not None)
    assert found["kind"] == kind


@given(definitions)
def test_generated_definitions_build_or_name_the_field(data: dict[str, Any]) -> None:
    check_definition(data)


@given(mutated_definitions() | json_values)
def test_mutated_and_garbage_definitions_build_or_name_the_field(data: Any) -> None:
    check_definition(data)


@given(
    st.one_of(
        (definitions | mutated_definitions()).map(_run_frame),
        st.lists(definitions, max_size=3).map(_sync_frame),
        mutated_frames(),
        messages.map(p.encode),
    )
)
def test_control_frames_decode_or_are_refused(frame: str) -> None:
    check_frame(frame)


@given(
    st.one_of(
        st.binary(max_size=2_000),
        st.text(max_size=2_000),
        json_values.map(json.dumps),
        st.dictionaries(
            st.sampled_from(["type", "version", "definition", "upserts", "request_id", "reason"]),
            json_values,
        ).map(json.dumps),
    )
)
def test_garbage_frames_are_refused(frame: str | bytes) -> None:
    check_frame(frame)
