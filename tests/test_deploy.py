"""Deployment files: the systemd units (verified by systemd-analyze, hardening present), the
IPAddressAllow=/IPAddressDeny= derivation from the egress policy, and the shape of the
Containerfile and compose.yaml (the image and the topology themselves run in `nox -s container`).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import EgressPolicy

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = ("probekit-checkpoint@.service", "probekit-control.service", "probekit-exporter.service")

#: Options every unit must carry, with their exact value (None: present, any value).
HARDENING: dict[str, str | None] = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "LockPersonality": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "IPAddressDeny": None,
    "Restart": "always",
}


def parse_unit(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of the [Service] section, continuation lines joined."""
    values: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", UNITS)
def test_unit_has_every_hardening_option(unit: str) -> None:
    values = parse_unit(SYSTEMD / unit)
    missing = [key for key in HARDENING if key not in values]
    assert not missing, f"{unit} lacks {missing}"
    for key, expected in HARDENING.items():
        if expected is not None:
            assert values[key] == [expected], (unit, key, values[key])
    assert "@system-service" in values["SystemCallFilter"]
    assert "~@privileged @resources" in values["SystemCallFilter"]
    # Nothing runs as root and nothing gets capabilities back.
    assert "User" not in values
    assert all(value == "" for value in values["CapabilityBoundingSet"])


@pytest.mark.parametrize("unit", ["probekit-checkpoint@.service", "probekit-exporter.service"])
def test_probing_units_are_fenced_to_loopback_until_a_drop_in_allows_more(unit: str) -> None:
    values = parse_unit(SYSTEMD / unit)
    assert values["IPAddressDeny"] == ["any"]
    assert values["IPAddressAllow"] == ["localhost"]


def test_checkpoint_unit_spool_token_and_instance() -> None:
    values = parse_unit(SYSTEMD / "probekit-checkpoint@.service")
    assert values["StateDirectory"] == ["probekit/%i"]
    assert values["LoadCredential"] == ["token:/etc/probekit/checkpoint.token"]
    (command,) = values["ExecStart"]
    assert "--token-file %d/token" in command
    assert "--instance-id %i" in command
    assert "--spool /var/lib/probekit/%i/spool.db" in command
    assert "--token-env" not in command  # the token is a credential, not an environment variable


