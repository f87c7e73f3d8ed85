# Brings up the first virtio-net interface and checks traffic in both directions without any IP
# configuration: on link-up the kernel itself sends IPv6 link-local multicast (DAD/MLD/RS), and a
# looping backend (e.g. testpmd --forward-mode=io) returns those frames to the guest.
# Parameters: vtest.wait (seconds to wait for traffic, default 5).
# Details: ifname, mac, tx_packets, rx_packets.
. /lib/vtest.sh
wait_s="${VTEST_wait:-5}"
ifname=""
for n in /sys/class/net/*; do
  [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)")" = virtio_net ] && { ifname="$(basename "$n")"; break; }
done
[ -n "$ifname" ] || vt_fail "no-virtio-net-interface"
vt_detail "ifname=$ifname" "mac=$(cat /sys/class/net/$ifname/address)"
ip link set "$ifname" up || vt_fail "link-up-failed"
n=$((wait_s * 10))
while [ "$n" -gt 0 ]; do
  tx="$(cat /sys/class/net/$ifname/statistics/tx_packets)"
  rx="$(cat /sys/class/net/$ifname/statistics/rx_packets)"
  [ "$tx" -gt 0 ] && [ "$rx" -gt 0 ] && break
  usleep 100000
  n=$((n - 1))
done
vt_detail "operstate=$(cat /sys/class/net/$ifname/operstate)" "tx_packets=$tx" "rx_packets=$rx"
[ "$tx" -gt 0 ] || vt_fail "nothing-sent"
[ "$rx" -gt 0 ] || vt_fail "nothing-received"
exit 0
