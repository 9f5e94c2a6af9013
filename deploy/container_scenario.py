"""`nox -s container`: build the image, start compose.yaml's topology with podman, and prove on it
what `probekit demo` proves on one machine, then the failures an operator's platform produces.

    python deploy/container_scenario.py [--keep] [--image TAG] [--rebuild-base]

1. Build a minimal Debian base (deploy/image/build-base.sh: debootstrap --variant=minbase with
   python3, `podman import`) unless it exists, a wheelhouse of the dependencies (`pip wheel`),
   and the image (Containerfile, BASE and PIP_OPTIONS=--no-index as build arguments).
2. Measure: the image's size beside a plain `pip install` into a virtualenv, and the start time.
3. Start compose.yaml (project `probekit-ci`, with the demo-targets profile) through podman:
   networks, volumes, secrets and containers as compose.yaml declares them. podman-compose is
   not needed: this reads the subset of the compose format compose.yaml uses and says so when
   it meets anything else.
4. Assert the containers run as uid 10001 on a read-only root filesystem, with no compiler.
5. The scenario, each step asserted with counts from the control plane's database:
   a target broken and mended (the failure on one instance, confirmed on the other, one alert,
   its resolution); one instance stopped (the other covers, no checkpoint alert); the control
   plane frozen while both instances keep spooling, both killed with SIGKILL (one
   checkpoint_down alert); both restarted on their volumes: every result that was in their
   spools stored exactly once (0 lost, 0 duplicated).

Everything runs on this machine: the containers talk only to each other (an internal network)
and the control plane's port is published on 127.0.0.1 only. Containers, networks, volumes
and secrets of the project are removed at the end (unless --keep). Needs root and podman;
CONTAINERS_CONF points at deploy/podman/containers.conf (runc, no default rlimits, netavark).
"""

# ruff: noqa: S603, S607, S608, S106
# (it runs podman and the image's Python, queries the control plane's database with SQL of its
# own: result ids it read itself, times it took itself, and writes throwaway test tokens)

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "localhost/probekit-base:bookworm"
PROJECT = "probekit-ci"
UID = 10001
T = TypeVar("T")


