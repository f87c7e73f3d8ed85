/**
 * Generic netlink from TypeScript against the host kernel: the controller family resolves (it
 * exists on every Linux), an unknown family is a clear ENOENT, the vdpa family either resolves
 * (then its dumps parse) or is reported as not registered; message encoding and attribute parsing
 * byte for byte. Adding devices is covered in the 6.12 guest (test/e2e/kernel-vdpa.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as sys from '../../src/sys/index.js';
import {
  GENL_ID_CTRL, GenlSocket, VDPA_ATTR_DEV_NAME, VDPA_ATTR_MGMTDEV_DEV_NAME, VDPA_CMD_DEV_NEW, VdpaNetlink, encodeGenlRequest, parseAttrs,
} from '../../src/kernel/vdpa-netlink.js';

test('a generic netlink request is nlmsghdr + genlmsghdr + 4-byte aligned attributes', () => {
  const m = encodeGenlRequest(0x1b, 0x5, 42, VDPA_CMD_DEV_NEW, 1, [[VDPA_ATTR_MGMTDEV_DEV_NAME, 'vduse'], [VDPA_ATTR_DEV_NAME, 'b'], [9, { u16: 0x1234 }], [10, { u32: 7 }], [11, { u64: 1n << 40n }]]);
  const hex = Buffer.from(m).toString('hex');
  assert.equal(m.length, 16 + 4 + 12 + 8 + 8 + 8 + 12);
  assert.equal(hex.slice(0, 40), `${'44000000'}1b000500${'2a000000'}00000000${'03010000'}`);
  // "vduse\0" is 6 bytes: nla_len 10, padded to 12.
  assert.equal(hex.slice(40, 64), '0a000200' + Buffer.from('vduse\0\0\0').toString('hex'));
  const attrs = parseAttrs(m.subarray(20));
  assert.equal(Buffer.from(attrs.get(VDPA_ATTR_DEV_NAME) ?? []).toString(), 'b\0');
  assert.deepEqual([...(attrs.get(9) ?? [])], [0x34, 0x12]);
  assert.equal(Buffer.from(attrs.get(11) ?? []).readBigUInt64LE(), 1n << 40n);
  assert.throws(() => parseAttrs(Uint8Array.of(8, 0, 1, 0, 0)), /claims 8 bytes of 5/);
  assert.throws(() => parseAttrs(Uint8Array.of(2, 0, 1, 0)), /claims 2 bytes/);
});

test('the generic netlink controller resolves family names; an unknown one is ENOENT', async () => {
  const before = sys.openFdCount();
  const s = new GenlSocket();
  try {
    assert.equal(await s.familyId('nlctrl'), GENL_ID_CTRL);
    // Requests queue: several at once each get their own answer.
    const [a, b] = await Promise.all([s.familyId('nlctrl'), s.familyId('nlctrl')]);
    assert.equal(a, GENL_ID_CTRL);
    assert.equal(b, GENL_ID_CTRL);
    await assert.rejects(s.familyId('no-such-family'),
      (e: unknown) => e instanceof sys.SysError && e.code === 'ENOENT' && /CTRL_CMD_GETFAMILY no-such-family/.test(e.message));
  } finally {
    s.close();
    s.close();
  }
  await assert.rejects(s.familyId('nlctrl'), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF' && /socket is closed/.test(e.message));
  assert.equal(sys.openFdCount(), before);
});

test('the vdpa family: listed when the vdpa module is loaded, a clear error when it is not', async () => {
  const before = sys.openFdCount();
  let nl: VdpaNetlink;
  try {
    nl = await VdpaNetlink.open();
  } catch (e) {
    assert.ok(e instanceof sys.SysError && e.code === 'ENOENT', String(e));
    assert.match(e.message, /generic netlink family 'vdpa' is not registered \(is the vdpa module loaded\?\)/);
    assert.equal(sys.openFdCount(), before, 'the socket was closed');
    return;
  }
  try {
    assert.ok(nl.familyId > GENL_ID_CTRL);
    assert.ok(Array.isArray(await nl.managementDevices()));
    assert.ok(Array.isArray(await nl.devices()));
    await assert.rejects(nl.device('no-such-vdpa-device'), (e: unknown) => e instanceof sys.SysError && /VDPA_CMD_DEV_GET no-such-vdpa-device/.test(e.message));
  } finally {
    nl.close();
  }
  assert.equal(sys.openFdCount(), before);
});
