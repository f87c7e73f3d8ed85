# Traffic across back-end restarts on the first virtio-net interface, for a looping back-end
# (e.g. vhost-user-net --loopback): with 10.77.0.1/24 configured, each round pings an absent
# neighbour, whose ARP requests the back-end loops back, and waits until rx_packets grows.
# Prints "VTEST-PROGRESS net-reconnect round=R rx=N" per round, then pauses vtest.pause seconds
# (default 3) so the host restarts the back-end before the next round. Parameters: vtest.rounds
# (default 4), vtest.wait (seconds a round may take, default 30).
. /lib/vtest.sh
rounds="${VTEST_rounds:-4}"
wait_s="${VTEST_wait:-30}"
pause="${VTEST_pause:-3}"
ifname=""
for n in /sys/class/net/*; do
  [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)")" = virtio_net ] && { ifname="$(basename "$n")"; break; }
done
[ -n "$ifname" ] || vt_fail "no-virtio-net-interface"
ip link set "$ifname" up || vt_fail "link-up-failed"
ip addr add 10.77.0.1/24 dev "$ifname" || vt_fail "addr-failed"
stat="/sys/class/net/$ifname/statistics"
r=1
while [ "$r" -le "$rounds" ]; do
  before="$(cat $stat/rx_packets)"
  n="$wait_s"
  while [ "$(cat $stat/rx_packets)" -le "$before" ]; do
    [ "$n" -gt 0 ] || vt_fail "no-traffic-in-round-$r"
    ping -c 1 -W 1 10.77.0.2 >/dev/null 2>&1
    n=$((n - 1))
  done
  echo "VTEST-PROGRESS net-reconnect round=$r rx=$(cat $stat/rx_packets)"
  [ "$r" -lt "$rounds" ] && sleep "$pause"
  r=$((r + 1))
done
vt_detail "ifname=$ifname" "rounds=$rounds" "tx_packets=$(cat $stat/tx_packets)" "rx_packets=$(cat $stat/rx_packets)"
exit 0
