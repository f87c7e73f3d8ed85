/**
 * qemu-storage-daemon as the reference (C) vhost-user-blk backend, plus raw disk image helpers.
 * QEMU 7.2 syntax:
 *   --blockdev driver=file,node-name=file0,filename=IMG[,read-only=on]
 *   --export type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=SOCK,
 *            writable=on|off,num-queues=N[,logical-block-size=B]
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { TestContext } from 'node:test';
import { ManagedProcess, waitForUnixListener, type ExitStatus } from './process.js';

/** Options for {@link startStorageDaemon}. */
export interface StorageDaemonOptions {
  /** Raw image file to export. */
  readonly image: string;
  /** Unix socket path to listen on (see makeTempDir().socketPath()). */
  readonly socketPath: string;
  /** Request queues offered to the frontend (default 1). */
  readonly numQueues?: number;
  /** Export read-only (VIRTIO_BLK_F_RO) and open the image read-only. */
  readonly readOnly?: boolean;
  /** Logical block size in bytes (default 512). */
  readonly logicalBlockSize?: number;
  /** How long to wait for the socket to listen (default 10 s). */
  readonly timeoutMs?: number;
  /** When given, the daemon is stopped after the test. */
  readonly t?: TestContext;
}

/** A running qemu-storage-daemon. */
export interface StorageDaemon {
  /** The socket the export listens on. */
  readonly socketPath: string;
  /** The process wrapper (stdout/stderr, exit status, diagnostics). */
  readonly proc: ManagedProcess;
  /** Resolves when the daemon exits. */
  readonly exited: Promise<ExitStatus>;
  /** SIGTERM (QSD shuts down cleanly on it), SIGKILL after 3 s; resolves once exited. Idempotent. */
  stop(): Promise<ExitStatus>;
}

/** Starts qemu-storage-daemon and resolves once its vhost-user socket is listening. */
export async function startStorageDaemon(opts: StorageDaemonOptions): Promise<StorageDaemon> {
  const ro = opts.readOnly === true;
  const blockdev = ['driver=file', 'node-name=file0', `filename=${opts.image}`];
  if (ro) blockdev.push('read-only=on');
  const exp = [
    'type=vhost-user-blk', 'id=exp0', 'node-name=file0', 'addr.type=unix', `addr.path=${opts.socketPath}`,
    `writable=${ro ? 'off' : 'on'}`, `num-queues=${opts.numQueues ?? 1}`,
  ];
  if (opts.logicalBlockSize !== undefined) exp.push(`logical-block-size=${opts.logicalBlockSize}`);
  if (/,/.test(opts.image) || /,/.test(opts.socketPath)) {
    // QEMU's option parser treats ',' as a separator (',,' escapes it); keep paths simple instead.
    throw new Error('image and socket paths must not contain commas');
  }
  const proc = ManagedProcess.spawn('qemu-storage-daemon', ['--blockdev', blockdev.join(','), '--export', exp.join(',')],
    { label: 'qemu-storage-daemon' });
  const daemon: StorageDaemon = {
    socketPath: opts.socketPath,
    proc,
    exited: proc.exited,
    stop: () => proc.terminate({ sig: 'SIGTERM', graceMs: 3000 }),
  };
  opts.t?.after(async () => { await daemon.stop(); });
  try {
    await waitForUnixListener(opts.socketPath, opts.timeoutMs ?? 10_000, proc);
  } catch (err) {
    await daemon.stop();
    throw err;
  }
  return daemon;
}

/** Creates (or truncates) a sparse raw image of `sizeBytes` bytes, optionally filled with a byte. */
export async function createRawImage(path: string, sizeBytes: number, fill?: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(sizeBytes);
    if (fill !== undefined) {
      const chunk = Buffer.alloc(Math.min(sizeBytes, 1 << 20), fill);
      for (let off = 0; off < sizeBytes; off += chunk.length) {
        await fh.write(chunk, 0, Math.min(chunk.length, sizeBytes - off), off);
      }
    }
  } finally {
    await fh.close();
  }
}

/** Reads `length` bytes of a file at `offset` (throws on a short read). */
export async function readRange(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) throw new Error(`short read of ${path}: ${done} of ${length} bytes at ${offset}`);
      done += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

/** Hex SHA-256 of `length` bytes of a file at `offset` (what the guest's blk tests print). */
export async function sha256Range(path: string, offset: number, length: number): Promise<string> {
  return createHash('sha256').update(await readRange(path, offset, length)).digest('hex');
}

/**
 * Asserts that every one of `length` bytes of a file at `offset` is `byte`: the guard bands a
 * test checks around what it wrote. The message names `what` and the first differing byte.
 */
export async function expectFilled(path: string, offset: number, length: number, byte: number, what: string): Promise<void> {
  const buf = await readRange(path, offset, length);
  const i = buf.findIndex((b) => b !== byte);
  assert.equal(i, -1, `${what}: byte at ${offset + i} is 0x${(buf[i] ?? 0).toString(16)}, expected 0x${byte.toString(16)}`);
}
