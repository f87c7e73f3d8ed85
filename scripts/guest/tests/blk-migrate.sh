# Live-migration workload: writes vtest.blocks (default 200) random 64 KiB blocks to /dev/vda with
# O_DIRECT, reading each back at once, and keeps each block's md5 in guest RAM (which migrates with
# the guest). Prints "VTEST-PROGRESS blk-migrate iter=N" per block, so the host can migrate mid-way.
# Then re-reads every block against its md5 and reports the sha256 of the whole span.
. /lib/vtest.sh
dev="/dev/${VTEST_dev:-vda}"
blocks="${VTEST_blocks:-200}"
bs=65536
vt_wait_dev "$dev" 5 || vt_fail "no-device-$dev"
: > /tmp/sums
i=0
while [ "$i" -lt "$blocks" ]; do
  dd if=/dev/urandom of=/tmp/pattern bs=$bs count=1 2>/dev/null
  dd if=/tmp/pattern of="$dev" bs=$bs count=1 seek=$i oflag=direct conv=notrunc 2>/tmp/dd.err \
    || vt_fail "write-failed-$i:$(tr ' \n' '_' < /tmp/dd.err)"
  dd if="$dev" of=/tmp/readback bs=$bs count=1 skip=$i iflag=direct 2>/tmp/dd.err \
    || vt_fail "read-failed-$i:$(tr ' \n' '_' < /tmp/dd.err)"
  cmp -s /tmp/pattern /tmp/readback || vt_fail "readback-mismatch-$i"
  md5sum < /tmp/pattern | cut -d' ' -f1 >> /tmp/sums
  i=$((i + 1))
  echo "VTEST-PROGRESS blk-migrate iter=$i"
done
i=0
while read -r sum; do
  got="$(dd if="$dev" bs=$bs count=1 skip=$i iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
  [ "$got" = "$sum" ] || vt_fail "verify-mismatch-$i"
  i=$((i + 1))
done < /tmp/sums
[ "$i" -eq "$blocks" ] || vt_fail "verified-only-$i"
vt_detail "blocks=$blocks" "sha256=$(dd if="$dev" bs=$bs count="$blocks" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
exit 0
