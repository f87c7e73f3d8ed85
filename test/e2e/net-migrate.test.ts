/**
 * Live migration of a net guest: a guest on our `vhost-user-net --tap vutapA` is migrated, while
 * the host pings it, to a second QEMU on a second daemon `--tap vutapB`. Both TAPs are ports of
 * one Linux bridge in a network namespace made by the test; the bridge holds the host side's
 * address. Both QEMUs give the NIC the same MAC.
 *
 * After the switch-over the bridge still forwards the guest's MAC to vutapA (where it learned it)
 * until a frame from that MAC arrives on vutapB. The guest itself sends nothing (our device does
 * not offer VIRTIO_NET_F_GUEST_ANNOUNCE), so QEMU asks the destination back-end to announce it:
 * SEND_RARP, which our daemon turns into a broadcast RARP on vutapB. The test shows it in the
 * destination daemon's log, as frames on vutapB (a raw AF_PACKET socket, python3) and in the
 * bridge's forwarding table moving to vutapB, and that the pings keep being answered from the
 * destination with at most the switch-over's downtime lost; then a checksummed TCP stream to the
 * migrated guest (its listener was opened before the migration) ends the guest test there.
 * With the RARP suppressed (checked by hand) the sniffer sees nothing and ~6 s of pings are lost:
 * the bridge only re-learns the MAC when the namespace's neighbour entry goes stale and it ARPs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { expectCleanExit, startQemu, vhostUserNetArgs } from '../helpers/qemu.js';
import { makeTempDir } from '../helpers/tmp.js';
import { QmpClient, qmpArgs, type QmpEvent } from '../helpers/qmp.js';
import { waitForUnixListener } from '../helpers/process.js';
import { createNetns, startTcpSource, runOk } from '../helpers/netns.js';
import { startOurNet } from '../helpers/guest-net.js';

/** Small guest RAM keeps two TCG guests and the RAM transfer within the time budget. */
const MEM_MB = 128;
const MAC = '52:54:00:00:77:02';
const GUEST_IP = '10.77.0.2';
const HOST_IP = '10.77.0.1';
const PORT = 5001;
/** Sent to the migrated guest once it runs on the destination. */
const XFER_BYTES = 1024 * 1024;
/** Interval of the host's pings, seconds. */
const PING_INTERVAL_S = 0.2;
/** Longest tolerated run of lost pings, seconds: the bridge re-learning the MAC by itself takes ~6 s. */
const MAX_LOSS_S = 3;

/**
 * Prints every RARP frame (EtherType 0x8035) the kernel receives on interface argv[1], i.e. what
 * the back-end writes into that TAP: `rarp pkttype=N src=MAC op=N target=MAC`, after `ready`.
 * It listens to every protocol (ETH_P_ALL): on a bridge port, a socket bound to one EtherType
 * never sees a frame, because the bridge consumes it before protocol handlers run.
 */
const RARP_SNIFFER = `
import socket, sys
ETH_P_ALL = 3
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.bind((sys.argv[1], ETH_P_ALL))
print("ready", flush=True)
mac = lambda b: ":".join("%02x" % x for x in b)
while True:
    f, addr = s.recvfrom(2048)
    if addr[2] == socket.PACKET_OUTGOING or len(f) < 42 or f[12:14] != b"\\x80\\x35":
        continue
    print("rarp pkttype=%d src=%s op=%d target=%s" % (addr[2], mac(f[6:12]), int.from_bytes(f[20:22], "big"), mac(f[32:38])), flush=True)
`;

/** Sequence numbers of the echo replies busybox ping printed so far. */
function replySeqs(out: string): number[] {
  return [...out.matchAll(/^\d+ bytes from [\d.]+: seq=(\d+) /gm)].map((m) => Number(m[1]));
}

function rarpLines(out: string): number {
  return out.split('\n').filter((l) => l.startsWith('rarp ')).length;
}

const migrationStatus = (want: string) => (e: QmpEvent): boolean =>
  e.event === 'MIGRATION' && (e.data?.status === want || e.data?.status === 'failed');

