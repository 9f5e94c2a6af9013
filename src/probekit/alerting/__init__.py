"""Alerting shared by the control plane and ``probekit run``: the alert and event types
(``_events``), the channels and their durable outbox (``_sinks``), maintenance windows
(``_maintenance``) and the ``[[channels]]``/``[alerting]``/``[[maintenance]]`` config sections
(``_config``).

It sits below both users: it imports neither :mod:`probekit.control` nor the monitors-file
loader. The public names are exported by :mod:`probekit.control` (see ``docs/alerting.md``).
"""
