/**
 * DPDK testpmd as a vhost-user peer, without hugepages or NICs:
 *   - {@link startTestpmdVhost}: testpmd is the BACKEND (net_vhost PMD) and listens on the socket,
 *     so QEMU or our frontend can connect to it;
 *   - {@link startTestpmdVirtioUser}: testpmd is the FRONTEND (net_virtio_user PMD) and connects to
 *     a backend we run (or listens, with server: true, for a backend that connects).
 *
 * What works here (DPDK 22.11, 2 cores):
 *   dpdk-testpmd --no-huge -m 256 --no-shconf --file-prefix=<unique> --no-pci -l 0,1 --main-lcore M
 *     --vdev <net_vhost0|net_virtio_user0,...> -- --total-num-mbufs=16384 --forward-mode=F --auto-start
 * `--in-memory` is refused with --no-huge (it implies legacy mem), hence --no-shconf plus a unique
 * --file-prefix; -m 256 starts in ~0.4 s where -m 1024 takes ~2.2 s. Without --stats-period
 * testpmd waits on stdin ("Press enter to exit"), so stdin is kept open and closing it is the
 * clean stop; with --stats-period it only stops on SIGINT/SIGTERM. Two testpmd instances must
 * forward on different lcores (--main-lcore picks which of 0/1 is NOT the forwarding core), or
 * both busy-poll one CPU and throughput collapses by ~1000x. testpmd's stdout is block-buffered
 * on a pipe, so it runs under `stdbuf -oL`.
 */
import { rmSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { ManagedProcess, waitForUnixListener, type ExitStatus } from './process.js';

/** testpmd forwarding modes useful against a vhost-user peer. */
export type ForwardMode = 'io' | 'mac' | 'macswap' | 'rxonly' | 'txonly' | 'icmpecho' | 'flowgen' | 'csum';

/** Options common to both testpmd roles. */
export interface TestpmdCommonOptions {
  /** Unix socket path. */
  readonly socketPath: string;
  /** Queue pairs (default 1). */
  readonly queues?: number;
  /** Forwarding mode (default 'io' for vhost, 'txonly' for virtio_user). */
  readonly forwardMode?: ForwardMode;
  /** Lcore (0 or 1) that only runs the CLI; the other one forwards. */
  readonly mainLcore?: 0 | 1;
  /** Print port statistics every N seconds (enables {@link Testpmd.txPps}). */
  readonly statsPeriodSec?: number;
  /** EAL memory in MiB (default 256). */
  readonly memMb?: number;
  /** Extra testpmd application arguments (after `--`). */
  readonly appArgs?: readonly string[];
  /** How long to wait for readiness (default 15 s). */
  readonly timeoutMs?: number;
  /** When given, testpmd is stopped after the test. */
  readonly t?: TestContext;
  /**
   * More --vdev devices after the main one, e.g. ['net_tap0,iface=tap0'] or a second net_vhost:
   * io forwarding pairs port 0 with port 1.
   */
  readonly extraVdevs?: readonly string[];
  /** argv prefix testpmd runs under, e.g. ['ip', 'netns', 'exec', NS] (net_tap's TAP lands there). */
  readonly wrapper?: readonly string[];
}

/** Options for {@link startTestpmdVhost}. */
export interface TestpmdVhostOptions extends TestpmdCommonOptions {
  /** testpmd connects (client=1, reconnecting) to a frontend that listens; default false (listens). */
  readonly client?: boolean;
  /** Extra net_vhost devargs, e.g. ['dequeue-zero-copy=0']. */
  readonly devargs?: readonly string[];
}

/** Options for {@link startTestpmdVirtioUser}. */
export interface TestpmdVirtioUserOptions extends TestpmdCommonOptions {
  /** testpmd listens (server=1) and our backend connects; default false (testpmd connects). */
  readonly server?: boolean;
  /** Virtqueue size (default: PMD's 256). */
  readonly queueSize?: number;
  /** Extra net_virtio_user devargs, e.g. ['packed_vq=1', 'mrg_rxbuf=0']. */
  readonly devargs?: readonly string[];
}

/** Totals from testpmd's final "Forward statistics" block (printed when it stops cleanly). */
export interface ForwardStats {
  readonly rxPackets: number;
  readonly rxDropped: number;
  readonly txPackets: number;
  readonly txDropped: number;
}

/** A running testpmd. */
export interface Testpmd {
  /** The vhost-user socket path. */
  readonly socketPath: string;
  /** The process wrapper. */
  readonly proc: ManagedProcess;
  /** stdout so far. */
  readonly output: string;
  /** Resolves when testpmd exits. */
  readonly exited: Promise<ExitStatus>;
  /**
   * Waits for `re` in stdout followed by stderr (testpmd prints its own messages to stdout, the
   * PMDs' VHOST_CONFIG/virtio_user logs to stderr). Rejects on timeout or exit.
   */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /** Tx-pps samples printed so far (needs statsPeriodSec). */
  txPps(): number[];
  /** Rx-pps samples printed so far (needs statsPeriodSec). */
  rxPps(): number[];
  /** The final accumulated forward statistics, once testpmd stopped cleanly. */
  forwardStats(): ForwardStats | undefined;
  /**
   * Clean stop: closes stdin, then SIGTERM (testpmd stops ports and prints its statistics), then
   * SIGKILL; removes the EAL runtime directory. Resolves with stdout. Idempotent.
   */
  stop(): Promise<string>;
}

let instance = 0;

function uniquePrefix(): string {
  instance += 1;
  return `vut${process.pid}x${instance}`;
}

function checkPath(p: string): void {
  // devargs are ','-separated key=value pairs with no escaping, so a comma would split the path.
  if (/[,\s]/.test(p)) throw new Error(`socket path must not contain commas or spaces: ${p}`);
}

function spawnTestpmd(vdev: string, role: 'vhost' | 'virtio-user', o: TestpmdCommonOptions, defaultMode: ForwardMode,
  defaultMain: 0 | 1): Testpmd {
  const prefix = uniquePrefix();
  const q = o.queues ?? 1;
  const eal = [
    '--no-huge', '-m', String(o.memMb ?? 256), '--no-shconf', `--file-prefix=${prefix}`, '--no-pci',
    '-l', '0,1', '--main-lcore', String(o.mainLcore ?? defaultMain), '--log-level=lib.eal:warning',
    '--vdev', vdev, ...(o.extraVdevs ?? []).flatMap((v) => ['--vdev', v]),
  ];
  const app = [
    `--total-num-mbufs=16384`, `--rxq=${q}`, `--txq=${q}`, `--forward-mode=${o.forwardMode ?? defaultMode}`,
    '--auto-start', ...(o.statsPeriodSec ? [`--stats-period=${o.statsPeriodSec}`] : []), ...(o.appArgs ?? []),
  ];
  // testpmd writes with printf: on a pipe its stdout is block-buffered and the readiness lines
  // would only arrive at exit. stdbuf (coreutils, LD_PRELOAD) makes it line-buffered.
  const argv = [...(o.wrapper ?? []), 'stdbuf', '-oL', '-eL', 'dpdk-testpmd', ...eal, '--', ...app];
  const proc = ManagedProcess.spawn(argv[0] ?? 'stdbuf', argv.slice(1), { label: `testpmd-${role}` });
  let stopped: Promise<string> | undefined;
  const numbers = (re: RegExp): number[] => [...proc.stdout.matchAll(re)].map((m) => Number(m[1]));
  const pmd: Testpmd = {
    socketPath: o.socketPath,
    proc,
    get output() { return proc.stdout; },
    exited: proc.exited,
    waitFor: (re, ms) => proc.waitForText(re, ms, () => `${proc.stdout}\n${proc.stderr}`),
    txPps: () => numbers(/Tx-pps:\s+(\d+)/g),
    rxPps: () => numbers(/Rx-pps:\s+(\d+)/g),
    forwardStats: () => {
      const block = proc.stdout.split('Accumulated forward statistics for all ports')[1];
      if (block === undefined) return undefined;
      const n = (re: RegExp): number => Number(block.match(re)?.[1] ?? NaN);
      return {
        rxPackets: n(/RX-packets:\s+(\d+)/), rxDropped: n(/RX-dropped:\s+(\d+)/),
        txPackets: n(/TX-packets:\s+(\d+)/), txDropped: n(/TX-dropped:\s+(\d+)/),
      };
    },
    stop: () => {
      stopped ??= proc.terminate({ sig: 'SIGTERM', graceMs: 3000, polite: () => proc.child.stdin?.end() })
        .then(() => {
          rmSync(`/var/run/dpdk/${prefix}`, { recursive: true, force: true });
          return proc.stdout;
        });
      return stopped;
    },
  };
  o.t?.after(async () => { await pmd.stop(); });
  return pmd;
}

/** Waits until testpmd started forwarding on all `ports`; fails fast if a vdev failed. */
async function waitForwarding(pmd: Testpmd, timeoutMs: number, ports = 1): Promise<void> {
  const m = await pmd.waitFor(/packet forwarding - ports=(\d+)/, timeoutMs);
  if (m[1] !== String(ports)) throw new Error(`testpmd probed ${m[1]} ports (vdev failed)\n${pmd.proc.diagnostics()}`);
}

/** Awaits `ready`; if it fails, stops testpmd before passing the error on. */
async function readyOrStop(pmd: Testpmd, ready: Promise<unknown>): Promise<Testpmd> {
  try {
    await ready;
  } catch (err) {
    await pmd.stop();
    throw err;
  }
  return pmd;
}

/**
 * Starts testpmd as a vhost-user BACKEND (net_vhost0) and resolves once forwarding has started and
 * (server mode, the default) the socket is listening. In client mode the PMD keeps reconnecting
 * in the background until a frontend listens at socketPath.
 */
export async function startTestpmdVhost(opts: TestpmdVhostOptions): Promise<Testpmd> {
  checkPath(opts.socketPath);
  const client = opts.client === true;
  const vdev = ['net_vhost0', `iface=${opts.socketPath}`, `queues=${opts.queues ?? 1}`, `client=${client ? 1 : 0}`,
    ...(opts.devargs ?? [])].join(',');
  const pmd = spawnTestpmd(vdev, 'vhost', opts, 'io', 0);
  const timeout = opts.timeoutMs ?? 15_000;
  return readyOrStop(pmd, (async () => {
    await waitForwarding(pmd, timeout, 1 + (opts.extraVdevs?.length ?? 0));
    // Under a wrapper (ip netns exec, which execs) testpmd keeps the pid but not the netns.
    const table = opts.wrapper ? `/proc/${pmd.proc.pid}/net/unix` : undefined;
    if (!client) await waitForUnixListener(opts.socketPath, timeout, pmd.proc, table);
  })());
}

/**
 * Starts testpmd as a vhost-user FRONTEND (net_virtio_user0). With server=false (default) the
 * backend must already listen at socketPath; resolves once forwarding started (the vhost-user
 * handshake is complete by then). With server=true resolves once testpmd listens; the device
 * probes when the backend connects, so wait for forwarding with waitFor() afterwards.
 */
export async function startTestpmdVirtioUser(opts: TestpmdVirtioUserOptions): Promise<Testpmd> {
  checkPath(opts.socketPath);
  const server = opts.server === true;
  const vdev = ['net_virtio_user0', `path=${opts.socketPath}`, `queues=${opts.queues ?? 1}`, `server=${server ? 1 : 0}`,
    ...(opts.queueSize ? [`queue_size=${opts.queueSize}`] : []), ...(opts.devargs ?? [])].join(',');
  const pmd = spawnTestpmd(vdev, 'virtio-user', opts, 'txonly', 1);
  const timeout = opts.timeoutMs ?? 15_000;
  return readyOrStop(pmd, server ? waitForUnixListener(opts.socketPath, timeout, pmd.proc) : waitForwarding(pmd, timeout));
}
