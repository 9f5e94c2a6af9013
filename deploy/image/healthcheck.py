"""The image's HEALTHCHECK: GET the readiness endpoint, exit 0 on 200 and 1 otherwise.

The URL is ``$PROBEKIT_HEALTH_URL`` (default ``http://127.0.0.1:9465/ready``: the checkpoint's
and the control plane's ``/ready`` on ``--metrics-port 9465``). Standard library only, so the
check needs neither a shell nor curl in the image.
"""

import os
import sys
import urllib.error
import urllib.request

url = os.environ.get("PROBEKIT_HEALTH_URL", "http://127.0.0.1:9465/ready")
try:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (a fixed local URL)
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    sys.stderr.write(f"not ready: {url}: {exc}\n")
    sys.exit(1)
