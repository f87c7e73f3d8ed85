/**
 * Our vhost ioctl numbers and wire struct layouts against the kernel's own headers: a C program is
 * compiled against /usr/include/linux/vhost.h at test time and prints every number, size and
 * offset; each must equal ours. Also the encoders' byte layout, checked by the same program
 * decoding bytes we produced.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import * as k from '../../src/kernel/ioctl.js';
import * as vduse from '../../src/kernel/vduse.js';
import { requireTools } from '../helpers/tools.js';
import { makeTempDir } from '../helpers/tmp.js';

/** struct name -> [our size constant, fields with our offsets]. */
const STRUCTS: ReadonlyArray<readonly [string, number, Readonly<Record<string, number>>]> = [
  ['vhost_vring_state', k.VHOST_VRING_STATE_SIZE, { index: 0, num: 4 }],
  ['vhost_vring_file', k.VHOST_VRING_FILE_SIZE, { index: 0, fd: 4 }],
  ['vhost_vring_addr', k.VHOST_VRING_ADDR_SIZE,
    { index: 0, flags: 4, desc_user_addr: 8, used_user_addr: 16, avail_user_addr: 24, log_guest_addr: 32 }],
  ['vhost_memory', k.VHOST_MEMORY_SIZE, { nregions: 0, padding: 4, regions: 8 }],
  ['vhost_memory_region', k.VHOST_MEMORY_REGION_SIZE,
    { guest_phys_addr: 0, memory_size: 8, userspace_addr: 16, flags_padding: 24 }],
  ['vhost_iotlb_msg', k.VHOST_IOTLB_MSG_SIZE, { iova: 0, size: 8, uaddr: 16, perm: 24, type: 25 }],
  ['vhost_msg_v2', k.VHOST_MSG_V2_SIZE, { type: 0, asid: 4, iotlb: 8 }],
  ['vhost_vdpa_config', k.VHOST_VDPA_CONFIG_SIZE, { off: 0, len: 4, buf: 8 }],
  ['vhost_vdpa_iova_range', k.VHOST_VDPA_IOVA_RANGE_SIZE, { first: 0, last: 8 }],
  ['vhost_scsi_target', k.VHOST_SCSI_TARGET_SIZE, { abi_version: 0, vhost_wwpn: 4, vhost_tpgt: 228 }],
];

const CONSTANTS = [
  'VHOST_VRING_F_LOG', 'VHOST_ACCESS_RO', 'VHOST_ACCESS_WO', 'VHOST_ACCESS_RW', 'VHOST_IOTLB_MISS',
  'VHOST_IOTLB_UPDATE', 'VHOST_IOTLB_INVALIDATE', 'VHOST_IOTLB_ACCESS_FAIL', 'VHOST_IOTLB_BATCH_BEGIN',
  'VHOST_IOTLB_BATCH_END', 'VHOST_IOTLB_MSG', 'VHOST_IOTLB_MSG_V2', 'VHOST_PAGE_SIZE', 'VHOST_F_LOG_ALL',
  'VHOST_NET_F_VIRTIO_NET_HDR', 'VHOST_BACKEND_F_IOTLB_MSG_V2', 'VHOST_BACKEND_F_IOTLB_BATCH',
  'VHOST_BACKEND_F_IOTLB_ASID', 'VHOST_BACKEND_F_SUSPEND', 'VHOST_VIRTIO',
] as const;

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

/** Bytes our encoders produce, to be rebuilt field by field by the C program. */
function samples(): Record<string, string> {
  const buf = new Uint8Array(512);
  const addr = { index: 3, flags: 1, descUserAddr: 0x1122334455667788n, usedUserAddr: 0x10n, availUserAddr: 0x20n, logGuestAddr: 0xfedcba9876543210n };
  return {
    state: hex(k.encodeVringState(buf, 7, 256)),
    file: hex(k.encodeVringFile(buf, 2, -1)),
    addr: hex(k.encodeVringAddr(buf, addr)),
    mem: hex(k.encodeMemory(buf, [
      { guestPhysAddr: 0n, memorySize: 0x100000n, userAddr: 0x7f0000000000n },
      { guestPhysAddr: 0x100000000n, memorySize: 0x2000n, userAddr: 0x7f1000000000n },
    ])),
    msg: hex(k.encodeMsgV2(buf, 1, { iova: 0x1000n, size: 0x2000n, uaddr: 0x7f0000001000n, perm: k.VHOST_ACCESS_RW, type: k.VHOST_IOTLB_UPDATE })),
    cfg: hex(k.encodeVdpaConfig(buf, 4, 3, Uint8Array.of(9, 8, 7))),
  };
}

