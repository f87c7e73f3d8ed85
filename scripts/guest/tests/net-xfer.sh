# IPv4 over the first virtio-net interface: static address, ping the peer, then TCP transfers with
# busybox nc, checksummed on both ends by the host test.
#   1. if vtest.recv=1: listen on vtest.port for ONE connection (before the address exists, so the
#      listener is up by the time the peer can reach this guest) and store what arrives;
#   2. configure vtest.ip (CIDR) on the interface, link up, wait for carrier;
#   3. ping vtest.peer until it answers (the peer may still be booting: vtest.wait seconds), then
#      print "VTEST-PROGRESS net-xfer ready" (the host pings back and sends once it sees it);
#   4. if vtest.send=N (bytes, a multiple of 65536): send N random bytes to vtest.peer:vtest.port
#      (connection refused is retried: the peer's listener may not be up yet);
#   5. wait for the received stream to end.
# Parameters: ip, peer (required); port (default 5001), send (default 0), recv (default 0),
#   wait (default 60), mtu (optional).
# Details: ifname, mac, ping_tries, tx_bytes, tx_sha256, tx_s, rx_bytes, rx_sha256, rx_wait_s,
#   rx_queues, tx_queues, if_tx_packets, if_rx_packets.
. /lib/vtest.sh
ip_cidr="${VTEST_ip:?}"
peer="${VTEST_peer:?}"
port="${VTEST_port:-5001}"
send="${VTEST_send:-0}"
recv="${VTEST_recv:-0}"
wait_s="${VTEST_wait:-60}"

# Centiseconds since boot (busybox date has whole seconds only).
now_cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }
secs() { echo "$(($1 / 100)).$(printf %02d $(($1 % 100)))"; }

ifname=""
for n in /sys/class/net/*; do
  [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)")" = virtio_net ] && { ifname="$(basename "$n")"; break; }
done
[ -n "$ifname" ] || vt_fail "no-virtio-net-interface"
vt_detail "ifname=$ifname" "mac=$(cat /sys/class/net/$ifname/address)"

if [ "$recv" = 1 ]; then
  # nc half-closes the connection when its stdin ends, and a busybox nc SENDER quits on that EOF
  # with its data unsent: the listener's stdin is a FIFO it holds open itself, so it never ends.
  mkfifo /tmp/hold
  nc -l -p "$port" 0<>/tmp/hold > /tmp/rx &
  rx_pid=$!
fi

ip link set lo up
[ -n "${VTEST_mtu:-}" ] && { ip link set "$ifname" mtu "$VTEST_mtu" || vt_fail "mtu"; }
ip addr add "$ip_cidr" dev "$ifname" || vt_fail "addr-add"
ip link set "$ifname" up || vt_fail "link-up"

tries=0
deadline=$(( $(now_cs) + wait_s * 100 ))
until ping -c 1 -W 1 "$peer" > /dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$(now_cs)" -lt "$deadline" ] || { vt_detail "ping_tries=$tries"; vt_fail "peer-unreachable"; }
done
vt_detail "ping_tries=$tries"
echo "VTEST-PROGRESS net-xfer ready ip=${ip_cidr%/*}"

if [ "$send" -gt 0 ]; then
  dd if=/dev/urandom of=/tmp/tx bs=65536 count=$((send / 65536)) 2>/dev/null || vt_fail "urandom"
  vt_detail "tx_bytes=$(stat -c %s /tmp/tx)" "tx_sha256=$(sha256sum < /tmp/tx | cut -d' ' -f1)"
  t0=$(now_cs)
  # nc exits non-zero only when the connection cannot be made; a refused connect is retried.
  until nc "$peer" "$port" < /tmp/tx > /dev/null 2>/tmp/nc.err; do
    [ "$(now_cs)" -lt "$deadline" ] || vt_fail "send-failed:$(tr ' \n' '_' < /tmp/nc.err)"
    usleep 200000
  done
  vt_detail "tx_s=$(secs $(( $(now_cs) - t0 )))"
  rm -f /tmp/tx
fi

if [ "$recv" = 1 ]; then
  t0=$(now_cs)
  wait "$rx_pid" || vt_fail "receive-failed"
  vt_detail "rx_bytes=$(stat -c %s /tmp/rx)" "rx_sha256=$(sha256sum < /tmp/rx | cut -d' ' -f1)" "rx_wait_s=$(secs $(( $(now_cs) - t0 )))"
fi
# Queue pairs the driver put in use: min(device queue pairs, vCPUs).
vt_detail "rx_queues=$(ls -d /sys/class/net/$ifname/queues/rx-* | wc -l)" \
  "tx_queues=$(ls -d /sys/class/net/$ifname/queues/tx-* | wc -l)"
vt_detail "if_tx_packets=$(cat /sys/class/net/$ifname/statistics/tx_packets)" \
  "if_rx_packets=$(cat /sys/class/net/$ifname/statistics/rx_packets)"
exit 0
