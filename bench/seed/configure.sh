#!/bin/bash
# Configures the guests the way seed-lab.md says ("Network Configuration Notes"): each guest gets the seed's
# /etc/network/interfaces, routers get `net.ipv4.ip_forward = 1` in /etc/sysctl.conf and `sysctl -p`, then `ifup`.
# The seed does this by hand on each console; here it goes over the management NIC's SSH forward, one VM after
# the other as a person's script would, each as soon as its sshd answers. htest is left unconfigured, as in the seed.
# Inputs: SEED_NS SEED_KEY
HERE=$(cd "$(dirname "$0")" && pwd)
on() {  # <ssh port> <command...>
    local port=$1; shift
    ip netns exec "$SEED_NS" ssh -i "$SEED_KEY" -p "$port" -o BatchMode=yes -o ConnectTimeout=3 \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 "$@"
}
set -e
for vm_port in rt1:2201 rt2:2202 rt3:2203 rt4:2204 h1:2205 h2:2206; do
    vm=${vm_port%:*}; port=${vm_port#*:}
    deadline=$((SECONDS + 300))
    until on "$port" true 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "$vm: no SSH on port $port after 300 s" >&2; exit 1; }
        sleep 1
    done
    on "$port" 'cat > /etc/network/interfaces' < "$HERE/interfaces/$vm"
    case $vm in rt*) on "$port" 'echo "net.ipv4.ip_forward = 1" >> /etc/sysctl.conf && sysctl -p' ;; esac
    on "$port" 'ifup -a'
done