function cProgram(): string {
  const lines: string[] = [
    '#include <stdio.h>', '#include <stddef.h>', '#include <string.h>', '#include <stdlib.h>',
    '#include <linux/vhost.h>', '#include <linux/vhost_types.h>',
    'static void unhex(const char *s, unsigned char *out) { for (size_t i = 0; s[2*i]; i++) { unsigned v; sscanf(s + 2*i, "%2x", &v); out[i] = (unsigned char)v; } }',
    'int main(int argc, char **argv) {',
    '  (void)argc;',
  ];
  for (const name of Object.keys(k.VHOST_IOCTLS)) lines.push(`  printf("ioctl ${name} %lu\\n", (unsigned long)(${name}));`);
  for (const name of CONSTANTS) lines.push(`  printf("const ${name} %lu\\n", (unsigned long)(${name}));`);
  for (const [s, , fields] of STRUCTS) {
    lines.push(`  printf("size ${s} %zu\\n", sizeof(struct ${s}));`);
    for (const f of Object.keys(fields)) lines.push(`  printf("offset ${s}.${f} %zu\\n", offsetof(struct ${s}, ${f}));`);
  }
  // Decode our bytes with the C structs and print the fields as the kernel would see them.
  lines.push(
    '  static unsigned char b[6][512];',
    '  for (int i = 0; i < 6; i++) unhex(argv[i + 1], b[i]);',
    '  struct vhost_vring_state *st = (void *)b[0]; printf("dec state %u %u\\n", st->index, st->num);',
    '  struct vhost_vring_file *fi = (void *)b[1]; printf("dec file %u %d\\n", fi->index, fi->fd);',
    '  struct vhost_vring_addr *ad = (void *)b[2]; printf("dec addr %u %u %llx %llx %llx %llx\\n", ad->index, ad->flags, ad->desc_user_addr, ad->used_user_addr, ad->avail_user_addr, ad->log_guest_addr);',
    '  struct vhost_memory *me = (void *)b[3]; printf("dec mem %u", me->nregions);',
    '  for (unsigned i = 0; i < me->nregions; i++) printf(" %llx/%llx/%llx/%llx", me->regions[i].guest_phys_addr, me->regions[i].memory_size, me->regions[i].userspace_addr, me->regions[i].flags_padding);',
    '  printf("\\n");',
    '  struct vhost_msg_v2 *m = (void *)b[4]; printf("dec msg %u %u %llx %llx %llx %u %u\\n", m->type, m->asid, m->iotlb.iova, m->iotlb.size, m->iotlb.uaddr, m->iotlb.perm, m->iotlb.type);',
    '  struct vhost_vdpa_config *c = (void *)b[5]; printf("dec cfg %u %u %u %u %u\\n", c->off, c->len, c->buf[0], c->buf[1], c->buf[2]);',
    '  return 0;', '}',
  );
  return lines.join('\n') + '\n';
}