test('live migration of a guest on our vhost-user-net --tap while the host pings it: replies continue from the destination, SEND_RARP announces it on the destination TAP', { timeout: 180_000 }, async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS, 'ip', 'bridge', 'python3')) return;
  const tmp = makeTempDir(t, 'netmig');
  const ns = await createNetns(t);
  const sockA = tmp.socketPath('net-src');
  const sockB = tmp.socketPath('net-dst');
  const [tapA, tapB] = ['vutapA', 'vutapB'];
  const srcDaemon = await startOurNet({ sockets: [sockA], ns, tap: tapA, t });
  const dstDaemon = await startOurNet({ sockets: [sockB], ns, tap: tapB, t });
  await ns.waitForLink(tapA, 10_000);
  await ns.waitForLink(tapB, 10_000);
  const ip = (...args: string[]) => runOk('ip', ['-n', ns.name, ...args]);
  // No STP: ports forward as soon as they are up.
  await ip('link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0');
  for (const tap of [tapA, tapB]) {
    await ip('link', 'set', tap, 'master', 'br0');
    await ip('link', 'set', tap, 'up');
  }
  await ns.configure('br0', `${HOST_IP}/24`);

  const qmpA = tmp.socketPath('qmp-src');
  const qmpB = tmp.socketPath('qmp-dst');
  const migSock = tmp.socketPath('mig');
  const nic = (sock: string): string[] => {
    const args = vhostUserNetArgs(sock, { queues: 2 });
    const i = args.indexOf('-device');
    // The same MAC on both sides: QEMU, not the back-end, gives the guest its MAC.
    return args.map((a, k) => (k === i + 1 ? `${a},mac=${MAC}` : a));
  };
  const common = {
    test: 'net-xfer', memMb: MEM_MB, t,
    // No IPv6: its autoconfiguration traffic (router solicitations, MLD, DAD) could leave the guest
    // right after the switch-over and teach the bridge the new port in place of the RARP.
    kernelArgs: ['ipv6.disable=1'],
    params: { ip: `${GUEST_IP}/24`, peer: HOST_IP, port: PORT, send: 0, recv: 1, wait: 90 },
  };
  const tStart = performance.now();
  const src = await startQemu({ ...common, args: [...nic(sockA), ...qmpArgs(qmpA)] });
  const dst = await startQemu({ ...common, args: [...nic(sockB), ...qmpArgs(qmpB), '-incoming', `unix:${migSock}`] });
  await waitForUnixListener(qmpA, 20_000, src.proc);
  await waitForUnixListener(qmpB, 20_000, dst.proc);
  const qa = await QmpClient.connect(qmpA);
  const qb = await QmpClient.connect(qmpB);
  t.after(() => { qa.close(); qb.close(); });
  await qa.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  const diag = (): string => `\n--- source QEMU\n${src.diagnostics()}\n--- destination QEMU\n${dst.diagnostics()}\n` +
    `--- source daemon\n${srcDaemon.diagnostics()}\n--- destination daemon\n${dstDaemon.diagnostics()}`;

  await src.waitFor(new RegExp(`^VTEST-PROGRESS net-xfer ready ip=${GUEST_IP.replace(/\./g, '\\.')}\\n`, 'm'), 90_000);
  // The forwarding table's changes from now on: where the bridge sees the guest's MAC.
  const tReady = performance.now();
  const fdb = ns.spawn('bridge', ['monitor', 'fdb'], 'fdb-monitor');
  t.after(async () => { await fdb.terminate({ sig: 'SIGKILL', graceMs: 1000 }); });
  const rarp = ns.spawn('python3', ['-c', RARP_SNIFFER, tapB], 'rarp-sniffer');
  t.after(async () => { await rarp.terminate({ sig: 'SIGKILL', graceMs: 1000 }); });
  await rarp.waitForText(/^ready\n/m, 10_000);
  const ping = ns.spawn('busybox', ['ping', '-i', String(PING_INTERVAL_S), GUEST_IP], 'ping');
  t.after(async () => { await ping.terminate({ sig: 'SIGKILL', graceMs: 1000 }); });
  // A few replies through the source first.
  await ping.waitForText(/seq=4 /, 30_000);
  assert.ok(replySeqs(ping.stdout).length >= 3, `pings to the guest on the source were not answered\n${ping.stdout}${diag()}`);

  const t0 = performance.now();
  await qa.execute('migrate', { uri: `unix:${migSock}` });
  const done = await qa.waitEvent(migrationStatus('completed'), 60_000, 'migration completed');
  assert.equal(done.data?.status, 'completed', `migration failed${diag()}`);
  const migrationMs = performance.now() - t0;
  await qb.waitEvent((e) => e.event === 'RESUME', 30_000, 'destination resumed');
  const seqsAtResume = replySeqs(ping.stdout);
  const lastBefore = Math.max(-1, ...seqsAtResume);

  // SEND_RARP reached the destination daemon, which put the RARP on its TAP: the bridge now
  // forwards the guest's MAC to vutapB.
  const announce = new RegExp(`announcing ${MAC} \\(gratuitous RARP\\)`);
  await dstDaemon.waitForText(announce, 15_000, () => dstDaemon.stderr).catch((e: Error) => assert.fail(`${e.message}${diag()}`));
  assert.doesNotMatch(srcDaemon.stderr, announce, 'the source daemon announced the guest');
  // The frame itself, as the kernel received it from the destination daemon on vutapB: a
  // broadcast "reverse request" (op 3) from and for the guest's MAC.
  await rarp.waitForText(new RegExp(`^rarp pkttype=1 src=${MAC} op=3 target=${MAC}\n`, 'm'), 15_000)
    .catch((e: Error) => assert.fail(`no RARP for ${MAC} on ${tapB}: ${e.message}\n${rarp.stdout}${rarp.stderr}${diag()}`));
  await fdb.waitForText(new RegExp(`^${MAC} dev ${tapB} `, 'm'), 15_000)
    .catch((e: Error) => assert.fail(`the bridge never saw ${MAC} on ${tapB}: ${e.message}\n${fdb.stdout}${diag()}`));
  const table = await runOk('bridge', ['-n', ns.name, 'fdb', 'show', 'br', 'br0']);
  assert.match(table.stdout, new RegExp(`^${MAC} dev ${tapB} `, 'm'), `guest MAC not on ${tapB}\n${table.stdout}`);

  // The guest keeps answering, now from the destination: 5 replies newer than any before RESUME.
  const answeredAfter = (): number[] => replySeqs(ping.stdout).filter((q) => q > lastBefore);
  await ping.waitForText(/^enough$/, 30_000, () => (answeredAfter().length >= 5 ? 'enough' : ''))
    .catch((e: Error) => assert.fail(`the migrated guest stopped answering: ${e.message}\n${ping.stdout}${diag()}`));
  const seqs = replySeqs(ping.stdout);
  const after = answeredAfter();
  // Pings lost around the switch-over: the longest run of sequence numbers without a reply.
  let gap = 0;
  for (let i = 1; i < seqs.length; i++) gap = Math.max(gap, (seqs[i] ?? 0) - (seqs[i - 1] ?? 0) - 1);
  // Without the announcement the bridge keeps sending to vutapA until the namespace's neighbour
  // entry goes stale and its broadcast ARP finds the guest on vutapB: about 6 s of lost pings
  // (measured with the RARP suppressed). With it, the loss is the switch-over's downtime.
  assert.ok(gap * PING_INTERVAL_S < MAX_LOSS_S, `${gap} pings in a row lost around the switch-over\n${ping.stdout}${diag()}`);

  // And a TCP stream into the migrated guest's listener, checksummed on both ends.
  const source = startTcpSource(ns, GUEST_IP, PORT, XFER_BYTES, t);
  const r = await dst.result(90_000);
  assert.ok(r.pass, `guest failed after migration: ${r.line}${diag()}`);
  const sent = await source.done(30_000);
  assert.equal(r.details.rx_bytes, String(sent.bytes), `guest received a different byte count${diag()}`);
  assert.equal(r.details.rx_sha256, sent.sha256, 'host -> migrated guest: checksum mismatch');
  assert.match(r.details.mac ?? '', new RegExp(`^${MAC}$`), 'the guest kept its MAC');
  const tResult = performance.now();
  await expectCleanExit(dst);

  assert.match(srcDaemon.stderr, /dirty logging started/, diag());
  assert.equal(srcDaemon.exitStatusNow, undefined, `source daemon died${diag()}`);
  assert.equal(dstDaemon.exitStatusNow, undefined, `destination daemon died${diag()}`);
  await src.stop();
  const s = (ms: number): string => (ms / 1000).toFixed(1);
  t.diagnostic(`guest ready on the source ${s(tReady - tStart)} s, migrated ${s(t0 - tStart)}-${s(t0 + migrationMs - tStart)} s, ` +
    `result on the destination ${s(tResult - tStart)} s, destination exited ${s(performance.now() - tStart)} s`);
  t.diagnostic(`net migration ${migrationMs.toFixed(0)} ms; pings answered before/after RESUME: ${seqsAtResume.length}/${after.length}, ` +
    `longest run of lost pings ${gap} (x ${PING_INTERVAL_S} s); ${rarpLines(rarp.stdout)} RARP frame(s) on ${tapB}; ${sent.bytes} B TCP into the migrated guest in ${sent.ms} ms`);
});
