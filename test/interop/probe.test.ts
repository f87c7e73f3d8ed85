/**
 * The `vhost-user-probe` CLI as a user runs it (a separate node process on the compiled file)
 * against qemu-storage-daemon and DPDK's vhost PMD, plus its failure modes: no socket, a stale
 * socket file, a back-end that never answers, a back-end without CONFIG, bad usage.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import * as sys from '../../src/sys/index.js';
import { requireTools } from '../helpers/tools.js';
import { createRawImage, startStorageDaemon } from '../helpers/qsd.js';
import { startTestpmdVhost } from '../helpers/dpdk.js';
import { makeTempDir } from '../helpers/tmp.js';
import type { ProbeReport as Report } from '../../src/cli/probe.js';

const PROBE = fileURLToPath(new URL('../../src/cli/probe.js', import.meta.url));
const EXAMPLE = fileURLToPath(new URL('../../examples/probe-backend.js', import.meta.url));
const IMAGE_SIZE = 64 * 1024 * 1024;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs the probe in its own node process (never throws on a non-zero exit). */
function runProbe(args: string[], script = PROBE): Promise<Run> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [script, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : NaN;
      if (Number.isNaN(code)) reject(err as Error);
      else resolve({ code, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** Asserts that stderr is exactly one `vhost-user-probe: ...` line matching `re` (no stack trace). */
function assertOneLine(r: Run, re: RegExp): void {
  assert.match(r.stderr, /^vhost-user-probe: [^\n]+\n$/, `one line expected, got:\n${r.stderr}`);
  assert.match(r.stderr, re);
  assert.doesNotMatch(r.stderr, /\bat .*\.js:\d+/, 'no stack trace');
}


test('probe (and examples/probe-backend) vs qemu-storage-daemon: blk features by name, protocol features, queue count, config capacity', async (t) => {
  if (!requireTools(t, 'qemu-storage-daemon')) return;
  const tmp = makeTempDir(t, 'probe');
  const image = tmp.file('disk.img');
  await createRawImage(image, IMAGE_SIZE);
  const qsd = await startStorageDaemon({ image, socketPath: tmp.socketPath('blk'), numQueues: 2, t });

  const r = await runProbe(['--socket-path', qsd.socketPath, '--device-type', 'blk', '--config-size', '60']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const rep = JSON.parse(r.stdout) as Report;
  assert.equal(rep.socketPath, qsd.socketPath);
  assert.equal(rep.deviceType, 'blk');
  for (const name of ['VIRTIO_BLK_F_SEG_MAX', 'VIRTIO_BLK_F_BLK_SIZE', 'VIRTIO_BLK_F_FLUSH', 'VIRTIO_BLK_F_MQ',
    'VIRTIO_F_VERSION_1', 'VHOST_USER_F_PROTOCOL_FEATURES']) {
    assert.ok(rep.features.names.includes(name), `${name} in ${rep.features.names.join(' ')}`);
  }
  assert.ok(!rep.features.names.some((n) => n.startsWith('bit ')), 'every bit QSD offers has a name');
  // hex and names describe the same word.
  const bits = BigInt(rep.features.hex);
  assert.equal(rep.features.names.length, bits.toString(2).split('').filter((c) => c === '1').length);
  assert.ok(rep.protocolFeatures !== null && rep.negotiatedProtocolFeatures !== null);
  for (const name of ['VHOST_USER_PROTOCOL_F_MQ', 'VHOST_USER_PROTOCOL_F_CONFIG', 'VHOST_USER_PROTOCOL_F_REPLY_ACK']) {
    assert.ok(rep.protocolFeatures.names.includes(name), `${name} offered`);
    assert.ok(rep.negotiatedProtocolFeatures.names.includes(name), `${name} negotiated`);
  }
  assert.equal(rep.queueNum, 2, 'num-queues=2 export');
  if (rep.protocolFeatures.names.includes('VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS')) {
    assert.ok(typeof rep.maxMemSlots === 'number' && rep.maxMemSlots >= 8, `maxMemSlots ${rep.maxMemSlots}`);
  } else {
    assert.equal(rep.maxMemSlots, undefined);
  }
  assert.ok(rep.config !== undefined);
  assert.match(rep.config, /^[0-9a-f]{120}$/);
  const cfg = Buffer.from(rep.config, 'hex');
  assert.equal(cfg.readBigUInt64LE(0), BigInt(IMAGE_SIZE / 512), 'capacity in 512-byte sectors');
  assert.equal(cfg.readUInt16LE(34), 2, 'num_queues');
  // The same fields decoded by the probe (QSD as the reference for the layout).
  const dec = (rep as Report & { configDecoded?: Record<string, unknown> }).configDecoded;
  assert.ok(dec !== undefined, 'config decoded for --device-type blk');
  assert.equal(dec.capacity, String(IMAGE_SIZE / 512));
  assert.equal(dec.numQueues, 2);
  assert.equal(dec.blkSize, cfg.readUInt32LE(20));
  t.diagnostic(`probe took ${r.ms.toFixed(0)} ms (node start-up included)`);

  // Without --device-type the device bits cannot be named: they print as "bit N".
  const plain = await runProbe(['-s', qsd.socketPath]);
  assert.equal(plain.code, 0, plain.stderr);
  const prep = JSON.parse(plain.stdout) as Report;
  assert.equal(prep.features.hex, rep.features.hex);
  assert.ok(prep.features.names.includes('bit 2') && prep.features.names.includes('VIRTIO_F_VERSION_1'), prep.features.names.join(' '));
  assert.equal(prep.config, undefined);

  // examples/probe-backend.ts is documentation: it must keep working against a real back-end.
  const ex = await runProbe([qsd.socketPath, 'blk'], EXAMPLE);
  assert.equal(ex.code, 0, ex.stderr);
  assert.match(ex.stdout, /^features 0x[0-9a-f]{16}:\n/);
  assert.match(ex.stdout, /\n {2}VIRTIO_BLK_F_FLUSH\n/);
  assert.match(ex.stdout, /\nqueues: 2\n/);
  assert.match(ex.stdout, new RegExp(`\\ncapacity: ${IMAGE_SIZE / 512} sectors \\(${IMAGE_SIZE} bytes\\)\\n`));
});

test('probe vs DPDK vhost PMD: net features by name; --config-size without CONFIG fails with one line', async (t) => {
  if (!requireTools(t, 'dpdk-testpmd')) return;
  const tmp = makeTempDir(t, 'probepmd');
  const pmd = await startTestpmdVhost({ socketPath: tmp.socketPath('vhost'), forwardMode: 'io', t });
  const r = await runProbe(['--socket-path', pmd.socketPath, '--device-type', 'net', '--config-size', '12']);
  const rep = JSON.parse(r.stdout) as Report;
  for (const name of ['VIRTIO_NET_F_MRG_RXBUF', 'VIRTIO_NET_F_MQ', 'VIRTIO_F_VERSION_1']) {
    assert.ok(rep.features.names.includes(name), `${name} in ${rep.features.names.join(' ')}`);
  }
  assert.ok(rep.protocolFeatures !== null && !rep.protocolFeatures.names.includes('VHOST_USER_PROTOCOL_F_CONFIG'),
    'testpmd 22.11 does not offer CONFIG (precondition of this case)');
  // DPDK answers GET_QUEUE_NUM with its library maximum (VHOST_MAX_QUEUE_PAIRS = 128), not queues=1.
  assert.ok(typeof rep.queueNum === 'number' && rep.queueNum >= 1, `queueNum ${rep.queueNum}`);
  assert.equal(rep.config, undefined);
  assert.equal(r.code, 1);
  assertOneLine(r, /does not offer VHOST_USER_PROTOCOL_F_CONFIG/);
  await pmd.waitFor(/vhost peer closed/, 5000);
});

test('probe failure modes: missing socket, stale socket, silent back-end, bad usage — exit code and one line', async (t) => {
  const tmp = makeTempDir(t, 'probefail');
  const missing = await runProbe(['--socket-path', tmp.file('nope.sock')]);
  assert.equal(missing.code, 1);
  assert.equal(missing.stdout, '');
  assertOneLine(missing, /^vhost-user-probe: cannot connect to \/tmp\/\S+\/nope\.sock: ENOENT\n$/);

  // A socket file nobody listens on any more.
  const stale = tmp.socketPath('stale');
  sys.close(sys.listenUnix(stale));
  const refused = await runProbe(['-s', stale]);
  assert.equal(refused.code, 1);
  assertOneLine(refused, /cannot connect to .*: ECONNREFUSED/);

  // A back-end that accepts and never replies: the reply timeout ends the probe.
  const conns: Socket[] = [];
  const server = createServer((c) => { conns.push(c); });
  const silent = tmp.socketPath('silent');
  await new Promise<void>((r) => server.listen(silent, r));
  try {
    const hung = await runProbe(['-s', silent, '--timeout', '300']);
    assert.equal(hung.code, 1);
    assertOneLine(hung, /GET_FEATURES: no reply within 300 ms/);
    assert.ok(hung.ms < 5000, `took ${hung.ms} ms`);
  } finally {
    for (const c of conns) c.destroy();
    await new Promise((r) => server.close(r));
  }

  for (const [args, re] of [
    [[], /--socket-path is required/],
    [['-s', 'x', '--bogus'], /Unknown option '--bogus'/],
    [['-s', 'x', '--config-size', '0'], /--config-size must be an integer in 1\.\.256/],
    [['-s', 'x', '--config-size', '12abc'], /--config-size must be an integer/],
    [['-s', 'x', '--device-type', 'floppy'], /unknown --device-type 'floppy'/],
  ] as const) {
    const u = await runProbe([...args]);
    assert.equal(u.code, 2, `${args.join(' ')}: ${u.stderr}`);
    assertOneLine(u, re);
  }
  const help = await runProbe(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: vhost-user-probe --socket-path PATH/);
});
