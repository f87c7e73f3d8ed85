# Runs a node script from the host inside this guest's kernel: the host's root is shared read-only
# over 9p (vt_mount_host), and the script runs chrooted there with the guest's /dev, /proc, /sys.
# Loads every extra module first (vt_load_extra_modules: tun, vhost_net, vhost_vsock, 9p...).
# Parameters: vtest.script (absolute host paths of the .js files to run, comma-separated, run in
# turn; each must exit), vtest.cwd (working directory).
# Scripts' stdout lines `detail k=v` become result details; all must exit 0 for PASS.
. /lib/vtest.sh
[ -n "$VTEST_script" ] || vt_fail "no-script"
vt_load_extra_modules || vt_fail "insmod-failed"
vt_mount_host /host || vt_fail "9p-mount-failed"
t0="$(cut -d' ' -f1 /proc/uptime)"
# Streamed (tee) so a hang still shows how far a script got on the console.
rc=0
for script in $(echo "$VTEST_script" | tr ',' ' '); do
  ( chroot /host /bin/sh -c "cd '${VTEST_cwd:-/}' && TMPDIR=/dev/shm exec /usr/bin/node '$script'" 2>&1
    echo "$?" > /tmp/node.rc ) | tee /tmp/node.out
  r="$(cat /tmp/node.rc)"
  grep '^detail ' /tmp/node.out | while read -r _ kv; do vt_detail "$kv"; done
  vt_detail "$(basename "$script" .js)_rc=$r" "$(basename "$script" .js)_done=$(cut -d' ' -f1 /proc/uptime)"
  [ "$r" -eq 0 ] || rc=1
done
vt_detail "mounted_at=$t0"
[ "$rc" -eq 0 ] || vt_fail "node-script-failed"
exit 0
