"""probekit: typed async probes for private infrastructure.

Every probe is a frozen definition with one coroutine, ``await probe.check()``, which returns a
:class:`Result` (status, error kind, a timeline of phases, metrics and assertion outcomes) and
never raises because the target is down.
"""

from __future__ import annotations

from ._assertions import (
    Assertion,
    BodyContains,
    BodyMatches,
    CertExpiry,
    HeaderMatches,
    JsonPath,
    Observation,
    ResponseTime,
    StatusIn,
    TlsForbidden,
    TlsRequired,
)
from ._clock import Clock, FakeClock, SystemClock
from ._context import ProbeContext
from ._dial import Connection, Dialer, Proxy
from ._errors import ProbeFailure
from ._exceptions import DefinitionError, PolicyError, ProbekitError, ProtocolVersionError
from ._http import BasicAuth, HttpProbe
from ._policy import EgressPolicy
from ._probe import Probe
from ._resolver import AiodnsResolver, Resolver, StaticResolver
from ._result import (
    SCHEMA_VERSION,
    AssertionOutcome,
    CertInfo,
    ErrorKind,
    Phase,
    ProbeError,
    Result,
    Status,
    TlsInfo,
)
from ._runner import Runner
from ._secret import Secret
from ._serialization import converter, result_from_json, result_to_json
from ._tcp import Expect, Send, StartTls, TcpProbe
from ._timeouts import Timeouts
from ._tls import TlsOptions

__version__ = "0.1.0.dev0"

__all__ = [
    "AiodnsResolver",
    "Assertion",
    "AssertionOutcome",
    "BasicAuth",
    "BodyContains",
    "BodyMatches",
    "CertExpiry",
    "CertInfo",
    "Clock",
    "Connection",
    "DefinitionError",
    "Dialer",
    "EgressPolicy",
    "ErrorKind",
    "Expect",
    "FakeClock",
    "HeaderMatches",
    "HttpProbe",
    "JsonPath",
    "Observation",
    "Phase",
    "PolicyError",
    "Probe",
    "ProbeContext",
    "ProbeError",
    "ProbeFailure",
    "ProbekitError",
    "ProtocolVersionError",
    "Proxy",
    "Resolver",
    "ResponseTime",
    "Result",
    "Runner",
    "SCHEMA_VERSION",
    "Secret",
    "Send",
    "StartTls",
    "StaticResolver",
    "Status",
    "StatusIn",
    "SystemClock",
    "TcpProbe",
    "Timeouts",
    "TlsForbidden",
    "TlsInfo",
    "TlsOptions",
    "TlsRequired",
    "converter",
    "result_from_json",
    "result_to_json",
]
