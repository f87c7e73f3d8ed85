/**
 * End to end: vDPA and VDUSE in the bookworm-backports kernel (6.12; Debian's 6.1 has no vDPA;
 * {@link ensureBackportsGuest}), one guest boot for two scripts:
 * - test/guest/vdpa-vduse: VhostKernVdpa's control path against a VDUSE blk device whose control
 *   messages a worker answers: device id, queues, config space, IOVA range, backend features,
 *   status (seen by VDUSE as SET_STATUS) and the memory table as IOTLB updates (UPDATE_IOTLB);
 * - test/guest/vduse-blk: our blk device served by VduseDaemon, added with the vdpa netlink API,
 *   driven through vhost_vdpa by VhostKernVdpa (a sector written and read back, plus the vDPA
 *   ioctls and bad-input errors), then through virtio_vdpa as /dev/vdX with `dd`.
 * No iproute2 `vdpa` tool is needed: devices are added over netlink from TypeScript.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { GUEST_TOOLS, ensureBackportsGuest, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, hostNodeScripts, hostRootShareArgs, startQemu } from '../helpers/qemu.js';

const script = (name: string): string => fileURLToPath(new URL(`../guest/${name}.js`, import.meta.url));

test('VhostKernVdpa and VduseDaemon: a VDUSE blk device through vhost_vdpa and virtio_vdpa (6.12 guest)', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'apt-get')) return;
  const started = performance.now();
  const vm = await startQemu({
    test: 'host-node',
    memMb: 512,
    guest: await ensureBackportsGuest(),
    params: { script: hostNodeScripts([[script('vdpa-vduse')], [script('vduse-blk')]]) },
    args: hostRootShareArgs(),
    t,
  });
  const r = await expectPass(vm, 180_000);
  const d = (k: string): string => r.details[k] ?? '';
  assert.equal(d('vdpa-vduse.vhost_vdpa'), 'present', r.line);
  assert.equal(d('vdpa-vduse.vdpa'), 'ok', r.line);
  // SET_STATUS 3 (ACKNOWLEDGE|DRIVER) and at least one IOTLB update reached the VDUSE side.
  assert.match(d('vdpa-vduse.vduse_messages'), /(^|\/)1:3(\/|$)/);
  assert.match(d('vdpa-vduse.vduse_messages'), /(^|\/)2:[0-9a-f]+-[0-9a-f]+/);

  // Our device through vhost_vdpa: the sector matched (checked in the guest, on our disk too).
  assert.equal(d('vduse-blk.vhost_vdpa'), 'ok', r.line);
  assert.equal(d('vduse-blk.driver_sector'), 'match', r.line);
  assert.equal(d('vduse-blk.driver_vqs'), '1');
  assert.equal(d('vduse-blk.driver_vring_num'), '256', 'the device maximum reached VDUSE_VQ_SETUP');
  // Bad input, with errno names: a pipe is not a vDPA device, closed devices, SUSPEND not offered.
  assert.equal(d('vduse-blk.driver_pipe'), 'ENOTTY');
  assert.match(d('vduse-blk.driver_closed'), /device_is_closed/);
  assert.equal(d('vduse-blk.driver_closed_fd'), 'EBADF');
  assert.match(d('vduse-blk.driver_suspend'), /^(ok|ENOTSUP|EOPNOTSUPP)$/);
  assert.match(d('vduse-blk.driver_iotlb_outside'), /outside_the_device_IOVA_range/);
  // Groups and address spaces: VDUSE in 6.12 has one of each and no per-queue group operation.
  assert.equal(d('vduse-blk.driver_group_num'), '1');
  assert.equal(d('vduse-blk.driver_as_num'), '1');
  assert.match(d('vduse-blk.driver_vring_group'), /^(ok|ENOTSUP)$/);
  assert.match(d('vduse-blk.driver_group_asid'), /^(ok|ENOTSUP)$/);
  // The framework's queue loop served the requests; interrupts went through VDUSE_VQ_INJECT_IRQ.
  assert.ok(Number(d('vduse-blk.requests')) >= 2 && Number(d('vduse-blk.interrupts')) >= 1, r.line);
  // Through virtio_vdpa: the kernel's virtio-blk on our device, dd wrote and read back.
  assert.equal(d('vduse-blk.virtio_vdpa'), 'ok', r.line);
  assert.match(d('vduse-blk.block_dev'), /^vd[a-z]+$/);
  assert.equal(d('vduse-blk.vduse_blk'), 'ok', r.line);
  await expectCleanExit(vm);
  for (const [k, v] of Object.entries(r.details)) if (k.startsWith('vduse-blk.')) t.diagnostic(`${k}=${v}`);
  t.diagnostic(`guest result after ${Math.round(r.elapsedMs)} ms; whole test ${Math.round(performance.now() - started)} ms; ${r.line.trim()}`);
});
