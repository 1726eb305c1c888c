#!/bin/bash
# The seed has no stop step (its VMs are closed by hand); the cleanup script cannot delete a tap QEMU still holds.
# This is the shortest honest equivalent: SIGTERM every QEMU of the namespace and wait until they are gone.
# QEMU runs inside the namespace (started with `ip netns exec`), so `ip netns pids` finds exactly the lab's VMs.
pids=$(ip netns pids "$SEED_NS")
[ -n "$pids" ] && kill $pids
for _ in $(seq 1 100); do
    [ -z "$(ip netns pids "$SEED_NS")" ] && exit 0
    sleep 0.1
done
echo "QEMU still running in $SEED_NS: $(ip netns pids "$SEED_NS")" >&2
exit 1
