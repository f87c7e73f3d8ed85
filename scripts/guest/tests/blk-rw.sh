# Writes a random pattern to /dev/vda with O_DIRECT, reads it back with O_DIRECT and compares.
# Parameters: vtest.offset (bytes, multiple of vtest.bs; default 0), vtest.size (bytes, default
# 1048576), vtest.bs (I/O size per request, default 65536), vtest.dev (default vda).
# Details: sha256 of the pattern (the host compares it with the image bytes), disk size in bytes.
. /lib/vtest.sh
dev="/dev/${VTEST_dev:-vda}"
off="${VTEST_offset:-0}"
size="${VTEST_size:-1048576}"
bs="${VTEST_bs:-65536}"
vt_wait_dev "$dev" 5 || vt_fail "no-device-$dev"
[ $((off % bs)) -eq 0 ] && [ $((size % bs)) -eq 0 ] || vt_fail "offset-and-size-must-be-multiples-of-bs"
disk_bytes="$(blockdev --getsize64 "$dev")"
vt_detail "dev=$dev" "disk_bytes=$disk_bytes" "offset=$off" "size=$size" "bs=$bs" "ro=$(cat /sys/block/${dev#/dev/}/ro)"
[ $((off + size)) -le "$disk_bytes" ] || vt_fail "range-beyond-end-of-disk"
count=$((size / bs))
dd if=/dev/urandom of=/tmp/pattern bs="$bs" count="$count" 2>/dev/null || vt_fail "urandom"
dd if=/tmp/pattern of="$dev" bs="$bs" count="$count" seek=$((off / bs)) oflag=direct conv=notrunc,fsync 2>/tmp/dd.err \
  || vt_fail "write-failed:$(tr ' \n' '_' < /tmp/dd.err)"
dd if="$dev" of=/tmp/readback bs="$bs" count="$count" skip=$((off / bs)) iflag=direct 2>/tmp/dd.err \
  || vt_fail "read-failed:$(tr ' \n' '_' < /tmp/dd.err)"
sum="$(sha256sum < /tmp/pattern | cut -d' ' -f1)"
vt_detail "sha256=$sum"
cmp -s /tmp/pattern /tmp/readback || vt_fail "readback-mismatch:$(sha256sum < /tmp/readback | cut -d' ' -f1)"
exit 0
