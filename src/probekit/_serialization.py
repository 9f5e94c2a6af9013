"""The one cattrs converter: every value's JSON form is defined here and nowhere else."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import cattrs
from cattrs.preconf.json import make_converter

from ._exceptions import DefinitionError
from ._result import SCHEMA_VERSION, Result
from ._secret import Secret

__all__ = ["converter", "result_from_json", "result_to_json"]


def _build() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False)

    def _dt_out(value: dt.datetime) -> str:
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()

    def _dt_in(value: Any, _t: type) -> dt.datetime:
        if not isinstance(value, str):
            raise DefinitionError("", f"expected an ISO 8601 timestamp, got {value!r}")
        parsed = dt.datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)

    def _secret_in(value: Any, _t: type) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise DefinitionError("", "a secret must be a string")
        if value == str(Secret("")):
            raise DefinitionError("", "a masked '<secret>' cannot be loaded back as a secret")
        return Secret(value)

    conv.register_unstructure_hook(dt.datetime, _dt_out)
    conv.register_structure_hook(dt.datetime, _dt_in)
    conv.register_unstructure_hook(Secret, str)
    conv.register_structure_hook(Secret, _secret_in)
    return conv


#: The converter every probekit value goes through on its way to and from JSON.
converter = _build()


def result_to_json(result: Result) -> str:
    """Serialise a result to compact JSON (the shape is documented in ``docs/results.md``)."""
    return json.dumps(converter.unstructure(result), separators=(",", ":"), allow_nan=False)


def result_from_json(text: str | bytes) -> Result:
    """Load a result from its JSON form; refuses a schema version newer than this library's."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise DefinitionError("", "a result must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DefinitionError("schema_version", f"unsupported result schema version {version!r}")
    return converter.structure(data, Result)
