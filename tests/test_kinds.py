"""Every built-in probe kind is complete: declared, documented, tested, round-trips, exports
valid metrics, and loads no library when its module is imported.

A built-in kind is a public module of ``probekit.probes`` ending with ``KIND`` (or ``KINDS``);
adding one adds its rows here without editing this file.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from probekit import build_probe, probe_to_dict
from probekit.probes import HostPort, Name, ProbeKind, Url, get_kind
from probekit.probes._registry import builtin_names

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROMETHEUS_NAME = re.compile(r"^probekit_[a-z0-9_]+$")
#: What importing a kind module may load besides the standard library: probekit itself and the
#: attrs its definitions are made of. Protocol libraries are imported inside a probe's body.
ALLOWED_IMPORTS = {"attr", "attrs", "probekit"}


def _declared(module: str) -> tuple[ProbeKind, ...]:
    loaded = importlib.import_module(f"probekit.probes.{module}")
    found = getattr(loaded, "KINDS", None)
    if found is None:
        single = getattr(loaded, "KIND", None)
        found = () if single is None else (single,)
    return tuple(found)


BUILTIN: list[ProbeKind] = [kind for module in builtin_names() for kind in _declared(module)]
KINDS = [pytest.param(kind, id=kind.name) for kind in BUILTIN]


def _nav_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probekit_docs_hooks", DOCS / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_builtin_kinds() -> None:
    assert {"http", "tcp", "redis"} <= {kind.name for kind in BUILTIN}


@pytest.mark.parametrize("module", builtin_names())
def test_every_public_module_of_probes_declares_a_kind(module: str) -> None:
    declared = _declared(module)
    assert declared, f"probekit/probes/{module}.py is public but declares no KIND"
    assert all(isinstance(kind, ProbeKind) for kind in declared)


@pytest.mark.parametrize("kind", KINDS)
def test_the_registry_finds_it(kind: ProbeKind) -> None:
    assert get_kind(kind.name) is kind
    assert kind.cls.__module__.startswith("probekit.probes.")


@pytest.mark.parametrize("kind", KINDS)
def test_it_has_a_docs_page_in_the_nav(kind: ProbeKind) -> None:
    assert kind.docs is not None, f"{kind.name} declares no docs page"
    assert (DOCS / kind.docs).is_file(), f"docs/{kind.docs} does not exist"
    listed = [path for entry in _nav_hook().probe_pages(DOCS) for path in entry.values()]
    assert kind.docs in listed, f"docs/{kind.docs} is not in the nav's Probes section"
    assert listed[0] == "probes/writing.md"


@pytest.mark.parametrize("kind", KINDS)
def test_it_has_a_test_module(kind: ProbeKind) -> None:
    assert (ROOT / "tests" / f"test_{kind.name}.py").is_file()


def _sample_target(kind: ProbeKind) -> str:
    syntax = kind.target
    if isinstance(syntax, HostPort):
        return "127.0.0.1" if syntax.default_port else "127.0.0.1:1"
    if isinstance(syntax, Url):
        return f"{syntax.schemes[0]}://127.0.0.1/"
    assert isinstance(syntax, Name)
    return "localhost"


@pytest.mark.parametrize("kind", KINDS)
def test_the_command_line_target_alone_builds_a_probe_that_round_trips(kind: ProbeKind) -> None:
    """What ``probekit check KIND TARGET`` builds with no options: the target fills every
    required field, and the probe survives its plain-data form."""
    definition: dict[str, Any] = {"kind": kind.name, **kind.target.parse(_sample_target(kind))}
    probe = build_probe(definition)
    assert isinstance(probe, kind.cls)
    plain = probe_to_dict(probe)
    assert json.loads(json.dumps(plain)) == plain
    assert build_probe(plain) == probe


@pytest.mark.parametrize("kind", KINDS)
def test_its_metrics_have_valid_names(kind: ProbeKind) -> None:
    for metric in kind.metrics:
        assert PROMETHEUS_NAME.match(metric.name), metric.name
        assert metric.help.strip(), f"{metric.name} has no help text"
    keys = [metric.key for metric in kind.metrics]
    assert len(keys) == len(set(keys)), f"{kind.name} declares a metric key twice: {keys}"


def test_metric_names_are_unique_across_kinds() -> None:
    names = Counter(metric.name for kind in BUILTIN for metric in kind.metrics)
    assert not [name for name, count in names.items() if count > 1]


@pytest.mark.parametrize("module", builtin_names())
def test_importing_a_kind_module_loads_no_protocol_library(module: str) -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"import probekit.probes.{module}\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(' '.join(sorted(new - set(sys.stdlib_module_names))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "probekit" in loaded
    assert not {"redis", "h2", "aiodns"} & loaded
    assert loaded <= ALLOWED_IMPORTS, f"probekit.probes.{module} imports {loaded}"


@pytest.mark.parametrize("kind", KINDS)
def test_it_is_a_check_subcommand_with_its_options(
    kind: ProbeKind, capsys: pytest.CaptureFixture[str]
) -> None:
    from probekit.cli import main

    assert main(["check", kind.name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"probekit check {kind.name}" in out
    assert kind.target.metavar in out
    for option in kind.options:
        assert option.flags[-1] in out, option.flags
    assert main(["check", "--help"]) == 0
    listing = capsys.readouterr().out
    assert kind.name in listing


@pytest.mark.parametrize("kind", KINDS)
def test_its_class_is_exported_and_documented_on_its_page(kind: ProbeKind) -> None:
    import probekit

    name = kind.cls.__name__
    assert getattr(probekit, name) is kind.cls, f"add {name} to probekit's public names"
    assert kind.docs is not None
    page = (DOCS / kind.docs).read_text(encoding="utf-8")
    assert f"::: probekit.{name}" in page, f"docs/{kind.docs} has no API section for {name}"
