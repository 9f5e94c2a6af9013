#!/usr/bin/env python3
"""Print systemd's IPAddressAllow=/IPAddressDeny= for a probekit egress policy.

    python3 ipaddress_rules.py --allow 10.0.0.0/8 --deny 10.99.0.0/16 --also 192.0.2.10

takes the same ``--allow``/``--deny`` as ``probekit checkpoint`` (and ``probekit exporter``) and
prints a drop-in (``[Service]`` with ``IPAddressDeny=any`` and one ``IPAddressAllow=`` line per
network) that lets the unit's sockets reach exactly the addresses the egress policy allows, with
the policy's default denials (link-local, the cloud metadata addresses, ``0.0.0.0/8``,
multicast) left out unless an ``--allow`` at least as specific names them, as the policy decides.
``--also ADDR`` adds what the process must reach outside its checks: the control plane, the DNS
resolvers, the Prometheus servers that scrape it (systemd filters both directions).

The policy decides by address; systemd then fences every packet, so a bug in the dial path, a
library that bypasses it, or a definition that slips past still cannot leave the allowed
networks. Host-name rules (``deny_hosts``) have no place in an address filter and stay the
policy's alone. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Iterable, Sequence

from probekit import EgressPolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SPACES: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def allowed_networks(policy: EgressPolicy) -> list[IPNetwork]:
    """The networks whose every address ``policy`` allows, as few CIDRs as cover them exactly."""
    return _networks(policy, allowed=True)


def denied_networks(policy: EgressPolicy) -> list[IPNetwork]:
    """The networks whose every address ``policy`` denies (the complement of the above)."""
    return _networks(policy, allowed=False)


def _networks(policy: EgressPolicy, *, allowed: bool) -> list[IPNetwork]:
    # Every rule is membership in a network, so the decision is constant between two
    # consecutive network boundaries: decide each such interval by the policy's order
    # (``deny``; an ``allow`` at least as specific as the most specific ``deny_default``
    # entry; ``deny_default``; the ``allow`` list, when there is one) and merge the runs.
    out: list[IPNetwork] = []
    for space in _SPACES:
        version = space.version
        allow = [n for n in policy.allow if n.version == version]
        deny = [n for n in policy.deny if n.version == version]
        default = [n for n in policy.deny_default if n.version == version]
        allow_rule = allow if policy.allow else None  # None: no allow list, allow the rest
        bounds = {int(space.network_address), int(space.broadcast_address) + 1}
        for net in (*allow, *deny, *default):
            bounds.add(int(net.network_address))
            bounds.add(int(net.broadcast_address) + 1)
        edges = sorted(bounds)
        start: int | None = None
        for low in edges[:-1]:
            if _allowed(low, allow_rule, deny, default) == allowed:
                if start is None:
                    start = low
                continue
            if start is not None:
                out.extend(_summarize(version, start, low - 1))
                start = None
        if start is not None:
            out.extend(_summarize(version, start, edges[-1] - 1))
    return out


def _allowed(
    value: int,
    allow: list[IPNetwork] | None,
    deny: Iterable[IPNetwork],
    default: Iterable[IPNetwork],
) -> bool:
    if any(_contains(n, value) for n in deny):
        return False
    defaults = [n.prefixlen for n in default if _contains(n, value)]
    allows = [n.prefixlen for n in allow or () if _contains(n, value)]
    if defaults:
        return bool(allows) and max(allows) >= max(defaults)
    return allow is None or bool(allows)


def _contains(net: IPNetwork, value: int) -> bool:
    return int(net.network_address) <= value <= int(net.broadcast_address)


def _summarize(version: int, first: int, last: int) -> list[IPNetwork]:
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return list(ipaddress.summarize_address_range(make(first), make(last)))


def drop_in(policy: EgressPolicy, also: Sequence[str] = ()) -> str:
    """The ``[Service]`` drop-in for ``policy``, plus the addresses or networks in ``also``.

    systemd lets a packet through when its address is in ``IPAddressAllow=``, else drops it
    when it is in ``IPAddressDeny=``. Two exact forms follow: deny ``any`` and allow what the
    policy allows, or (when that is shorter, as for a policy without an allow list) deny only
    what it denies. The unit's own ``IPAddressAllow=localhost`` stays in both.
    """
    extra = [ipaddress.ip_network(item, strict=False) for item in also]
    allowed = allowed_networks(policy)
    denied = denied_networks(policy)
    lines = ["[Service]"]
    if len(allowed) <= len(denied):
        lines.append("IPAddressDeny=any")
        if not allowed:
            lines.append("# the egress policy allows no address")
        lines.extend(f"IPAddressAllow={net}" for net in allowed)
    else:
        lines.append("# the egress policy allows every address but these")
        lines.append("IPAddressDeny=")
        lines.extend(f"IPAddressDeny={net}" for net in denied)
    if extra:
        lines.append("# --also: reached outside the checks")
        lines.extend(f"IPAddressAllow={net}" for net in extra)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ipaddress_rules.py",
        description="Print a systemd drop-in (IPAddressDeny=any, IPAddressAllow=...) that "
        "fences a unit to what a probekit egress policy allows.",
    )
    parser.add_argument("--allow", action="append", default=[], metavar="CIDR")
    parser.add_argument("--deny", action="append", default=[], metavar="CIDR")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="ADDR",
        help="an address or network the process must reach besides its checks: the control "
        "plane, DNS resolvers, the scrapers of its metrics (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        policy = EgressPolicy(allow=args.allow, deny=args.deny)
        for item in args.also:
            ipaddress.ip_network(item, strict=False)
    except ValueError as exc:
        sys.stderr.write(f"ipaddress_rules.py: error: {exc}\n")
        return 3
    given = " ".join(
        [f"--allow {a}" for a in args.allow]
        + [f"--deny {d}" for d in args.deny]
        + [f"--also {a}" for a in args.also]
    )
    sys.stdout.write(f"# generated by deploy/systemd/ipaddress_rules.py {given}".rstrip() + "\n")
    sys.stdout.write(drop_in(policy, args.also))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