test('vhost ioctl numbers, constants and struct layouts equal linux/vhost.h', (t) => {
  if (!requireTools(t, 'gcc')) return;
  const dir = makeTempDir(t, 'ioctl');
  const src = dir.file('vhost-check.c');
  const exe = dir.file('vhost-check');
  writeFileSync(src, cProgram());
  execFileSync('gcc', ['-std=gnu11', '-Wall', '-Werror', '-o', exe, src], { stdio: ['ignore', 'pipe', 'pipe'] });
  const s = samples();
  const out = execFileSync(exe, [s.state!, s.file!, s.addr!, s.mem!, s.msg!, s.cfg!], { encoding: 'utf8' });
  const seen = new Map<string, string>();
  for (const line of out.trim().split('\n')) {
    const m = /^(\w+) (\S+) (.*)$/.exec(line);
    assert.ok(m, `unparsed line ${line}`);
    seen.set(`${m[1]} ${m[2]}`, m[3]!);
  }
  let checked = 0;
  for (const [name, value] of Object.entries(k.VHOST_IOCTLS)) {
    assert.equal(seen.get(`ioctl ${name}`), String(value), `${name}: ours 0x${value.toString(16)}`);
    checked++;
  }
  const ours = k as unknown as Record<string, number>;
  for (const name of CONSTANTS) {
    assert.equal(seen.get(`const ${name}`), String(ours[name]), name);
    checked++;
  }
  for (const [s2, size, fields] of STRUCTS) {
    assert.equal(seen.get(`size ${s2}`), String(size), `sizeof(struct ${s2})`);
    for (const [f, off] of Object.entries(fields)) {
      assert.equal(seen.get(`offset ${s2}.${f}`), String(off), `offsetof(struct ${s2}, ${f})`);
      checked++;
    }
  }
  assert.ok(checked > 90, `only ${checked} values checked`);
  assert.equal(seen.get('dec state'), '7 256');
  assert.equal(seen.get('dec file'), '2 -1');
  assert.equal(seen.get('dec addr'), '3 1 1122334455667788 10 20 fedcba9876543210');
  assert.equal(seen.get('dec mem'), '2 0/100000/7f0000000000/0 100000000/2000/7f1000000000/0');
  assert.equal(seen.get('dec msg'), `2 1 1000 2000 7f0000001000 3 2`);
  assert.equal(seen.get('dec cfg'), '4 3 9 8 7');
});

test('ioctl encoders reject values that do not fit their C fields', () => {
  const buf = new Uint8Array(64);
  assert.throws(() => k.encodeVringState(buf, -1, 0), /vring index -1 is not a u32/);
  assert.throws(() => k.encodeVringState(buf, 0, 2 ** 32), /vring num .* is not a u32/);
  assert.throws(() => k.encodeVringFile(buf, 0, -2), /fd -2 is not a file descriptor/);
  assert.throws(() => k.encodeVringAddr(buf, { index: 0, flags: 0, descUserAddr: -1n, usedUserAddr: 0n, availUserAddr: 0n, logGuestAddr: 0n }), /desc_user_addr -1 is not a u64/);
  assert.throws(() => k.encodeMemory(new Uint8Array(39), [{ guestPhysAddr: 0n, memorySize: 1n, userAddr: 0n }]), /vhost_memory: buffer of 39 bytes, needs 40/);
  assert.throws(() => k.ioc(k.IOC_READ, 0xaf, 0, 1 << 14), /does not fit in 14 bits/);
  assert.equal(k.vhostIoctlName(k.VHOST_GET_VRING_BASE), 'VHOST_GET_VRING_BASE');
  assert.equal(k.vhostIoctlName(0x1234), '0x1234');
});