def say(text: str) -> None:
    sys.stdout.write(f"[container {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stdout.flush()


class Failed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def podman(*args: str, check_rc: bool = True, timeout: float = 600) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check_rc and done.returncode != 0:
        raise Failed(f"podman {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90) -> T:
    """Poll `probe` until it returns something true (a non-empty list: rows); fail after
    `timeout`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (Failed, subprocess.TimeoutExpired, ValueError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(1)
    raise Failed(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else "")
    )


# --- compose.yaml, read and run through podman ---------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_SERVICE_KEYS = {
    "image",
    "read_only",
    "restart",
    "cap_drop",
    "security_opt",
    "tmpfs",
    "command",
    "entrypoint",
    "volumes",
    "secrets",
    "networks",
    "ports",
    "depends_on",
    "profiles",
    "healthcheck",
    "environment",
}


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


class Compose:
    """compose.yaml's networks, volumes, secrets and services as podman objects of `project`."""

    def __init__(self, path: Path, project: str, env: Mapping[str, str]) -> None:
        self.dir = path.parent
        self.project = project
        data = interpolate(yaml.safe_load(path.read_text()), env)
        self.services: dict[str, dict[str, Any]] = dict(data["services"])
        for name, spec in self.services.items():
            unknown = set(spec) - _SERVICE_KEYS
            check(not unknown, f"compose.yaml: service {name}: keys this runner lacks: {unknown}")
        self.networks: dict[str, dict[str, Any]] = data.get("networks") or {}
        self.volumes: dict[str, Any] = data.get("volumes") or {}
        self.secrets: dict[str, dict[str, str]] = data.get("secrets") or {}

    def name(self, thing: str) -> str:
        return f"{self.project}_{thing}"

    def container(self, service: str) -> str:
        return f"{self.project}-{service}"

    def create(self) -> None:
        for net, spec in self.networks.items():
            args = ["network", "create"]
            if (spec or {}).get("internal"):
                args.append("--internal")
            for block in ((spec or {}).get("ipam") or {}).get("config") or []:
                args += ["--subnet", block["subnet"]]
            podman(*args, self.name(net))
        for volume in self.volumes:
            podman("volume", "create", self.name(volume))
        for secret, spec in self.secrets.items():
            podman("secret", "create", self.name(secret), str(self.dir / spec["file"]))

    def run(self, service: str) -> None:
        spec = self.services[service]
        args = ["run", "--detach", "--name", self.container(service)]
        if spec.get("read_only"):
            args.append("--read-only")
        if spec.get("restart"):
            args += ["--restart", spec["restart"]]
        args += [f"--cap-drop={cap}" for cap in spec.get("cap_drop", [])]
        args += [f"--security-opt={opt}" for opt in spec.get("security_opt", [])]
        args += [f"--tmpfs={mount}" for mount in spec.get("tmpfs", [])]
        for net in spec.get("networks", []):
            args += ["--network", f"{self.name(net)}:alias={service}"]
        for volume in spec.get("volumes", []):
            source, _, rest = volume.partition(":")
            if source.startswith((".", "/")):
                source = str((self.dir / source).resolve())
            else:
                source = self.name(source)
            args += ["--volume", f"{source}:{rest}"]
        for secret in spec.get("secrets", []):
            args += ["--secret", f"{self.name(secret)},target={secret}"]
        for port in spec.get("ports", []):
            args += ["--publish", port]
        for key, value in (spec.get("environment") or {}).items():
            args += ["--env", f"{key}={value}"]
        if "healthcheck" in spec:
            test = spec["healthcheck"]["test"]
            check(test[0] == "CMD", f"{service}: healthcheck test must be exec form")
            args += ["--health-cmd", json.dumps(test[1:])]
        if "entrypoint" in spec:
            args += ["--entrypoint", json.dumps(spec["entrypoint"])]
        podman(*args, spec["image"], *spec.get("command", []))

    def down(self) -> None:
        for service in self.services:
            podman(
                "rm", "--force", "--volumes", "--time", "0", self.container(service), check_rc=False
            )
        for net in self.networks:
            podman("network", "rm", "--force", self.name(net), check_rc=False)
        for volume in self.volumes:
            podman("volume", "rm", "--force", self.name(volume), check_rc=False)
        for secret in self.secrets:
            podman("secret", "rm", self.name(secret), check_rc=False)


# --- looking inside the containers (no shell: the image's Python) ---------------------------

PYTHON = "/opt/probekit/bin/python"


def py(container: str, code: str) -> str:
    return podman("exec", container, PYTHON, "-c", code, timeout=60)


def metrics(container: str) -> dict[str, float]:
    text = py(
        container,
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9465/metrics', timeout=5).read().decode())",
    )
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def spool_depth(container: str, instance: str) -> float:
    key = f'probekit_checkpoint_spool_depth{{checkpoint_id="office",instance_id="{instance}"}}'
    return metrics(container).get(key, -1)


def query(container: str, sql: str, db: str = "/var/lib/probekit/control.db") -> list[list[Any]]:
    code = (
        "import json, sqlite3;"
        f"c = sqlite3.connect('file:{db}?mode=ro', uri=True);"
        f"print(json.dumps(c.execute({sql!r}).fetchall()))"
    )
    return json.loads(py(container, code))  # type: ignore[no-any-return]


def spool_ids(image: str, volume: str) -> list[str]:
    """The result ids in a stopped instance's spool, read from its volume by a throwaway
    container of the same image (read-only root, no network)."""
    code = (
        "import json, sqlite3;"
        "c = sqlite3.connect('/var/lib/probekit/spool.db');"
        "print(json.dumps([r[0] for r in c.execute('SELECT result_id FROM entries')]))"
    )
    out = podman(
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--volume",
        f"{volume}:/var/lib/probekit",
        "--entrypoint",
        PYTHON,
        image,
        "-c",
        code,
    )
    return json.loads(out)  # type: ignore[no-any-return]


# --- build and measure ----------------------------------------------------------------------


def build(image: str, rebuild_base: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    exists = subprocess.run(["podman", "image", "exists", BASE_TAG], check=False).returncode == 0
    if rebuild_base or not exists:
        say(f"building the base {BASE_TAG} (debootstrap --variant=minbase, python3)")
        started = time.monotonic()
        subprocess.run(["bash", str(ROOT / "deploy/image/build-base.sh"), BASE_TAG], check=True)
        figures["base_build_s"] = round(time.monotonic() - started, 1)
    else:
        say(f"base {BASE_TAG} exists (--rebuild-base to build it again)")
    wheels = ROOT / "deploy/image/wheels"
    say("wheelhouse: pip wheel of the dependencies (and hatchling, to build probekit's wheel)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            f"{ROOT}[exporter,dns]",
            "hatchling",
        ],
        check=True,
    )
    for built in wheels.glob("probekit-*.whl"):
        built.unlink()  # stage one builds it
    say(f"building {image}")
    started = time.monotonic()
    podman(
        "build",
        "--format",
        "docker",
        "--build-arg",
        f"BASE={BASE_TAG}",
        "--build-arg",
        "PIP_OPTIONS=--no-index",
        "--tag",
        image,
        "--file",
        str(ROOT / "Containerfile"),
        str(ROOT),
    )
    figures["image_build_s"] = round(time.monotonic() - started, 1)
    figures["image_bytes"] = int(podman("image", "inspect", "--format", "{{.Size}}", image))
    figures["base_bytes"] = int(podman("image", "inspect", "--format", "{{.Size}}", BASE_TAG))
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin/python"),
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                str(wheels),
                f"{ROOT}[exporter,dns]",
            ],
            check=True,
        )
        figures["pip_install_bytes"] = sum(
            f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()
        )
    started = time.monotonic()
    version = podman("run", "--rm", "--read-only", "--network", "none", image, "--version")
    figures["run_version_s"] = round(time.monotonic() - started, 2)
    say(f"image runs: {version.strip()}")
    return figures


