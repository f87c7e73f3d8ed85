/**
 * The guest's virtio-net scenarios (scripts/guest/tests/net-xfer.sh) against any vhost-user-net
 * back-end: our `vhost-user-net` daemon, or DPDK testpmd (net_vhost PMD) as the reference.
 *   - {@link runGuestTap}: one guest, the back-end's port is a TAP whose host side lives in a
 *     network namespace made by the test: ping both ways, 8 MiB over TCP each way, checksummed.
 *   - {@link runGuestPair}: two guests on one back-end forwarding between them (our L2 switch, or
 *     testpmd io forwarding between two net_vhost ports): ping each other, 8 MiB each way.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { ManagedProcess, waitForUnixListener } from './process.js';
import { expectCleanExit, expectPass, startQemu, vhostUserNetArgs, type QemuHandle, type VtestResult } from './qemu.js';
import { createNetns, startTcpSink, startTcpSource, type Netns } from './netns.js';
import { startTestpmdVhost } from './dpdk.js';
import { repoRoot } from './tools.js';

/** Bytes moved in each direction. */
export const XFER_BYTES = 8 * 1024 * 1024;
/** TCP port used by both ends (each guest and the namespace listen on it). */
const PORT = 5001;
/** Queue pairs of every NIC (the QEMU device gets mq=on). */
const QUEUE_PAIRS = 2;

/** Starts a back-end serving `sockets` (one per VM); with `ns`, inside it with TAP `tap`. */
export type StartNetBackend = (opts: { sockets: readonly string[]; ns?: Netns; tap?: string; t: TestContext }) => Promise<ManagedProcess>;

/**
 * Our `vhost-user-net` (dist/src/cli/net.js) as users run it: `--tap` when given one, an L2 switch
 * over several sockets otherwise. Inside `ns` it runs under `ip netns exec`, so its TAP is created
 * there. Resolves once it listens on every socket.
 */
export const startOurNet: StartNetBackend = async ({ sockets, ns, tap, t }) => {
  const script = join(repoRoot(), 'dist', 'src', 'cli', 'net.js');
  const args = [script, ...sockets.flatMap((s) => ['--socket-path', s]), '--queue-pairs', String(QUEUE_PAIRS), '--stats', '5',
    ...(tap !== undefined ? ['--tap', tap] : [])];
  const proc = ns ? ns.spawn(process.execPath, args, 'vhost-user-net') : ManagedProcess.spawn(process.execPath, args, { label: 'vhost-user-net' });
  t.after(async () => { await proc.terminate({ sig: 'SIGTERM', graceMs: 5000 }); });
  // `ip netns exec` execs the daemon: same pid, but its sockets are listed in its own netns' table.
  for (const s of sockets) await waitForUnixListener(s, 10_000, proc, `/proc/${proc.pid}/net/unix`);
  return proc;
};

/**
 * DPDK testpmd as the reference back-end, io forwarding: net_vhost0 <-> net_tap0 (TAP created in
 * `ns`) for one socket, net_vhost0 <-> net_vhost1 for two.
 */
export const startDpdkNet: StartNetBackend = async ({ sockets, ns, tap, t }) => {
  const [first, second] = sockets;
  assert.ok(first !== undefined && sockets.length <= 2);
  const extra = tap !== undefined
    ? [`net_tap0,iface=${tap}`]
    : [`net_vhost1,iface=${second ?? ''},queues=${QUEUE_PAIRS},client=0`];
  const pmd = await startTestpmdVhost({
    socketPath: first, queues: QUEUE_PAIRS, forwardMode: 'io', extraVdevs: extra, t,
    ...(ns ? { wrapper: ns.prefix } : {}),
  });
  if (second !== undefined) await waitForUnixListener(second, 10_000, pmd.proc, ns ? `/proc/${pmd.proc.pid}/net/unix` : undefined);
  return pmd.proc;
};

