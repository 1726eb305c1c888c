#!/bin/sh
# guest_network on a guest without Python (tasks/console.yml): POSIX sh and busybox applets only.
# $1 apply|check  $2 interfaces file  $3 its text, base64  $4 sysctl file  $5 its text, base64
# $6 forwarding 0|1  $7 persist 0|1  $8 base64 lines "nic DEV [ADDRESS/LEN]" and "route TO VIA [DEV]"
# Prints "changed: WHAT" per difference (and, with apply, fixes it); exits non-zero when the result is still wrong.
mode=$1 ifile=$2 itext=$3 sfile=$4 stext=$5 forwarding=$6 persist=$7 plan=$8

decode() { printf '%s' "$1" | base64 -d; }
say() { echo "changed: $*"; }

# 0 when FILE holds exactly the decoded TEXT (a trailing newline counts: the x keeps it from $(...))
same_file() {
    have=$(cat "$1" 2>/dev/null; echo x)
    want=$(decode "$2"; echo x)
    [ -f "$1" ] && [ "$have" = "$want" ]
}

write_file() {
    mkdir -p "$(dirname "$1")" && decode "$2" > "$1.qemulab-new" && mv -f "$1.qemulab-new" "$1"
}

# 0 when every planned NIC is up with its address and every planned route is there
live_ok() {
    decode "$plan" | {
        ok=0
        while read -r kind a b c; do
            case $kind in
            nic)
                ip link show dev "$a" 2>/dev/null | grep -q '[<,]UP[,>]' || ok=1
                [ -z "$b" ] || ip -4 addr show dev "$a" 2>/dev/null | grep -q " inet $b " || ok=1 ;;
            route)
                ip -4 route show 2>/dev/null | grep -q "^$a via $b ${c:+dev $c}" || ok=1 ;;
            esac
        done
        exit $ok
    }
}

nics=$(decode "$plan" | while read -r kind dev _rest; do [ "$kind" = nic ] && printf '%s ' "$dev"; done)
reapply=0
if [ "$persist" = 1 ]; then
    if ! same_file "$ifile" "$itext"; then
        say "$ifile"; reapply=1
        [ "$mode" = check ] || write_file "$ifile" "$itext" || exit 1
    fi
    if ! same_file "$sfile" "$stext"; then
        say "$sfile"
        [ "$mode" = check ] || write_file "$sfile" "$stext" || exit 1
    fi
fi
if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$forwarding" ]; then
    say "net.ipv4.ip_forward = $forwarding"
    [ "$mode" = check ] || echo "$forwarding" > /proc/sys/net/ipv4/ip_forward || exit 1
fi
live_ok || reapply=1
[ "$reapply" = 1 ] || exit 0
say "addresses and routes of $nics"
[ "$mode" = check ] && exit 0
# From a clean slate: a link taken down loses its routes, a flush its addresses; then ifup -f (force: whatever
# ifupdown's state file says) sets up each NIC from the planned file (the written one, or a copy when not persisted).
conf="${TMPDIR:-/tmp}/qemulab-interfaces.$$"
write_file "$conf" "$itext" || exit 1
for dev in $nics; do
    if ! { ip link set dev "$dev" down && ip addr flush dev "$dev"; }; then rm -f "$conf"; exit 1; fi
done
rc=0
for dev in $nics; do
    ifup -f -i "$conf" "$dev" || rc=$?  # busybox's ifup takes one interface a call
done
rm -f "$conf"
[ $rc = 0 ] || { echo "ifup -f $nics failed (rc $rc)" >&2; exit 1; }
live_ok || { echo "after ifup the guest still differs from the plan:" >&2; ip -4 addr >&2; ip -4 route >&2; exit 1; }
