/**
 * Typed wrapper over the vhost_user_native addon: AF_UNIX sockets with fd passing, eventfd, memfd,
 * mmap windows and fd watchers on the calling thread's libuv loop.
 *
 * This is the only module that loads the addon. The C side is a thin syscall layer; errors are built
 * here (see {@link SysError}) through a factory registered with the addon at load time.
 *
 * @module
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorMap } from 'node:util';

/** Raw addon surface; kept private so the wrappers below are the only callers. */
interface NativeAddon {
  init(makeError: (errno: number, syscall: string, detail: string | undefined) => Error): void;
  socketpair(): [number, number];
  listenUnix(path: string, backlog: number | undefined): number;
  connectUnix(path: string): number;
  accept(fd: number): number | null;
  sendmsg(fd: number, data: Uint8Array, fds: readonly number[] | undefined): number | null;
  recvmsg(fd: number, buf: Uint8Array, maxFds: number, out: Int32Array): number | null;
  close(fd: number): void;
  dup(fd: number): number;
  setNonBlocking(fd: number, on: boolean): void;
  eventfd(initval: number, flags: number): number;
  eventfdRead(fd: number): bigint | null;
  eventfdWrite(fd: number, value: bigint | number): void;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, length: number): void;
  ioctl(fd: number, request: number | bigint, arg: Uint8Array | number | bigint | undefined): number;
  openFdCount(): number;
  lockFile(fd: number, exclusive: boolean): void;
  socketInfo(fd: number): SocketInfo;
  fallocateAsync(fd: number, mode: number, offset: number | bigint, length: number | bigint): Promise<void>;
  ioctlRangeAsync(fd: number, request: number | bigint, offset: number | bigint, length: number | bigint): Promise<void>;
  mmap(fd: number, offset: number | bigint, length: number, prot: number, flags: number): [NativeHandle, bigint, ArrayBuffer[]];
  munmap(handle: NativeHandle): void;
  wrapMemory(address: bigint, length: number): [NativeHandle, bigint, ArrayBuffer[]];
  watch(fd: number, events: number, callback: (status: number, events: number) => void): NativeHandle;
  watchStart(handle: NativeHandle, events: number): void;
  watchStop(handle: NativeHandle): void;
  watchClose(handle: NativeHandle): void;
  watchRef(handle: NativeHandle, on: boolean): void;
  constants: Record<string, number>;
}

/** Opaque napi_external owned by the addon. */
declare const nativeHandleBrand: unique symbol;
type NativeHandle = { readonly [nativeHandleBrand]: true };

/** The package root: the directory holding package.json above src/sys or dist/src/sys. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'binding.gyp'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Error(`vhost-user: package root not found above ${fileURLToPath(import.meta.url)}`);
}

/**
 * Loads the addon: a prebuilt binary shipped in prebuilds/ (N-API, one per platform and
 * architecture), else one compiled into build/ at install time. When neither exists the error says
 * how to build it.
 */
function loadAddon(): NativeAddon {
  const root = packageRoot();
  const req = createRequire(import.meta.url);
  const nodeGypBuild = req('node-gyp-build') as (dir: string) => unknown;
  try {
    return nodeGypBuild(root) as NativeAddon;
  } catch (e) {
    throw new Error(`vhost-user: no native addon for ${process.platform}-${process.arch} (no prebuilt binary in ` +
      `${join(root, 'prebuilds')} and none built in ${join(root, 'build')}). Build it with \`npm rebuild vhost-user\` ` +
      `(needs python3, make, a C compiler and Node's headers; in a clone of the repository: \`npx node-gyp rebuild\`). ` +
      `Cause: ${(e as Error).message.split('\n')[0]}`);
  }
}

const native = loadAddon();

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}
const uvErrors = getSystemErrorMap();

/** Error thrown by every wrapper: code = errno name ('EAGAIN', 'EBADF', ...), message names the syscall. */
export class SysError extends Error {
  /** errno name, e.g. 'EAGAIN'. */
  readonly code: string;
  /** Positive errno number. */
  readonly errno: number;
  /** The failing syscall (or libuv call), e.g. 'recvmsg'. */
  readonly syscall: string;

