// QEMU before 8.0 sends VHOST_USER_ADD_MEM_REG / REM_MEM_REG once per vhost device, and a
// multi-queue virtio-net NIC is one vhost device per queue pair on ONE connection: the same region
// arrives once per pair, and is removed once per pair. The daemon counts exact repeats (instead of
// refusing them as overlaps, which made QEMU 7.2 fall back to userspace virtio and then abort);
// a different region over the same guest addresses is still refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend, VhostUserRequestFailedError } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { FrontendMemory } from '../../src/driver/frontend-driver.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { ProtocolFeature, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { CapturingLogger, ProtoDevice, memfdWith } from './fixtures/proto-device.js';

const REGION = { guestPhysAddr: 1n << 32n, memorySize: 0x10000n, userAddr: 0x7e00_0000_0000n, mmapOffset: 0n };

test('ADD_MEM_REG repeats of a mapped region are counted: each REM_MEM_REG drops one, the last unmaps; a different overlapping region is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-memrep-'));
  const sock = join(dir, 'dev.sock');
  const dev = new ProtoDevice();
  const daemon = new VhostUserDaemon('proto', dev, { logger: new CapturingLogger() });
  daemon.serve(sock);
  const fds: number[] = [];
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  const mem = new FrontendMemory(1 << 20);
  t.after(async () => {
    fe.close();
    mem.close();
    for (const fd of fds) sys.close(fd);
    await daemon.stop();
    dev.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await negotiate(fe, { wantProtocolFeatures: protocolFeatureMask(ProtocolFeature.REPLY_ACK) | protocolFeatureMask(ProtocolFeature.CONFIGURE_MEM_SLOTS) });
  await fe.setMemTable(mem.regions());
  const memfd = memfdWith('region', 0x10000);
  fds.push(memfd);
  const add = (over: Partial<typeof REGION> = {}): Promise<void> => {
    // Each queue pair's copy comes with its own fd for the same memory.
    const fd = sys.dup(memfd);
    fds.push(fd);
    return fe.addMemReg({ ...REGION, ...over, fd });
  };
  const rem = (): Promise<void> => fe.remMemReg(REGION);

  dev.memoryUpdates = 0;
  await add();
  await add();
  assert.equal(dev.memoryUpdates, 1, 'the repeat maps nothing and changes no memory table');
  await assert.rejects(add({ memorySize: 0x8000n }), VhostUserRequestFailedError, 'a different region over the same addresses is an overlap');
  await assert.rejects(add({ mmapOffset: 0x1000n }), VhostUserRequestFailedError, 'same addresses at another file offset is an overlap');
  await rem();
  assert.equal(dev.memoryUpdates, 1, 'the first removal only drops the repeat');
  await rem();
  assert.equal(dev.memoryUpdates, 2, 'the last removal unmaps');
  await assert.rejects(rem(), VhostUserRequestFailedError, 'the region is gone');

  // SET_MEM_TABLE replaces everything, counts included.
  await add();
  await add();
  await fe.setMemTable(mem.regions());
  await add();
  await rem();
  await assert.rejects(rem(), VhostUserRequestFailedError, 'no repeat survives SET_MEM_TABLE');
});
