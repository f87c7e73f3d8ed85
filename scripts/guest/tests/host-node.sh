# Runs a node script from the host inside this guest's kernel: the host's root is shared read-only
# over 9p (vt_mount_host), and the script runs chrooted there with the guest's /dev, /proc, /sys.
# Loads every extra module first (vt_load_extra_modules: tun, vhost_net, vhost_vsock, 9p...).
# Parameters: vtest.script (comma-separated list of scripts run in turn, each an absolute host path
# of a .js file followed by its arguments joined with '+'), vtest.cwd (working directory).
# Scripts' stdout lines `detail k=v` become result details <script>.k=v; all must exit 0 for PASS.
. /lib/vtest.sh
[ -n "$VTEST_script" ] || vt_fail "no-script"
vt_load_extra_modules || vt_fail "insmod-failed"
vt_mount_host /host || vt_fail "9p-mount-failed"
t0="$(cut -d' ' -f1 /proc/uptime)"
# Streamed (tee) so a hang still shows how far a script got on the console.
rc=0
for item in $(echo "$VTEST_script" | tr ',' ' '); do
  cmd="$(echo "$item" | tr '+' ' ')"
  script="${cmd%% *}"
  ( chroot /host /bin/sh -c "cd '${VTEST_cwd:-/}' && PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin TMPDIR=/dev/shm exec /usr/bin/node $cmd" 2>&1
    echo "$?" > /tmp/node.rc ) | tee /tmp/node.out
  r="$(cat /tmp/node.rc)"
  base="$(basename "$script" .js)"
  grep '^detail ' /tmp/node.out | while read -r _ kv; do vt_detail "$base.$kv"; done
  vt_detail "$base.rc=$r" "$base.done=$(cut -d' ' -f1 /proc/uptime)"
  [ "$r" -eq 0 ] || rc=1
done
vt_detail "mounted_at=$t0"
[ "$rc" -eq 0 ] || vt_fail "node-script-failed"
exit 0