def test_control_unit_state_and_reload() -> None:
    values = parse_unit(SYSTEMD / "probekit-control.service")
    assert values["StateDirectory"] == ["probekit-control"]
    assert values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def verify(directory: Path, *names: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("systemd-analyze")
    assert program is not None
    return subprocess.run(
        [program, "verify", "--man=no", *(f"./{name}" for name in names)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def copy_units(tmp_path: Path) -> list[str]:
    """The units, with ExecStart's /opt/probekit/bin/probekit pointed at a stand-in executable
    (systemd-analyze checks that the program exists)."""
    program = tmp_path / "probekit"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text().replace("/opt/probekit/bin/probekit", str(program))
        (tmp_path / unit).write_text(text)
    return ["probekit-checkpoint@office-a.service", *UNITS[1:]]


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it)",
)


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    names = copy_units(tmp_path)
    done = verify(tmp_path, *names)
    assert done.returncode == 0, done.stdout + done.stderr
    # Unknown keys and bad values are warnings with exit code 0: any output is a failure.
    assert done.stdout + done.stderr == ""


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt option is reported."""
    names = copy_units(tmp_path)
    unit = tmp_path / "probekit-checkpoint@.service"
    unit.write_text(unit.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    done = verify(tmp_path, names[0])
    assert "Unknown key 'ProtectClok'" in done.stdout + done.stderr


# --- IPAddressAllow=/IPAddressDeny= from the egress policy ---------------------------------


def load_rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ipaddress_rules", SYSTEMD / "ipaddress_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = load_rules()


def covered(networks: list[object], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address in net for net in networks)  # type: ignore[operator]


def test_allow_minus_deny() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8"], deny=["10.99.0.0/16"])
    nets = rules.allowed_networks(policy)
    assert ipaddress.ip_network("10.99.0.0/16") not in nets
    assert covered(nets, ipaddress.ip_address("10.1.2.3"))
    assert not covered(nets, ipaddress.ip_address("10.99.1.1"))
    assert not covered(nets, ipaddress.ip_address("192.168.1.1"))
    assert not any(net.version == 6 for net in nets)  # an allow list narrows: no IPv6 at all
    total = sum(net.num_addresses for net in nets)
    assert total == 2**24 - 2**16


def test_default_policy_denies_only_the_default_set() -> None:
    policy = EgressPolicy()
    denied = rules.denied_networks(policy)
    assert ipaddress.ip_network("169.254.0.0/16") in denied
    assert ipaddress.ip_network("fd00:ec2::254/128") in denied
    text = rules.drop_in(policy)
    # The shorter exact form: deny what the policy denies, after resetting the unit's `any`.
    assert "IPAddressDeny=\n" in text
    assert "IPAddressDeny=169.254.0.0/16\n" in text
    assert "IPAddressDeny=any" not in text


def test_an_allow_at_least_as_specific_rescues_a_default_denial() -> None:
    policy = EgressPolicy(allow=["169.254.169.254/32", "10.0.0.0/8"])
    text = rules.drop_in(policy, ["192.0.2.10"])
    assert text.splitlines() == [
        "[Service]",
        "IPAddressDeny=any",
        "IPAddressAllow=10.0.0.0/8",
        "IPAddressAllow=169.254.169.254/32",
        "# --also: reached outside the checks",
        "IPAddressAllow=192.0.2.10/32",
    ]
    # A wider allow does not: 0.0.0.0/0 does not name 169.254.0.0/16.
    wide = rules.allowed_networks(EgressPolicy(allow=["0.0.0.0/0"]))
    assert not covered(wide, ipaddress.ip_address("169.254.169.254"))
    assert covered(wide, ipaddress.ip_address("8.8.8.8"))


def test_a_policy_that_allows_nothing() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8"], deny=["10.0.0.0/8"])
    assert rules.allowed_networks(policy) == []
    assert "allows no address" in rules.drop_in(policy)


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert rules.main(["--allow", "10.0.0.0/8", "--deny", "10.0.0.0/9", "--also", "::1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "# generated by deploy/systemd/ipaddress_rules.py --allow 10.0.0.0/8 --deny 10.0.0.0/9"
        " --also ::1"
    )
    assert out[1:] == [
        "[Service]",
        "IPAddressDeny=any",
        "IPAddressAllow=10.128.0.0/9",
        "# --also: reached outside the checks",
        "IPAddressAllow=::1/128",
    ]
    assert rules.main(["--allow", "10.0.0.0/33"]) == 3
    assert "10.0.0.0/33" in capsys.readouterr().err
    assert rules.main(["--also", "not-an-address"]) == 3


def test_script_runs_on_its_own() -> None:
    done = subprocess.run(
        [sys.executable, str(SYSTEMD / "ipaddress_rules.py"), "--allow", "192.168.0.0/16"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "IPAddressAllow=192.168.0.0/16" in done.stdout


#: IPv6 prefixes whose addresses the policy also decides by the IPv4 address they carry; the
#: kernel sees the IPv4 packet for mapped ones, and translators are the network's to fence.
EMBEDDING = [
    ipaddress.ip_network(n)
    for n in ("::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32")
]

v4_networks = st.builds(
    lambda value, prefix: ipaddress.ip_network((value, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda value, prefix: ipaddress.ip_network((value, prefix), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
interesting_v4 = st.sampled_from(
    ["169.254.169.254", "10.1.2.3", "0.1.2.3", "224.0.0.1", "100.100.100.200", "192.0.0.192"]
).map(ipaddress.ip_address)


@settings(max_examples=150, deadline=None)
@given(
    allow=st.lists(st.one_of(v4_networks, v6_networks), max_size=3),
    deny=st.lists(st.one_of(v4_networks, v6_networks), max_size=3),
    probes=st.lists(
        st.one_of(
            interesting_v4,
            st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
            st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_rules_agree_with_the_policy(
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    deny: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    policy = EgressPolicy(allow=[str(n) for n in allow], deny=[str(n) for n in deny])
    allowed = rules.allowed_networks(policy)
    denied = rules.denied_networks(policy)
    # Probe the given addresses and the edges of every network involved.
    edges = [a for n in (*allow, *deny) for a in (n.network_address, n.broadcast_address)]
    for address in [*probes, *edges]:
        if address.version == 6 and any(address in n for n in EMBEDDING):
            continue
        decision = policy.decide_address(address).allowed
        assert covered(allowed, address) is decision, (address, allowed)
        assert covered(denied, address) is not decision, (address, denied)


# --- the image and the topology, statically (they run in `nox -s container`) ---------------


def test_containerfile_shape() -> None:
    text = (ROOT / "Containerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line and not line.startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE} AS build", "FROM ${BASE}"]  # multi-stage, base an argument
    assert lines[0].startswith("ARG BASE=")
    assert "COPY --from=build /opt/probekit /opt/probekit" in lines
    assert "pip wheel" in text.split("FROM ${BASE}\n")[0]  # the wheel is built in stage one
    assert "USER 10001:10001" in lines
    assert 'VOLUME ["/var/lib/probekit"]' in lines
    assert 'ENTRYPOINT ["/opt/probekit/bin/probekit"]' in lines  # exec form: no shell
    health = text[text.index("HEALTHCHECK") :]
    assert 'CMD ["/opt/probekit/bin/python", "/opt/probekit/healthcheck.py"]' in health
    assert "/ready" in (ROOT / "deploy" / "image" / "healthcheck.py").read_text()


def test_compose_shape() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    instances = [s for s in services.values() if "checkpoint" in s.get("command", [])]
    assert len(instances) == 2
    assert "control" in services["control"]["command"]
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("restart") in {"unless-stopped", "always"}, name
    for service in [*instances, services["control"]]:
        volume = service["volumes"][0]
        assert volume.split(":")[0] in compose["volumes"]  # a named volume
        assert volume.split(":")[1] == "/var/lib/probekit"
        assert service["secrets"]
    assert all("file" in secret for secret in compose["secrets"].values())
    assert compose["networks"]["checkpoint"]["internal"] is True
    for service in instances:
        assert service["networks"] == ["checkpoint"]
    targets = [s for s in services.values() if "demo-targets" in s.get("profiles", [])]
    assert targets


def load_scenario() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "container_scenario", ROOT / "deploy" / "container_scenario.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_container_session_reads_every_key_of_compose_yaml(tmp_path: Path) -> None:
    """`nox -s container` runs compose.yaml through podman itself: a key it does not know would
    be dropped silently, so it refuses one, and compose.yaml must use none."""
    scenario = load_scenario()
    compose = scenario.Compose(ROOT / "compose.yaml", "t", {"PROBEKIT_SECRETS": "/s"})
    assert compose.services["office-a"]["image"] == "localhost/probekit:latest"
    assert compose.secrets["office_token"]["file"] == "/s/office.token"
    assert compose.container("office-a") == "t-office-a"
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    data["services"]["office-a"]["privileged"] = True
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(scenario.Failed, match="privileged"):
        scenario.Compose(path, "t", {})


def test_compose_interpolation() -> None:
    scenario = load_scenario()
    assert scenario.interpolate("${A:-x}/${B}", {"B": "b"}) == "x/b"
    assert scenario.interpolate(["${A:-x}", {"k": "${A}"}], {"A": "a"}) == ["a", {"k": "a"}]
