#!/usr/bin/env bash
# exim, as an SMTP server only (nothing is delivered), from STATEDIR on three loopback high ports:
#   SMTP_PORT:         STARTTLS with a certificate of a CA made here, AUTH PLAIN and LOGIN
#                      (offered only once the session is encrypted) for USER / PASSWORD;
#   SMTP_LOGIN_PORT:   the same, with AUTH LOGIN only (no PLAIN);
#   SMTP_PLAIN_PORT:   no STARTTLS and no AUTH: a server a client cannot encrypt to.
#   start STATEDIR: prints the ports, USER=, PASSWORD=, CA_FILE= (the CA to trust)
#   stop STATEDIR:  stops it (a stop without a start is fine)
# The configuration is STATEDIR/exim.conf, passed with -C; the spool and logs are in STATEDIR.
set -euo pipefail
action=${1:?start|stop}
state=${2:?state directory}
mkdir -p "$state"
state=$(cd "$state" && pwd)
pidfile="$state/exim.pid"
user=monitor
password='interop-Secret-1'

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

# The daemon's unprivileged users must reach files in STATEDIR; pytest makes its temporary
# directories 0700, so let others traverse (not list) the state directory and its parents.
let_traverse() {
    local dir=$1
    while [ "$dir" != / ]; do
        [ -O "$dir" ] && chmod o+x "$dir"
        dir=$(dirname "$dir")
    done
}

free_ports() {
    python3 -c 'import socket
socks = [socket.socket() for _ in range(int(__import__("sys").argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# A CA and a certificate it signs for localhost, 127.0.0.1 and ::1 (made once per state dir).
make_certs() {
    [ -s "$state/cert.pem" ] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=probekit interop CA" \
        -keyout "$state/ca.key" -out "$state/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$state/key.pem" -out "$state/cert.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' \
        > "$state/cert.ext"
    openssl x509 -req -in "$state/cert.csr" -CA "$state/ca.pem" -CAkey "$state/ca.key" \
        -CAcreateserial -days 365 -extfile "$state/cert.ext" -out "$state/cert.pem" 2>/dev/null
}

case "$action" in
stop)
    stop
    ;;
start)
    stop
    make_certs
    let_traverse "$state"
    read -r port login_port plain_port < <(free_ports 3)
    mkdir -p "$state/spool" "$state/log"
    exim_user=root
    if getent passwd Debian-exim >/dev/null; then exim_user=Debian-exim; fi
    cat > "$state/exim.conf" <<CONF
primary_hostname = mail.test.internal
qualify_domain = test.internal
spool_directory = $state/spool
log_file_path = $state/log/%slog
pid_file_path = $pidfile
daemon_smtp_ports = $port : $login_port : $plain_port
local_interfaces = <; 127.0.0.1.$port ; 127.0.0.1.$login_port ; 127.0.0.1.$plain_port
host_lookup =
rfc1413_hosts =
smtp_banner = mail.test.internal ESMTP probekit-interop
tls_certificate = $state/cert.pem
tls_privatekey = $state/key.pem
tls_advertise_hosts = \${if eq{\$received_port}{$plain_port}{}{*}}
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl
acl_check_rcpt:
  accept domains = test.internal
         local_parts = postmaster : $user
  deny   message = 5.1.1 no such user here
acl_check_data:
  deny   message = 5.7.1 this server takes no mail (probekit interop)

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_advertise_condition = \${if and {{def:tls_in_cipher}{!eq{\$received_port}{$login_port}}}}
  server_condition = \${if and {{eq{\$auth2}{$user}}{eq{\$auth3}{$password}}}}
  server_set_id = \$auth2
login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = <| Username: | Password:
  server_advertise_condition = \${if def:tls_in_cipher}
  server_condition = \${if and {{eq{\$auth1}{$user}}{eq{\$auth2}{$password}}}}
  server_set_id = \$auth1
CONF
    chown -R "$exim_user" "$state/spool" "$state/log"
    chmod 0640 "$state/key.pem"
    chgrp "$(id -gn "$exim_user")" "$state/key.pem" 2>/dev/null || true
    exim4 -C "$state/exim.conf" -bd -oP "$pidfile"
    for _ in $(seq 100); do
        [ -s "$pidfile" ] && break
        sleep 0.1
    done
    [ -s "$pidfile" ] || { echo "exim did not start: $(cat "$state"/log/* 2>/dev/null)" >&2; exit 1; }
    echo "SMTP_PORT=$port"
    echo "SMTP_LOGIN_PORT=$login_port"
    echo "SMTP_PLAIN_PORT=$plain_port"
    echo "USER=$user"
    echo "PASSWORD=$password"
    echo "CA_FILE=$state/ca.pem"
    ;;
*)
    echo "usage: $0 start|stop STATEDIR" >&2
    exit 2
    ;;
esac
