/**
 * External tool checks and the cached test-guest build. A missing tool skips a test loudly on a
 * developer machine, but fails it under CI=true: CI installs every tool (.ci/run), so a missing
 * one there means the suite silently stopped testing something.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import type { TestContext } from 'node:test';

/** Debian package that provides each tool, for the skip/fail message. */
const PACKAGE_OF: Readonly<Record<string, string>> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-storage-daemon': 'qemu-system-common (pulled in by qemu-system-x86)',
  'qemu-img': 'qemu-utils',
  'dpdk-testpmd': 'dpdk-dev',
  busybox: 'busybox-static',
  cpio: 'cpio',
  'dpkg-deb': 'dpkg',
  'apt-get': 'apt',
  vdpa: 'iproute2',
  ip: 'iproute2',
  stdbuf: 'coreutils',
  gzip: 'gzip',
  gcc: 'gcc',
};

/** Tools needed to build and boot the test guest (see {@link ensureGuest}). */
export const GUEST_TOOLS: readonly string[] = ['qemu-system-x86_64', 'busybox', 'cpio', 'gzip', 'dpkg-deb'];

/** True when running under CI (CI=true or CI=1). */
export function isCI(): boolean {
  const v = (process.env.CI ?? '').toLowerCase();
  return v === 'true' || v === '1';
}

/** Absolute path of an executable found on $PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/**
 * Checks that every tool is on $PATH. Returns true when all are present. Otherwise: under CI it
 * throws (the test fails, naming the missing tools and their packages); locally it marks the test
 * skipped with a loud reason, prints a warning to stderr, and returns false — the caller must
 * return immediately.
 */
export function requireTools(t: TestContext, ...names: string[]): boolean {
  const missing = names.filter((n) => which(n) === undefined);
  if (missing.length === 0) return true;
  const detail = missing.map((n) => `${n} (Debian package: ${PACKAGE_OF[n] ?? 'unknown'})`).join(', ');
  if (isCI()) {
    throw new Error(`CI=true and required tool(s) missing: ${detail}. .ci/run must install them.`);
  }
  const reason = `SKIPPED — MISSING TOOL(S): ${detail}. THIS TEST DID NOT RUN.`;
  process.stderr.write(`\n!!! ${t.name}: ${reason}\n\n`);
  t.skip(reason);
  return false;
}

/** Repository root: the nearest ancestor of this file holding package.json and scripts/build-guest.sh. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'scripts', 'build-guest.sh'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot locate the repository root (scripts/build-guest.sh)');
    dir = up;
  }
}

/** Paths of the built test guest. */
export interface GuestImages {
  /** bzImage of Debian's stock kernel. */
  readonly kernel: string;
  /** gzip'ed cpio initramfs with busybox, the virtio modules and the /tests scripts. */
  readonly initrd: string;
  /** Kernel release, e.g. '6.1.0-56-amd64'. */
  readonly kernelVersion: string;
}

let guestPromise: Promise<GuestImages> | undefined;

/**
 * Runs scripts/build-guest.sh once per process (the script itself is cached and locked, so other
 * test processes reuse its outputs) and returns the image paths. The first build downloads the
 * kernel package (~70 MB) and takes ~10 s; later calls take milliseconds. Rejects with the
 * script's output on failure.
 */
export function ensureGuest(): Promise<GuestImages> {
  guestPromise ??= buildGuest();
  return guestPromise;
}

let backportsGuestPromise: Promise<GuestImages> | undefined;

/**
 * Like {@link ensureGuest} with Debian's bookworm-backports kernel (6.12: vdpa, vduse, vhost_vdpa,
 * virtio_vdpa), in <repo>/.guest-backports. The package comes through a private apt state in that
 * directory, so the machine's apt sources are left alone. The first build downloads ~106 MB.
 */
export function ensureBackportsGuest(): Promise<GuestImages> {
  backportsGuestPromise ??= buildGuest(join(repoRoot(), '.guest-backports'), { GUEST_KERNEL_SUITE: 'bookworm-backports' });
  return backportsGuestPromise;
}

async function buildGuest(outDirArg?: string, env: Readonly<Record<string, string>> = {}): Promise<GuestImages> {
  const root = repoRoot();
  const outDir = outDirArg ?? process.env.VTEST_GUEST_DIR ?? join(root, '.guest');
  const script = join(root, 'scripts', 'build-guest.sh');
  await new Promise<string>((resolve, reject) => {
    const child = spawn('bash', [script, outDir], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let text = '';
    child.stdout.on('data', (b: Buffer) => { text += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { text += b.toString(); });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(text);
      else reject(new Error(`scripts/build-guest.sh failed (exit ${code}):\n${text}`));
    });
  });
  return {
    kernel: join(outDir, 'vmlinuz'),
    initrd: join(outDir, 'initrd.img'),
    kernelVersion: readFileSync(join(outDir, 'kernel-version'), 'utf8').trim(),
  };
}
