/**
 * Boots the test guest (scripts/build-guest.sh) under QEMU/TCG and follows its serial console.
 * The guest's /init prints `VTEST-BEGIN <name>` and `VTEST-RESULT <name> PASS|FAIL k=v...`, then
 * powers off; QEMU runs with -no-reboot so a guest panic or reboot also ends the process.
 *
 * Guest RAM is a shared memfd (`memory-backend-memfd,share=on`): vhost-user backends must mmap it.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { ManagedProcess, raceTimeout, type ExitStatus } from './process.js';
import { ensureGuest, type GuestImages } from './tools.js';

/** Options for {@link startQemu}. */
export interface QemuOptions {
  /** Guest test to run: /tests/<test>.sh (scripts/guest/tests/), or 'shell' for a console shell. */
  readonly test: string;
  /** Test parameters, passed as `vtest.<key>=<value>` on the kernel command line. */
  readonly params?: Readonly<Record<string, string | number>>;
  /** Guest RAM in MiB (default 256). */
  readonly memMb?: number;
  /** vCPUs (default 1; TCG runs them on one host thread per vCPU). */
  readonly smp?: number;
  /** Extra QEMU arguments, e.g. from {@link vhostUserBlkArgs}. */
  readonly args?: readonly string[];
  /** Extra kernel command-line words. */
  readonly kernelArgs?: readonly string[];
  /** Drop `quiet` so kernel messages reach the console (debugging). */
  readonly verbose?: boolean;
  /** Guest images; default {@link ensureGuest}(). */
  readonly guest?: GuestImages;
  /** When given, the VM is killed after the test (t.after), whatever the outcome. */
  readonly t?: TestContext;
  /** QEMU binary (default qemu-system-x86_64). */
  readonly binary?: string;
}

/** A parsed `VTEST-RESULT` line. */
export interface VtestResult {
  /** Test name as the guest printed it. */
  readonly name: string;
  /** True for PASS. */
  readonly pass: boolean;
  /** key=value details from the result line (later keys win). */
  readonly details: Readonly<Record<string, string>>;
  /** The raw line. */
  readonly line: string;
  /** Milliseconds from QEMU spawn until the result line arrived. */
  readonly elapsedMs: number;
}

/** A running QEMU. */
export interface QemuHandle {
  /** The process wrapper (stdout = serial console, stderr = QEMU's own messages). */
  readonly proc: ManagedProcess;
  /** Serial console text so far, carriage returns removed. */
  readonly output: string;
  /** QEMU's stderr so far. */
  readonly stderr: string;
  /** Resolves when QEMU exits (never rejects). */
  readonly exited: Promise<ExitStatus>;
  /**
   * Waits for `re` on the serial console; rejects on timeout or QEMU exit, with diagnostics.
   * Output arrives in chunks: end the pattern with `\n` (not `$`) to match only complete lines.
   */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /**
   * Waits for the VTEST-RESULT line (default timeout 60 s) and parses it. Does not assert PASS:
   * callers check `pass` so a failure message can include {@link diagnostics}.
   */
  result(timeoutMs?: number): Promise<VtestResult>;
  /** Sends keystrokes to the serial console (for vtest=shell). */
  write(text: string): void;
  /** Sends a signal (default SIGKILL: the "VMM crashed" case). */
  kill(signal?: NodeJS.Signals): void;
  /** Kills QEMU if still running and waits for it to exit. */
  stop(): Promise<ExitStatus>;
  /** Command line, console tail and stderr tail, for assertion messages. */
  diagnostics(): string;
}

// Requires the newline: console output arrives in chunks, and `$` would match a half-received line.
const RESULT_RE = /^VTEST-RESULT (\S+) (PASS|FAIL)([^\n]*)\n/m;

/** Builds the kernel command line for a vtest run. */
export function kernelCommandLine(opts: Pick<QemuOptions, 'test' | 'params' | 'kernelArgs' | 'verbose'>): string {
  const words = ['console=ttyS0', 'panic=-1', `vtest=${opts.test}`];
  if (!opts.verbose) words.push('quiet');
  for (const [k, v] of Object.entries(opts.params ?? {})) {
    const s = String(v);
    if (!/^\w+$/.test(k) || /\s/.test(s)) throw new Error(`bad vtest parameter ${k}=${s}`);
    words.push(`vtest.${k}=${s}`);
  }
  words.push(...(opts.kernelArgs ?? []));
  return words.join(' ');
}

/** Parses the key=value words after PASS/FAIL on a result line. */
export function parseDetails(rest: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const w of rest.trim().split(/\s+/)) {
    const i = w.indexOf('=');
    if (i > 0) out[w.slice(0, i)] = w.slice(i + 1);
  }
  return out;
}

