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
import { startOurDaemon } from '../helpers/our-daemon.js';
import { makeTempDir } from '../helpers/tmp.js';

for (const queues of [1, 2]) {
  for (const packed of [0, 1]) {
    test(`DPDK virtio_user (queues=${queues}, packed_vq=${packed}) on vhost-user-net --loopback: txonly absorbed, io forwarding loops frames back`, async (t) => {
      if (!requireTools(t, 'dpdk-testpmd', 'stdbuf')) return;
      const dir = makeTempDir(t);
      const sock = dir.socketPath('net');
      const daemon = await startOurDaemon('net', sock, ['--loopback', '--queue-pairs', String(queues), '--stats', '1'], t);
      const devargs = [`packed_vq=${packed}`];

      const tx = await startTestpmdVirtioUser({ socketPath: sock, queues, forwardMode: 'txonly', statsPeriodSec: 1, devargs, t });
      await tx.waitFor(/Tx-pps:\s+[1-9]\d*/, 20_000);
      // Our side saw them: its transmit counters (logged every second) are non-zero.
      await daemon.proc.waitForText(/tx \(from guest\) [1-9]\d* pkts/, 20_000, () => daemon.proc.stderr);
      await tx.stop();
      const txStats = tx.forwardStats();
      assert.ok(txStats !== undefined && txStats.txPackets > 0, `testpmd sent frames: ${JSON.stringify(txStats)}`);

      const io = await startTestpmdVirtioUser({
        socketPath: sock, queues, forwardMode: 'io', statsPeriodSec: 1, devargs, appArgs: ['--tx-first'], t,
      });
      // The --tx-first burst (32 per queue) comes back, is forwarded again, and so on.
      await io.waitFor(/Rx-pps:\s+[1-9]\d*/, 20_000);
      await io.stop();
      const ioStats = io.forwardStats();
      assert.ok(ioStats !== undefined && ioStats.rxPackets > 32 * queues, `frames keep coming back: ${JSON.stringify(ioStats)}`);
      const st = await daemon.stop();
      assert.equal(st.code, 0, 'the daemon exits cleanly on SIGTERM');
    });
  }
}