test('VDUSE ioctl numbers and struct sizes equal linux/vduse.h', (t) => {
  if (!requireTools(t, 'gcc')) return;
  const dir = makeTempDir(t, 'vduse');
  const names = ['VDUSE_GET_API_VERSION', 'VDUSE_SET_API_VERSION', 'VDUSE_CREATE_DEV', 'VDUSE_DESTROY_DEV', 'VDUSE_VQ_SETUP',
    'VDUSE_DEV_GET_FEATURES', 'VDUSE_VQ_GET_INFO', 'VDUSE_GET_VQ_STATE', 'VDUSE_SET_STATUS', 'VDUSE_UPDATE_IOTLB', 'VDUSE_API_VERSION',
    'VDUSE_IOTLB_GET_FD', 'VDUSE_VQ_SETUP_KICKFD', 'VDUSE_VQ_INJECT_IRQ', 'VDUSE_DEV_INJECT_CONFIG_IRQ', 'VDUSE_EVENTFD_DEASSIGN',
    'VDUSE_ACCESS_RO', 'VDUSE_ACCESS_WO', 'VDUSE_ACCESS_RW', 'VDUSE_REQ_RESULT_OK', 'VDUSE_REQ_RESULT_FAILED'] as const;
  const src = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/ioctl.h>', '#include <linux/vduse.h>', 'int main(void) {',
    ...names.map((n) => `  printf("${n} %lu\\n", (unsigned long)(${n}));`),
    '  printf("config %zu %zu %zu\\n", sizeof(struct vduse_dev_config), offsetof(struct vduse_dev_config, features), offsetof(struct vduse_dev_config, config_size));',
    '  printf("vq %zu msg %zu %zu\\n", sizeof(struct vduse_vq_config), sizeof(struct vduse_dev_request), sizeof(struct vduse_dev_response));',
    '  printf("req %zu %zu\\n", offsetof(struct vduse_dev_request, s), offsetof(struct vduse_dev_response, vq_state.split.avail_index));',
    '  printf("iotlb %zu %zu %zu %zu\\n", sizeof(struct vduse_iotlb_entry), offsetof(struct vduse_iotlb_entry, start), offsetof(struct vduse_iotlb_entry, last), offsetof(struct vduse_iotlb_entry, perm));',
    '  printf("info %zu %zu %zu %zu\\n", sizeof(struct vduse_vq_info), offsetof(struct vduse_vq_info, device_addr), offsetof(struct vduse_vq_info, split.avail_index), offsetof(struct vduse_vq_info, ready));',
    '  printf("efd %zu %zu\\n", sizeof(struct vduse_vq_eventfd), offsetof(struct vduse_vq_eventfd, fd));',
    '  return 0;', '}'].join('\n');
  writeFileSync(dir.file('v.c'), src);
  execFileSync('gcc', ['-Wall', '-Werror', '-o', dir.file('v'), dir.file('v.c')]);
  const out = execFileSync(dir.file('v'), { encoding: 'utf8' });
  const ours = vduse as unknown as Record<string, number>;
  const expected = [...names.map((n) => `${n} ${ours[n]}`),
    `config ${vduse.VDUSE_DEV_CONFIG_SIZE} 264 332`, `vq ${vduse.VDUSE_VQ_CONFIG_SIZE} msg ${vduse.VDUSE_MSG_SIZE} ${vduse.VDUSE_MSG_SIZE}`, 'req 24 28',
    `iotlb ${vduse.VDUSE_IOTLB_ENTRY_SIZE} 8 16 24`, `info ${vduse.VDUSE_VQ_INFO_SIZE} 24 32 40`, `efd ${vduse.VDUSE_VQ_EVENTFD_SIZE} 4`];
  // VDUSE_EVENTFD_DEASSIGN is -1: printed through unsigned long by the C side.
  expected[names.indexOf('VDUSE_EVENTFD_DEASSIGN')] = `VDUSE_EVENTFD_DEASSIGN ${BigInt.asUintN(64, -1n)}`;
  assert.deepEqual(out.trim().split('\n'), expected);
  // The encoders put the fields where the C structs have them.
  const b = new Uint8Array(64);
  const e = vduse.decodeIotlbEntry(vduse.encodeIotlbEntry(b, 0x1000n, 0x1fffn));
  assert.deepEqual(e, { offset: 0n, start: 0x1000n, last: 0x1fffn, perm: 0 });
  assert.deepEqual([...vduse.encodeVqEventfd(b, 3, -1)], [3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
  const info = vduse.encodeVqInfoQuery(new Uint8Array(vduse.VDUSE_VQ_INFO_SIZE), 5);
  new DataView(info.buffer).setUint32(4, 128, true);
  new DataView(info.buffer).setBigUint64(24, 0x3000n, true);
  new DataView(info.buffer).setUint16(32, 9, true);
  info[40] = 1;
  assert.deepEqual(vduse.decodeVqInfo(info), { index: 5, num: 128, descAddr: 0n, driverAddr: 0n, deviceAddr: 0x3000n, availIndex: 9, ready: true });
});