/** Spawns QEMU with the test guest. The handle is live as soon as this resolves. */
export async function startQemu(opts: QemuOptions): Promise<QemuHandle> {
  const guest = opts.guest ?? await ensureGuest();
  const mem = opts.memMb ?? 256;
  const args = [
    '-accel', 'tcg',
    '-machine', 'q35',
    '-cpu', 'max',
    '-smp', String(opts.smp ?? 1),
    '-m', `${mem}M`,
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    '-numa', 'node,memdev=mem',
    // -nodefaults: no default NIC (its option ROM load costs time) and no parallel/monitor devices.
    '-nodefaults', '-nographic', '-no-reboot',
    '-serial', 'stdio', '-monitor', 'none',
    '-kernel', guest.kernel,
    '-initrd', guest.initrd,
    '-append', kernelCommandLine(opts),
    ...(opts.args ?? []),
  ];
  const proc = ManagedProcess.spawn(opts.binary ?? 'qemu-system-x86_64', args, { label: 'qemu' });
  const console = (): string => proc.stdout.replace(/\r/g, '');
  let resultPromise: Promise<VtestResult> | undefined;
  const handle: QemuHandle = {
    proc,
    get output() { return console(); },
    get stderr() { return proc.stderr; },
    exited: proc.exited,
    waitFor: (re, timeoutMs) => proc.waitForText(re, timeoutMs, console),
    result: (timeoutMs = 60_000) => {
      resultPromise ??= proc.waitForText(RESULT_RE, timeoutMs, console).then((m) => ({
        name: m[1] ?? '',
        pass: m[2] === 'PASS',
        details: parseDetails(m[3] ?? ''),
        line: m[0],
        elapsedMs: performance.now() - proc.startedAt,
      }));
      return resultPromise;
    },
    write: (text) => proc.write(text),
    kill: (signal = 'SIGKILL') => proc.signal(signal),
    stop: () => proc.terminate({ sig: 'SIGKILL', graceMs: 5000 }),
    diagnostics: () => proc.diagnostics(60),
  };
  opts.t?.after(async () => { await handle.stop(); });
  return handle;
}

/**
 * Waits for the guest's VTEST-RESULT (default 90 s: TCG boot plus the test) and asserts PASS; a
 * failure message carries the console and QEMU's stderr.
 */
export async function expectPass(vm: QemuHandle, timeoutMs = 90_000): Promise<VtestResult> {
  const r = await vm.result(timeoutMs);
  assert.ok(r.pass, `guest test failed: ${r.line}\n${vm.diagnostics()}`);
  return r;
}

/** The guest powers itself off after its result: asserts that QEMU then exits 0 on its own (within 15 s). */
export async function expectCleanExit(vm: QemuHandle): Promise<void> {
  assert.ok(await raceTimeout(vm.exited, 15_000), `QEMU did not exit after the guest powered off\n${vm.diagnostics()}`);
  assert.deepEqual(await vm.exited, { code: 0, signal: null }, vm.diagnostics());
}

/** Options for {@link vhostUserBlkArgs}. */
export interface VhostUserBlkArgsOptions {
  /** Device/chardev id suffix, for several disks in one VM (default '0'). */
  readonly id?: string;
  /** Request queues (default 1). */
  readonly numQueues?: number;
  /** Extra `-device` properties, e.g. ['queue-size=256', 'config-wce=off']. */
  readonly deviceProps?: readonly string[];
}

/** QEMU arguments attaching a vhost-user-blk-pci disk served at `socketPath`. */
export function vhostUserBlkArgs(socketPath: string, opts: VhostUserBlkArgsOptions = {}): string[] {
  const id = opts.id ?? '0';
  const props = [`chardev=vub${id}`, `num-queues=${opts.numQueues ?? 1}`, ...(opts.deviceProps ?? [])];
  return [
    '-chardev', `socket,id=vub${id},path=${socketPath}`,
    '-device', `vhost-user-blk-pci,${props.join(',')}`,
  ];
}

/**
 * QEMU arguments attaching a virtio-net-pci NIC whose backend is vhost-user at `socketPath`.
 *
 * MSI-X is off (`vectors=0`, legacy INTx) unless `msix: true`: QEMU 7.2 under TCG segfaults in
 * msix_set_vector_notifiers() from vhost_net_start() as soon as the guest driver sets DRIVER_OK on
 * a vhost-user NIC with MSI-X (vhost-user-blk with MSI-X is unaffected). `romfile=` skips loading
 * the iPXE option ROM, which only costs boot time here.
 */
export function vhostUserNetArgs(socketPath: string, opts: { id?: string; queues?: number; msix?: boolean } = {}): string[] {
  const id = opts.id ?? '0';
  const q = opts.queues ?? 1;
  const dev = [`virtio-net-pci,netdev=vun${id}`, 'romfile='];
  if (q > 1) dev.push('mq=on');
  // With MSI-X: one vector per virtqueue plus config and control queue.
  dev.push(opts.msix ? `vectors=${2 * q + 2}` : 'vectors=0');
  return [
    '-chardev', `socket,id=vunc${id},path=${socketPath}`,
    '-netdev', `type=vhost-user,id=vun${id},chardev=vunc${id},queues=${q}`,
    '-device', dev.join(','),
  ];
}

/**
 * QEMU arguments sharing the host's root directory read-only over virtio-9p (mount tag
 * `hostroot`), for the guest test `host-node`, which mounts it and runs the host's node on this
 * checkout chrooted there (scripts/guest/lib.sh: vt_mount_host). `multidevs=remap` keeps inode
 * numbers unique across the host's mounts.
 */
export function hostRootShareArgs(): string[] {
  return [
    '-fsdev', 'local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device', 'virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot',
  ];
}

/**
 * The `vtest.script` parameter of guest test `host-node`: node scripts run in turn in one boot,
 * each as [path, ...args]. Paths and arguments may not contain spaces, ',' or '+' (the kernel
 * command line and the list syntax use them).
 */
export function hostNodeScripts(scripts: readonly (readonly string[])[]): string {
  for (const w of scripts.flat()) {
    if (/[\s,+]/.test(w) || w === '') throw new Error(`host-node script word '${w}' is empty or contains a space, ',' or '+'`);
  }
  return scripts.map((s) => s.join('+')).join(',');
}
