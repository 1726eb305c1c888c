#!/bin/bash
# The seed's "Script to Set Up the Network" (seed-lab.md, "Launching Multiple Routers and Hosts"): cleanup,
# bridges/taps/veth, then one qemu-system-x86_64 line per VM, in the seed's order and with the seed's MACs and taps.
# Bench changes, each needed to run it here and nothing more:
#   - every `ip` and every QEMU runs inside the benchmark's namespace $SEED_NS (QEMU through `ip netns exec`, so it
#     opens its taps there and its SSH forward listens on the namespace's 127.0.0.1);
#   - the seed's per-VM Yocto bzImage/ext4 become our guest kernel + initrd and a qcow2 overlay per VM on our base
#     image (created here, as the seed's per-VM images would have been copied);
#   - `-accel tcg` (KVM does not work on this host); a management NIC (user-mode, restrict=on, SSH forward) so the
#     guests can be configured; `-display none` and a serial log instead of a window; our init's command line
#     (NIC names by MAC) appended to the seed's `root=/dev/vda rw`; root's authorized key through fw_cfg (the image
#     carries none).
# Inputs: SEED_NS SEED_KERNEL SEED_INITRD SEED_BASE SEED_DISKS SEED_APPEND SEED_LOGS SEED_KEY
ip() { command ip -n "$SEED_NS" "$@"; }
HERE=$(cd "$(dirname "$0")" && pwd)
QEMU="env ip netns exec $SEED_NS qemu-system-x86_64"

vm_disk() {  # the seed's vms/<vm>.ext4, as a copy-on-write overlay of our base image
    qemu-img create -q -f qcow2 -b "$SEED_BASE" -F raw "$SEED_DISKS/$1.qcow2"
    echo "file=$SEED_DISKS/$1.qcow2,if=virtio,format=qcow2"
}
mgmt() {  # <vm> <ssh port> <mgmt mac> <lab macs>: management NIC + serial log + our init's command line
    echo "-device virtio-net-pci,netdev=mgmt,mac=$3 -netdev user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:$2-:22"
    echo "-display none -serial file:$SEED_LOGS/$1.console"
    # the image carries no key: root's authorized key goes in at boot, as the collection hands it over
    echo "-fw_cfg name=opt/qemulab/authorized_keys,file=$SEED_KEY.pub"
}
append() {  # <vm> <mgmt mac> <lab macs>
    echo "root=/dev/vda rw $SEED_APPEND qemulab.hostname=$1 qemulab.mgmt=$2 qemulab.nics=$3"
}

# Cleanup script
"$HERE/cleanup.sh" 2>/dev/null

# Create bridges and TAP interfaces
for i in $(seq 1 6)
do
    ip link add name br${i} type bridge
    ip link set br${i} up
    for j in $(seq 1 2)
    do
        ip tuntap add mode tap vport${i}${j}
        ip link set vport${i}${j} up
        ip link set vport${i}${j} master br${i}
    done
done

# Create virtual ethernet and connect it to br1
ip link add dev veth0 type veth peer name veth1
ip link set veth0 up
ip link set veth0 master br1
ip address add 10.20.10.4/24 dev veth1
ip link set veth1 up

# Start up routers
# rt1
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk rt1)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:71' \
-netdev tap,id=net0,ifname=vport11,script=no,downscript=no \
-device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:72' \
-netdev tap,id=net1,ifname=vport21,script=no,downscript=no \
-device virtio-net-pci,netdev=net2,mac='12:34:56:AB:CD:73' \
-netdev tap,id=net2,ifname=vport31,script=no,downscript=no \
$(mgmt rt1 2201 52:54:00:5e:ed:01) \
-name rt1 -daemonize --append "$(append rt1 52:54:00:5e:ed:01 12:34:56:AB:CD:71,12:34:56:AB:CD:72,12:34:56:AB:CD:73)"

# rt2
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk rt2)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:74' \
-netdev tap,id=net0,ifname=vport22,script=no,downscript=no \
-device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:75' \
-netdev tap,id=net1,ifname=vport42,script=no,downscript=no \
$(mgmt rt2 2202 52:54:00:5e:ed:02) \
-name rt2 -daemonize --append "$(append rt2 52:54:00:5e:ed:02 12:34:56:AB:CD:74,12:34:56:AB:CD:75)"

# rt3
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk rt3)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:76' \
-netdev tap,id=net0,ifname=vport32,script=no,downscript=no \
-device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:77' \
-netdev tap,id=net1,ifname=vport52,script=no,downscript=no \
$(mgmt rt3 2203 52:54:00:5e:ed:03) \
-name rt3 -daemonize --append "$(append rt3 52:54:00:5e:ed:03 12:34:56:AB:CD:76,12:34:56:AB:CD:77)"

# rt4
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk rt4)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:78' \
-netdev tap,id=net0,ifname=vport41,script=no,downscript=no \
-device virtio-net-pci,netdev=net1,mac='12:34:56:AB:CD:79' \
-netdev tap,id=net1,ifname=vport51,script=no,downscript=no \
-device virtio-net-pci,netdev=net2,mac='12:34:56:AB:CD:7A' \
-netdev tap,id=net2,ifname=vport61,script=no,downscript=no \
$(mgmt rt4 2204 52:54:00:5e:ed:04) \
-name rt4 -daemonize --append "$(append rt4 52:54:00:5e:ed:04 12:34:56:AB:CD:78,12:34:56:AB:CD:79,12:34:56:AB:CD:7A)"

# Start up hosts
# h1
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk h1)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7B' \
-netdev tap,id=net0,ifname=vport12,script=no,downscript=no \
$(mgmt h1 2205 52:54:00:5e:ed:05) \
-name h1 -daemonize --append "$(append h1 52:54:00:5e:ed:05 12:34:56:AB:CD:7B)"

# h2
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk h2)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7C' \
-netdev tap,id=net0,ifname=vport62,script=no,downscript=no \
$(mgmt h2 2206 52:54:00:5e:ed:06) \
-name h2 -daemonize --append "$(append h2 52:54:00:5e:ed:06 12:34:56:AB:CD:7C)"

# Test Host
ip tuntap add mode tap vport13
ip link set vport13 up
ip link set vport13 master br1

# htest
$QEMU -kernel $SEED_KERNEL -initrd $SEED_INITRD -accel tcg -m 1G \
-drive "$(vm_disk htest)" \
-device virtio-net-pci,netdev=net0,mac='12:34:56:AB:CD:7D' \
-netdev tap,id=net0,ifname=vport13,script=no,downscript=no \
$(mgmt htest 2207 52:54:00:5e:ed:07) \
-name htest -daemonize --append "$(append htest 52:54:00:5e:ed:07 12:34:56:AB:CD:7D)"
