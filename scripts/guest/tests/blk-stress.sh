# Write/read/verify loop over the first vtest.span bytes (default 8 MiB) of /dev/vda, for the
# kill-the-VMM-mid-I/O tests. Prints "VTEST-PROGRESS blk-stress iter=N" after every verified
# iteration; runs vtest.iters iterations (default 0 = until the VM is killed).
. /lib/vtest.sh
dev="/dev/${VTEST_dev:-vda}"
span="${VTEST_span:-8388608}"
iters="${VTEST_iters:-0}"
bs=65536
vt_wait_dev "$dev" 5 || vt_fail "no-device-$dev"
slots=$((span / bs / 4))
[ "$slots" -gt 0 ] || vt_fail "span-too-small"
i=0
while [ "$iters" -eq 0 ] || [ "$i" -lt "$iters" ]; do
  # Each iteration writes 4 x 64 KiB at a pseudo-random slot, so requests land all over the span.
  slot=$(( (i * 7919) % slots ))
  dd if=/dev/urandom of=/tmp/pattern bs=$bs count=4 2>/dev/null
  dd if=/tmp/pattern of="$dev" bs=$bs count=4 seek=$((slot * 4)) oflag=direct conv=notrunc 2>/tmp/dd.err \
    || vt_fail "write-failed-iter-$i:$(tr ' \n' '_' < /tmp/dd.err)"
  dd if="$dev" of=/tmp/readback bs=$bs count=4 skip=$((slot * 4)) iflag=direct 2>/tmp/dd.err \
    || vt_fail "read-failed-iter-$i:$(tr ' \n' '_' < /tmp/dd.err)"
  cmp -s /tmp/pattern /tmp/readback || vt_fail "mismatch-iter-$i"
  i=$((i + 1))
  echo "VTEST-PROGRESS blk-stress iter=$i"
done
vt_detail "iters=$i"
exit 0
