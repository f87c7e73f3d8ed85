/**
 * Loads the vhost_user_native addon (the only module that does) and defines {@link SysError}, built
 * by the addon through a factory registered at load time. Internal to src/sys.
 * @module
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorMap } from 'node:util';

/** Raw addon surface; kept private to src/sys so the typed wrappers are the only callers. */
export interface NativeAddon {
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
  socketInfo(fd: number): { domain: number; type: number; listening: boolean };
  fsType(fd: number): number;
  hostIo(fd: number, write: boolean, pairs: Float64Array, count: number, offset: number, flags: number): number;
  uffdCreate(): number;
  uffdRegister(fd: number, address: bigint, length: number): number;
  uffdUnregister(fd: number, address: bigint, length: number): void;
  fallocateAsync(fd: number, mode: number, offset: number | bigint, length: number | bigint): Promise<void>;
  ioctlRangeAsync(fd: number, request: number | bigint, offset: number | bigint, length: number | bigint): Promise<void>;
  netlinkOpen(protocol: number): number;
  netlinkSendAsync(fd: number, data: Uint8Array): Promise<number>;
  netlinkRecv(fd: number, buf: Uint8Array): number | null;
  /** [handle, address, mapping id, guarded against SIGBUS] */
  mmap(fd: number, offset: number | bigint, length: number, prot: number, flags: number, unsized?: boolean): [NativeHandle, bigint, number, boolean];
  munmap(handle: NativeHandle): void;
  wrapMemory(address: bigint, length: number): [NativeHandle, bigint, number, boolean];
  window(handle: NativeHandle, index: number): ArrayBuffer;
  /** [kind (0 regular, 1 block device, 2 other), size, seals, page size] */
  fileInfo(fd: number): [number, number, number, number];
  addSeals(fd: number, seals: number): void;
  getSeals(fd: number): number;
  memoryFaultFd(): number;
  /** [[mapping id, first fault address, pages replaced], ...] */
  takeMemoryFaults(): [number, bigint, number][];
  watch(fd: number, events: number, callback: (status: number, events: number) => void): NativeHandle;
  watchStart(handle: NativeHandle, events: number): void;
  watchStop(handle: NativeHandle): void;
  watchClose(handle: NativeHandle): void;
  watchRef(handle: NativeHandle, on: boolean): void;
  constants: Record<string, number>;
}

/** Opaque napi_external owned by the addon. */
declare const nativeHandleBrand: unique symbol;
export type NativeHandle = { readonly [nativeHandleBrand]: true };

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
 * Loads the addon: a prebuilt binary shipped in prebuilds/ for this platform, architecture and
 * Node ABI, else one compiled into build/ at install time. When neither exists the error says how
 * to build it.
 */
function loadAddon(): NativeAddon {
  const root = packageRoot();
  const req = createRequire(import.meta.url);
  const nodeGypBuild = req('node-gyp-build') as (dir: string) => unknown;
  try {
    return nodeGypBuild(root) as NativeAddon;
  } catch (e) {
    throw new Error(`vhost-user: no native addon for ${process.platform}-${process.arch} node ${process.versions.node} (no prebuilt ` +
      `binary in ${join(root, 'prebuilds')} and none built in ${join(root, 'build')}). Build it with \`npm rebuild vhost-user\` ` +
      `(needs python3, make, a C compiler and Node's headers; in a clone of the repository: \`npx node-gyp rebuild\`). ` +
      `Cause: ${(e as Error).message.split('\n')[0]}`);
  }
}

export const native = loadAddon();

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
/** A constant exported by the addon (throws if the addon lacks it). */
export function constant(name: string): number {
  const v = C[name];
  if (v === undefined) throw new Error(`addon lacks constant ${name}`);
  return v;
}