def assert_hardened(image: str, container: str) -> None:
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).strip()
    check(user == f"{UID}:{UID}", f"image user is {user!r}")
    ro = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container).strip()
    check(ro == "true", f"{container}: ReadonlyRootfs is {ro}")
    seen = json.loads(
        py(
            container,
            "import json, os, shutil\n"
            "try:\n    open('/opt/probekit/written', 'w'); root = 'writable'\n"
            "except OSError as e:\n    root = e.strerror\n"
            "try:\n    open('/var/lib/probekit/.probe', 'w').close(); os.unlink("
            "'/var/lib/probekit/.probe'); state = 'writable'\n"
            "except OSError as e:\n    state = e.strerror\n"
            "tools = {t: shutil.which(t) for t in ('gcc', 'cc', 'pip', 'pip3')}\n"
            "print(json.dumps([os.getuid(), os.getgid(), root, state, tools]))",
        )
    )
    uid, gid, root, state, tools = seen
    check((uid, gid) == (UID, UID), f"{container} runs as {uid}:{gid}")
    check(root == "Read-only file system", f"{container}: writing under / gave {root!r}")
    check(state == "writable", f"{container}: the volume is {state!r}")
    check(not any(tools.values()), f"{container}: build tools at run time: {tools}")
    say(
        f"{container}: uid {uid} gid {gid}, root filesystem read-only, volume writable, "
        f"no {', '.join(tools)}"
    )


# --- the scenario ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def topology(image: str, keep: bool) -> Iterator[Compose]:
    with tempfile.TemporaryDirectory() as secrets:
        subprocess.run(
            ["bash", str(ROOT / "deploy/compose/secrets.sh"), secrets],
            check=True,
            capture_output=True,
        )
        env = {
            "PROBEKIT_IMAGE": image,
            "PROBEKIT_SECRETS": secrets,
            "PROBEKIT_CONTROL_PUBLISH": f"127.0.0.1:{free_port()}",
        }
        compose = Compose(ROOT / "compose.yaml", PROJECT, env)
        compose.down()  # what a failed earlier run left
        compose.create()
        try:
            yield compose
        finally:
            if keep:
                say(f"--keep: project {PROJECT} left running")
            else:
                for service in compose.services:
                    logs = podman(
                        "logs", "--tail", "15", compose.container(service), check_rc=False
                    )
                    say(f"last lines of {service}:\n{logs}")
                compose.down()


