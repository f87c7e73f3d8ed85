#!/bin/bash
# quick ad-hoc comparison (not committed)
cd /work/wt-perf
IMG=/dev/shm/vu-perf/img
RT=${RT:-3}
run() { # name rw qd cmd...
  local name=$1 rw=$2 qd=$3; shift 3
  local sock=/dev/shm/vu-perf/$name.sock; rm -f $sock
  ( "$@" $sock >/dev/null 2>/dev/shm/vu-perf/$name.err ) & local pid=$!
  for i in $(seq 100); do [ -S $sock ] && break; sleep 0.05; done
  node dist/src/cli/bench.js -s $sock --rw $rw --iodepth $qd --runtime $RT --backend-pid $pid --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);console.log(process.argv[1].padEnd(22), (r.iops/1000).toFixed(1)+"k", "p50", r.latencyUs.p50.toFixed(1), "mean", (r.latencyUs.mean??0).toFixed(1), "cpu/req", r.backend?.cpuUsPerRequest.toFixed(2))})' "$name $rw qd$qd"
  kill $pid; wait $pid 2>/dev/null
}
ours() { exec node dist/src/cli/blk.js --blk-file $IMG --aio $AIO --log-level warn --socket-path "$@"; }
qsd() { exec qemu-storage-daemon --blockdev driver=file,node-name=f0,filename=$IMG,aio=$AIO --export type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$1,writable=on,num-queues=1; }
for rw in ${RWS:-randread}; do for qd in ${QDS:-32}; do
AIO=io_uring run ours-uring $rw $qd ours
AIO=threads run ours-threads $rw $qd ours
AIO=io_uring run qsd-uring $rw $qd qsd
AIO=threads run qsd-threads $rw $qd qsd
done; done
