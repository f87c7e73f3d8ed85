/**
 * The image lock of a {@link FileDisk}: an open-file-description lock (the family QEMU uses) on an
 * fd of its own, so it can be dropped and taken again while the disk's I/O fd stays open.
 *
 * Live migration needs exactly that: two daemons, one per QEMU, serve the same image, and the
 * image must never have two writers. The destination opens the image with the lock deferred and
 * takes it when the guest's first request arrives; the source drops it when its rings stop while
 * dirty logging is on (the switch-over; see VhostUserBlkBackend), and takes it again if the guest
 * resumes there (a failed migration) — which fails, safely, if the destination already has it.
 * @module
 */
import * as fs from 'node:fs';
import { SysError, lockFile } from '../../sys/index.js';

/** A whole-image lock: exclusive for a writable disk, shared for a read-only one. */
export class ImageLock {
  private fd = -1;

  /** The image file. */
  readonly path: string;
  /** Exclusive (writer) or shared (read-only disk). */
  readonly exclusive: boolean;

  /** Does not lock yet: call {@link acquire}. */
  constructor(path: string, exclusive: boolean) {
    this.path = path;
    this.exclusive = exclusive;
  }

  /** Whether this process holds the lock now. */
  get held(): boolean {
    return this.fd >= 0;
  }

  /** Takes the lock (no-op when held); throws a clear error when another process holds it. */
  acquire(): void {
    if (this.fd >= 0) return;
    const fd = fs.openSync(this.path, this.exclusive ? fs.constants.O_RDWR : fs.constants.O_RDONLY);
    try {
      lockFile(fd, this.exclusive);
    } catch (e) {
      fs.closeSync(fd);
      if (e instanceof SysError && e.code === 'EAGAIN') {
        throw new Error(`${this.path} is locked by another process (${this.exclusive ? 'another reader or writer holds it' : 'a writer holds it'})`);
      }
      throw e;
    }
    this.fd = fd;
  }

  /** Drops the lock (idempotent): closing its own open file description releases it. */
  release(): void {
    if (this.fd < 0) return;
    fs.closeSync(this.fd);
    this.fd = -1;
  }
}
