"""``python -m probekit``: the command line (see :mod:`probekit.cli`)."""

from probekit.cli import main

raise SystemExit(main())
