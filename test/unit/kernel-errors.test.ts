/**
 * The kernel vhost drivers on fds that are not vhost devices (this host has none): every failure
 * is a clear error naming the ioctl and the errno, and nothing is sent after close. The IOTLB
 * message path (write() of vhost_msg_v2) is checked byte for byte through a socketpair.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readSync } from 'node:fs';
import { test } from 'node:test';
import * as sys from '../../src/sys/index.js';
import { VhostKernNet } from '../../src/kernel/net.js';
import { VhostKernVsock } from '../../src/kernel/vsock.js';
import { VhostKernVdpa } from '../../src/kernel/vdpa.js';
import { VhostBackendError } from '../../src/kernel/vhost-backend.js';
import * as k from '../../src/kernel/ioctl.js';

test('a vhost ioctl on a non-vhost fd fails with ENOTTY and names the ioctl', async () => {
  const net = new VhostKernNet(openSync('/dev/null', 'r+'));
  try {
    await assert.rejects(net.getFeatures(), (e: unknown) => {
      assert.ok(e instanceof sys.SysError);
      assert.equal(e.code, 'ENOTTY');
      assert.match(e.message, /ioctl failed: ENOTTY .*VHOST_GET_FEATURES on vhost-net/);
      return true;
    });
    await assert.rejects(net.setOwner(), /ENOTTY.*VHOST_SET_OWNER/);
    await assert.rejects(net.setBackend(0, 0), /ENOTTY.*VHOST_NET_SET_BACKEND/);
  } finally {
    net.close();
  }
});

test('an fd closed behind the driver gives EBADF; a closed driver refuses before any syscall', async () => {
  const before = sys.openFdCount();
  const fd = openSync('/dev/null', 'r+');
  const vsock = new VhostKernVsock(fd);
  closeSync(fd);
  await assert.rejects(vsock.setRunning(true), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF' && /VHOST_VSOCK_SET_RUNNING/.test(e.message));
  const net = new VhostKernNet(openSync('/dev/null', 'r+'));
  net.close();
  net.close(); // idempotent
  assert.equal(net.fd, -1);
  await assert.rejects(net.getVringBase(0), (e: unknown) => e instanceof VhostBackendError && /VHOST_GET_VRING_BASE: vhost-net device is closed/.test(e.message));
  assert.equal(sys.openFdCount(), before, 'no fd leaked');
});

test('arguments are validated before reaching the kernel', async () => {
  const vsock = new VhostKernVsock(openSync('/dev/null', 'r+'));
  const vdpa = new VhostKernVdpa(openSync('/dev/null', 'r+'));
  try {
    await assert.rejects(vsock.setGuestCid(2), /guest CID 2 outside/);
    await assert.rejects(vsock.setGuestCid(0xffffffffn), /outside/);
    await assert.rejects(vsock.setVringNum(-1, 256), /vring index -1 is not a u32/);
    await assert.rejects(vsock.setVringKick(0, -5), /fd -5 is not a file descriptor/);
    // No memory table: a ring address cannot be translated.
    await assert.rejects(vsock.setVringAddr({ index: 0, log: false, descGpa: 0x1000n, availGpa: 0x2000n, usedGpa: 0x3000n }),
      /VHOST_SET_VRING_ADDR: guest address 0x1000 .* not inside the memory table/);
    await assert.rejects(vdpa.setVringAddr({ index: 0, log: false, descGpa: 0x1000n, availGpa: 0x2000n, usedGpa: 0x3000n }),
      /guest address 0x1000 is not mapped in the IOTLB/);
    await assert.rejects(vdpa.setLogBase({ userAddr: 0n, size: 4096n, fd: 0, mmapOffset: 0n }), /vhost-vdpa does not support dirty logging/);
    await assert.rejects(vdpa.setStatus(256), /status 256 is not a u8/);
    await assert.rejects(vdpa.getConfig(0, 5000), /at most 4096/);
    await assert.rejects(vdpa.iotlbUpdate(0n, 0n, 0n), /empty mapping/);
    await assert.rejects(vdpa.getIovaRange(), /ENOTTY.*VHOST_VDPA_GET_IOVA_RANGE on vhost-vdpa/);
  } finally {
    vsock.close();
    vdpa.close();
  }
});

test('IOTLB messages are written as struct vhost_msg_v2', async () => {
  const [r, w] = sys.socketpair(); // a stream: write() and read() behave as on the vdpa fd
  const vdpa = new VhostKernVdpa(w);
  try {
    vdpa.asid = 1;
    await vdpa.iotlbBatchBegin();
    await vdpa.iotlbUpdate(0x10000n, 0x2000n, 0x7f0000000000n, k.VHOST_ACCESS_RO);
    await vdpa.iotlbInvalidate(0x10000n, 0x2000n);
    await vdpa.iotlbBatchEnd();
    const buf = Buffer.alloc(4 * k.VHOST_MSG_V2_SIZE + 1);
    const n = readSync(r, buf, 0, buf.length, null);
    assert.equal(n, 4 * k.VHOST_MSG_V2_SIZE, 'four fixed-size messages, nothing else');
    const msg = (i: number): string => {
      const o = i * k.VHOST_MSG_V2_SIZE;
      return [buf.readUInt32LE(o), buf.readUInt32LE(o + 4), buf.readBigUInt64LE(o + 8).toString(16), buf.readBigUInt64LE(o + 16).toString(16),
        buf.readBigUInt64LE(o + 24).toString(16), buf[o + 32], buf[o + 33]].join(' ');
    };
    assert.equal(msg(0), `2 1 0 0 0 0 ${k.VHOST_IOTLB_BATCH_BEGIN}`);
    assert.equal(msg(1), `2 1 10000 2000 7f0000000000 ${k.VHOST_ACCESS_RO} ${k.VHOST_IOTLB_UPDATE}`);
    assert.equal(msg(2), `2 1 10000 2000 0 0 ${k.VHOST_IOTLB_INVALIDATE}`);
    assert.equal(msg(3), `2 1 0 0 0 0 ${k.VHOST_IOTLB_BATCH_END}`);
  } finally {
    vdpa.close();
    closeSync(r);
  }
});

