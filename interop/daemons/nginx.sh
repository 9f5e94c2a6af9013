#!/usr/bin/env bash
# nginx on loopback high ports with the endpoints test_blackbox.py probes: plain and TLS (a
# self-signed certificate for 127.0.0.1, its PEM is the CA file), a redirect, JSON, a 404 and a
# slow body (/slow: 32 KiB sent at 32 KiB/s).
# Usage: nginx.sh start|stop STATEDIR. start prints HTTP_PORT=, HTTPS_PORT=, CA_FILE=.
set -euo pipefail
action=$1
dir=$(realpath -m "$2")
nginx=$(command -v nginx || echo /usr/sbin/nginx)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$action" in
start)
    mkdir -p "$dir"
    http_port=$(free_port)
    https_port=$(free_port)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$dir/server.key" -out "$dir/server.pem" 2>/dev/null
    head -c 32768 /dev/zero > "$dir/slow.bin"  # /slow: 32 KiB at 32 KiB/s, about a second
    temp=""
    for name in client_body proxy fastcgi uwsgi scgi; do
        temp+="${name}_temp_path $dir/${name}_temp; "
    done
    user_line=""
    if [ "$(id -u)" = 0 ]; then user_line="user root root;"; fi
    cat > "$dir/nginx.conf" <<CONF
$user_line
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    default_type text/plain;
    $temp
    server {
        listen 127.0.0.1:$http_port;
        listen 127.0.0.1:$https_port ssl;
        ssl_certificate $dir/server.pem;
        ssl_certificate_key $dir/server.key;
        location = / { return 200 "hello from nginx\n"; }
        location = /json { default_type application/json; return 200 '{"status": "ok", "items": [1, 2, 3]}'; }
        location = /redirect { return 302 /; }
        location = /missing { return 404 "not here\n"; }
        location = /slow { alias $dir/slow.bin; default_type application/octet-stream; limit_rate 32k; limit_rate_after 0; }
    }
}
CONF
    args=(-p "$dir" -c "$dir/nginx.conf")
    if "$nginx" -h 2>&1 | grep -q -- "-e filename"; then args+=(-e "$dir/error.log"); fi
    "$nginx" "${args[@]}"
    for _ in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $http_port), 1)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "HTTP_PORT=$http_port"
    echo "HTTPS_PORT=$https_port"
    echo "CA_FILE=$dir/server.pem"
    ;;
stop)
    if [ -f "$dir/nginx.pid" ]; then
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        for _ in $(seq 50); do [ -f "$dir/nginx.pid" ] || break; sleep 0.1; done
    fi
    ;;
*)
    echo "usage: $0 start|stop STATEDIR" >&2
    exit 2
    ;;
esac
