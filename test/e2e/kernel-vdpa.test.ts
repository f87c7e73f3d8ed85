/**
 * End to end: VhostKernVdpa's control path against a real vDPA device. Debian's 6.1 kernel has no
 * vDPA, so this boots the bookworm-backports kernel (6.12; {@link ensureBackportsGuest}), where
 * test/guest/vdpa-vduse creates a virtio-blk device through VDUSE (its control messages answered
 * by a worker thread), adds it with `vdpa dev add`, and drives /dev/vhost-vdpa-0: device id,
 * queues, config space, IOVA range, backend features, status (seen by VDUSE as SET_STATUS) and
 * the memory table as IOTLB updates (seen as UPDATE_IOTLB). The blk data path through VDUSE is
 * not served yet (issue 11 item 3).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { GUEST_TOOLS, ensureBackportsGuest, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, hostNodeScripts, hostRootShareArgs, startQemu } from '../helpers/qemu.js';

test('VhostKernVdpa drives a VDUSE blk device through /dev/vhost-vdpa-0 (6.12 guest)', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'apt-get', 'vdpa')) return;
  const started = performance.now();
  const vm = await startQemu({
    test: 'host-node',
    memMb: 512,
    guest: await ensureBackportsGuest(),
    params: { script: hostNodeScripts([[fileURLToPath(new URL('../guest/vdpa-vduse.js', import.meta.url))]]) },
    args: hostRootShareArgs(),
    t,
  });
  const r = await expectPass(vm, 180_000);
  assert.equal(r.details['vdpa-vduse.vhost_vdpa'], 'present', r.line);
  assert.equal(r.details['vdpa-vduse.vdpa'], 'ok', r.line);
  // SET_STATUS 3 (ACKNOWLEDGE|DRIVER) and at least one IOTLB update reached the VDUSE side.
  assert.match(r.details['vdpa-vduse.vduse_messages'] ?? '', /(^|\/)1:3(\/|$)/);
  assert.match(r.details['vdpa-vduse.vduse_messages'] ?? '', /(^|\/)2:[0-9a-f]+-[0-9a-f]+/);
  await expectCleanExit(vm);
  t.diagnostic(`guest result after ${Math.round(r.elapsedMs)} ms; whole test ${Math.round(performance.now() - started)} ms; ${r.line.trim()}`);
});
