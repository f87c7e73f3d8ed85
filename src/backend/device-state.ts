/**
 * Back-end state transfer for migration (VHOST_USER_PROTOCOL_F_DEVICE_STATE): SET_DEVICE_STATE_FD
 * hands over one end of a pipe, the device's state flows through it (saved on the source, loaded
 * on the destination), and CHECK_DEVICE_STATE reports whether that worked.
 *
 * The stream is framed and checksummed so a truncated or corrupted transfer is detected before
 * the device sees it: `"VUDS"`, u32 version, u64 payload length (little-endian), the payload
 * (the device's own bytes, from `saveState`), then the SHA-256 of everything before it.
 * The pipe is served without blocking the daemon (uv_poll); a front-end that never closes its
 * end makes CHECK_DEVICE_STATE fail after a timeout instead of hanging the connection.
 * @module
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as sys from '../sys/index.js';
import { DeviceStateDirection, DeviceStatePhase } from '../vhost-user/constants.js';
import { VhostUserError } from '../vhost-user/errors.js';
import type { VhostUserBackend } from './backend.js';

/** First bytes of a state stream. */
export const DEVICE_STATE_MAGIC = 'VUDS';
/** Version of the frame format. */
export const DEVICE_STATE_VERSION = 1;
const HEADER = 16;
const DIGEST = 32;
/** Largest state accepted when loading (a front-end must not make us buffer without bound). */
export const MAX_DEVICE_STATE_BYTES = 16 * 1024 * 1024;
const CHUNK = 64 * 1024;

// node:crypto is loaded at the first state transfer, not at startup: loading it costs an idle
// daemon ~1.7 MiB of RSS, and most daemons never migrate.
const requireBuiltin = createRequire(import.meta.url);
let cryptoModule: typeof import('node:crypto') | null = null;
function sha256(data: Uint8Array): Buffer {
  cryptoModule ??= requireBuiltin('node:crypto') as typeof import('node:crypto');
  return cryptoModule.createHash('sha256').update(data).digest();
}

/** Frames `payload` for the pipe. */
export function encodeDeviceState(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER + payload.length + DIGEST);
  const v = new DataView(out.buffer);
  out.set(Buffer.from(DEVICE_STATE_MAGIC, 'ascii'), 0);
  v.setUint32(4, DEVICE_STATE_VERSION, true);
  v.setBigUint64(8, BigInt(payload.length), true);
  out.set(payload, HEADER);
  out.set(sha256(out.subarray(0, HEADER + payload.length)), HEADER + payload.length);
  return out;
}

/** Checks a received frame and returns its payload; throws a description of what is wrong. */
export function decodeDeviceState(bytes: Uint8Array): Uint8Array {
  if (bytes.length < HEADER + DIGEST) throw new Error(`state stream of ${bytes.length} bytes is shorter than its ${HEADER + DIGEST}-byte frame`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = Buffer.from(bytes.subarray(0, 4)).toString('latin1');
  if (magic !== DEVICE_STATE_MAGIC) throw new Error(`state stream starts with ${JSON.stringify(magic)}, not ${DEVICE_STATE_MAGIC}`);
  const version = v.getUint32(4, true);
  if (version !== DEVICE_STATE_VERSION) throw new Error(`state stream version ${version} (this back-end reads ${DEVICE_STATE_VERSION})`);
  const len = v.getBigUint64(8, true);
  if (len !== BigInt(bytes.length - HEADER - DIGEST)) throw new Error(`state stream announces ${len} payload bytes but carries ${bytes.length - HEADER - DIGEST}`);
  const end = bytes.length - DIGEST;
  const digest = sha256(bytes.subarray(0, end));
  if (!digest.equals(bytes.subarray(end))) throw new Error('state stream checksum mismatch (corrupted in transfer)');
  return bytes.subarray(HEADER, end);
}

/** One direction of transfer through a non-blocking pipe end, settled when it is done. */
function pump(fd: number, direction: DeviceStateDirection, data: Uint8Array | null, onCancel: (cancel: () => void) => void): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    let off = 0;
    let watcher: sys.FdWatcher | null = null;
    let settled = false;
    const done = (e: Error | null): void => {
      if (settled) return;
      settled = true;
      watcher?.close();
      watcher = null;
      try { sys.close(fd); } catch { /* already closed */ }
      if (e !== null) reject(e);
      else resolve(new Uint8Array(Buffer.concat(chunks)));
    };
    const step = (): void => {
      try {
        if (direction === DeviceStateDirection.SAVE) {
          const d = data as Uint8Array;
          while (off < d.length) off += fs.writeSync(fd, d, off, Math.min(CHUNK, d.length - off));
          done(null);
          return;
        }
        for (;;) {
          const buf = Buffer.allocUnsafe(CHUNK);
          const n = fs.readSync(fd, buf, 0, CHUNK, null);
          if (n === 0) { done(null); return; }
          got += n;
          if (got > MAX_DEVICE_STATE_BYTES) throw new Error(`state stream exceeds ${MAX_DEVICE_STATE_BYTES} bytes`);
          chunks.push(buf.subarray(0, n));
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return; // wait for the next poll event
        done(e as Error);
      }
    };
    onCancel(() => done(new Error('transfer aborted')));
    try {
      sys.setNonBlocking(fd, true);
      watcher = sys.watchFd(fd, direction === DeviceStateDirection.SAVE ? sys.POLLOUT : sys.POLLIN, (status) => {
        if (status < 0) done(new Error(`state pipe poll failed (errno ${-status})`));
        else step();
      });
    } catch (e) {
      done(new Error(`state fd cannot be polled: ${(e as Error).message}`));
      return;
    }
    step();
  });
}

