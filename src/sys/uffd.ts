/**
 * userfaultfd (postcopy live migration): create one, register and unregister mappings for
 * missing-page faults. The front-end reads the fault events from the fd and resolves them.
 * @module
 */
import { native } from './native.js';

/** Bit of UFFDIO_COPY in the ioctl mask {@link uffdRegister} returns (`_UFFDIO_COPY`). */
export const UFFDIO_COPY_BIT = 3;

/** A non-blocking, close-on-exec userfaultfd after the UFFDIO_API handshake. Throws SysError. */
export function uffdCreate(): number {
  return native.uffdCreate();
}

/**
 * Registers `[address, address + length)` (page-aligned, mapped by this process) for missing-page
 * faults (UFFDIO_REGISTER_MODE_MISSING); returns the mask of ioctls the range supports.
 */
export function uffdRegister(fd: number, address: bigint, length: number): number {
  return native.uffdRegister(fd, address, length);
}

/** UFFDIO_UNREGISTER of a range registered with {@link uffdRegister}. */
export function uffdUnregister(fd: number, address: bigint, length: number): void {
  native.uffdUnregister(fd, address, length);
}
