"""The probe SDK: what every probe kind, built-in or third-party, is written with.

- :class:`ProbeBase`: the base a probe class builds on; it writes only
  ``async def run(self, attempt)`` and gets ``check()``, deadlines, error classification,
  phases, assertion evaluation and the Result from the base.
- :class:`Attempt`: what the body uses: ``connect``/``start_tls``/``open_socket``/``datagram``
  through the dial path (resolve → egress policy → pinned connect → TLS, each phase timed),
  bounded reads, named phases (``with attempt.phase("banner"):``), metrics and outcomes.
- :class:`ProbeKind` with :class:`Option`, :class:`Metric` and a target syntax
  (:class:`HostPort`, :class:`Url`, :class:`Name`): how a kind declares itself; one ``KIND``
  in its module, found by the registry (:func:`get_kind`, :func:`kinds`), or
  :func:`register_kind` from Python, or the ``probekit.probes`` entry-point group.
- :data:`BODY_OPTIONS`, :data:`TLS_OPTIONS` and the helpers a kind's ``to_definition`` uses
  (:func:`body_assertions`, :func:`tls_definition`, :func:`add_assertion`,
  :func:`option_problem`, :func:`secret_from_env`).

``docs/probes/writing.md`` walks through a complete kind. Importing this package loads no
protocol library and no kind module.
"""

from __future__ import annotations

from .._dial import Connection, Datagram
from .._exceptions import ProbeFailure
from .._result import ErrorKind
from ._base import Attempt, Probe, ProbeBase
from ._kind import HostPort, Metric, Name, Option, ProbeKind, TargetSyntax, ToDefinition, Url
from ._options import (
    BODY_OPTIONS,
    TLS_OPTIONS,
    add_assertion,
    body_assertions,
    option_problem,
    secret_from_env,
    tls_definition,
)
from ._registry import ENTRY_POINT_GROUP, get_kind, kind_errors, kinds, register_kind

__all__ = [
    "BODY_OPTIONS",
    "ENTRY_POINT_GROUP",
    "TLS_OPTIONS",
    "Attempt",
    "Connection",
    "Datagram",
    "ErrorKind",
    "HostPort",
    "Metric",
    "Name",
    "Option",
    "Probe",
    "ProbeBase",
    "ProbeFailure",
    "ProbeKind",
    "TargetSyntax",
    "ToDefinition",
    "Url",
    "add_assertion",
    "body_assertions",
    "get_kind",
    "kind_errors",
    "kinds",
    "option_problem",
    "register_kind",
    "secret_from_env",
    "tls_definition",
]
