/**
 * Per-test temporary directories and Unix socket paths. Directories live directly under /tmp (not
 * $TMPDIR, which may be long) because sockaddr_un.sun_path holds at most 107 bytes plus the NUL.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

/** Longest usable Unix socket path: sizeof(sun_path) = 108 including the terminating NUL. */
export const MAX_SUN_PATH = 107;

/** A temporary directory removed when its test ends (or by {@link TempDir.cleanup}). */
export interface TempDir {
  /** Absolute path of the directory. */
  readonly path: string;
  /** Path of a file inside the directory (not created). */
  file(name: string): string;
  /**
   * A fresh Unix socket path inside the directory: `<name>-<n>.sock`, unique per call. Throws if
   * the path would not fit in sun_path.
   */
  socketPath(name?: string): string;
  /** Removes the directory recursively; idempotent. */
  cleanup(): void;
}

/**
 * Creates `/tmp/vu-<prefix>-XXXXXX`. With a test context the directory is removed after the test
 * (t.after); without one the caller must call cleanup().
 */
export function makeTempDir(t?: TestContext, prefix = 't'): TempDir {
  const safe = prefix.replace(/[^\w-]/g, '').slice(0, 16) || 't';
  const path = mkdtempSync(join('/tmp', `vu-${safe}-`));
  let counter = 0;
  let removed = false;
  const dir: TempDir = {
    path,
    file: (name: string) => join(path, name),
    socketPath: (name = 's') => {
      counter += 1;
      const p = join(path, `${name}-${counter}.sock`);
      if (Buffer.byteLength(p) > MAX_SUN_PATH) {
        throw new Error(`socket path too long for sun_path (${Buffer.byteLength(p)} > ${MAX_SUN_PATH}): ${p}`);
      }
      return p;
    },
    cleanup: () => {
      if (removed) return;
      removed = true;
      rmSync(path, { recursive: true, force: true });
    },
  };
  t?.after(() => dir.cleanup());
  return dir;
}
