#!/usr/bin/env bash
# Debian's prometheus-alertmanager on a loopback high port, clustering off (no 0.0.0.0:9094), its
# one route notifying a webhook receiver on loopback that test_alertmanager.py runs (with resolved
# notifications, group_wait 0s and group_interval 1s so that a test sees them within seconds).
# Usage: alertmanager.sh start|stop STATEDIR. start prints PORT= and RECEIVER_PORT=.
set -euo pipefail
action=$1
dir=$(realpath -m "$2")
am=$(command -v prometheus-alertmanager || echo /usr/bin/prometheus-alertmanager)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$action" in
start)
    if [ -f "$dir/am.pid" ] && kill -0 "$(cat "$dir/am.pid")" 2>/dev/null; then
        cat "$dir/ports"
        exit 0
    fi
    mkdir -p "$dir/data"
    port=$(free_port)
    receiver_port=$(free_port)
    cat > "$dir/alertmanager.yml" <<CONF
route:
  receiver: probekit-test
  group_by: [alertname, subject]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: probekit-test
    webhook_configs:
      - url: http://127.0.0.1:$receiver_port/alertmanager
        send_resolved: true
CONF
    "$am" --config.file="$dir/alertmanager.yml" --storage.path="$dir/data" \
        --web.listen-address="127.0.0.1:$port" --cluster.listen-address= \
        --log.level=warn >"$dir/alertmanager.log" 2>&1 &
    echo $! >"$dir/am.pid"
    for _ in $(seq 150); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/-/ready', timeout=1)" 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
    printf 'PORT=%s\nRECEIVER_PORT=%s\n' "$port" "$receiver_port" | tee "$dir/ports"
    ;;
stop)
    if [ -f "$dir/am.pid" ]; then
        pid=$(cat "$dir/am.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/am.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop STATEDIR" >&2
    exit 2
    ;;
esac
