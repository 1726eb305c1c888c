#!/bin/bash
# The seed's check that routing works, as a loop: until h1 (10.20.10.2) pings h2 (10.20.60.2).
# Inputs: SEED_NS SEED_KEY
deadline=$((SECONDS + 120))
until ip netns exec "$SEED_NS" ssh -i "$SEED_KEY" -p 2205 -o BatchMode=yes -o ConnectTimeout=3 \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 \
        ping -c 1 -W 1 10.20.60.2; do
    [ $SECONDS -lt $deadline ] || { echo "h1 does not reach h2 after 120 s" >&2; exit 1; }
    sleep 0.5
done
