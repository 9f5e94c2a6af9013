#!/usr/bin/env bash
# Installs, from Debian, the daemons and monitoring-plugins that `nox -s interop` runs against.
# Each interop/packages/NAME.txt lists one daemon's packages (one per line, '#' comments).
# Packages are installed without starting their services (a policy-rc.d that answers 101 while
# apt runs), so nothing is left listening on a standard port: interop/daemons/NAME.sh starts
# each daemon itself, on loopback high ports, from a state directory of its own.
set -euo pipefail
cd "$(dirname "$0")"

packages=$(cat packages/*.txt | sed -e 's/#.*//' | tr -s ' \n' '\n' | sed '/^$/d' | sort -u)
missing=()
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "interop: all $(echo "$packages" | wc -l) Debian packages present"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "interop: missing Debian packages: ${missing[*]} (install them as root, then run again)" >&2
    exit 1
fi
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
echo "interop: installing ${missing[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
