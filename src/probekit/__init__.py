"""probekit: typed async probes for private infrastructure.

Every probe is a frozen definition with one coroutine, ``await probe.check()``, which returns a
:class:`Result` (status, error kind, a timeline of phases, metrics and assertion outcomes) and
never raises because the target is down.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
        register_assertion,
    )
    from ._clock import Clock, FakeClock, SystemClock
    from ._config import Config, load_config, parse_config
    from ._context import ProbeContext
    from ._definitions import build_probe, probe_to_dict, register_probe
    from ._dial import Connection, Dialer, Proxy, tcp_connect
    from ._exceptions import (
        DefinitionError,
        DefinitionErrors,
        PolicyError,
        ProbeFailure,
        ProbekitError,
        ProtocolError,
        ProtocolVersionError,
        SpoolError,
        UsageError,
    )
    from ._exporters import json_line, nagios_line, prometheus_text
    from ._policy import EgressPolicy
    from ._pool import ProcessRunner
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
    from ._runner import Job, Runner
    from ._scheduler import Monitor, Scheduler
    from ._secret import Secret
    from ._serialization import converter, result_from_json, result_to_json
    from ._sync import check_all_sync, check_sync
    from ._timeouts import Timeouts
    from ._tls import TlsOptions
    from .probes._base import Probe
    from .probes.api import MultiStepProbe
    from .probes.dns import DnsProbe
    from .probes.ftp import FtpProbe
    from .probes.http import BasicAuth, HttpProbe
    from .probes.icmp import IcmpProbe
    from .probes.imap import ImapProbe
    from .probes.mssql import MssqlProbe
    from .probes.mysql import MysqlProbe
    from .probes.pop3 import Pop3Probe
    from .probes.postgres import PostgresProbe
    from .probes.redis import RedisProbe
    from .probes.script import ScriptProbe
    from .probes.sftp import SftpProbe
    from .probes.smtp import SmtpProbe
    from .probes.ssh import SshProbe
    from .probes.tcp import Expect, Send, StartTls, TcpProbe
    from .probes.tls import TlsProbe

del TYPE_CHECKING

# Public names are loaded on first use (PEP 562), so `import probekit` costs almost nothing and
# a program pays only for the probes it uses.
_LAZY: dict[str, str] = {
    "AiodnsResolver": "._resolver",
    "Assertion": "._assertions",
    "AssertionOutcome": "._result",
    "BasicAuth": ".probes.http",
    "BodyContains": "._assertions",
    "BodyMatches": "._assertions",
    "CertExpiry": "._assertions",
    "CertInfo": "._result",
    "Clock": "._clock",
    "Config": "._config",
    "Connection": "._dial",
    "DefinitionError": "._exceptions",
    "DefinitionErrors": "._exceptions",
    "Dialer": "._dial",
    "DnsProbe": ".probes.dns",
    "EgressPolicy": "._policy",
    "ErrorKind": "._result",
    "Expect": ".probes.tcp",
    "FakeClock": "._clock",
    "FtpProbe": ".probes.ftp",
    "HeaderMatches": "._assertions",
    "HttpProbe": ".probes.http",
    "IcmpProbe": ".probes.icmp",
    "ImapProbe": ".probes.imap",
    "Job": "._runner",
    "JsonPath": "._assertions",
    "Monitor": "._scheduler",
    "MssqlProbe": ".probes.mssql",
    "MysqlProbe": ".probes.mysql",
    "MultiStepProbe": ".probes.api",
    "Observation": "._assertions",
    "Phase": "._result",
    "PolicyError": "._exceptions",
    "Pop3Probe": ".probes.pop3",
    "PostgresProbe": ".probes.postgres",
    "Probe": ".probes._base",
    "ProbeContext": "._context",
    "ProbeError": "._result",
    "ProbeFailure": "._exceptions",
    "ProbekitError": "._exceptions",
    "ProcessRunner": "._pool",
    "ProtocolError": "._exceptions",
    "ProtocolVersionError": "._exceptions",
    "Proxy": "._dial",
    "RedisProbe": ".probes.redis",
    "ScriptProbe": ".probes.script",
    "Resolver": "._resolver",
    "ResponseTime": "._assertions",
    "Result": "._result",
    "Runner": "._runner",
    "check_sync": "._sync",
    "check_all_sync": "._sync",
    "SCHEMA_VERSION": "._result",
    "Scheduler": "._scheduler",
    "Secret": "._secret",
    "Send": ".probes.tcp",
    "SftpProbe": ".probes.sftp",
    "SmtpProbe": ".probes.smtp",
    "SpoolError": "._exceptions",
    "SshProbe": ".probes.ssh",
    "StartTls": ".probes.tcp",
    "StaticResolver": "._resolver",
    "Status": "._result",
    "StatusIn": "._assertions",
    "SystemClock": "._clock",
    "TcpProbe": ".probes.tcp",
    "Timeouts": "._timeouts",
    "TlsForbidden": "._assertions",
    "TlsInfo": "._result",
    "TlsOptions": "._tls",
    "TlsProbe": ".probes.tls",
    "TlsRequired": "._assertions",
    "UsageError": "._exceptions",
    "build_probe": "._definitions",
    "converter": "._serialization",
    "json_line": "._exporters",
    "load_config": "._config",
    "nagios_line": "._exporters",
    "parse_config": "._config",
    "probe_to_dict": "._definitions",
    "prometheus_text": "._exporters",
    "register_assertion": "._assertions",
    "register_probe": "._definitions",
    "result_from_json": "._serialization",
    "result_to_json": "._serialization",
    "tcp_connect": "._dial",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probekit' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
    "Config",
    "Connection",
    "DefinitionError",
    "DefinitionErrors",
    "Dialer",
    "DnsProbe",
    "EgressPolicy",
    "ErrorKind",
    "Expect",
    "FakeClock",
    "FtpProbe",
    "HeaderMatches",
    "HttpProbe",
    "IcmpProbe",
    "ImapProbe",
    "Job",
    "JsonPath",
    "Monitor",
    "MssqlProbe",
    "MultiStepProbe",
    "MysqlProbe",
    "Observation",
    "Phase",
    "PolicyError",
    "Pop3Probe",
    "PostgresProbe",
    "Probe",
    "ProbeContext",
    "ProbeError",
    "ProbeFailure",
    "ProbekitError",
    "ProcessRunner",
    "ProtocolError",
    "ProtocolVersionError",
    "Proxy",
    "RedisProbe",
    "Resolver",
    "ResponseTime",
    "Result",
    "Runner",
    "SCHEMA_VERSION",
    "Scheduler",
    "ScriptProbe",
    "Secret",
    "Send",
    "SftpProbe",
    "SmtpProbe",
    "SpoolError",
    "SshProbe",
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
    "TlsProbe",
    "TlsRequired",
    "UsageError",
    "build_probe",
    "check_all_sync",
    "check_sync",
    "converter",
    "json_line",
    "load_config",
    "nagios_line",
    "parse_config",
    "probe_to_dict",
    "prometheus_text",
    "register_assertion",
    "register_probe",
    "result_from_json",
    "result_to_json",
    "tcp_connect",
]
