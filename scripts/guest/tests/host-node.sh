# Runs a node script from the host inside this guest's kernel: the host's root is shared read-only
# over 9p (vt_mount_host), and the script runs chrooted there with the guest's /dev, /proc, /sys.
# Loads every extra module first (vt_load_extra_modules: tun, vhost_net, vhost_vsock, 9p...).
# Parameters: vtest.script (absolute host path of the .js to run), vtest.cwd (working directory).
# The script's stdout lines `detail k=v` become result details; its exit code is the result.
. /lib/vtest.sh
[ -n "$VTEST_script" ] || vt_fail "no-script"
vt_load_extra_modules || vt_fail "insmod-failed"
vt_mount_host /host || vt_fail "9p-mount-failed"
t0="$(cut -d' ' -f1 /proc/uptime)"
chroot /host /bin/sh -c "cd '${VTEST_cwd:-/}' && TMPDIR=/dev/shm exec /usr/bin/node '$VTEST_script'" > /tmp/node.out 2>&1
rc=$?
cat /tmp/node.out
grep '^detail ' /tmp/node.out | while read -r _ kv; do vt_detail "$kv"; done
vt_detail "mounted_at=$t0" "node_done=$(cut -d' ' -f1 /proc/uptime)" "node_rc=$rc"
[ "$rc" -eq 0 ] || vt_fail "node-script-failed"
exit 0
