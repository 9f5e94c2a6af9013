#!/usr/bin/env bash
# dnsmasq with the test zone test.internal, on a loopback high port of 127.0.0.1 and ::1 (UDP
# and TCP), from STATEDIR.
#   start STATEDIR: prints PORT=..., ZONE=...
#   stop STATEDIR:  stops it (a stop without a start is fine)
# dnsmasq is authoritative-like for test.internal (`local=`): a name not in the zone is NXDOMAIN,
# never forwarded (no upstream servers, /etc/resolv.conf and /etc/hosts not read).
set -euo pipefail
action=${1:?start|stop}
state=${2:?state directory}
mkdir -p "$state"
state=$(cd "$state" && pwd)
pidfile="$state/dnsmasq.pid"

stop() {
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    fi
}

free_port() {
    python3 -c 'import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = socket.socket()
while True:
    u.bind(("127.0.0.1", 0)); port = u.getsockname()[1]
    try:
        t.bind(("127.0.0.1", port)); break
    except OSError:
        u.close(); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(port)'
}

case "$action" in
stop)
    stop
    ;;
start)
    stop
    port=$(free_port)
    cat > "$state/dnsmasq.conf" <<CONF
port=$port
listen-address=127.0.0.1,::1
bind-interfaces
no-resolv
no-hosts
no-poll
no-dhcp-interface=lo
local=/test.internal/
domain-needed
log-facility=$state/dnsmasq.log
pid-file=$pidfile
local-ttl=300
host-record=www.test.internal,192.0.2.10,2001:db8::10
host-record=mail.test.internal,192.0.2.25
address=/multi.test.internal/192.0.2.31
cname=alias.test.internal,www.test.internal
mx-host=test.internal,mail.test.internal,10
txt-record=test.internal,"v=spf1 mx -all"
srv-host=_imap._tcp.test.internal,mail.test.internal,143,0,5
CONF
    # -u: drop root for an unprivileged user once the port is bound (dnsmasq's own user when
    # it exists, as Debian's package makes it, else nobody).
    user=nobody
    if getent passwd dnsmasq >/dev/null; then user=dnsmasq; fi
    touch "$state/dnsmasq.log"
    chown "$user" "$state/dnsmasq.log" 2>/dev/null || true
    dnsmasq --conf-file="$state/dnsmasq.conf" --user="$user"
    for _ in $(seq 100); do
        [ -s "$pidfile" ] && break
        sleep 0.1
    done
    [ -s "$pidfile" ] || { echo "dnsmasq did not start: $(cat "$state/dnsmasq.log")" >&2; exit 1; }
    echo "PORT=$port"
    echo "ZONE=test.internal"
    ;;
*)
    echo "usage: $0 start|stop STATEDIR" >&2
    exit 2
    ;;
esac