/** Options of the guest side of a scenario. */
export interface GuestNetOptions {
  /** Extra virtio-net-pci properties, e.g. ['packed=on']. */
  readonly deviceProps?: readonly string[];
  /** Guest vCPUs (Linux uses min(queue pairs, vCPUs) queue pairs; default 1). */
  readonly smp?: number;
}

function netArgs(sock: string, id: string, o: GuestNetOptions): string[] {
  const args = vhostUserNetArgs(sock, { id, queues: QUEUE_PAIRS });
  const props = o.deviceProps ?? [];
  if (props.length === 0) return args;
  const i = args.indexOf('-device');
  return args.map((a, k) => (k === i + 1 ? [a, ...props].join(',') : a));
}

/** Checks a guest's result line: PASS, and well-formed checksums of both directions. */
async function guestResult(vm: QemuHandle): Promise<VtestResult> {
  const r = await expectPass(vm, 120_000);
  assert.equal(r.details.tx_bytes, String(XFER_BYTES), `guest sent a short stream\n${r.line}`);
  assert.match(r.details.tx_sha256 ?? '', /^[0-9a-f]{64}$/);
  assert.match(r.details.rx_sha256 ?? '', /^[0-9a-f]{64}$/);
  return r;
}

/** What a scenario measured, for t.diagnostic. */
export interface NetScenarioReport {
  readonly summary: string;
  /** The back-end process (still running), for back-end specific checks of its log. */
  readonly backend: ManagedProcess;
}

/**
 * One guest on a TAP port: the namespace side is 10.77.0.1/24, the guest 10.77.0.2/24. The guest
 * pings the namespace, the namespace pings the guest (3 of 4 replies), then 8 MiB go each way at
 * the same time; every byte count and sha256 must match on both ends.
 */
export async function runGuestTap(t: TestContext, sock: string, start: StartNetBackend, o: GuestNetOptions = {}): Promise<NetScenarioReport> {
  const ns = await createNetns(t);
  const tap = 'vutap0';
  const backend = await start({ sockets: [sock], ns, tap, t });
  return withBackendLog(backend, () => tapScenario(t, sock, ns, tap, backend, o));
}

/** Runs `body`; a failure's message gets the back-end's log tail (the guest's side is in it already). */
async function withBackendLog<T>(backend: ManagedProcess, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof Error) e.message += `\n${backend.diagnostics()}`;
    throw e;
  }
}

