/**
 * Typed wrapper over the vhost_user_native addon: AF_UNIX sockets with fd passing, eventfd, memfd,
 * mmap windows, a SIGBUS guard for shared mappings and fd watchers on the calling thread's loop.
 *
 * The C side is a thin syscall layer that validates every argument itself (fds are integers in
 * [0, INT_MAX], lengths and offsets checked integers, flags known; handles are type-tagged).
 * This module is internal: the package entry point does not re-export it (raw mmap, wrapMemory and
 * ioctl must not be reachable by package users).
 *
 * @module
 */
import { constant, native } from './native.js';
import { closeWatcherOf } from './watch.js';

export { SysError } from './native.js';
export { watchFd, type FdWatcher } from './watch.js';
export {
  PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE,
  F_SEAL_FUTURE_WRITE, WINDOW_STRIDE, WINDOW_SIZE, mmap, wrapMemory, fileInfo, addSeals, getSeals,
  type Mapping, type FileInfo, type FileKind,
} from './mapping.js';
export { onMemoryFault, type MemoryFault, type MemoryFaultListener } from './faults.js';
export { uffdCreate, uffdRegister, uffdUnregister, UFFDIO_COPY_BIT } from './uffd.js';
/** eventfd flag: non-blocking. */
export const EFD_NONBLOCK: number = constant('EFD_NONBLOCK');
/** eventfd flag: close-on-exec. */
export const EFD_CLOEXEC: number = constant('EFD_CLOEXEC');
/** eventfd flag: semaphore semantics (each read returns 1). */
export const EFD_SEMAPHORE: number = constant('EFD_SEMAPHORE');
/** memfd_create flag: close-on-exec. */
export const MFD_CLOEXEC: number = constant('MFD_CLOEXEC');
/** memfd_create flag: allow F_ADD_SEALS. */
export const MFD_ALLOW_SEALING: number = constant('MFD_ALLOW_SEALING');
/** Watcher event: readable (UV_READABLE). */
export const POLLIN: number = constant('POLLIN');
/** Watcher event: writable (UV_WRITABLE). */
export const POLLOUT: number = constant('POLLOUT');
/** fallocate mode: do not change the file size (required with FALLOC_FL_PUNCH_HOLE). */
export const FALLOC_FL_KEEP_SIZE: number = constant('FALLOC_FL_KEEP_SIZE');
/** fallocate mode: deallocate the range (reads return zeroes); combine with FALLOC_FL_KEEP_SIZE. */
export const FALLOC_FL_PUNCH_HOLE: number = constant('FALLOC_FL_PUNCH_HOLE');
/** fallocate mode: zero the range, keeping (or allocating) its blocks. */
export const FALLOC_FL_ZERO_RANGE: number = constant('FALLOC_FL_ZERO_RANGE');
/** ioctl: block device size in bytes (u64 out). */
export const BLKGETSIZE64: number = constant('BLKGETSIZE64');
/** ioctl: logical sector size of a block device (int out). */
export const BLKSSZGET: number = constant('BLKSSZGET');
/** ioctl: physical sector size of a block device (unsigned int out). */
export const BLKPBSZGET: number = constant('BLKPBSZGET');
/** ioctl: discard a byte range of a block device (u64[2] {offset, length} in). */
export const BLKDISCARD: number = constant('BLKDISCARD');
/** ioctl: zero a byte range of a block device (u64[2] {offset, length} in). */
export const BLKZEROOUT: number = constant('BLKZEROOUT');
/** Most fds carried by one message (the vhost-user limit, VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_FDS_PER_MESSAGE = 8;

// ---------------------------------------------------------------------------------------------
// Sockets and fds

/** Creates a connected AF_UNIX SOCK_STREAM pair (O_NONBLOCK, O_CLOEXEC). */
export function socketpair(): [number, number] {
  return native.socketpair();
}

/**
 * Creates a listening AF_UNIX stream socket bound to `path` (O_NONBLOCK, O_CLOEXEC). An existing
 * file at `path` is not removed (bind fails with EADDRINUSE). A path starting with '\0' is abstract.
 */
export function listenUnix(path: string, backlog?: number): number {
  return native.listenUnix(path, backlog);
}

