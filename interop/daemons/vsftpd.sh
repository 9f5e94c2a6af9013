#!/usr/bin/env bash
# Two vsftpd on loopback high ports, from configs in STATEDIR: a plain one, and one that requires
# TLS (AUTH TLS, explicit FTPS) for logins and data, with a self-signed certificate made here.
# Both serve one test user (a local account with a password), chrooted into its home, which holds
# /drop with three files (/drop/a.csv, ...); passive mode announces 127.0.0.1 with a port range of its own.
#
#   vsftpd.sh start STATEDIR   prints FTP_PORT, FTPS_PORT, FTP_USER, FTP_PASSWORD, FTP_CA_FILE
#   vsftpd.sh stop STATEDIR    stops both (by the process groups recorded at start)
#
# Runs as root (vsftpd starts as root to authenticate local users through PAM, then drops to the
# user); works when run twice: the user and its files are made again, a running pair is stopped.
set -euo pipefail

action=${1:?usage: vsftpd.sh start|stop STATEDIR}
state=${2:?usage: vsftpd.sh start|stop STATEDIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)

user=probekit-ftp
password=probekit-interop-ftp-pw
home=/var/lib/probekit-ftp

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
    for name in plain tls; do
        pidfile="$state/$name.pid"
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile")
            kill -TERM -- "-$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL -- "-$pid" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

wait_port() {
    for _ in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "vsftpd did not listen on 127.0.0.1:$1; its log:" >&2
    cat "$state"/*.log >&2 || true
    return 1
}

config() {  # config NAME PORT PASV_MIN PASV_MAX EXTRA...
    local name=$1 port=$2 low=$3 high=$4
    shift 4
    cat > "$state/$name.conf" <<CONF
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=$port
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=NO
chroot_local_user=YES
pam_service_name=vsftpd
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=$low
pasv_max_port=$high
secure_chroot_dir=$state/empty
nopriv_user=nobody
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
xferlog_enable=NO
vsftpd_log_file=$state/$name.log
dual_log_enable=NO
ftpd_banner=probekit interop vsftpd ($name)
CONF
    printf '%s\n' "$@" >> "$state/$name.conf"
}

start() {
    stop
    if [ "$(id -u)" != 0 ]; then
        echo "vsftpd.sh: run as root (vsftpd authenticates local users through PAM)" >&2
        exit 1
    fi
    if ! id "$user" >/dev/null 2>&1; then
        useradd --system --home-dir "$home" --shell /bin/sh "$user"
    fi
    echo "$user:$password" | chpasswd
    mkdir -p "$home/drop"
    for f in a b c; do printf 'id,value\n1,%s\n' "$f" > "$home/drop/$f.csv"; done
    # Root-owned and read-only to the user: vsftpd chroots the user into a home it cannot write.
    chown -R root:root "$home"
    chmod 755 "$home" "$home/drop"
    chmod 644 "$home"/drop/*.csv

    mkdir -p "$state/empty"
    chmod 755 "$state/empty"
    if [ ! -f "$state/cert.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$state/key.pem" -out "$state/cert.pem" 2>/dev/null
        chmod 600 "$state/key.pem"
    fi

    plain_port=$(free_port)
    tls_port=$(free_port)
    while [ "$tls_port" = "$plain_port" ]; do tls_port=$(free_port); done
    base=$(( (RANDOM % 200) * 100 + 40000 ))
    config plain "$plain_port" "$base" $((base + 49))
    config tls "$tls_port" $((base + 50)) $((base + 99)) \
        ssl_enable=YES \
        "rsa_cert_file=$state/cert.pem" \
        "rsa_private_key_file=$state/key.pem" \
        allow_anon_ssl=NO \
        force_local_logins_ssl=YES \
        force_local_data_ssl=YES \
        require_ssl_reuse=YES \
        ssl_ciphers=HIGH

    for name in plain tls; do
        setsid /usr/sbin/vsftpd "$state/$name.conf" > "$state/$name.out" 2>&1 < /dev/null &
        echo $! > "$state/$name.pid"
    done
    wait_port "$plain_port"
    wait_port "$tls_port"
    echo "FTP_PORT=$plain_port"
    echo "FTPS_PORT=$tls_port"
    echo "FTP_USER=$user"
    echo "FTP_PASSWORD=$password"
    echo "FTP_CA_FILE=$state/cert.pem"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: vsftpd.sh start|stop STATEDIR" >&2; exit 2 ;;
esac
