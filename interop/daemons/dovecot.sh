#!/usr/bin/env bash
# dovecot from STATEDIR on four loopback high ports: IMAP_PORT and POP3_PORT (STARTTLS/STLS
# offered, plain-text login refused before it), IMAPS_PORT and POP3S_PORT (TLS from the first
# byte), with a certificate of a CA made here and one user in a passwd-file whose INBOX holds
# MESSAGES messages.
#   start STATEDIR: prints the ports, USER=, PASSWORD=, MESSAGES=, CA_FILE= (the CA to trust)
#   stop STATEDIR:  stops it (a stop without a start is fine)
# The configuration is STATEDIR/dovecot.conf (dovecot -c), nothing of /etc/dovecot is read.
set -euo pipefail
action=${1:?start|stop}
state=${2:?state directory}
mkdir -p "$state"
state=$(cd "$state" && pwd)
pidfile="$state/run/master.pid"
user=monitor
password='interop-Secret-2'
messages=2

stop() {
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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

# dovecot's processes run as its unprivileged users (made by Debian's package); the test
# user's mail belongs to nobody.
internal_user=dovecot
getent passwd dovecot >/dev/null || internal_user=nobody
login_user=dovenull
getent passwd dovenull >/dev/null || login_user=nobody
mail_user=nobody

case "$action" in
stop)
    stop
    ;;
start)
    stop
    make_certs
    let_traverse "$state"
    read -r imap imaps pop3 pop3s < <(free_ports 4)
    mkdir -p "$state/run" "$state/lib"
    uid=$(id -u "$mail_user")
    gid=$(id -g "$mail_user")
    # The test user's maildir: MESSAGES messages in INBOX/new.
    mail="$state/mail/$user"
    rm -rf "$state/mail"
    mkdir -p "$mail/new" "$mail/cur" "$mail/tmp"
    for n in $(seq "$messages"); do
        printf 'From: postmaster@test.internal\r\nTo: %s@test.internal\r\nSubject: interop %s\r\nMessage-ID: <%s@test.internal>\r\n\r\nmessage %s\r\n' \
            "$user" "$n" "$n" "$n" > "$mail/new/100000000$n.M$n.interop"
    done
    chown -R "$uid:$gid" "$state/mail"
    echo "$user:{PLAIN}$password:$uid:$gid::$mail::" > "$state/passwd"
    chgrp "$(id -g "$internal_user")" "$state/passwd"
    chmod 0640 "$state/passwd"
    cat > "$state/dovecot.conf" <<CONF
base_dir = $state/run
state_dir = $state/lib
instance_name = probekit-interop
log_path = $state/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
default_login_user = $login_user
default_internal_user = $internal_user
first_valid_uid = 1
ssl = yes
ssl_cert = <$state/cert.pem
ssl_key = <$state/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
# No growing penalty per client address after failed logins (dovecot skips it for trusted
# networks): every test comes from 127.0.0.1, and the wrong-password cases would slow the next
# logins down to 15 s. Nor the fixed delay of a failure's reply (auth_failure_delay, 2 s by
# default), which also held up the next good login by seconds.
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
mail_location = maildir:~
passdb {
  driver = passwd-file
  args = $state/passwd
}
userdb {
  driver = passwd-file
  args = $state/passwd
}
service imap-login {
  inet_listener imap {
    port = $imap
  }
  inet_listener imaps {
    port = $imaps
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    port = $pop3
  }
  inet_listener pop3s {
    port = $pop3s
    ssl = yes
  }
}
service anvil {
  chroot =
}
service stats {
  unix_listener stats-reader {
    mode = 0600
  }
  unix_listener stats-writer {
    mode = 0660
  }
}
CONF
    dovecot -c "$state/dovecot.conf" </dev/null >>"$state/dovecot.out" 2>&1
    python3 - "$imap" "$imaps" "$pop3" "$pop3s" <<'PY' || { echo "dovecot did not start: $(tail -20 "$state/dovecot.log")" >&2; exit 1; }
import socket, sys, time
deadline = time.monotonic() + 30
for port in map(int, sys.argv[1:]):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.1)
PY
    echo "IMAP_PORT=$imap"
    echo "IMAPS_PORT=$imaps"
    echo "POP3_PORT=$pop3"
    echo "POP3S_PORT=$pop3s"
    echo "USER=$user"
    echo "PASSWORD=$password"
    echo "MESSAGES=$messages"
    echo "CA_FILE=$state/ca.pem"
    ;;
*)
    echo "usage: $0 start|stop STATEDIR" >&2
    exit 2
    ;;
esac
