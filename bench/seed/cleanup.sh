#!/bin/bash
# The seed's cleanup script (seed-lab.md, "Cleanup Script"), verbatim below the marked lines.
# Bench changes: every `ip` runs inside the benchmark's namespace $SEED_NS.
ip() { command ip -n "$SEED_NS" "$@"; }

# Delete the virtual ethernet tunnel
ip link set dev veth0 nomaster
ip link del dev veth0

# Delete htest port
ip link set dev vport13 nomaster
ip tuntap del mode tap vport13

# Delete bridges and TAP interfaces
for i in $(seq 1 6)
do
    for j in $(seq 1 2)
    do
        ip link set dev vport${i}${j} nomaster
        ip tuntap del mode tap "vport${i}${j}"
    done
    ip link delete dev br${i}
done
