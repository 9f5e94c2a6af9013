"""``probekit exporter``: a drop-in for Prometheus' blackbox_exporter.

It reads blackbox_exporter's own ``blackbox.yml`` (the ``http``, ``tcp``, ``dns`` and ``icmp``
probers) or modules in probekit's TOML, serves ``/probe?module=NAME&target=T`` with
blackbox_exporter's metric names, types and labels plus probekit's own (``probekit_status``
with DEGRADED, every kind's phases, assertion outcomes), and runs every check on probekit's
dial path, so the egress policy holds for targets and redirects. See docs/exporter.md.
"""

from ._metrics import blackbox_text, ip_hash, probe_succeeded
from ._modules import BLACKBOX_PROBERS, Module, load_modules, parse_blackbox, parse_toml_modules
from ._server import DEFAULT_SCRAPE_TIMEOUT, Exporter

__all__ = [
    "BLACKBOX_PROBERS",
    "DEFAULT_SCRAPE_TIMEOUT",
    "Exporter",
    "Module",
    "blackbox_text",
    "ip_hash",
    "load_modules",
    "parse_blackbox",
    "parse_toml_modules",
    "probe_succeeded",
]
