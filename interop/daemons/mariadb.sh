#!/usr/bin/env bash
# interop/daemons/mariadb.sh start|stop STATEDIR
#
# A throwaway MariaDB for `nox -s interop`: mariadb-install-db into STATEDIR/data, mariadbd on
# 127.0.0.1 on a free high port (its socket, pid file and error log in STATEDIR/run), running as
# the `mysql` user (created when missing), with TLS from a self-signed certificate made here
# (STATEDIR/cert.pem, for 127.0.0.1 and localhost), a database `probe` with a table of three
# rows, and a user `monitor` identified with mysql_native_password. Prints KEY=VALUE lines:
# PORT, USER, PASSWORD, DATABASE, CA, SOCKET. Safe to run twice; `stop` of a stopped or never
# started server succeeds.
set -euo pipefail

action=${1:?usage: mariadb.sh start|stop STATEDIR}
state=${2:?usage: mariadb.sh start|stop STATEDIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
run=$state/run
pidfile=$run/mariadbd.pid
user=mysql
password=probekit-interop-pw

stop() {
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    for tool in mariadb-install-db mariadbd openssl; do
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
            echo "mariadb.sh: $tool is missing (interop/install.sh installs it)" >&2
            exit 1
        }
    done
    if ! id "$user" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
    fi
    stop
    # mariadbd runs as $user: it must be able to reach the state directory, whose parents
    # (pytest's temporary directories) are private to their owner. Only search permission is
    # added, on the directories under /tmp that lack it; nothing becomes readable.
    dir=$state
    while [ "$dir" != "/" ] && [ "$dir" != "/tmp" ]; do
        if [ "$(stat -c %u "$dir")" = "$(id -u)" ]; then
            chmod o+x "$dir"
        fi
        dir=$(dirname "$dir")
    done

    # mariadbd writes its pid file, socket and error log as $user: they go in a directory of
    # its own inside the state directory.
    mkdir -p "$run"
    chown "$user" "$run"
    if [ ! -f "$state/cert.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
            -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            -keyout "$state/key.pem" -out "$state/cert.pem" 2>/dev/null
        chown "$user" "$state/key.pem" "$state/cert.pem"
        chmod 600 "$state/key.pem"
    fi
    if [ ! -d "$state/data/mysql" ]; then
        mkdir -p "$state/data"
        chown "$user" "$state/data"
        mariadb-install-db --no-defaults --datadir="$state/data" --user="$user" \
            --skip-test-db --auth-root-authentication-method=socket \
            --innodb-log-file-size=8M >"$state/install.log" 2>&1 || {
            cat "$state/install.log" >&2
            exit 1
        }
    fi
    cat >"$state/init.sql" <<SQL
CREATE DATABASE IF NOT EXISTS probe;
CREATE TABLE IF NOT EXISTS probe.items (id INT PRIMARY KEY, name VARCHAR(20));
INSERT IGNORE INTO probe.items VALUES (1, 'one'), (2, 'two'), (3, 'three');
CREATE USER IF NOT EXISTS 'monitor'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('$password');
GRANT SELECT ON probe.* TO 'monitor'@'127.0.0.1';
SQL
    chown "$user" "$state/init.sql"
    chmod 600 "$state/init.sql"
    # A free port can be taken by someone else before mariadbd binds it: try another then.
    for _attempt in 1 2 3; do
        if launch; then
            return 0
        fi
        if ! grep -q "Bind on TCP/IP port" "$run/error.log" 2>/dev/null; then
            break
        fi
        echo "mariadb.sh: port $port was taken, trying another" >&2
    done
    tail -n 30 "$run/error.log" >&2 || true
    exit 1
}

launch() {
    port=$(free_port)
    : >"$run/error.log"
    chown "$user" "$run/error.log"
    setsid mariadbd --no-defaults --user="$user" --datadir="$state/data" \
        --bind-address=127.0.0.1 --port="$port" --socket="$run/mariadbd.sock" \
        --pid-file="$pidfile" --log-error="$run/error.log" --init-file="$state/init.sql" \
        --skip-name-resolve --ssl-cert="$state/cert.pem" --ssl-key="$state/key.pem" \
        --innodb-buffer-pool-size=16M --innodb-log-file-size=8M --skip-log-bin \
        </dev/null >/dev/null 2>&1 &
    daemon=$!
    # A loaded machine (the CI runner, or helpers sharing two cores) can take a while to start
    # InnoDB: wait up to two minutes, but stop at once if mariadbd exits.
    for _ in $(seq 1200); do
        if ! kill -0 "$daemon" 2>/dev/null; then
            echo "mariadb.sh: mariadbd exited during start-up" >&2
            return 1
        fi
        if [ -S "$run/mariadbd.sock" ] && [ -f "$pidfile" ] &&
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "PORT=$port"
            echo "USER=monitor"
            echo "PASSWORD=$password"
            echo "DATABASE=probe"
            echo "CA=$state/cert.pem"
            echo "SOCKET=$run/mariadbd.sock"
            return 0
        fi
        sleep 0.1
    done
    echo "mariadb.sh: mariadbd did not start on 127.0.0.1:$port within two minutes" >&2
    kill "$daemon" 2>/dev/null || true
    return 1
}

case $action in
    start) start ;;
    stop) stop ;;
    *) echo "usage: mariadb.sh start|stop STATEDIR" >&2; exit 2 ;;
esac
