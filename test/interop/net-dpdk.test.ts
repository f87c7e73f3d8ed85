/**
 * DPDK as the front-end of `vhost-user-net --loopback`: testpmd's net_virtio_user0 with 1 and 2
 * queue pairs, split and packed rings. In txonly mode the frames are absorbed (our daemon's
 * transmit counters grow); in io mode with --tx-first the first burst loops through our device
 * and back into testpmd for as long as it runs (testpmd's receive rate is non-zero and its
 * final RX counter exceeds the first burst). One daemon serves all runs of a combination, so
 * the second testpmd is also a front-end reconnecting to the same socket.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { requireTools } from '../helpers/tools.js';
import { startTestpmdVirtioUser } from '../helpers/dpdk.js';
import { startOurDaemon, type OurDaemon } from '../helpers/our-daemon.js';
import { makeTempDir } from '../helpers/tmp.js';

/** Frames delivered to the guest so far, summed over the queue pairs of the last stats round. */
function countDelivered(stderr: string): number {
  const lines = [...stderr.matchAll(/stats: port pair (\d+): rx \(to guest\) (\d+) pkts/g)];
  const last = new Map<string, number>();
  for (const m of lines) last.set(m[1] as string, Number(m[2]));
  let n = 0;
  for (const v of last.values()) n += v;
  return n;
}

/** Waits (on the daemon's once-a-second stats lines) until more than `n` frames reached the guest. */
async function waitDelivered(daemon: OurDaemon, n: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (countDelivered(daemon.proc.stderr) <= n) {
    const seen = daemon.proc.stderr.length;
    if (Date.now() > deadline) throw new Error(`fewer than ${n} frames delivered back:\n${daemon.proc.diagnostics()}`);
    // Each new stats line is an event: wait for the output to grow.
    await daemon.proc.waitForText(/grown/, 5000, () => (daemon.proc.stderr.length > seen ? 'grown' : '')).catch(() => undefined);
  }
}

for (const queues of [1, 2]) {
  for (const packed of [0, 1]) {
    test(`DPDK virtio_user (queues=${queues}, packed_vq=${packed}) on vhost-user-net --loopback: txonly absorbed, io forwarding loops frames back`, async (t) => {
      if (!requireTools(t, 'dpdk-testpmd', 'stdbuf')) return;
      const dir = makeTempDir(t);
      const sock = dir.socketPath('net');
      const daemon = await startOurDaemon('net', sock, ['--loopback', '--queue-pairs', String(queues), '--stats', '1'], t);
      const devargs = [`packed_vq=${packed}`];

      // Without --stats-period testpmd stops at once when its stdin closes, printing its totals.
      const tx = await startTestpmdVirtioUser({ socketPath: sock, queues, forwardMode: 'txonly', devargs, t });
      // Absorbed: our daemon's transmit counters (logged every second) grow.
      await daemon.proc.waitForText(/tx \(from guest\) [1-9]\d{3,} pkts/, 20_000, () => daemon.proc.stderr);
      await tx.stop();
      const txStats = tx.forwardStats();
      assert.ok(txStats !== undefined && txStats.txPackets >= 1000, `testpmd sent frames: ${JSON.stringify(txStats)}`);

      const io = await startTestpmdVirtioUser({ socketPath: sock, queues, forwardMode: 'io', devargs, appArgs: ['--tx-first'], t });
      // The --tx-first burst (32 per queue) comes back, is forwarded again, and so on: the
      // counter of frames delivered to the guest, reset by the txonly run's backlog drops, passes
      // far beyond the burst.
      const before = countDelivered(daemon.proc.stderr);
      await waitDelivered(daemon, before + 100 * queues);
      await io.stop();
      const ioStats = io.forwardStats();
      assert.ok(ioStats !== undefined && ioStats.rxPackets > 32 * queues, `frames keep coming back to testpmd: ${JSON.stringify(ioStats)}`);
      const st = await daemon.stop();
      assert.equal(st.code, 0, 'the daemon exits cleanly on SIGTERM');
    });
  }
}
