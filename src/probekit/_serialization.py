"""The one cattrs converter: every value's JSON form is defined here and nowhere else.

Values leave through :data:`converter` (``unstructure``). They come back through the structuring
engine (:mod:`probekit._structure`), strictly: :func:`result_from_json` reads a result exactly as
a control plane reads one in a ``results`` frame. The converter's own ``structure`` is kept for
callers that use it, and reads datetimes and secrets with the engine's rules.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Final

import cattrs
from cattrs.preconf.json import make_converter

from ._exceptions import DefinitionError
from ._result import SCHEMA_VERSION, Result
from ._secret import Secret
from ._structure import Policy, plain_secret, structure

__all__ = ["converter", "result_from_json", "result_to_json"]

#: How result JSON is read: fields a later release adds (or a ``"monitor"`` tag) are skipped,
#: every problem is reported with its path. Results hold no secrets, so strings are quoted.
_RESULTS: Final = Policy(unknown_keys="ignore", show_strings=True, secrets=plain_secret)


def _build() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False)

    def _dt_out(value: dt.datetime) -> str:
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()

    def _dt_in(value: Any, _t: type) -> dt.datetime:
        parsed: dt.datetime = structure(dt.datetime, value, policy=_RESULTS)
        return parsed

    def _secret_in(value: Any, _t: type) -> Secret:
        secret: Secret = structure(Secret, value, policy=_RESULTS)
        return secret

    conv.register_unstructure_hook(dt.datetime, _dt_out)
    conv.register_structure_hook(dt.datetime, _dt_in)
    conv.register_unstructure_hook(Secret, str)
    conv.register_structure_hook(Secret, _secret_in)
    return conv


#: The converter every probekit value goes through on its way to JSON.
converter = _build()


def result_to_json(result: Result) -> str:
    """Serialise a result to compact JSON (the shape is documented in ``docs/results.md``)."""
    return json.dumps(converter.unstructure(result), separators=(",", ":"), allow_nan=False)


def result_from_json(text: str | bytes) -> Result:
    """Load a result from its JSON form; refuses a schema version newer than this library's.

    Raises :class:`~probekit.DefinitionErrors` naming every field that is not what the schema
    says (``phases[0].duration: expected a number, got '0.1'``).
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise DefinitionError("", "a result must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DefinitionError("schema_version", f"unsupported result schema version {version!r}")
    result: Result = structure(Result, data, policy=_RESULTS)
    return result
