#!/usr/bin/env bash
# PostgreSQL for `nox -s interop`: `postgresql.sh start|stop STATEDIR`.
#
# start: initdb (as the postgres user, which PostgreSQL needs: it refuses to run as root) into a
# data directory of its own, listening on 127.0.0.1 only, on a free high port, its Unix socket in
# the data directory, ssl on with a self-made certificate for localhost/127.0.0.1; a SCRAM user,
# an md5 user (its password stored as md5, so the server really asks for md5), and a test
# database with a table of three rows. Prints KEY=VALUE lines: PORT, SCRAM_USER, SCRAM_PASSWORD,
# UTF8_USER (a SCRAM user whose password is UTF8_PASSWORD_ASCII_PART followed by U+00A0, e-acute
# and U+00AD, which SASLprep changes), MD5_USER, MD5_PASSWORD, DATABASE, CA_FILE, DATADIR.
# stop: stops the server and removes its data directory. Both may be run twice.
#
# The data directory is not under STATEDIR: pytest's temporary directories are private to root
# (mode 0700), where the postgres user cannot reach. It is a fresh `mktemp -d` owned by postgres,
# and STATEDIR/datadir records where it is.
set -euo pipefail
action=${1:?usage: postgresql.sh start|stop STATEDIR}
statedir=$(realpath -m "${2:?usage: postgresql.sh start|stop STATEDIR}")
bin=/usr/lib/postgresql/15/bin
mkdir -p "$statedir"

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

stop() {
    local record="$statedir/datadir"
    [ -f "$record" ] || return 0
    local data
    data=$(cat "$record")
    if [ -f "$data/db/postmaster.pid" ]; then
        if ! as_postgres "$bin/pg_ctl" -D "$data/db" -m fast -w -t 30 stop >/dev/null 2>&1; then
            # pg_ctl could not stop it: end the postmaster this script started, by its pid.
            local pid
            pid=$(head -n 1 "$data/db/postmaster.pid" 2>/dev/null || true)
            if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; sleep 2; fi
        fi
    fi
    case "$data" in
        /tmp/probekit-pg.*) rm -rf "$data" ;;
    esac
    rm -f "$record"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    stop
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    local data port scram_pw md5_pw
    data=$(mktemp -d /tmp/probekit-pg.XXXXXX)
    echo "$data" > "$statedir/datadir"
    [ "$(id -u)" = 0 ] && chown postgres: "$data"
    chmod 0700 "$data"
    port=$(free_port)
    scram_pw=$(openssl rand -hex 12)
    md5_pw=$(openssl rand -hex 12)

    as_postgres "$bin/initdb" -D "$data/db" -U postgres -A trust -E UTF8 --no-sync \
        --locale=C >"$data/initdb.log" 2>&1
    # The certificate: self-signed, so it is its own CA for the clients.
    openssl req -x509 -newkey rsa:2048 -nodes -days 90 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$data/db/server.key" -out "$data/db/server.crt" >/dev/null 2>&1
    cp "$data/db/server.crt" "$statedir/ca.pem"
    [ "$(id -u)" = 0 ] && chown postgres: "$data/db/server.key" "$data/db/server.crt"
    chmod 0600 "$data/db/server.key"
    mkdir -p "$data/sock"
    [ "$(id -u)" = 0 ] && chown postgres: "$data/sock"
    cat >>"$data/db/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data/sock'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
shared_buffers = 16MB
log_connections = on
CONF
    # Local (socket, private to postgres) is trusted for set-up; TCP needs a password: md5 for
    # the md5 user, SCRAM for everyone else.
    cat >"$data/db/pg_hba.conf" <<HBA
local all postgres trust
host all md5user 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
HBA
    as_postgres "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 start >/dev/null
    as_postgres "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$data/sock" -p "$port" -U postgres \
        -d postgres >/dev/null <<SQL
SET password_encryption = 'scram-sha-256';
CREATE ROLE scramuser LOGIN PASSWORD '$scram_pw';
-- SASLprep maps U+00A0 to a space and U+00AD to nothing: the client must do the same.
CREATE ROLE utf8user LOGIN PASSWORD U&'$scram_pw\00A0\00E9\00AD';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD '$md5_pw';
CREATE DATABASE probekit_test OWNER scramuser;
\\connect probekit_test
SET ROLE scramuser;
CREATE TABLE items (name text);
INSERT INTO items VALUES ('alpha'), ('beta'), ('gamma');
GRANT SELECT ON items TO md5user;
GRANT SELECT ON items TO utf8user;
SQL
    echo "PORT=$port"
    echo "SCRAM_USER=scramuser"
    echo "SCRAM_PASSWORD=$scram_pw"
    echo "UTF8_USER=utf8user"
    echo "UTF8_PASSWORD_ASCII_PART=$scram_pw"
    echo "MD5_USER=md5user"
    echo "MD5_PASSWORD=$md5_pw"
    echo "DATABASE=probekit_test"
    echo "CA_FILE=$statedir/ca.pem"
    echo "DATADIR=$data"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: postgresql.sh start|stop STATEDIR" >&2; exit 2 ;;
esac
