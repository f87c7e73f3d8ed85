# Reads vtest.size bytes (default 4096) from /dev/hwrng, which the kernel backs with the virtio
# entropy device when one is present (checked via rng_current), and sanity-checks the bytes.
. /lib/vtest.sh
size="${VTEST_size:-4096}"
vt_wait_dev /dev/hwrng 5 || vt_fail "no-hwrng"
cur="$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
vt_detail "rng_current=$cur"
case "$cur" in virtio_rng*) ;; *) vt_fail "hwrng-is-not-virtio" ;; esac
dd if=/dev/hwrng of=/tmp/rng bs="$size" count=1 iflag=fullblock 2>/tmp/dd.err \
  || vt_fail "read-failed:$(tr ' \n' '_' < /tmp/dd.err)"
got="$(stat -c %s /tmp/rng)"
vt_detail "bytes=$got"
[ "$got" -eq "$size" ] || vt_fail "short-read"
# A stuck generator (all zeros / one repeated byte) must not pass: count distinct byte values.
distinct="$(od -An -v -tu1 -w1 /tmp/rng | sort -u | wc -l)"
vt_detail "distinct_bytes=$distinct"
[ "$size" -lt 1024 ] || [ "$distinct" -ge 200 ] || vt_fail "low-entropy"
exit 0