def connected(control: str) -> int:
    return int(
        metrics(control).get('probekit_control_instances_connected{checkpoint_id="office"}', -1)
    )


def scenario(image: str, keep: bool, figures: dict[str, Any]) -> None:
    with topology(image, keep) as compose:
        control = compose.container("control")
        a, b = compose.container("office-a"), compose.container("office-b")
        target = compose.container("target")

        started = time.monotonic()
        for service in ("target", "control", "office-a", "office-b"):
            compose.run(service)
        wait_for("both instances connected", lambda: connected(control) == 2)
        figures["topology_start_s"] = round(time.monotonic() - started, 1)
        for container in (control, a, b, target):
            podman("healthcheck", "run", container)  # exit 0: healthy
        say(
            f"up: control plane, office-a, office-b, target; both instances connected in "
            f"{figures['topology_start_s']} s; HEALTHCHECK healthy on all four"
        )
        for container in (control, a):
            assert_hardened(image, container)
        usage = json.loads(podman("stats", "--no-stream", "--format", "json", control, a, b))
        figures["memory"] = {row["name"]: row["mem_usage"] for row in usage}
        say(f"memory in use: {figures['memory']}")

        def up_on_both() -> bool:
            rows = query(control, "SELECT DISTINCT instance_id FROM results WHERE status = 'up'")
            return {r[0] for r in rows} == {"office-a", "office-b"}

        wait_for("UP results from both instances", up_on_both)
        say("web UP on office-a and on office-b")

        # 1. A target broken and mended.
        py(
            target,
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/break', b'')",
        )
        say("target broken (500)")
        opened = wait_for(
            "the monitor_down alert",
            lambda: query(
                control, "SELECT alert_id, opened_at FROM alerts WHERE kind = 'monitor_down'"
            ),
        )
        check(len(opened) == 1, f"{len(opened)} monitor_down alerts")
        downs = query(
            control,
            "SELECT instance_id, reason FROM results WHERE status = 'down' ORDER BY stored_at",
        )
        first = downs[0][0]
        confirms = [row for row in downs if row[1] == "confirm"]
        check(bool(confirms), f"no confirming result: {downs}")
        check(confirms[0][0] != first, f"confirmed on the same instance: {downs}")
        unconfirmed = query(control, "SELECT count(*) FROM events WHERE kind = 'unconfirmed'")[0][0]
        say(
            f"failure on {first[-8:]}, unconfirmed event x{unconfirmed}, confirmed on "
            f"{confirms[0][0][-8:]}, 1 alert opened"
        )
        py(
            target,
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/mend', b'')",
        )
        wait_for(
            "the alert's resolution",
            lambda: (
                query(
                    control,
                    "SELECT count(*) FROM alerts WHERE kind = 'monitor_down' "
                    "AND resolved_at IS NOT NULL",
                )[0][0]
                == 1
            ),
        )
        resolved = query(control, "SELECT count(*) FROM events WHERE kind = 'alert_resolved'")[0][0]
        check(resolved == 1, f"{resolved} alert_resolved events")
        say("target mended: alert resolved (1 alert, 1 resolution)")

        # 2. One instance stopped: the other covers.
        podman("stop", "--time", "30", a)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", a).strip()
        check(code == "0", f"office-a exited {code} on SIGTERM (drain)")
        stopped_at = time.time()

        def covered() -> int | None:
            rows = query(
                control,
                "SELECT instance_id, count(*) FROM results WHERE stored_at > "
                f"{stopped_at + 1} GROUP BY instance_id",
            )
            counts = dict(rows)
            return counts.get("office-b") if counts.get("office-b", 0) >= 5 else None

        by_b = wait_for("office-b covering", covered)
        late_a = query(
            control,
            f"SELECT count(*) FROM results WHERE instance_id = 'office-a' "
            f"AND stored_at > {stopped_at + 1}",
        )[0][0]
        check(late_a == 0, f"{late_a} results from the stopped office-a")
        check(connected(control) == 1, "connected instances after the stop")
        cp_alerts = query(control, "SELECT count(*) FROM alerts WHERE kind = 'checkpoint_down'")
        check(cp_alerts[0][0] == 0, "a checkpoint_down alert with one instance still up")
        say(
            f"office-a stopped (drained, exit 0): office-b ran the next {by_b} checks, "
            "0 from office-a, no checkpoint alert"
        )
        podman("start", a)
        wait_for("office-a back", lambda: connected(control) == 2)

        # 3. Both killed: one checkpoint_down alert.
        killed_at = time.time()
        podman("kill", "--signal", "KILL", a, b)
        spooled = {name: spool_ids(image, compose.name(f"{name}-spool")) for name in INSTANCES}
        wait_for(
            "both instances reported down",
            lambda: (
                query(
                    control,
                    "SELECT count(DISTINCT subject) FROM events WHERE kind = 'instance_down' "
                    f"AND at >= {killed_at}",
                )[0][0]
                == 2
            ),
        )
        alert = wait_for("the checkpoint_down alert", lambda: alerts_of(control, "checkpoint_down"))
        check(len(alert) == 1 and alert[0][0] == "office", f"checkpoint_down alerts: {alert}")
        say(
            f"both killed (SIGKILL): 1 checkpoint_down alert ({alert[0][1]}); unacked results in "
            f"the spools: office-a {len(spooled['office-a'])}, office-b {len(spooled['office-b'])}"
        )

        # 4. Restarted on their volumes.
        started = time.monotonic()
        podman("start", a, b)
        wait_for("both instances back", lambda: connected(control) == 2)
        figures["restart_s"] = round(time.monotonic() - started, 1)
        wait_for(
            "the checkpoint_down alert's resolution",
            lambda: all(row[2] is not None for row in alerts_of(control, "checkpoint_down")),
        )
        first = carried_over(control, spooled)
        say(
            f"restarted on their volumes in {figures['restart_s']} s: checkpoint_down resolved; "
            f"{first['spooled']} spooled results stored once"
        )

        # 5. The spool carries results over a restart: cut the control plane off, let both
        # instances run their monitors on their own (nothing acked), kill both, reconnect,
        # restart: everything that was spooled is stored once.
        network = compose.name("checkpoint")
        podman("network", "disconnect", network, control)
        wait_for(
            "results waiting in both spools",
            lambda: all(spool_depth(c, i) >= 3 for c, i in zip((a, b), INSTANCES, strict=True)),
        )
        podman("kill", "--signal", "KILL", a, b)
        spooled = {name: spool_ids(image, compose.name(f"{name}-spool")) for name in INSTANCES}
        podman("network", "connect", "--alias", "control", network, control)
        podman("start", a, b)
        wait_for("both instances back", lambda: connected(control) == 2)
        second = carried_over(control, spooled)
        check(second["spooled"] > 0, "nothing was spooled while cut off")
        say(
            f"cut off from the control plane, both killed with office-a "
            f"{len(spooled['office-a'])} and office-b {len(spooled['office-b'])} results unacked "
            f"in their spools; restarted: {second['spooled']} stored, 0 lost, 0 duplicated "
            f"({second['resends_dropped']} resends dropped as duplicates)"
        )
        stored = query(control, "SELECT count(*) FROM results")[0][0]
        alerts = query(
            control, "SELECT kind, count(*), count(resolved_at) FROM alerts GROUP BY kind"
        )
        say(f"control plane: {stored} results stored; alerts (kind, opened, resolved): {alerts}")
        total, lost, twice = second["spooled"], second["lost"], second["duplicated"]
        dropped = second["resends_dropped"]
        figures.update(
            spooled=total, lost=lost, duplicated=twice, resends_dropped=dropped, stored=stored
        )


