# On a read-only disk: reads work, the kernel reports ro=1, and an O_DIRECT write fails.
# Details: sha256 of the first vtest.size bytes (default 65536) so the host can check the read.
. /lib/vtest.sh
dev="/dev/${VTEST_dev:-vda}"
size="${VTEST_size:-65536}"
vt_wait_dev "$dev" 5 || vt_fail "no-device-$dev"
ro="$(cat /sys/block/${dev#/dev/}/ro)"
vt_detail "dev=$dev" "disk_bytes=$(blockdev --getsize64 "$dev")" "ro=$ro"
dd if="$dev" of=/tmp/readback bs="$size" count=1 iflag=direct 2>/tmp/dd.err \
  || vt_fail "read-failed:$(tr ' \n' '_' < /tmp/dd.err)"
vt_detail "sha256=$(sha256sum < /tmp/readback | cut -d' ' -f1)" "size=$size"
dd if=/dev/urandom of=/tmp/pattern bs=4096 count=1 2>/dev/null
if dd if=/tmp/pattern of="$dev" bs=4096 count=1 oflag=direct conv=notrunc 2>/tmp/dd.err; then
  vt_detail "write=succeeded"
  exit 1
fi
vt_detail "write=failed:$(head -1 /tmp/dd.err | tr ' ' '_')"
[ "$ro" = 1 ] || vt_fail "kernel-did-not-mark-disk-read-only"
exit 0
