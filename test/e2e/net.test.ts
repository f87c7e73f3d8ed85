/**
 * End to end: QEMU 7.2 (TCG) guests with virtio-net-pci NICs (2 queue pairs, mq=on) on a
 * vhost-user-net back-end, guest memory in a shared memfd:
 *   - on `vhost-user-net --tap`, the TAP's host side in a network namespace made by the test:
 *     ping both ways and 8 MiB of TCP each way with matching sha256, split ring and packed=on;
 *   - two guests on one `vhost-user-net` switch process: ping each other, 8 MiB each way.
 * NET_E2E_BACKEND=dpdk runs the same scenarios against DPDK testpmd (net_vhost PMD, io forwarding
 * to a net_tap port or between two net_vhost ports), the reference they were developed on.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { makeTempDir } from '../helpers/tmp.js';
import { runGuestPair, runGuestTap, startDpdkNet, startOurNet, type StartNetBackend } from '../helpers/guest-net.js';

const dpdk = process.env.NET_E2E_BACKEND === 'dpdk';
const backendName = dpdk ? 'DPDK testpmd (reference)' : 'our vhost-user-net';
const start: StartNetBackend = dpdk ? startDpdkNet : startOurNet;

function tools(t: TestContext): boolean {
  return requireTools(t, ...GUEST_TOOLS, 'ip', ...(dpdk ? ['dpdk-testpmd', 'stdbuf'] : []));
}

test(`QEMU guest on ${backendName} --tap (split ring, 2 vCPUs): ping both ways, 8 MiB TCP each way, sha256 match`, async (t) => {
  if (!tools(t)) return;
  const tmp = makeTempDir(t, 'nettap');
  const r = await runGuestTap(t, tmp.socketPath('net'), start, { smp: 2 });
  t.diagnostic(r.summary);
});

test(`QEMU guest on ${backendName} --tap with packed virtqueues (packed=on): ping both ways, 8 MiB TCP each way`, async (t) => {
  if (!tools(t)) return;
  const tmp = makeTempDir(t, 'nettapp');
  const r = await runGuestTap(t, tmp.socketPath('net'), start, { deviceProps: ['packed=on'] });
  t.diagnostic(r.summary);
  if (!dpdk) assert.match(r.backend.stderr, /features negotiated: .*VIRTIO_F_RING_PACKED/, 'the guest drove packed rings');
});

test(`two QEMU guests on one ${backendName} process: ping each other, 8 MiB TCP each way`, async (t) => {
  if (!tools(t)) return;
  const tmp = makeTempDir(t, 'netsw');
  const r = await runGuestPair(t, [tmp.socketPath('a'), tmp.socketPath('b')], start);
  t.diagnostic(r.summary);
});