  /**
   * @param errno positive errno value
   * @param syscall name of the failing call
   * @param detail optional extra context appended to the message
   */
  constructor(errno: number, syscall: string, detail?: string) {
    const uv = uvErrors.get(-errno);
    const code = uv?.[0] ?? errnoNames.get(errno) ?? `E${errno}`;
    super(`${syscall} failed: ${code} (${uv?.[1] ?? `errno ${errno}`})${detail !== undefined ? `: ${detail}` : ''}`);
    this.name = 'SysError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

native.init((errno, syscall, detail) => new SysError(errno, syscall, detail));

const C = native.constants;
function constant(name: string): number {
  const v = C[name];
  if (v === undefined) throw new Error(`addon lacks constant ${name}`);
  return v;
}

/** mmap protection: readable. */
export const PROT_READ: number = constant('PROT_READ');
/** mmap protection: writable. */
export const PROT_WRITE: number = constant('PROT_WRITE');
/** mmap flag: shared mapping (writes reach the file / other mappings). */
export const MAP_SHARED: number = constant('MAP_SHARED');
/** mmap flag: private copy-on-write mapping. */
export const MAP_PRIVATE: number = constant('MAP_PRIVATE');
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
  watchers.get(fd)?.close();
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

/** Number of open fds in this process (entries of /proc/self/fd), for leak checks. */
export function openFdCount(): number {
  return native.openFdCount();
}

// ---------------------------------------------------------------------------------------------
// Shared memory

/** Start offset step between consecutive windows of a {@link Mapping}. */
export const WINDOW_STRIDE = 2 ** 31;
/** Largest window length (V8's ArrayBuffer limit). */
export const WINDOW_SIZE = 2 ** 32;

/**
 * A mmap'ed region. ArrayBuffer windows are limited to 4 GiB by V8, so the region is exposed as
 * overlapping windows: windows[i] starts at byte i * WINDOW_STRIDE (2 GiB) of the mapping and spans
 * min(WINDOW_SIZE (4 GiB), length - i * WINDOW_STRIDE) bytes. Any range of at most 2 GiB therefore
 * lies entirely inside window floor(start / WINDOW_STRIDE).
 */
export interface Mapping {
  /** Length in bytes. */
  readonly length: number;
  /** Host virtual address of byte 0. */
  readonly address: bigint;
  /** External ArrayBuffers over the mapping (detached, byteLength 0, after unmap). */
  readonly windows: readonly ArrayBuffer[];
  /** False once unmapped. */
  readonly mapped: boolean;
  /** munmap; detaches every window so any stale view throws TypeError instead of crashing. Idempotent. */
  unmap(): void;
}

class MappingImpl implements Mapping {
  readonly length: number;
  readonly address: bigint;
  readonly windows: readonly ArrayBuffer[];
  #handle: NativeHandle | null;

  constructor(handle: NativeHandle, length: number, address: bigint, windows: ArrayBuffer[]) {
    this.#handle = handle;
    this.length = length;
    this.address = address;
    // Frozen: the addon detaches exactly these buffers on unmap.
    this.windows = Object.freeze(windows);
  }

  get mapped(): boolean {
    return this.#handle !== null;
  }

  unmap(): void {
    const h = this.#handle;
    if (h === null) return;
    this.#handle = null;
    native.munmap(h);
  }
}

/**
 * Maps `length` bytes of fd at `offset` (default PROT_READ | PROT_WRITE, MAP_SHARED). The mapping is
 * released only by unmap() (or when the thread's environment is torn down), never by GC.
 */
export function mmap(fd: number, offset: number | bigint, length: number, prot: number = PROT_READ | PROT_WRITE, flags: number = MAP_SHARED): Mapping {
  const [handle, address, windows] = native.mmap(fd, offset, length, prot, flags);
  return new MappingImpl(handle, length, address, windows);
}

/**
 * Windows over `length` bytes at host address `address` that another thread of this process
 * mapped (e.g. guest memory a worker_thread receives from the main thread), with the same
 * overlapping-window layout as {@link mmap}. The caller guarantees the memory stays mapped while
 * the windows are in use; unmap() only detaches them (the owner munmaps).
 */
export function wrapMemory(address: bigint, length: number): Mapping {
  const [handle, addr, windows] = native.wrapMemory(address, length);
  return new MappingImpl(handle, length, addr, windows);
}

// ---------------------------------------------------------------------------------------------
// fd watchers

/** A uv_poll watcher on the calling thread's libuv loop. */
export interface FdWatcher {
  /** (Re)starts watching for POLLIN and/or POLLOUT. */
  start(events: number): void;
  /** Stops watching; start() may be called again. */
  stop(): void;
  /** Stops and frees; idempotent; the callback never runs after close(). Safe inside the callback. */
  close(): void;
  /** Makes the watcher keep the loop alive (default). */
  ref(): void;
  /** Lets the loop exit while the watcher is active. */
  unref(): void;
}

/** Open watchers of this thread by fd: libuv allows one poll handle per fd per loop. */
const watchers = new Map<number, WatcherImpl>();

class WatcherImpl implements FdWatcher {
  readonly #fd: number;
  #handle: NativeHandle | null;

  constructor(fd: number, handle: NativeHandle) {
    this.#fd = fd;
    this.#handle = handle;
  }

  #live(syscall: string): NativeHandle {
    if (this.#handle === null) throw new SysError(osConstants.errno.EBADF, syscall, 'watcher is closed');
    return this.#handle;
  }

  start(events: number): void {
    native.watchStart(this.#live('uv_poll_start'), events);
  }

  stop(): void {
    if (this.#handle !== null) native.watchStop(this.#handle);
  }

  close(): void {
    const h = this.#handle;
    if (h === null) return;
    this.#handle = null;
    watchers.delete(this.#fd);
    native.watchClose(h);
  }

  ref(): void {
    if (this.#handle !== null) native.watchRef(this.#handle, true);
  }

  unref(): void {
    if (this.#handle !== null) native.watchRef(this.#handle, false);
  }
}

/**
 * Watches fd on the calling thread's own libuv loop (works in worker_threads). The callback is
 * invoked directly from libuv as callback(status, events); status < 0 is a negated errno from
 * libuv (e.g. -EBADF). An exception thrown by the callback is raised as an uncaught exception of
 * the thread (process 'uncaughtException', or 'error' on the Worker), never swallowed.
 * One watcher per fd per thread (EEXIST otherwise); close the watcher before the fd, or use
 * {@link close} which does both.
 */
export function watchFd(fd: number, events: number, callback: (status: number, events: number) => void): FdWatcher {
  if (watchers.has(fd)) throw new SysError(osConstants.errno.EEXIST, 'uv_poll_init', `fd ${fd} is already watched in this thread`);
  const w = new WatcherImpl(fd, native.watch(fd, events, callback));
  watchers.set(fd, w);
  return w;
}
