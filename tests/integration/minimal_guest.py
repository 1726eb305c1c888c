"""A minimal busybox guest for real QEMU tests, built from Debian packages and cached by its inputs.

The kernel .deb is downloaded with `apt-get download` and unpacked with `dpkg-deb -x` (never installed on the host);
the initramfs carries busybox-static, the virtio-net module chain and an /init that configures eth0 from the kernel
command line (`qemulab.ip=ADDR/LEN`, optional `qemulab.ping=PEER`) and reports the ping result on the serial console.

Run as a script to build (or find) the cached guest and print its paths.
"""
import glob
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

CACHE_ROOT = "/var/cache/qemulab/test-guest"
BUSYBOX = "/bin/busybox"

# insmod order: each module's dependencies come before it (Debian 6.1 builds all of these as modules).
MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net"]

PING_OK = "QEMULAB-PING-OK"
PING_FAIL = "QEMULAB-PING-FAIL"
READY = "QEMULAB-GUEST-READY"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in %(modules)s; do
  f=$(ls /lib/modules/$m.ko 2>/dev/null) && insmod "$f"
done
ip=""; peer=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    qemulab.ip=*) ip="${arg#qemulab.ip=}" ;;
    qemulab.ping=*) peer="${arg#qemulab.ping=}" ;;
  esac
done
ip link set lo up
if [ -n "$ip" ]; then
  ip addr add "$ip" dev eth0
  ip link set eth0 up
fi
echo "%(ready)s $(cat /sys/class/net/eth0/address 2>/dev/null)"
if [ -n "$peer" ]; then
  n=0
  while [ $n -lt 60 ]; do
    if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then
      echo "%(ok)s $peer"
      break
    fi
    n=$((n + 1))
  done
  [ $n -ge 60 ] && echo "%(fail)s $peer"
fi
while true; do sleep 3600; done
""" % {"modules": " ".join(MODULES), "ready": READY, "ok": PING_OK, "fail": PING_FAIL}


def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def kernel_package():
    """The versioned kernel package the linux-image-amd64 metapackage points at, and its candidate version."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    pkg = next(line.split(":", 1)[1].strip() for line in out.splitlines()
               if line.strip().startswith("Depends:") and "linux-image-" in line)
    policy = _run(["apt-cache", "policy", pkg]).stdout
    version = next(line.split(":", 1)[1].strip() for line in policy.splitlines() if "Candidate:" in line)
    return pkg, version


def busybox_version():
    out = _run(["dpkg-query", "-W", "-f=${Version}", "busybox-static"]).stdout
    return out.strip()


def _cache_key(pkg, version):
    data = json.dumps({"kernel": [pkg, version], "busybox": busybox_version(), "init": INIT_SCRIPT,
                       "modules": MODULES}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _copy_module(tree, name, dest_dir):
    found = [p for p in glob.glob(os.path.join(tree, "lib", "modules", "*", "kernel", "**", name + ".ko*"),
                                  recursive=True)]
    if not found:
        raise RuntimeError("module %s not found in the kernel package" % name)
    src = found[0]
    dest = os.path.join(dest_dir, name + ".ko")
    if src.endswith(".xz"):
        with lzma.open(src) as f_in, open(dest, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
    elif src.endswith(".zst"):
        with open(dest, "wb") as f_out:
            subprocess.run(["zstd", "-dc", src], check=True, stdout=f_out)
    else:
        shutil.copy(src, dest)


def build(cache_root=CACHE_ROOT):
    """Build the guest (or reuse the cached one); return {"kernel": path, "initrd": path}."""
    pkg, version = kernel_package()
    out_dir = os.path.join(cache_root, _cache_key(pkg, version))
    result = {"kernel": os.path.join(out_dir, "vmlinuz"), "initrd": os.path.join(out_dir, "initrd.gz")}
    if os.path.exists(os.path.join(out_dir, "done")):
        return result
    os.makedirs(cache_root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=cache_root)
    try:
        deb_dir = os.path.join(cache_root, "debs")
        os.makedirs(deb_dir, exist_ok=True)
        debs = glob.glob(os.path.join(deb_dir, "%s_%s_*.deb" % (pkg, version.replace(":", "%3a"))))
        if not debs:
            _run(["apt-get", "download", "%s=%s" % (pkg, version)], cwd=deb_dir)
            debs = glob.glob(os.path.join(deb_dir, "%s_*.deb" % pkg))
        tree = os.path.join(work, "tree")
        _run(["dpkg-deb", "-x", debs[0], tree])
        root = os.path.join(work, "initramfs")
        for sub in ("bin", "proc", "sys", "dev", "lib/modules"):
            os.makedirs(os.path.join(root, sub))
        shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
        for name in MODULES:
            _copy_module(tree, name, os.path.join(root, "lib", "modules"))
        init = os.path.join(root, "init")
        with open(init, "w") as f:
            f.write(INIT_SCRIPT)
        os.chmod(init, 0o755)
        files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, check=True,
                              capture_output=True).stdout
        staging = os.path.join(work, "out")
        os.makedirs(staging)
        with gzip.open(os.path.join(staging, "initrd.gz"), "wb") as f:
            f.write(cpio)
        shutil.copy(glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))[0], os.path.join(staging, "vmlinuz"))
        open(os.path.join(staging, "done"), "w").close()
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    print(json.dumps(build(sys.argv[1] if len(sys.argv) > 1 else CACHE_ROOT)))