async function tapScenario(t: TestContext, sock: string, ns: Netns, tap: string, backend: ManagedProcess,
  o: GuestNetOptions): Promise<NetScenarioReport> {
  await ns.waitForLink(tap, 10_000);
  await ns.configure(tap, '10.77.0.1/24');
  const sink = await startTcpSink(ns, PORT, t);
  const t0 = performance.now();
  const vm = await startQemu({
    test: 'net-xfer',
    params: { ip: '10.77.0.2/24', peer: '10.77.0.1', port: PORT, send: XFER_BYTES, recv: 1 },
    args: netArgs(sock, '0', o), smp: o.smp ?? 1, t,
  });
  await vm.waitFor(/^VTEST-PROGRESS net-xfer ready ip=10\.77\.0\.2\n/m, 90_000);
  // busybox ping waits only ~2 RTTs (at least 1 s) for the LAST reply, which a loaded TCG guest
  // can miss; every earlier one has a full interval: 3 of 4 must come back.
  const ping = await ns.ping('10.77.0.2', 4);
  assert.ok(ping.received >= 3, `namespace -> guest ping lost replies\n${ping.output}\n${vm.diagnostics()}`);
  const source = startTcpSource(ns, '10.77.0.2', PORT, XFER_BYTES, t);
  const r = await guestResult(vm);
  const pairs = String(Math.min(o.smp ?? 1, QUEUE_PAIRS));
  assert.equal(r.details.rx_queues, pairs, `guest uses ${r.details.rx_queues} RX queues\n${r.line}`);
  assert.equal(r.details.tx_queues, pairs, `guest uses ${r.details.tx_queues} TX queues\n${r.line}`);
  const sent = await source.done(30_000);
  const got = await sink.done(30_000);
  assert.equal(r.details.rx_bytes, String(sent.bytes), 'guest received a different byte count than the namespace sent');
  assert.equal(r.details.rx_sha256, sent.sha256, 'namespace -> guest: checksum mismatch');
  assert.equal(got.bytes, XFER_BYTES, 'namespace received a different byte count than the guest sent');
  assert.equal(got.sha256, r.details.tx_sha256, 'guest -> namespace: checksum mismatch');
  await expectCleanExit(vm);
  assert.equal(backend.exitStatusNow, undefined, `back-end died\n${backend.diagnostics()}`);
  return {
    backend,
    summary: `guest ping tries ${r.details.ping_tries}; ns->guest ${sent.ms} ms, guest->ns ${got.ms} ms ` +
      `(guest tx ${r.details.tx_s} s); spawn->result ${(r.elapsedMs / 1000).toFixed(1)} s, total ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  };
}

/**
 * Two guests, 10.78.0.1 and 10.78.0.2, one socket each on the same back-end, booted in parallel:
 * each pings the other until it answers, then each sends 8 MiB to the other at the same time;
 * what A sent is what B received and the other way round.
 */
export async function runGuestPair(t: TestContext, socks: readonly [string, string], start: StartNetBackend,
  o: GuestNetOptions = {}): Promise<NetScenarioReport> {
  const t0 = performance.now();
  const backend = await start({ sockets: socks, t });
  const tReady = performance.now();
  return withBackendLog(backend, () => pairScenario(t, socks, backend, o, t0, tReady));
}

async function pairScenario(t: TestContext, socks: readonly [string, string], backend: ManagedProcess, o: GuestNetOptions,
  t0: number, tReady: number): Promise<NetScenarioReport> {
  const ips = ['10.78.0.1', '10.78.0.2'] as const;
  const vms = await Promise.all([0, 1].map((i) => startQemu({
    test: 'net-xfer',
    params: { ip: `${ips[i] ?? ''}/24`, peer: ips[1 - i] ?? '', port: PORT, send: XFER_BYTES, recv: 1, wait: 90 },
    // QEMU takes the guest's MAC from the device, not from a vhost-user-net back-end, and every
    // QEMU process defaults to 52:54:00:12:34:56: two guests on one L2 switch need their own.
    args: netArgs(socks[i] ?? '', String(i), { ...o, deviceProps: [...(o.deviceProps ?? []), `mac=52:54:00:00:78:0${i + 1}`] }),
    smp: o.smp ?? 1, t,
  })));
  const [a, b] = await Promise.all(vms.map((vm) => guestResult(vm)));
  assert.ok(a && b);
  assert.equal(b.details.rx_bytes, String(XFER_BYTES), 'B received a short stream');
  assert.equal(b.details.rx_sha256, a.details.tx_sha256, 'A -> B: checksum mismatch');
  assert.equal(a.details.rx_bytes, String(XFER_BYTES), 'A received a short stream');
  assert.equal(a.details.rx_sha256, b.details.tx_sha256, 'B -> A: checksum mismatch');
  const tResults = performance.now();
  for (const vm of vms) await expectCleanExit(vm);
  assert.equal(backend.exitStatusNow, undefined, `back-end died\n${backend.diagnostics()}`);
  const s = (ms: number): string => (ms / 1000).toFixed(1);
  return {
    backend,
    summary: `back-end ready ${s(tReady - t0)} s, results ${s(tResults - t0)} s, VMs exited ${s(performance.now() - t0)} s; ping tries A ${a.details.ping_tries} B ${b.details.ping_tries}; tx A ${a.details.tx_s} s B ${b.details.tx_s} s; ` +
      `spawn->result A ${(a.elapsedMs / 1000).toFixed(1)} s B ${(b.elapsedMs / 1000).toFixed(1)} s`,
  };
}
