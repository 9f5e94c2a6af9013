"""The seconds and id rules of ``_validate`` as the runner, scheduler, protocol and checkpoint
settings apply them: one rule, one wording, the field path in every refusal."""

from __future__ import annotations

import math
from typing import Any

import pytest

from probekit import DefinitionError, HttpProbe, Runner, Secret
from probekit import protocol as p
from probekit._scheduler import Monitor
from probekit._validate import MAX_ID_LENGTH, id_problem
from probekit.checkpoint import CheckpointSettings

PROBE = HttpProbe("http://127.0.0.1:1/")


def test_protocol_max_id_length_is_the_shared_one() -> None:
    assert p.MAX_ID_LENGTH == MAX_ID_LENGTH == 200


def test_an_id_of_spaces_is_a_wire_id_but_not_a_local_one() -> None:
    assert id_problem("   ") == "must not be empty"
    assert id_problem("   ", blank=True) is None
    assert p.Ack(result_ids=("   ",)).result_ids == ("   ",)
    with pytest.raises(DefinitionError, match=r"^checkpoint_id: must not be empty"):
        CheckpointSettings(
            url="wss://c.example/",
            token=Secret("t"),
            checkpoint_id="   ",
            instance_id="a",
            spool_path=":memory:",
        )


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (lambda: Monitor("a\nb", PROBE, 1.0), "monitor_id"),
        (lambda: Monitor("x" * 201, PROBE, 1.0), "monitor_id"),
        (lambda: Monitor("m", PROBE, math.nan), "interval"),
        (lambda: Monitor("m", PROBE, 0), "interval"),
        (lambda: Runner(grace=-1), "grace"),
        (lambda: Runner(retry_backoff=math.inf), "retry_backoff"),
        (lambda: p.Run(request_id="r", reason="adhoc", monitor_id="m", deadline=0), "deadline"),
    ],
)
def test_refusals_name_the_field_with_the_shared_wording(make: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        make()
    assert info.value.path == path
    assert "seconds" in info.value.message or "character" in info.value.message


def test_zero_seconds_stay_allowed_where_they_mean_none() -> None:
    Runner(grace=0, retry_backoff=0, retry_backoff_max=0)
