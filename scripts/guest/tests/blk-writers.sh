# Concurrent O_DIRECT writers for the back-end restart tests. vtest.writers writers (default 4)
# each own vtest.slots slots of vtest.bs bytes (default 8 x 64 KiB) of /dev/vda from offset 0 and write vtest.iters
# random patterns (default 24) at slots of their own, keeping each slot's latest sha256. Prints
# "VTEST-PROGRESS blk-writers w=W i=I" after each write. When all are done, every written slot is
# read back (O_DIRECT) and checked; detail sha256 covers the whole span
# (writers*slots*bs) as the guest reads it, for the host to compare with the image.
. /lib/vtest.sh
dev="/dev/${VTEST_dev:-vda}"
writers="${VTEST_writers:-4}"
slots="${VTEST_slots:-8}"
iters="${VTEST_iters:-24}"
bs="${VTEST_bs:-65536}"
vt_wait_dev "$dev" 5 || vt_fail "no-device-$dev"
writer() {
  w=$1
  i=0
  while [ "$i" -lt "$iters" ]; do
    blk=$(( w * slots + (i * 5 + w) % slots ))
    dd if=/dev/urandom of=/tmp/p$w bs=$bs count=1 2>/dev/null || { echo "urandom" > /tmp/fail$w; return 1; }
    if ! dd if=/tmp/p$w of="$dev" bs=$bs count=1 seek=$blk oflag=direct conv=notrunc 2>/tmp/e$w; then
      echo "write-failed-w$w-i$i:$(tr ' \n' '_' < /tmp/e$w)" > /tmp/fail$w
      return 1
    fi
    sha256sum < /tmp/p$w | cut -d' ' -f1 > /tmp/sum$blk
    i=$((i + 1))
    echo "VTEST-PROGRESS blk-writers w=$w i=$i"
  done
}
w=0
while [ "$w" -lt "$writers" ]; do
  writer "$w" &
  w=$((w + 1))
done
wait
for f in /tmp/fail*; do
  [ -e "$f" ] && vt_fail "$(cat "$f")"
done
total=$((writers * slots))
blk=0
checked=0
while [ "$blk" -lt "$total" ]; do
  if [ -e /tmp/sum$blk ]; then
    got="$(dd if="$dev" bs=$bs count=1 skip=$blk iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
    [ "$got" = "$(cat /tmp/sum$blk)" ] || vt_fail "slot-$blk-mismatch"
    checked=$((checked + 1))
  fi
  blk=$((blk + 1))
done
sum="$(dd if="$dev" bs=$bs count=$total iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
vt_detail "writes=$((writers * iters))" "slots_checked=$checked" "span=$((total * bs))" "sha256=$sum"
exit 0
