#!/bin/sh
# The hops toward each address, by TTL-limited pings (verify_paths.yml; read by plugins/plugin_utils/_lab_paths.py).
# Arguments: pairs of <address> <hops>. Prints "<address> <ttl> <ping's answer line>" for ttl 1..hops, stopping at
# the destination's echo reply or any error other than "Time to live exceeded" (an ICMP error from a node, or ping's
# own complaint such as "ping: connect: Network is unreachable"); an empty answer is no answer.
# A router answers at most about one ICMP error a second to one address once a burst of six is spent (the kernel's
# icmp_ratelimit), so a silent hop is asked up to three times.
while [ "$#" -ge 2 ]; do
  address=$1 hops=$2
  shift 2
  ttl=1
  while [ "$ttl" -le "$hops" ]; do
    tries=0 line=
    while [ "$tries" -lt 3 ] && [ -z "$line" ]; do
      line=$(ping -n -c 1 -W 1 -t "$ttl" "$address" 2>&1 | grep -E -m 1 '^(From |[0-9]+ bytes from |ping: )')
      tries=$((tries + 1))
    done
    printf '%s %s %s\n' "$address" "$ttl" "$line"
    case $line in
      *'Time to live exceeded'*|'') ttl=$((ttl + 1)) ;;
      *) break ;;
    esac
  done
done
