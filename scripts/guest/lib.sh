# Helpers sourced by /init and every /tests/*.sh (installed in the guest as /lib/vtest.sh).
# Details recorded with vt_detail end up on the VTEST-RESULT line as key=value pairs.
VTEST_DETAILS=/tmp/vtest-details
export VTEST_DETAILS

# vt_detail key=value... : append details to the result line (values must not contain spaces).
vt_detail() {
  for kv in "$@"; do echo "$kv" >> "$VTEST_DETAILS"; done
}

# vt_fail reason : record why and stop the test with a failure.
vt_fail() {
  vt_detail "reason=$1"
  exit 1
}

# vt_wait_dev path [seconds] : wait for a device node (drivers may probe asynchronously).
vt_wait_dev() {
  n=$(( ${2:-5} * 10 ))
  while [ ! -e "$1" ] && [ "$n" -gt 0 ]; do usleep 100000; n=$((n - 1)); done
  [ -e "$1" ]
}

# vt_load_extra_modules : insmod every module shipped in /modules/extra (not loaded at boot: tun,
# vhost, vhost_net, vhost_vsock, 9p and their dependencies) in the order build-guest.sh computed.
vt_load_extra_modules() {
  for m in $(cat /modules/extra/order); do
    insmod "/modules/extra/$m.ko" 2>/tmp/insmod.err || grep -q 'File exists' /tmp/insmod.err \
      || { echo "VTEST-WARN insmod $m: $(cat /tmp/insmod.err)"; return 1; }
  done
}

# vt_mount_host DIR : mount the host's root (QEMU fsdev mount_tag=hostroot, read-only) at DIR with
# this guest's /dev, /proc, /sys bound inside, ready for `chroot DIR`. The host's /tmp stays visible
# (checkouts may live there); DIR/dev/shm is a writable tmpfs for TMPDIR.
vt_mount_host() {
  mkdir -p "$1"
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot "$1" || return 1
  mount -o bind /dev "$1/dev" && mount -o bind /proc "$1/proc" && mount -o bind /sys "$1/sys" \
    && mkdir -p /dev/shm && mount -t tmpfs tmpfs "$1/dev/shm"
}
