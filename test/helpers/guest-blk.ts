/**
 * The guest's virtio-blk scenarios (scripts/guest/tests/blk-rw.sh, blk-ro.sh) run against any
 * vhost-user-blk back-end and checked against the image file on the host: the same checks whether
 * the back-end is qemu-storage-daemon (the reference) or ours.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { expectCleanExit, expectPass, startQemu, vhostUserBlkArgs, type VtestResult } from './qemu.js';
import { createRawImage, expectFilled, sha256Range } from './qsd.js';

const MiB = 1024 * 1024;
/** Guard band checked on each side of the guest's write, and the guest's block size. */
const BAND = 65536;

/** Starts a back-end serving `image`; resolves with its vhost-user socket path. */
export type StartBlkBackend = (image: string) => Promise<string>;

/** Parameters of {@link runGuestBlkWrite}. */
export interface GuestBlkWriteOptions {
  /** Image size in bytes. */
  readonly size: number;
  /** Where the guest writes (bytes; a multiple of 64 KiB, at least 64 KiB in). */
  readonly offset: number;
  /** How much it writes (bytes). */
  readonly length: number;
  /** Request queues of the QEMU device (the back-end must offer as many). */
  readonly numQueues: number;
  /** Guest vCPUs (Linux uses at most one virtio-blk queue per vCPU; default 1). */
  readonly smp?: number;
  /** Extra vhost-user-blk-pci properties, e.g. ['packed=on']. */
  readonly deviceProps?: readonly string[];
}

/**
 * blk-rw: an image filled with 0xa5, the guest writes a pattern with O_DIRECT and reads it back.
 * Asserts PASS, the disk size and writability the guest saw, that the image holds the guest's
 * bytes at exactly `offset` and that the 64 KiB on either side are untouched, and QEMU's clean exit.
 */
export async function runGuestBlkWrite(t: TestContext, image: string, o: GuestBlkWriteOptions, startBackend: StartBlkBackend): Promise<VtestResult> {
  await createRawImage(image, o.size, 0xa5);
  const sock = await startBackend(image);
  const vm = await startQemu({
    test: 'blk-rw',
    params: { offset: o.offset, size: o.length, bs: BAND },
    args: vhostUserBlkArgs(sock, { numQueues: o.numQueues, ...(o.deviceProps !== undefined ? { deviceProps: o.deviceProps } : {}) }),
    smp: o.smp ?? 1,
    t,
  });
  const r = await expectPass(vm);
  assert.equal(r.details.disk_bytes, String(o.size));
  assert.equal(r.details.ro, '0');
  assert.match(r.details.sha256 ?? '', /^[0-9a-f]{64}$/);
  assert.equal(await sha256Range(image, o.offset, o.length), r.details.sha256, 'image bytes differ from what the guest wrote');
  await expectFilled(image, o.offset - BAND, BAND, 0xa5, 'bytes before the written range changed');
  await expectFilled(image, o.offset + o.length, BAND, 0xa5, 'bytes after the written range changed');
  await expectCleanExit(vm);
  return r;
}

/**
 * blk-ro: a 16 MiB image behind a read-only back-end. Asserts that the guest sees a read-only disk,
 * its write fails, it reads the image's bytes, QEMU exits cleanly, and the image is unchanged.
 */
export async function runGuestBlkReadOnly(t: TestContext, image: string, startBackend: StartBlkBackend): Promise<void> {
  const size = 16 * MiB;
  await createRawImage(image, size, 0x3c);
  const whole = await sha256Range(image, 0, size);
  const sock = await startBackend(image);
  const vm = await startQemu({ test: 'blk-ro', params: { size: BAND }, args: vhostUserBlkArgs(sock), t });
  const r = await expectPass(vm);
  assert.equal(r.details.ro, '1');
  assert.match(r.details.write ?? '', /^failed/);
  assert.equal(r.details.sha256, await sha256Range(image, 0, BAND));
  await expectCleanExit(vm);
  assert.equal(await sha256Range(image, 0, size), whole, 'read-only image was modified');
}