INSTANCES = ("office-a", "office-b")


def alerts_of(control: str, kind: str) -> list[list[Any]]:
    return query(control, f"SELECT subject, message, resolved_at FROM alerts WHERE kind = '{kind}'")


def carried_over(control: str, spooled: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Wait until every result id read from the spools is stored; count what was lost (none
    may be) and what the control plane holds twice (the same monitor, instance and start)."""
    ids = {i for group in spooled.values() for i in group}
    listed = ",".join(f"'{i}'" for i in sorted(ids)) or "''"

    def stored() -> list[list[Any]] | None:
        rows = query(control, f"SELECT result_id FROM results WHERE result_id IN ({listed})")
        return rows if len(rows) == len(ids) else None

    if ids:
        with suppress(Failed):  # what is missing is counted as lost below
            wait_for("the spooled results stored", stored)
    found = {
        r[0] for r in query(control, f"SELECT result_id FROM results WHERE result_id IN ({listed})")
    }
    twice = query(
        control,
        "SELECT count(*) FROM (SELECT monitor_id, instance_id, started_at FROM results "
        "GROUP BY monitor_id, instance_id, started_at HAVING count(*) > 1)",
    )[0][0]
    dropped = int(metrics(control).get("probekit_control_results_duplicate_total", 0))
    lost = len(ids - found)
    check(lost == 0, f"{lost} of {len(ids)} spooled results lost")
    check(twice == 0, f"{twice} results stored twice")
    return {"spooled": len(ids), "lost": lost, "duplicated": twice, "resends_dropped": dropped}


# --- the systemd units, started under systemd --------------------------------------------

SYSTEMD_BASE = "localhost/probekit-systemd-base:bookworm"
SYSTEMD_IMAGE = "localhost/probekit-systemd:ci"
SYSTEMD_CONTROL_TOML = """\
[control]
host = "127.0.0.1"
port = 8443
db = "/var/lib/probekit-control/control.db"
tls_cert = "/etc/probekit/control.pem"
tls_key = "{key}"
heartbeat_interval = 2

[[checkpoints]]
id = "office"
token = {token}

[[monitors]]
id = "self"
checkpoint = "office"
interval = 2
kind = "tcp"
host = "127.0.0.1"
port = 8443
"""
#: Where the control plane finds its secrets: the units' credentials.
CREDENTIALS = {
    "key": "/run/credentials/probekit-control.service/control-key.pem",
    "token": '{ file = "/run/credentials/probekit-control.service/tokens/office.token" }',
}
#: What systemd must report for each unit (`systemctl show`), as it read the unit files.
SHOWN = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "PrivateDevices": "yes",
    "ProtectHome": "yes",
}
UNITS = ("probekit-control", "probekit-checkpoint@office-a", "probekit-checkpoint@office-b")


def systemd_units(image: str, figures: dict[str, Any]) -> None:
    """Start deploy/systemd/'s units under systemd (PID 1 of a privileged container of a Debian
    base with systemd, no network but loopback), as an operator installs them, and check that
    they run hardened: a control plane and two checkpoint instances, results from both, dynamic
    users, the state directories, the options in effect, a drain on `systemctl stop`."""
    exists = subprocess.run(["podman", "image", "exists", SYSTEMD_BASE], check=False)
    if exists.returncode != 0:
        say(f"building {SYSTEMD_BASE} (debootstrap with systemd)")
        subprocess.run(
            ["bash", str(ROOT / "deploy/image/build-base.sh"), SYSTEMD_BASE],
            check=True,
            env={**os.environ, "EXTRA_PACKAGES": "systemd,systemd-sysv,dbus"},
        )
    podman(
        "build", "--format", "docker", "--build-arg", f"PROBEKIT={image}",
        "--build-arg", f"BASE={SYSTEMD_BASE}", "--tag", SYSTEMD_IMAGE,
        "--file", str(ROOT / "deploy/systemd/Containerfile.test"), str(ROOT),
    )  # fmt: skip
    name = f"{PROJECT}-systemd"
    with tempfile.TemporaryDirectory() as etc:
        subprocess.run(
            ["bash", str(ROOT / "deploy/compose/secrets.sh"), etc], check=True, capture_output=True
        )
        conf = Path(etc)
        conf.chmod(0o755)
        (conf / "tokens").mkdir()
        for source, target in (
            ("office.token", "tokens/office.token"),
            ("office.token", "checkpoint.token"),
        ):
            (conf / target).write_bytes((conf / source).read_bytes())
            (conf / target).chmod(0o600)
        (conf / "control-key.pem").chmod(0o600)
        (conf / "checkpoint.env").write_text(
            "PROBEKIT_URL=wss://control:8443/\nPROBEKIT_CHECKPOINT_ID=office\n"
            "PROBEKIT_ARGS=--ca-file /etc/probekit/ca.pem --allow 127.0.0.0/8 "
            "--heartbeat-interval 2 --metrics-port 0\n"
        )
        (conf / "checkpoint.env").chmod(0o600)
        (conf / "control.toml").write_text(SYSTEMD_CONTROL_TOML.format(**CREDENTIALS))
        podman("rm", "--force", "--time", "0", name, check_rc=False)
        podman(
            "run", "--detach", "--name", name, "--privileged", "--systemd=always",
            "--network", "none", "--add-host", "control:127.0.0.1",
            "--volume", f"{etc}:/etc/probekit", SYSTEMD_IMAGE,
        )  # fmt: skip
        try:
            _systemd_checks(name, conf, figures)
        finally:
            logs = podman(
                "exec", name, "journalctl", "--no-pager", "-n", "12",
                *(f"--unit={u}" for u in UNITS), check_rc=False,
            )  # fmt: skip
            if logs.strip():
                say(f"last lines of the units' journal:\n{logs}")
            podman("rm", "--force", "--time", "0", name, check_rc=False)


def _systemd_checks(name: str, conf: Path, figures: dict[str, Any]) -> None:
    def ctl(*args: str) -> str:
        return podman("exec", name, "systemctl", *args, check_rc=False).strip()

    state = wait_for("systemd up", lambda: ctl("is-system-running") in ("running", "degraded"))
    del state
    # Credentials: systemd copies them for the service user; a kernel that refuses it that
    # access (gVisor does, on the development machine) gets the token from EnvironmentFile=
    # for this run, which the report says.
    probe = podman(
        "exec", name, "systemd-run", "--wait", "--pipe", "--quiet", "-p", "DynamicUser=yes",
        "-p", "LoadCredential=t:/etc/probekit/checkpoint.token", "/bin/sh", "-c",
        'test -r "$CREDENTIALS_DIRECTORY/t" && echo readable || echo unreadable',
    ).strip()  # fmt: skip
    figures["systemd_credentials"] = probe
    if probe != "readable":
        say("systemd here gives a service no access to its credentials (LoadCredential=): "
            "for this run the token comes from an EnvironmentFile= drop-in instead")  # fmt: skip
        token = (conf / "checkpoint.token").read_text().strip()
        (conf / "test-token.env").write_text(f"PROBEKIT_TOKEN={token}\n")
        (conf / "test-token.env").chmod(0o600)
        (conf / "control-key.pem").chmod(0o644)
        (conf / "control.toml").write_text(
            SYSTEMD_CONTROL_TOML.format(
                key="/etc/probekit/control-key.pem", token='{ env = "PROBEKIT_TOKEN" }'
            )
        )
        dropins = {
            "probekit-control.service": "[Service]\nLoadCredential=\n"
            "EnvironmentFile=/etc/probekit/test-token.env\n",
            "probekit-checkpoint@.service": "[Service]\nLoadCredential=\n"
            "EnvironmentFile=/etc/probekit/test-token.env\nExecStart=\n"
            "ExecStart=/opt/probekit/bin/probekit checkpoint --url ${PROBEKIT_URL} "
            "--token-env PROBEKIT_TOKEN --checkpoint-id ${PROBEKIT_CHECKPOINT_ID} "
            "--instance-id %i --spool /var/lib/probekit/%i/spool.db $PROBEKIT_ARGS\n",
        }
        for unit, text in dropins.items():
            code = (
                "import pathlib, sys; d = pathlib.Path('/etc/systemd/system') / sys.argv[1];"
                "d.mkdir(exist_ok=True); (d / 'test.conf').write_text(sys.argv[2])"
            )
            podman("exec", name, "python3", "-c", code, f"{unit}.d", text)
    # The second fence, derived from the checkpoint's --allow, as docs/deploy.md installs it.
    rules = podman(
        "exec", name, "/opt/probekit/bin/python", "/usr/local/share/probekit/ipaddress_rules.py",
        "--allow", "127.0.0.0/8",
    )  # fmt: skip
    code = (
        "import pathlib, sys;"
        "d = pathlib.Path('/etc/systemd/system/probekit-checkpoint@.service.d');"
        "d.mkdir(exist_ok=True); (d / 'egress.conf').write_text(sys.argv[1])"
    )
    podman("exec", name, "python3", "-c", code, rules)
    ctl("daemon-reload")
    started = time.monotonic()
    ctl("start", *UNITS)
    db = "/var/lib/private/probekit-control/control.db"

    def both() -> list[list[Any]] | None:
        rows = json.loads(
            podman(
                "exec", name, "python3", "-c",
                "import json, sqlite3; c = sqlite3.connect('file:" + db + "?mode=ro', uri=True);"
                "print(json.dumps(c.execute('SELECT instance_id, count(*) FROM results "
                "WHERE status = \\'up\\' GROUP BY 1').fetchall()))",
            )
        )  # fmt: skip
        return rows if len(rows) == 2 else None

    rows = wait_for("UP results from both instances under systemd", both)
    figures["systemd_start_s"] = round(time.monotonic() - started, 1)
    for unit in UNITS:
        shown = dict(
            line.split("=", 1)
            for line in ctl("show", unit, *(f"--property={p}" for p in SHOWN), "--property="
                            "ActiveState,NRestarts,MainPID,IPAddressDeny,IPAddressAllow").splitlines()
        )  # fmt: skip
        check(shown["ActiveState"] == "active", f"{unit}: {shown['ActiveState']}")
        check(shown["NRestarts"] == "0", f"{unit}: restarted {shown['NRestarts']} times")
        for key, value in SHOWN.items():
            same = sorted(shown[key].split()) == sorted(value.split())  # systemd sorts lists
            check(same, f"{unit}: {key}={shown[key]!r}, expected {value!r}")
        status = podman("exec", name, "cat", f"/proc/{shown['MainPID']}/status")
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        check(uid >= 61184, f"{unit}: runs as uid {uid}, not a dynamic user")
        if "checkpoint" in unit:
            denied = sorted(shown["IPAddressDeny"].split())
            check(denied == ["0.0.0.0/0", "::/0"], f"{unit}: {shown['IPAddressDeny']}")
            check("127.0.0.0/8" in shown["IPAddressAllow"], f"{unit}: {shown['IPAddressAllow']}")
    ctl("stop", "probekit-checkpoint@office-a")
    result = ctl("show", "probekit-checkpoint@office-a", "--property=Result,ExecMainStatus")
    check("Result=success" in result and "ExecMainStatus=0" in result, f"stop: {result}")
    spool = podman("exec", name, "ls", "/var/lib/private/probekit/office-a/")
    check("spool.db" in spool, f"no spool in the state directory: {spool}")
    say(f"systemd units: control plane and office-a/office-b active under dynamic users in "
        f"{figures['systemd_start_s']} s, results from both ({dict(rows)}); "
        f"{', '.join(f'{k}={v}' for k, v in SHOWN.items())} in effect; IPAddressDeny=any with "
        "IPAddressAllow= from ipaddress_rules.py; `systemctl stop` drained office-a (exit 0), its "
        "spool kept in /var/lib/probekit/office-a")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/probekit:ci")
    parser.add_argument("--keep", action="store_true", help="leave the topology running")
    parser.add_argument("--rebuild-base", action="store_true")
    parser.add_argument(
        "--no-systemd", action="store_true", help="skip starting deploy/systemd/'s units"
    )
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        sys.stderr.write("podman is not installed (apt-get install podman runc netavark ...)\n")
        return 2
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the project is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy/podman/containers.conf"))
    started = time.monotonic()
    figures = build(args.image, args.rebuild_base)
    mib = 1024 * 1024
    say(
        f"image {args.image}: {figures['image_bytes'] / mib:.1f} MiB (base "
        f"{figures['base_bytes'] / mib:.1f} MiB + probekit "
        f"{(figures['image_bytes'] - figures['base_bytes']) / mib:.1f} MiB); plain pip install "
        f"into a virtualenv: {figures['pip_install_bytes'] / mib:.1f} MiB; built in "
        f"{figures['image_build_s']} s; `run --rm IMAGE --version` {figures['run_version_s']} s"
    )
    try:
        scenario(args.image, args.keep, figures)
        if not args.no_systemd:
            systemd_units(args.image, figures)
    except Failed as exc:
        say(f"FAILED: {exc}")
        return 1
    figures["session_s"] = round(time.monotonic() - started, 1)
    say(f"passed in {figures['session_s']} s: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
