/**
 * Network namespaces for the networking e2e tests: a test makes its own namespace, runs the
 * back-end (which creates its TAP there) and the host end of the traffic inside it, configures the
 * TAP's host side, and the namespace is deleted when the test ends, whatever the outcome. Nothing
 * touches the host's own interfaces or routes, and parallel test files cannot collide.
 *
 * Needs root (ip netns add, /dev/net/tun) and iproute2's `ip`; the host end of a ping is busybox's
 * (the guest needs busybox anyway, and Debian hosts often have no ping installed).
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { ManagedProcess } from './process.js';
import { repoRoot } from './tools.js';

/** Result of a command that ran to completion. */
export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `cmd args` to completion (no timeout: callers bound what they run, e.g. ping -W). */
export function run(cmd: string, args: readonly string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    child.on('error', (e) => resolve({ code: -1, stdout, stderr: `${stderr}spawn error: ${e.message}` }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs `cmd args` and throws, with its output, unless it exits 0. */
export async function runOk(cmd: string, args: readonly string[]): Promise<RunResult> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${[cmd, ...args].join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r;
}

/** Parsed summary of a ping run. */
export interface PingResult {
  readonly transmitted: number;
  readonly received: number;
  readonly output: string;
}

/** A network namespace owned by one test. */
export interface Netns {
  /** Namespace name (as in `ip netns list`). */
  readonly name: string;
  /** argv prefix running a command inside the namespace: `ip netns exec NAME`. */
  readonly prefix: readonly string[];
  /** Runs a command inside the namespace to completion; throws unless it exits 0. */
  exec(cmd: string, args: readonly string[]): Promise<RunResult>;
  /** Spawns a long-running command inside the namespace as a {@link ManagedProcess}. */
  spawn(cmd: string, args: readonly string[], label: string, env?: NodeJS.ProcessEnv): ManagedProcess;
  /**
   * Waits until link `dev` exists in the namespace (a back-end creates its TAP when it starts):
   * follows `ip monitor link`, so the wait ends on the kernel's event, not on a poll.
   */
  waitForLink(dev: string, timeoutMs: number): Promise<void>;
  /** Gives `dev` the address `cidr` (e.g. 10.0.0.1/24) and sets it up. */
  configure(dev: string, cidr: string): Promise<void>;
  /** `ping -c count` from inside the namespace (busybox), each reply awaited for at most 2 s. */
  ping(addr: string, count: number): Promise<PingResult>;
  /** Deletes the namespace (idempotent). Processes still inside keep it alive until they exit. */
  remove(): Promise<void>;
}

let counter = 0;

/** True when `ip link show dev` finds `dev` in namespace `ns`. */
async function linkExists(ns: string, dev: string): Promise<boolean> {
  return (await run('ip', ['-n', ns, 'link', 'show', 'dev', dev])).code === 0;
}

/**
 * Creates a fresh namespace `vu<pid>n<k>` with its loopback up. With `t` it is deleted after the
 * test (t.after), even when the test fails.
 */
export async function createNetns(t?: TestContext): Promise<Netns> {
  counter += 1;
  const name = `vu${process.pid}n${counter}`;
  await runOk('ip', ['netns', 'add', name]);
  let removed = false;
  const ns: Netns = {
    name,
    prefix: ['ip', 'netns', 'exec', name],
    exec: (cmd, args) => runOk('ip', ['netns', 'exec', name, cmd, ...args]),
    spawn: (cmd, args, label, env) =>
      ManagedProcess.spawn('ip', ['netns', 'exec', name, cmd, ...args], env === undefined ? { label } : { label, env }),
    waitForLink: async (dev, timeoutMs) => {
      const mon = ManagedProcess.spawn('ip', ['-n', name, 'monitor', 'link'], { label: 'ip-monitor' });
      try {
        // The monitor prints nothing when it is ready; a link created before it subscribed is
        // caught by the check below, one created after by the monitor.
        const seen = mon.waitForText(new RegExp(`^\\d+: ${dev}[:@]`, 'm'), timeoutMs);
        seen.catch(() => undefined);
        if (await linkExists(name, dev)) return;
        await seen;
      } finally {
        await mon.terminate({ sig: 'SIGKILL', graceMs: 1000 });
      }
    },
    configure: async (dev, cidr) => {
      await runOk('ip', ['-n', name, 'addr', 'add', cidr, 'dev', dev]);
      await runOk('ip', ['-n', name, 'link', 'set', dev, 'up']);
    },
    ping: async (addr, count) => {
      const r = await run('ip', ['netns', 'exec', name, 'busybox', 'ping', '-c', String(count), '-W', '2', addr]);
      const m = /(\d+) packets transmitted, (\d+) packets received/.exec(r.stdout);
      return { transmitted: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? 0), output: `${r.stdout}${r.stderr}` };
    },
    remove: async () => {
      if (removed) return;
      removed = true;
      await run('ip', ['netns', 'del', name]);
    },
  };
  // Loopback down would make even local sockets in the namespace fail.
  await runOk('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  t?.after(() => ns.remove());
  return ns;
}

/** What the host end of a TCP transfer reports (test/helpers/tcp-peer.ts). */
export interface TcpPeerReport {
  readonly bytes: number;
  readonly sha256: string;
  readonly ms: number;
}

/** A running tcp-peer process. */
export interface TcpPeer {
  readonly proc: ManagedProcess;
  /** Resolves with the peer's report once its transfer is complete; rejects on failure/timeout. */
  done(timeoutMs: number): Promise<TcpPeerReport>;
}

function tcpPeerScript(): string {
  return join(repoRoot(), 'dist', 'test', 'helpers', 'tcp-peer.js');
}

function peerHandle(proc: ManagedProcess, verb: string): TcpPeer {
  return {
    proc,
    done: async (timeoutMs) => {
      const m = await proc.waitForText(new RegExp(`^${verb} bytes=(\\d+) sha256=([0-9a-f]{64}) ms=(\\d+)\\n`, 'm'), timeoutMs);
      return { bytes: Number(m[1]), sha256: m[2] ?? '', ms: Number(m[3]) };
    },
  };
}

/**
 * Starts a TCP sink inside `ns` listening on `port` (all addresses) for one connection; resolves
 * once it listens. {@link TcpPeer.done} gives the byte count and sha256 of what arrived.
 */
export async function startTcpSink(ns: Netns, port: number, t?: TestContext): Promise<TcpPeer> {
  const proc = ns.spawn(process.execPath, [tcpPeerScript(), 'sink', String(port)], 'tcp-sink');
  t?.after(async () => { await proc.terminate({ sig: 'SIGKILL', graceMs: 1000 }); });
  await proc.waitForText(/^listening\n/m, 10_000);
  return peerHandle(proc, 'received');
}

/**
 * Sends `bytes` random bytes from inside `ns` to `host:port` (connects at once: the listener must
 * be up). {@link TcpPeer.done} gives the byte count and sha256 of what was sent.
 */
export function startTcpSource(ns: Netns, host: string, port: number, bytes: number, t?: TestContext): TcpPeer {
  const proc = ns.spawn(process.execPath, [tcpPeerScript(), 'source', host, String(port), String(bytes)], 'tcp-source');
  t?.after(async () => { await proc.terminate({ sig: 'SIGKILL', graceMs: 1000 }); });
  return peerHandle(proc, 'sent');
}
