#!/usr/bin/env bash
# sshd on a loopback high port, from an sshd_config and an ed25519 host key in STATEDIR, with
# `Subsystem sftp internal-sftp`. One test user (a local account) logs in with a password or with
# a key made here (authorized in /var/lib/probekit-ssh/authorized_keys); its home holds
# /var/lib/probekit-ssh/drop with three files.
#
#   openssh.sh start STATEDIR   prints SSH_PORT, SSH_USER, SSH_PASSWORD, SSH_KEY_FILE,
#                               SSH_HOST_KEY_FINGERPRINT, SSH_HOME
#   openssh.sh stop STATEDIR    stops it (by the pid recorded at start)
#
# Runs as root (sshd checks passwords against /etc/shadow and switches to the user); works when
# run twice: the user, its files and keys are made again, a running sshd is stopped first.
set -euo pipefail

action=${1:?usage: openssh.sh start|stop STATEDIR}
state=${2:?usage: openssh.sh start|stop STATEDIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)

user=probekit-ssh
password=probekit-interop-ssh-pw
home=/var/lib/probekit-ssh

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
    pidfile="$state/sshd.pid"
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

wait_port() {
    for _ in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "sshd did not listen on 127.0.0.1:$1; its log:" >&2
    cat "$state/sshd.log" >&2 || true
    return 1
}

start() {
    stop
    if [ "$(id -u)" != 0 ]; then
        echo "openssh.sh: run as root (sshd reads /etc/shadow and switches to the user)" >&2
        exit 1
    fi
    if ! id "$user" >/dev/null 2>&1; then
        useradd --system --home-dir "$home" --shell /bin/sh "$user"
    fi
    echo "$user:$password" | chpasswd
    mkdir -p "$home/drop"
    for f in a b c; do printf 'id,value\n1,%s\n' "$f" > "$home/drop/$f.csv"; done
    chown -R root:root "$home"
    chmod 755 "$home" "$home/drop"
    chmod 644 "$home"/drop/*.csv

    # sshd's privilege separation directory (the Debian service creates it; no service runs here)
    mkdir -p /run/sshd
    chmod 755 /run/sshd

    rm -f "$state/ssh_host_ed25519_key" "$state/ssh_host_ed25519_key.pub" \
        "$state/client_ed25519" "$state/client_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C probekit-interop-host -f "$state/ssh_host_ed25519_key"
    ssh-keygen -q -t ed25519 -N '' -C probekit-interop-client -f "$state/client_ed25519"
    # Read by sshd as the user, so outside STATEDIR (pytest makes it 0700): root-owned, 0644.
    cp "$state/client_ed25519.pub" "$home/authorized_keys"
    chown root:root "$home/authorized_keys"
    chmod 644 "$home/authorized_keys"

    port=$(free_port)
    cat > "$state/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $state/ssh_host_ed25519_key
PidFile $state/sshd.pid
AuthorizedKeysFile $home/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers $user
Subsystem sftp internal-sftp
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 200:30:400
LogLevel VERBOSE
CONF
    /usr/sbin/sshd -t -f "$state/sshd_config"
    setsid /usr/sbin/sshd -D -f "$state/sshd_config" -E "$state/sshd.log" < /dev/null > /dev/null 2>&1 &
    echo $! > "$state/sshd.pid"
    wait_port "$port"
    echo "SSH_PORT=$port"
    echo "SSH_USER=$user"
    echo "SSH_PASSWORD=$password"
    echo "SSH_KEY_FILE=$state/client_ed25519"
    echo "SSH_HOST_KEY_FINGERPRINT=$(ssh-keygen -lf "$state/ssh_host_ed25519_key.pub" | awk '{print $2}')"
    echo "SSH_HOME=$home"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: openssh.sh start|stop STATEDIR" >&2; exit 2 ;;
esac
