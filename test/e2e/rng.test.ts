/**
 * End to end: a QEMU guest's /dev/hwrng is backed by our `vhost-user-rng` daemon through
 * `vhost-user-rng-pci`; the guest reads entropy and checks it is not degenerate.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, startQemu } from '../helpers/qemu.js';
import { makeTempDir } from '../helpers/tmp.js';
import { startOurDaemon } from '../helpers/our-daemon.js';

test('QEMU guest reads /dev/hwrng from our vhost-user-rng', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const tmp = makeTempDir(t, 'ourrng');
  const sock = tmp.socketPath('rng');
  const daemon = await startOurDaemon('rng', sock, [], t);
  const vm = await startQemu({
    test: 'rng-read', params: { size: 4096 },
    args: ['-chardev', `socket,id=vurng0,path=${sock}`, '-device', 'vhost-user-rng-pci,chardev=vurng0'],
    t,
  });
  const r = await expectPass(vm);
  assert.match(r.details.rng_current ?? '', /^virtio_rng/);
  assert.equal(r.details.bytes, '4096');
  await expectCleanExit(vm);
  assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, daemon.proc.diagnostics());
});
