/**
 * VhostKernVdpa given fds that are not a vDPA device: ioctls fail with ENOTTY naming the ioctl,
 * and IOTLB messages, which a pipe or a file would silently swallow, are refused by fd type.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants as fsConstants, openSync, unlinkSync } from 'node:fs';
import { test } from 'node:test';
import * as sys from '../../src/sys/index.js';
import { VhostKernVdpa } from '../../src/kernel/vdpa.js';
import { VhostBackendError } from '../../src/kernel/vhost-backend.js';
import { makeTempDir } from '../helpers/tmp.js';

test('a pipe or a regular file given to VhostKernVdpa: ENOTTY for ioctls, a clear refusal for IOTLB writes', async (t) => {
  const dir = makeTempDir(t, 'vdpa-fd');
  const fifo = dir.file('fifo');
  execFileSync('mkfifo', [fifo]);
  const before = sys.openFdCount();
  const pipe = new VhostKernVdpa(openSync(fifo, fsConstants.O_RDWR | fsConstants.O_NONBLOCK));
  const file = new VhostKernVdpa(openSync(dir.file('f'), 'w+'));
  try {
    await assert.rejects(pipe.getDeviceId(), (e: unknown) => e instanceof sys.SysError && e.code === 'ENOTTY' && /VHOST_VDPA_GET_DEVICE_ID on vhost-vdpa/.test(e.message));
    await assert.rejects(pipe.setVringEnable(0, true), /ENOTTY.*VHOST_VDPA_SET_VRING_ENABLE/);
    await assert.rejects(pipe.iotlbUpdate(0n, 0x1000n, 0x7f0000000000n), (e: unknown) => e instanceof VhostBackendError && /fd \d+ is a pipe, not a vhost-vdpa device/.test(e.message));
    await assert.rejects(file.iotlbInvalidate(0n, 0x1000n), /is a regular file, not a vhost-vdpa device/);
  } finally {
    pipe.close();
    file.close();
    unlinkSync(fifo);
  }
  assert.equal(sys.openFdCount(), before);
});