/** The device-state transfers of one connection. */
export class DeviceStateTransfer {
  private result: Promise<void> | null = null;
  private cancel: (() => void) | null = null;

  constructor(private readonly backend: VhostUserBackend, private readonly timeoutMs = 30_000) {}

  /** Whether the device can save and load its state (DEVICE_STATE may be offered). */
  get supported(): boolean {
    return typeof this.backend.saveState === 'function' && typeof this.backend.loadState === 'function';
  }

  /**
   * SET_DEVICE_STATE_FD: starts the transfer over `fd` (borrowed: duplicated here). Always uses
   * the front-end's channel (the reply carries no fd). The outcome is kept for CHECK_DEVICE_STATE.
   */
  start(direction: DeviceStateDirection, phase: DeviceStatePhase, fd: number): void {
    if (!this.supported) throw new VhostUserError('not-supported', '', 'device has no saveState/loadState');
    if (phase !== DeviceStatePhase.STOPPED) throw new VhostUserError('invalid-argument', '', `migration phase ${phase as number} not supported (only STOPPED)`);
    if (direction !== DeviceStateDirection.SAVE && direction !== DeviceStateDirection.LOAD) {
      throw new VhostUserError('invalid-argument', '', `transfer direction ${direction as number} unknown`);
    }
    this.close(); // a new transfer replaces an unfinished one
    const own = sys.dup(fd);
    const run = async (): Promise<void> => {
      if (direction === DeviceStateDirection.SAVE) {
        let frame: Uint8Array;
        try {
          frame = encodeDeviceState(await (this.backend.saveState as () => Uint8Array | Promise<Uint8Array>).call(this.backend));
        } catch (e) {
          sys.close(own); // the front-end reads EOF and then learns the failure from CHECK_DEVICE_STATE
          throw e;
        }
        await pump(own, direction, frame, (c) => { this.cancel = c; });
      } else {
        const payload = decodeDeviceState(await pump(own, direction, null, (c) => { this.cancel = c; }));
        await (this.backend.loadState as (s: Uint8Array) => void | Promise<void>).call(this.backend, payload);
      }
    };
    const r = run();
    r.catch(() => undefined); // reported by check()
    this.result = r;
  }

  /** CHECK_DEVICE_STATE: resolves when the last transfer succeeded, throws what went wrong. */
  async check(): Promise<void> {
    const r = this.result;
    if (r === null) throw new VhostUserError('invalid-argument', '', 'no device state transfer was started');
    this.result = null;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`device state transfer not finished after ${this.timeoutMs} ms (the front-end did not close its end)`)), this.timeoutMs);
    });
    try {
      await Promise.race([r, timeout]);
    } catch (e) {
      throw new VhostUserError('device-error', '', `device state transfer failed: ${(e as Error).message}`, { cause: e });
    } finally {
      clearTimeout(timer);
      this.close();
    }
  }

  /** Aborts an unfinished transfer, closing its pipe end (disconnect, a new transfer). */
  close(): void {
    const c = this.cancel;
    this.cancel = null;
    c?.();
  }
}
