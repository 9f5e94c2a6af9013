"""Sessions: `tests`, `lint`, `typecheck` (the default, fast ones), `docs`, `bench`, `fuzz` and
`peers`, and the long ones that need real daemons or processes: `interop` and `faults`."""

from __future__ import annotations

import os
import shutil
import tempfile

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against in-process loopback servers."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    paths = ("src", "tests", "benchmarks", "interop", "faults", "deploy", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library."""
    session.install("-e", ".[cli,speed,dns,exporter,ssh,httpx,postgres-store]", "mypy>=1.10")
    session.run("mypy", "--strict", "src")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs-material + mkdocstrings) in strict mode."""
    session.install("-e", ".", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """pytest-benchmark macro and micro benchmarks (not part of the default run)."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "bench"))
    session.run("pytest", "benchmarks", "--benchmark-only", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Fuzz build_probe and protocol.decode: 100,000 generated definitions and frames.

    Runs tests/hostile/test_fuzz.py with the Hypothesis profile `fuzz` (four tests, 25,000
    examples each; several minutes). Posargs replace the profile options, e.g.
    `nox -s fuzz -- --hypothesis-profile ci` for the short run CI does.
    """
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    profile = session.posargs or ["--hypothesis-profile", "fuzz"]
    session.run(
        "pytest",
        "tests/hostile/test_fuzz.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        *profile,
    )


#: The peers `peers` compares against, from Debian: program -> where it may be found.
PEER_PROGRAMS = {
    "nginx": ("nginx", "/usr/sbin/nginx"),
    "wrk": ("wrk",),
    "prometheus-blackbox-exporter": ("prometheus-blackbox-exporter", "blackbox_exporter"),
    "check_http": ("/usr/lib/nagios/plugins/check_http",),
    "curl": ("curl",),
}
PEER_PACKAGES = (
    "nginx-light",
    "wrk",
    "prometheus-blackbox-exporter",
    "monitoring-plugins-basic",
    "curl",
)


@nox.session(python=PYTHON)
def peers(session: nox.Session) -> None:
    """probekit side by side with blackbox_exporter, check_http and curl on loopback.

    Installs the peers from Debian when they are missing (as root), then runs
    `benchmarks/peers.py` (posargs pass through, e.g. `nox -s peers -- --quick`). Prints the
    table and writes benchmarks/results/peers.json; see docs/performance.md.
    """
    session.install("-e", ".[exporter,dns]", "trustme>=1.1", "httpx", "uvloop")
    missing = [
        name
        for name, places in PEER_PROGRAMS.items()
        if not any(shutil.which(place) for place in places)
    ]
    if missing:
        packages = " ".join(PEER_PACKAGES)
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            session.error(
                f"missing {', '.join(missing)}; install the Debian packages {packages} "
                f"(as root: apt-get update && apt-get install -y {packages}) and run again"
            )
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", external=True, env=env)
        session.run("apt-get", "install", "-y", *PEER_PACKAGES, external=True, env=env)
    session.run("python", "benchmarks/peers.py", *session.posargs)
    # /probe itself: probekit exporter beside blackbox_exporter (docs/performance.md)
    session.run("python", "benchmarks/exporter_peers.py")


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Every protocol kind against the real daemon, beside the matching monitoring-plugin.

    Installs the Debian packages of interop/packages/*.txt when missing (as root, without
    starting their services), then runs interop/: each module starts its daemon on loopback
    high ports and records probekit's verdict beside the plugin's; the session prints the
    agreement table (set INTEROP_REPORT=path to keep it). See interop/README.md.
    """
    session.install("-e", ".[dns,ssh,exporter]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("bash", "interop/install.sh", external=True)
    # A base temp of its own: the daemons' state lives there for the whole session, and pytest
    # prunes /tmp/pytest-of-USER/ when other test runs start meanwhile.
    basetemp = tempfile.mkdtemp(prefix="probekit-interop-")
    session.run(
        "pytest",
        "interop",
        "-q",
        "-p",
        "no:cacheprovider",
        "-s",
        f"--basetemp={basetemp}/t",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def protocol_peers(session: nox.Session) -> None:
    """CPU per check of dns, icmp, smtp, imap, pop3 and tls against the interop daemons.

    Installs the interop packages (interop/install.sh) and blackbox_exporter when missing (as
    root), then runs `benchmarks/protocol_peers.py` (posargs pass through, e.g. `--quick`):
    probekit as a process per check and on a Runner, beside the monitoring-plugins and
    blackbox_exporter. Prints the table and writes benchmarks/results/protocol_peers.json; see
    docs/performance.md.
    """
    session.install("-e", ".[dns]")
    session.run("bash", "interop/install.sh", external=True)
    if not any(shutil.which(place) for place in PEER_PROGRAMS["prometheus-blackbox-exporter"]):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            session.error("install the Debian package prometheus-blackbox-exporter and run again")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", external=True, env=env)
        session.run(
            "apt-get", "install", "-y", "prometheus-blackbox-exporter", external=True, env=env
        )
    session.run("python", "benchmarks/protocol_peers.py", *session.posargs)
    session.run("pytest", "interop", "-q", "-p", "no:cacheprovider", "-s", *session.posargs)


#: The control-plane test modules that run on both storage backends (tests/conftest.py,
#: control_store), and the PostgreSQL-only one.
CONTROL_STORE_TESTS = (
    *("tests/test_control.py", "tests/test_control_ops.py", "tests/test_control_safety.py"),
    *("tests/test_control_spread.py", "tests/test_control_stall.py"),
    *("tests/test_control_replaced.py", "tests/test_status_page.py"),
    "tests/test_control_pgstore.py",
    "tests/test_control_standby.py",
    "tests/test_alert_outbox.py",
)


@nox.session(python=PYTHON)
def control_pg(session: nox.Session) -> None:
    """The control-plane suites on PostgreSQL, for real: installs Debian's postgresql-15 when
    missing (interop/install.sh, as root), then runs their PostgreSQL variants with
    PROBEKIT_PG_REQUIRED=1, so missing binaries fail instead of skipping. One server for the
    session, on a loopback high port, from a temporary directory (tests/_pgserver.py)."""
    session.install("-e", ".[postgres-store]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("bash", "interop/install.sh", external=True)
    session.run(
        "pytest",
        *CONTROL_STORE_TESTS,
        *("-q", "-p", "no:cacheprovider", "-k", "postgresql or pgstore or standby"),
        *session.posargs,
        env={"PROBEKIT_PG_REQUIRED": "1"},
    )


@nox.session(python=PYTHON)
def faults(session: nox.Session) -> None:
    """The fault suite: kill -9 and SIGSTOP of real `probekit control` and `probekit checkpoint`
    processes, and real target outages, on loopback; prints the counts of every run.

    Runs faults/ with the profile `full` (about 5 minutes); `nox -s faults -- --profile fast`
    is the short one CI runs (under 3 minutes). Set FAULTS_REPORT=path to keep the counts as
    JSON. See docs/checkpoint.md (Fault suite).
    """
    session.install(
        "-e", ".[cli,postgres-store]", *nox.project.dependency_groups(PYPROJECT, "test")
    )
    session.run("pytest", "faults", "-p", "no:cacheprovider", *session.posargs)


#: What `container` needs from Debian: podman with runc (crun fails on the CI machines' kernel),
#: netavark and aardvark-dns (names resolve on an internal network), debootstrap for the base.
CONTAINER_PACKAGES = ("podman", "runc", "netavark", "aardvark-dns", "debootstrap", "uidmap")


@nox.session(python=PYTHON)
def container(session: nox.Session) -> None:
    """Build the image with podman and prove the checkpoint on compose.yaml's topology.

    Installs podman and the rest from Debian when missing (as root), builds a minimal Debian
    base (debootstrap + `podman import`; public registries are not needed) and the image, then
    runs deploy/container_scenario.py: non-root and read-only asserted, a target broken and
    mended (confirmation, one alert, its resolution), one instance stopped, both killed, both
    restarted on their volumes with nothing lost or stored twice; then deploy/systemd/'s units
    started under systemd. About 3.5 minutes from nothing (the two debootstrap bases take 2),
    80 s once the bases exist. Posargs pass through (`-- --keep`, `-- --no-systemd`).
    """
    if os.geteuid() != 0:
        session.error("the container session uses rootful podman: run it as root")
    session.install("pyyaml>=6", "pip")
    missing = [p for p in ("podman", "runc", "debootstrap") if shutil.which(p) is None]
    if missing or not os.path.exists("/usr/lib/podman/netavark"):
        packages = " ".join(CONTAINER_PACKAGES)
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            session.error(
                f"missing {', '.join(missing) or 'netavark'}; install the Debian packages "
                f"{packages} (as root: apt-get install -y {packages}) and run again"
            )
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", external=True, env=env)
        session.run(
            "apt-get", "install", "-y", "--no-install-recommends", *CONTAINER_PACKAGES,
            external=True, env=env,
        )  # fmt: skip
    session.env["CONTAINERS_CONF"] = os.path.abspath("deploy/podman/containers.conf")
    session.run("python", "deploy/container_scenario.py", *session.posargs)