/** Connects to an AF_UNIX stream socket; throws SysError (ENOENT, ECONNREFUSED, EAGAIN if the backlog is full). */
export function connectUnix(path: string): number {
  return native.connectUnix(path);
}

/** Accepts one connection (O_NONBLOCK, O_CLOEXEC); null when none is pending (EAGAIN). */
export function accept(listenFd: number): number | null {
  return native.accept(listenFd);
}

/**
 * Sends data (+ up to 8 fds via SCM_RIGHTS, MSG_NOSIGNAL). Returns bytes written (may be partial:
 * the fds then travelled with the bytes that were written, do not send them again); null on EAGAIN.
 * Sending fds with empty data throws EINVAL since a zero-byte stream write carries no ancillary data.
 */
export function sendmsg(fd: number, data: Uint8Array, fds?: readonly number[]): number | null {
  return native.sendmsg(fd, data, fds !== undefined && fds.length > 0 ? fds : undefined);
}

const recvScratch = new Int32Array(1 + MAX_FDS_PER_MESSAGE);

/**
 * Receives into buf (recvmsg with MSG_CMSG_CLOEXEC). null on EAGAIN; {bytes: 0, fds: []} on EOF.
 * If the control message was truncated (MSG_CTRUNC) every fd that did arrive is closed and a
 * SysError with code 'EMSGSIZE' and syscall 'recvmsg' (message says MSG_CTRUNC) is thrown; the data
 * bytes of that message were consumed, so the stream should be treated as broken.
 */
export function recvmsg(fd: number, buf: Uint8Array, maxFds: number = MAX_FDS_PER_MESSAGE): { bytes: number; fds: number[] } | null {
  const bytes = native.recvmsg(fd, buf, maxFds, recvScratch);
  if (bytes === null) return null;
  const n = bytes === 0 ? 0 : (recvScratch[0] ?? 0);
  const fds: number[] = [];
  for (let i = 1; i <= n; i++) fds.push(recvScratch[i] ?? -1);
  return { bytes, fds };
}

/**
 * Closes fd. A watcher on fd in this thread is closed first, because an epoll registration that
 * outlives its fd number would misfire once the number is reused.
 */
export function close(fd: number): void {
  closeWatcherOf(fd);
  native.close(fd);
}

/** Duplicates fd with F_DUPFD_CLOEXEC. */
export function dup(fd: number): number {
  return native.dup(fd);
}

/** Sets or clears O_NONBLOCK. */
export function setNonBlocking(fd: number, on: boolean): void {
  native.setNonBlocking(fd, on);
}

// ---------------------------------------------------------------------------------------------
// eventfd / memfd / misc

/** Creates an eventfd (default flags EFD_NONBLOCK | EFD_CLOEXEC). */
export function eventfd(initval = 0, flags: number = EFD_NONBLOCK | EFD_CLOEXEC): number {
  return native.eventfd(initval, flags);
}

/** Reads and resets (or, with EFD_SEMAPHORE, decrements) the counter; null on EAGAIN (counter 0). */
export function eventfdRead(fd: number): bigint | null {
  return native.eventfdRead(fd);
}

/** Adds value (default 1) to the counter; throws EAGAIN if it would overflow a non-blocking eventfd. */
export function eventfdWrite(fd: number, value: bigint | number = 1): void {
  native.eventfdWrite(fd, value);
}

/** memfd_create (default flags MFD_CLOEXEC). */
export function memfdCreate(name: string, flags: number = MFD_CLOEXEC): number {
  return native.memfdCreate(name, flags);
}

/** Sets the file length (sparse when growing a memfd). */
export function ftruncate(fd: number, length: number): void {
  native.ftruncate(fd, length);
}

/**
 * ioctl(fd, request, arg): a Uint8Array arg is passed by pointer (the kernel reads/writes its bytes),
 * a number/bigint by value, undefined as 0. Returns the ioctl's non-negative result. The buffer must be
 * at least as large as the request's argument struct: the kernel trusts the request, not the buffer.
 */
export function ioctl(fd: number, request: number | bigint, arg?: Uint8Array | number | bigint): number {
  return native.ioctl(fd, request, arg);
}

/**
 * fallocate(fd, mode, offset, length) on the libuv threadpool (it can take long on real disks).
 * Rejects with SysError (syscall 'fallocate'), e.g. EOPNOTSUPP when the file system lacks the mode.
 * Throws TypeError synchronously for arguments that are not non-negative integers or whose sum
 * overflows off_t.
 */
