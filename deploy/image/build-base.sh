#!/usr/bin/env bash
# Build a minimal Debian base image with Python from Debian's own packages, for machines that
# cannot pull from a public image registry:
#
#   deploy/image/build-base.sh [TAG] [SUITE] [MIRROR]
#
# debootstrap --variant=minbase (dpkg, apt, coreutils) plus python3 and python3-venv, with the
# documentation, locales and apt's lists removed, imported with `podman import` as TAG
# (default localhost/probekit-base:bookworm). EXTRA_PACKAGES (comma-separated) adds packages:
# the container session's systemd test adds systemd,systemd-sysv,dbus. Needs root, debootstrap
# and podman. Operators with a registry use their usual Python base instead: pass it as
# --build-arg BASE=... .
set -euo pipefail

tag=${1:-localhost/probekit-base:bookworm}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/probekit-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates${EXTRA_PACKAGES:+,$EXTRA_PACKAGES} \
    "$suite" "$root" "$mirror" >&2

# What a Python program never needs at run time.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/var/log/apt/*
find "$root"/usr/lib/python3* -name '__pycache__' -prune -exec rm -rf {} +

tar --numeric-owner -C "$root" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "$tag"
