#!/usr/bin/env bash
# Write compose.yaml's secrets into DIR (default deploy/compose/secrets): the checkpoint's
# token, a private CA, and the control plane's certificate for the name "control" signed by it.
# Files are 0644 so that the containers' user (uid 10001) can read them as compose mounts them:
# keep DIR itself private (0700). Existing files are kept.
set -euo pipefail
dir=${1:-$(dirname "$0")/secrets}
mkdir -p "$dir" && chmod 0700 "$dir"
cd "$dir"
[ -s office.token ] || openssl rand -hex 32 > office.token
if [ ! -s control.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=probekit compose CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=control" \
        -keyout control-key.pem -out control.csr 2>/dev/null
    printf 'subjectAltName=DNS:control\nextendedKeyUsage=serverAuth\n' > control.ext
    openssl x509 -req -in control.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
        -extfile control.ext -out control.pem 2>/dev/null
    rm -f control.csr control.ext ca.srl
fi
chmod 0644 office.token ca.pem control.pem control-key.pem
echo "$dir"