export function fallocateAsync(fd: number, mode: number, offset: number | bigint, length: number | bigint): Promise<void> {
  return native.fallocateAsync(fd, mode, offset, length);
}

/**
 * ioctl(fd, request, &{offset, length}) for block-device range requests taking a `uint64_t[2]`
 * (BLKDISCARD, BLKZEROOUT), on the libuv threadpool. Rejects with SysError (syscall 'ioctl').
 */
export function ioctlRangeAsync(fd: number, request: number | bigint, offset: number | bigint, length: number | bigint): Promise<void> {
  return native.ioctlRangeAsync(fd, request, offset, length);
}

/**
 * Takes a whole-file open-file-description lock (fcntl F_OFD_SETLK) without waiting: exclusive
 * (write) or shared (read). Throws SysError EAGAIN while another open file holds a conflicting
 * lock. The same lock family as QEMU's image locking; released when the fd's open file closes.
 */
export function lockFile(fd: number, exclusive: boolean): void {
  native.lockFile(fd, exclusive);
}

/** What a socket fd is (getsockopt SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN). */
export interface SocketInfo {
  /** Address family: 1 = AF_UNIX. */
  domain: number;
  /** Socket type: 1 = SOCK_STREAM. */
  type: number;
  /** Whether listen() was called on it. */
  listening: boolean;
}

/** AF_UNIX address family. */
export const AF_UNIX = 1;
/** Stream socket type. */
export const SOCK_STREAM = 1;

/** Describes socket `fd`; throws SysError ENOTSOCK when it is not a socket. */
export function socketInfo(fd: number): SocketInfo {
  return native.socketInfo(fd);
}

/** f_type of tmpfs (also /dev/shm), from linux/magic.h. */
export const TMPFS_MAGIC = 0x01021994;
/** f_type of ramfs. */
export const RAMFS_MAGIC = 0x858458f6;
/** f_type of hugetlbfs. */
export const HUGETLBFS_MAGIC = 0x958458f6;

/** The f_type of the file system holding `fd` (fstatfs); compare with {@link TMPFS_MAGIC}... */
export function fsType(fd: number): number {
  return native.fsType(fd);
}

/** preadv2/pwritev2 flag: fail with EAGAIN instead of waiting for I/O (linux/fs.h). */
export const RWF_NOWAIT = 0x08;
/** preadv2/pwritev2 flag: the write is durable when the call returns, like O_DSYNC. */
export const RWF_DSYNC = 0x02;

/**
 * One synchronous preadv2 (pwritev2 when `write`) of `count` [host address, length] pairs of
 * `pairs` at file `offset`, straight into (out of) guest memory. Every range must lie inside a
 * live mapping of this thread (else SysError EFAULT, before any syscall). Returns the bytes
 * transferred, or a negative errno (EAGAIN for {@link RWF_NOWAIT}...): the caller falls back to
 * another path on any failure, so failures are values, not exceptions. `count` is at most 64.
 */
export function hostIo(fd: number, write: boolean, pairs: Float64Array, count: number, offset: number, flags = 0): number {
  return native.hostIo(fd, write, pairs, count, offset, flags);
}

/** Number of open fds in this process (entries of /proc/self/fd), for leak checks. */
export function openFdCount(): number {
  return native.openFdCount();
}

/** NETLINK_GENERIC: the generic netlink protocol (families such as "vdpa", "nlctrl"). */
export const NETLINK_GENERIC = 16;

/** A bound AF_NETLINK raw socket of `protocol` (close-on-exec; extended acks requested). */
export function netlinkOpen(protocol: number): number {
  return native.netlinkOpen(protocol);
}

/**
 * Sends one netlink message to the kernel from the libuv threadpool: the kernel runs a generic
 * netlink command inside sendmsg, and a command may wait for this very process (VDUSE).
 */
export function netlinkSendAsync(fd: number, data: Uint8Array): Promise<number> {
  return native.netlinkSendAsync(fd, data);
}

/** One netlink datagram into `buf` without waiting: its length, or null when none is queued. */
export function netlinkRecv(fd: number, buf: Uint8Array): number | null {
  return native.netlinkRecv(fd, buf);
}
