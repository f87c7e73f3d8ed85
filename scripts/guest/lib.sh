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
