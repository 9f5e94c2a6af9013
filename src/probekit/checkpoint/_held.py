"""The definitions a checkpoint instance holds: built from ``sync`` messages, kept in the spool.

:class:`Definitions` holds, by monitor id, each synced definition with its revision, interval and
the probe built from it. A ``sync`` is applied as one step (a definition that does not build is
refused and not held; the others are); what is held is written to the spool so that an instance
restarted while the control plane is away still has its definitions (see :meth:`store`).
Definitions from the network resolve ``{"secret": NAME}`` only in the local secrets and may not
read environment variables or files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, cast

import attrs

from .._definitions import build_probe
from .._exceptions import DefinitionError, ErrorCode, SpoolError
from .._secret import Secret
from ..probes._base import Probe
from ..protocol import Error, Sync
from ._channel import plain_text
from ._spool import AsyncSpool

__all__ = ["Definitions", "Held"]

log = logging.getLogger("probekit.checkpoint")


@attrs.frozen
class Held:
    """A synced definition and the probe built from it."""

    definition: Any
    revision: int
    interval: float
    probe: Probe


class Definitions:
    """The held definitions of one instance (see the module docstring)."""

    def __init__(self, secrets: Mapping[str, Secret]) -> None:
        self._secrets = secrets
        self.held: dict[str, Held] = {}

    def __len__(self) -> int:
        return len(self.held)

    @property
    def holdings(self) -> dict[str, int]:
        """The monitor ids held, with their revisions (what ``hello`` reports)."""
        return {monitor_id: held.revision for monitor_id, held in self.held.items()}

    def build(self, definition: dict[str, Any]) -> Probe:
        """The probe of a definition from the network (local secrets only)."""
        if isinstance(definition, dict) and definition.get("kind") == "script":
            from ..probes.script import CONTROL_PLANE_REFUSAL

            raise DefinitionError("definition.kind", CONTROL_PLANE_REFUSAL)
        return cast(
            Probe,
            build_probe(definition, secrets=self._secrets, local=False, path="definition"),
        )

    @staticmethod
    def refusal(exc: Exception, ref: str) -> Error:
        """The ``error`` that answers a definition that did not build."""
        code: ErrorCode = "bad_field"
        if isinstance(exc, DefinitionError):
            text = str(exc)
        else:
            log.error("building a definition failed unexpectedly", exc_info=exc)
            code, text = "internal", f"could not build the definition ({type(exc).__name__})"
        return Error(code=code, message=plain_text(text, 4000), ref=ref)

    def apply(self, sync: Sync) -> tuple[dict[str, Held], list[Error]]:
        """Apply a sync; return what was held before, and the errors for what did not build."""
        errors: list[Error] = []
        held = {} if sync.full else dict(self.held)
        for monitor_id in sync.deletes:
            held.pop(monitor_id, None)
        for upsert in sync.upserts:
            old = self.held.get(upsert.monitor_id)
            if (
                old is not None
                and old.revision == upsert.revision
                and old.definition == upsert.definition
            ):
                held[upsert.monitor_id] = attrs.evolve(old, interval=upsert.interval)
                continue
            try:
                probe = self.build(upsert.definition)
            except Exception as exc:  # noqa: BLE001 - reported to the control plane, not fatal
                held.pop(upsert.monitor_id, None)
                errors.append(self.refusal(exc, upsert.monitor_id))
                continue
            held[upsert.monitor_id] = Held(
                upsert.definition, upsert.revision, upsert.interval, probe
            )
        previous, self.held = self.held, held
        log.info(
            "synced %s: %d definitions held, %d refused%s",
            "everything" if sync.full else "changes",
            len(held),
            len(errors),
            "; autonomous" if sync.autonomous else "",
        )
        return previous, errors

    async def store(self, spool: AsyncSpool) -> None:
        """Keep what is held in the spool, for a restart while the control plane is away."""
        rows = [
            (monitor_id, held.revision, held.interval, json.dumps(held.definition))
            for monitor_id, held in self.held.items()
        ]
        try:
            await spool.save_definitions(rows)
        except SpoolError as exc:  # the checks still run; only a restart would miss them
            log.error("could not keep the definitions in the spool: %s", exc)

    async def restore(self, spool: AsyncSpool) -> None:
        """Hold the definitions a previous run kept in the spool (see :meth:`store`).

        They are reported in ``hello`` with their revisions, so the control plane sends only
        what changed; while it is unreachable they run on the local schedule (when autonomous).
        """
        held: dict[str, Held] = {}
        for monitor_id, revision, interval, text in await spool.load_definitions():
            try:
                definition = json.loads(text)
                held[monitor_id] = Held(definition, revision, interval, self.build(definition))
            except Exception as exc:  # noqa: BLE001 - one stale definition must not stop the rest
                log.warning("kept definition %s no longer builds; dropped: %s", monitor_id, exc)
        self.held = held
        if held:
            log.info("holding %d definitions kept in the spool", len(held))
