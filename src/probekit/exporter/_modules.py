"""Exporter modules: blackbox_exporter's ``blackbox.yml`` and probekit's own TOML, read into
:class:`Module` values that make a probe for any ``target``.

A blackbox module becomes a probekit definition (plain data, checked by the same engine as
every definition) with the target's fields left out; ``/probe?target=`` fills them in. Each
blackbox option either maps onto a probekit field or assertion, or is refused with an error
naming the module and the option: nothing is silently ignored.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from .._definitions import build_probe
from .._exceptions import DefinitionError, DefinitionErrors
from ..probes._base import Probe

__all__ = ["BLACKBOX_PROBERS", "Module", "load_modules", "parse_blackbox", "parse_toml_modules"]

#: The blackbox_exporter probers probekit reads, and the probekit kind each becomes.
BLACKBOX_PROBERS: Final = {"http": "http", "tcp": "tcp", "dns": "dns", "icmp": "icmp"}


@attrs.frozen
class Module:
    """One module of the exporter's configuration.

    ``prober`` is blackbox_exporter's prober name (``http``, ``tcp``, ``dns``, ``icmp``) for a
    module read from ``blackbox.yml``, else ``None`` (a probekit module, named by its ``kind``).
    ``definition`` is the probe definition without the target's fields; ``timeout`` the
    module's ``timeout`` in seconds (None: the scrape's). ``valid_http_versions`` is checked on
    the result (blackbox's option of that name).
    """

    name: str
    kind: str
    definition: Mapping[str, Any]
    prober: str | None = None
    timeout: float | None = None
    valid_http_versions: tuple[str, ...] = ()

    def probe_for(self, target: str, timeout: float) -> Probe:
        """The probe for ``target`` with ``timeout`` seconds in all; raises
        :class:`~probekit.DefinitionErrors` when the target is not one this module takes."""
        definition = {**self.definition, **_target_fields(self, target)}
        timeouts = dict(definition.get("timeouts") or {})
        timeouts["total"] = timeout
        definition["timeouts"] = timeouts
        probe: Probe = build_probe(definition)
        return probe


# -- targets ------------------------------------------------------------------------------------


def _target_fields(module: Module, target: str) -> dict[str, Any]:
    from ..probes._registry import get_kind

    target = target.strip()
    if not target:
        raise DefinitionErrors([DefinitionError("target", "the target is empty")])
    if module.prober == "http":
        lower = target.lower()
        if not lower.startswith(("http://", "https://")):
            target = "http://" + target  # as blackbox_exporter does
        return {"url": target}
    if module.prober == "dns":
        host, port = _host_and_port(target, 53)
        return {"server": host, "port": port}
    if module.prober == "icmp":
        return {"host": target.strip("[]")}
    try:
        return dict(get_kind(module.kind).target.parse(target))
    except DefinitionError as exc:
        raise DefinitionErrors([DefinitionError("target", exc.message)]) from None


def _host_and_port(text: str, default: int) -> tuple[str, int]:
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise DefinitionErrors([DefinitionError("target", f"bad port in {text!r}")])
    return host, int(port) if port else default


# -- loading ------------------------------------------------------------------------------------


def load_modules(path: str | Path) -> dict[str, Module]:
    """The modules of ``path``: blackbox_exporter's YAML (``.yml``/``.yaml``) or probekit's
    TOML (``.toml``). Raises :class:`~probekit.DefinitionErrors` listing every problem, each
    with its path (``modules.http_2xx.http.method``), and ``OSError`` when it cannot be read."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        return parse_toml_modules(text)
    return parse_blackbox(text)


def parse_toml_modules(text: str) -> dict[str, Module]:
    """Modules written in probekit's TOML: one ``[modules.NAME]`` table each, a probe
    definition (``kind`` and its fields) without the target, plus an optional ``timeout``::

        [modules.api_up]
        kind = "http"
        timeout = 5
        assertions = [{type = "json_path", path = "$.status", value = "ok"}]
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionErrors([DefinitionError("", f"not valid TOML: {exc}")]) from None
    modules = data.get("modules")
    problems: list[DefinitionError] = []
    unknown = sorted(set(data) - {"modules"})
    if unknown:
        problems.append(DefinitionError(unknown[0], "unknown key (expected [modules.NAME])"))
    if not isinstance(modules, dict) or not modules:
        problems.append(DefinitionError("modules", "expected at least one [modules.NAME] table"))
        raise DefinitionErrors(problems)
    out: dict[str, Module] = {}
    for name, table in modules.items():
        where = f"modules.{name}"
        if not isinstance(table, dict):
            problems.append(DefinitionError(where, "expected a table"))
            continue
        definition = dict(table)
        timeout = definition.pop("timeout", None)
        try:
            timeout_seconds = _timeout_value(timeout, f"{where}.timeout")
            module = Module(
                name, str(definition.get("kind", "")), definition, None, timeout_seconds
            )
            _check_template(module, where)
        except DefinitionErrors as exc:
            problems.extend(exc.errors)
            continue
        out[name] = module
    if problems:
        raise DefinitionErrors(problems)
    return out


def parse_blackbox(text: str) -> dict[str, Module]:
    """The modules of a blackbox_exporter ``blackbox.yml`` (the ``http``, ``tcp``, ``dns`` and
    ``icmp`` probers and their options; see docs/exporter.md for the table). Needs PyYAML
    (``pip install probekit[exporter]``)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the environment
        raise DefinitionErrors(
            [
                DefinitionError(
                    "", "reading blackbox.yml needs PyYAML: pip install probekit[exporter]"
                )
            ]
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefinitionErrors([DefinitionError("", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
        raise DefinitionErrors([DefinitionError("modules", "expected a 'modules:' mapping")])
    problems: list[DefinitionError] = []
    out: dict[str, Module] = {}
    for name, body in data["modules"].items():
        try:
            out[str(name)] = _blackbox_module(str(name), body)
        except DefinitionErrors as exc:
            problems.extend(exc.errors)
    if problems:
        raise DefinitionErrors(problems)
    return out


def _check_template(module: Module, where: str) -> None:
    """Build the module once with a placeholder target, so a bad option is an error at load
    time rather than at every scrape."""
    placeholder = {
        "http": "http://127.0.0.1/",
        "dns": "127.0.0.1",
        "icmp": "127.0.0.1",
    }.get(module.prober or "")
    try:
        if placeholder is None:
            from ..probes._registry import get_kind

            kind = get_kind(module.kind)
            placeholder = {"Url": "http://127.0.0.1/", "Name": "127.0.0.1"}.get(
                type(kind.target).__name__, "127.0.0.1:1"
            )
        module.probe_for(placeholder, module.timeout or 10.0)
    except DefinitionErrors as exc:
        raise DefinitionErrors(
            [DefinitionError(_join(where, e.path), e.message) for e in exc.errors]
        ) from None
    except DefinitionError as exc:
        raise DefinitionErrors([DefinitionError(_join(where, exc.path), exc.message)]) from None


def _join(where: str, path: str) -> str:
    return f"{where}.{path}" if path else where


# -- blackbox.yml -----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: Any, where: str) -> float:
    """A Prometheus duration (``5s``, ``1m30s``, ``500ms``) in seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
    else:
        raise DefinitionErrors(
            [DefinitionError(where, f"expected a duration like 5s, got {value!r}")]
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise DefinitionErrors(
            [DefinitionError(where, f"expected a positive duration, got {value!r}")]
        )
    return seconds


def _timeout_value(value: Any, where: str) -> float | None:
    return None if value is None else _duration(value, where)


class _Options:
    """The options of one prober section: read each once; what is left is refused."""

    def __init__(self, where: str, data: Any) -> None:
        self.where = where
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DefinitionErrors([DefinitionError(where, "expected a mapping")])
        self.data: dict[str, Any] = dict(data)
        self.problems: list[DefinitionError] = []

    def take(self, key: str, default: Any = None) -> Any:
        return self.data.pop(key, default)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(DefinitionError(f"{self.where}.{key}", message))

    def finish(self, supported: str) -> None:
        for key in sorted(self.data):
            self.problem(key, f"not supported by probekit exporter (supported: {supported})")
        if self.problems:
            raise DefinitionErrors(self.problems)


def _blackbox_module(name: str, body: Any) -> Module:
    where = f"modules.{name}"
    if not isinstance(body, dict):
        raise DefinitionErrors([DefinitionError(where, "expected a mapping")])
    body = dict(body)
    prober = body.pop("prober", None)
    timeout = body.pop("timeout", None)
    problems: list[DefinitionError] = []
    if prober not in BLACKBOX_PROBERS:
        known = ", ".join(BLACKBOX_PROBERS)
        raise DefinitionErrors(
            [
                DefinitionError(
                    f"{where}.prober", f"prober {prober!r} is not supported (supported: {known})"
                )
            ]
        )
    try:
        timeout_seconds = _timeout_value(timeout, f"{where}.timeout")
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
        timeout_seconds = None
    section = body.pop(prober, None)
    problems.extend(
        DefinitionError(f"{where}.{other}", f"not an option of a {prober} module here")
        for other in sorted(body)
    )
    builder = _BUILDERS[prober]
    try:
        definition, versions = builder(_Options(f"{where}.{prober}", section))
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
        raise DefinitionErrors(problems) from None
    if problems:
        raise DefinitionErrors(problems)
    module = Module(
        name,
        BLACKBOX_PROBERS[prober],
        definition,
        prober,
        timeout_seconds,
        versions,
    )
    _check_template(module, where)
    return module


def _family(options: _Options, definition: dict[str, Any]) -> None:
    """``preferred_ip_protocol`` and ``ip_protocol_fallback`` (default: any family)."""
    preferred = options.take("preferred_ip_protocol", "ip6")
    fallback = options.take("ip_protocol_fallback", True)
    if preferred not in ("ip4", "ip6", "ipv4", "ipv6"):
        options.problem("preferred_ip_protocol", f"expected ip4 or ip6, got {preferred!r}")
        return
    if not isinstance(fallback, bool):
        options.problem("ip_protocol_fallback", f"expected true or false, got {fallback!r}")
        return
    if not fallback:
        definition["ip_family"] = "ipv4" if preferred in ("ip4", "ipv4") else "ipv6"


def _tls_config(options: _Options, key: str) -> dict[str, Any] | None:
    data = options.take(key)
    if data is None:
        return None
    if not isinstance(data, dict):
        options.problem(key, "expected a mapping")
        return None
    tls: dict[str, Any] = {}
    mapping = {
        "ca_file": "ca_file",
        "cert_file": "client_cert",
        "key_file": "client_key",
        "server_name": "server_name",
    }
    for name, value in data.items():
        if name in mapping:
            tls[mapping[name]] = value
        elif name == "insecure_skip_verify":
            if value:
                tls["verify"] = False
        elif name in ("min_version", "max_version"):
            version = {"TLS10": "TLSv1", "TLS11": "TLSv1.1", "TLS12": "TLSv1.2", "TLS13": "TLSv1.3"}
            if value not in version:
                options.problem(f"{key}.{name}", f"expected TLS10 to TLS13, got {value!r}")
            else:
                tls[name] = version[value]
        else:
            options.problem(f"{key}.{name}", "not supported by probekit exporter")
    return tls


def _regexes(options: _Options, key: str) -> list[str]:
    value = options.take(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        options.problem(key, "expected a list of regular expressions")
        return []
    return value


def _http(options: _Options) -> tuple[dict[str, Any], tuple[str, ...]]:
    definition: dict[str, Any] = {"kind": "http"}
    assertions: list[dict[str, Any]] = []
    codes = options.take("valid_status_codes")
    if codes is not None:
        if not isinstance(codes, list) or not codes or not all(isinstance(c, int) for c in codes):
            options.problem("valid_status_codes", "expected a list of status codes")
        else:
            assertions.append({"type": "status_in", "codes": codes})
    versions = options.take("valid_http_versions", [])
    if not isinstance(versions, list) or not all(
        v in ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/2") for v in versions
    ):
        options.problem("valid_http_versions", "expected a list of HTTP/1.0, HTTP/1.1, HTTP/2.0")
        versions = []
    _family(options, definition)
    if options.take("no_follow_redirects", False):
        definition["follow_redirects"] = False
    if options.take("fail_if_ssl", False):
        assertions.append({"type": "tls_forbidden"})
    if options.take("fail_if_not_ssl", False):
        assertions.append({"type": "tls_required"})
    method = options.take("method")
    if method is not None:
        definition["method"] = method
    headers = options.take("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            options.problem("headers", "expected a mapping of header names to values")
        else:
            definition["headers"] = [[str(k), str(v)] for k, v in headers.items()]
    body = options.take("body")
    body_file = options.take("body_file")
    if body is not None and body_file is not None:
        options.problem("body_file", "give body or body_file, not both")
    elif body is not None:
        definition["body"] = str(body)
    elif body_file is not None:
        try:
            definition["body"] = Path(body_file).read_text(encoding="utf-8")
        except OSError as exc:
            options.problem("body_file", f"cannot read {body_file}: {exc.strerror}")
    assertions.extend(
        {"type": "body_matches", "pattern": pattern, "negate": True}
        for pattern in _regexes(options, "fail_if_body_matches_regexp")
    )
    assertions.extend(
        {"type": "body_matches", "pattern": pattern}
        for pattern in _regexes(options, "fail_if_body_not_matches_regexp")
    )
    for key, negate in (("fail_if_header_matches", True), ("fail_if_header_not_matches", False)):
        rules = options.take(key, [])
        if not isinstance(rules, list):
            options.problem(key, "expected a list of {header, regexp, allow_missing}")
            continue
        for index, rule in enumerate(rules):
            if not isinstance(rule, dict) or not {"header", "regexp"} <= set(rule):
                options.problem(f"{key}[{index}]", "expected {header, regexp, allow_missing}")
                continue
            extra = set(rule) - {"header", "regexp", "allow_missing"}
            if extra:
                options.problem(f"{key}[{index}].{sorted(extra)[0]}", "unknown option")
                continue
            assertions.append(
                {
                    "type": "header_matches",
                    "name": rule["header"],
                    "pattern": rule["regexp"],
                    "negate": negate,
                    "allow_missing": bool(rule.get("allow_missing", False)),
                }
            )
    limit = options.take("body_size_limit")
    if limit is not None:
        size = _size(limit)
        if size is None:
            options.problem("body_size_limit", f"expected a size like 1MB, got {limit!r}")
        elif size > 0:
            definition["max_body_bytes"] = size
            definition["fail_on_body_limit"] = True
    compression = options.take("compression")
    if compression not in (None, "", "gzip", "deflate", "identity"):
        options.problem("compression", f"unsupported compression {compression!r}")
    _http_client(options, definition)  # inline in the http section, as blackbox_exporter has it
    if assertions:
        definition["assertions"] = assertions
    options.finish(
        "valid_status_codes, valid_http_versions, preferred_ip_protocol, ip_protocol_fallback, "
        "no_follow_redirects, fail_if_ssl, fail_if_not_ssl, method, headers, body, body_file, "
        "fail_if_body_matches_regexp, fail_if_body_not_matches_regexp, fail_if_header_matches, "
        "fail_if_header_not_matches, body_size_limit, compression, tls_config, "
        "follow_redirects, basic_auth, bearer_token, bearer_token_file, proxy_url, enable_http2"
    )
    return definition, tuple("HTTP/2.0" if v == "HTTP/2" else v for v in versions)


def _http_client(options: _Options, definition: dict[str, Any]) -> None:
    """The HTTP client options blackbox_exporter takes inline in an ``http`` section."""
    tls = _tls_config(options, "tls_config")
    if tls:
        definition["tls"] = tls
    follow = options.take("follow_redirects")
    if follow is not None:
        definition["follow_redirects"] = bool(follow)
    basic = options.take("basic_auth")
    if basic is not None:
        if not isinstance(basic, dict) or "username" not in basic:
            options.problem("basic_auth", "expected {username, password}")
        else:
            password = basic.get("password", "")
            if "password_file" in basic:
                try:
                    password = Path(basic["password_file"]).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    options.problem("basic_auth.password_file", f"cannot read: {exc.strerror}")
            definition["basic_auth"] = {"username": basic["username"], "password": password}
    token = options.take("bearer_token")
    token_file = options.take("bearer_token_file")
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            options.problem("bearer_token_file", f"cannot read: {exc.strerror}")
    if token is not None:
        definition["bearer_token"] = token
    proxy = options.take("proxy_url")
    if proxy is not None:
        definition["proxy"] = proxy
    if options.take("enable_http2") is True:
        definition["http_version"] = "2"


_SIZES: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def _size(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _SIZES:
        return None
    return int(match.group(1)) * _SIZES[match.group(2).lower()]


def _tcp(options: _Options) -> tuple[dict[str, Any], tuple[str, ...]]:
    definition: dict[str, Any] = {"kind": "tcp"}
    _family(options, definition)
    tls = _tls_config(options, "tls_config") or {}
    if options.take("tls", False):
        definition["tls"] = tls
    steps: list[dict[str, Any]] = []
    query = options.take("query_response", [])
    if not isinstance(query, list):
        options.problem("query_response", "expected a list of {expect, send, starttls}")
        query = []
    for index, step in enumerate(query):
        if not isinstance(step, dict):
            options.problem(f"query_response[{index}]", "expected {expect, send, starttls}")
            continue
        unknown = set(step) - {"expect", "send", "starttls"}
        if unknown:
            options.problem(
                f"query_response[{index}].{sorted(unknown)[0]}",
                "not supported by probekit exporter (supported: expect, send, starttls)",
            )
            continue
        if "expect" in step:
            steps.append({"expect": str(step["expect"])})
        if "send" in step:
            # blackbox_exporter sends the text as written, with a newline after it
            steps.append({"send": str(step["send"]) + "\n"})
        if step.get("starttls"):
            steps.append({"starttls": tls})
    if steps:
        definition["steps"] = steps
    options.finish("preferred_ip_protocol, ip_protocol_fallback, tls, tls_config, query_response")
    return definition, ()


_RCODES: Final = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")


def _dns(options: _Options) -> tuple[dict[str, Any], tuple[str, ...]]:
    definition: dict[str, Any] = {"kind": "dns"}
    name = options.take("query_name")
    if not isinstance(name, str) or not name:
        options.problem("query_name", "the name to ask for is required")
    else:
        definition["name"] = name
    qtype = options.take("query_type")
    if qtype is None:
        options.problem("query_type", "give the record type (probekit does not ask ANY)")
    else:
        definition["type"] = str(qtype)
    qclass = options.take("query_class", "IN")
    if str(qclass).upper() != "IN":
        options.problem("query_class", "only IN is supported")
    transport = options.take("transport_protocol", "udp")
    if transport not in ("udp", "tcp"):
        options.problem("transport_protocol", f"expected udp or tcp, got {transport!r}")
    else:
        definition["transport"] = transport
    if options.take("dns_over_tls", False):
        definition["transport"] = "tcp"
        definition["tls"] = _tls_config(options, "tls_config") or {}
    else:
        tls = _tls_config(options, "tls_config")
        if tls:
            options.problem("tls_config", "needs dns_over_tls: true")
    _family(options, definition)
    recursion = options.take("recursion_desired", True)
    definition["recursion"] = bool(recursion)
    rcodes = options.take("valid_rcodes")
    if rcodes is not None:
        if not isinstance(rcodes, list) or not all(str(r).upper() in _RCODES for r in rcodes):
            options.problem("valid_rcodes", f"expected a list of {', '.join(_RCODES)}")
        else:
            definition["valid_rcodes"] = [str(r).upper() for r in rcodes]
    definition["min_answers"] = 0  # blackbox_exporter does not ask for an answer by itself
    answers = options.take("validate_answer_rrs")
    if answers is not None:
        _dns_answers(_Options(f"{options.where}.validate_answer_rrs", answers), definition)
    for section in ("validate_authority_rrs", "validate_additional_rrs"):
        if options.take(section) is not None:
            options.problem(section, "not supported by probekit exporter (answers only)")
    options.finish(
        "query_name, query_type, query_class, transport_protocol, dns_over_tls, tls_config, "
        "preferred_ip_protocol, ip_protocol_fallback, recursion_desired, valid_rcodes, "
        "validate_answer_rrs"
    )
    return definition, ()


def _dns_answers(options: _Options, definition: dict[str, Any]) -> None:
    """The answer regexps, matched against each answer's text (see docs/exporter.md)."""
    assertions = definition.setdefault("assertions", [])
    matches = _regexes(options, "fail_if_matches_regexp")
    if matches:
        definition["answers_not_match"] = "|".join(f"(?:{p})" for p in matches)
    every = _regexes(options, "fail_if_not_matches_regexp")
    if every:
        definition["answers_match"] = (
            "".join(f"(?=.*?(?:{p}))" for p in every) if len(every) > 1 else every[0]
        )
    assertions.extend(
        {"type": "body_matches", "pattern": f"(?m){pattern}"}
        for pattern in _regexes(options, "fail_if_none_matches_regexp")
    )
    if options.take("fail_if_all_match_regexp") is not None:
        options.problem("fail_if_all_match_regexp", "not supported by probekit exporter")
    if not assertions:
        del definition["assertions"]
    options.finish(
        "fail_if_matches_regexp, fail_if_not_matches_regexp, fail_if_none_matches_regexp"
    )


def _icmp(options: _Options) -> tuple[dict[str, Any], tuple[str, ...]]:
    definition: dict[str, Any] = {"kind": "icmp", "count": 1}
    _family(options, definition)
    size = options.take("payload_size")
    if size is not None:
        definition["size"] = size
    ttl = options.take("ttl")
    if ttl is not None:
        definition["ttl"] = ttl
    if options.take("dont_fragment", False):
        options.problem("dont_fragment", "not supported by probekit exporter")
    options.finish("preferred_ip_protocol, ip_protocol_fallback, payload_size, ttl")
    return definition, ()


_BUILDERS: Final[dict[str, Callable[[_Options], tuple[dict[str, Any], tuple[str, ...]]]]] = {
    "http": _http,
    "tcp": _tcp,
    "dns": _dns,
    "icmp": _icmp,
}
