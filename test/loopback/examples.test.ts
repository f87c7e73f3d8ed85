// The examples are part of the public API's documentation: they must keep running, and every
// example device must survive malformed chains.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from '../../src/driver/frontend-driver.js';
import { VhostUserDaemon, type VhostUserBackend } from '../../src/backend/index.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/queue/index.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH } from '../../src/devices/blk/index.js';
import { silentLogger } from '../../src/log.js';
import { EchoDevice } from '../../examples/readme-device.js';
import { UpperCaseDevice } from '../../examples/custom-device.js';
import { SplitDevice } from '../../examples/worker-device.js';
import { createRamDiskDevice } from '../../examples/blk-ram-disk.js';

test('examples/custom-device runs and prints the device output', () => {
  const script = fileURLToPath(new URL('../../examples/custom-device.js', import.meta.url));
  const out = execFileSync(process.execPath, [script], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.equal(out.trim(), 'HELLO FROM THE GUEST');
});

test('examples/blk-ram-disk writes and reads a sector through the blk daemon', () => {
  const script = fileURLToPath(new URL('../../examples/blk-ram-disk.js', import.meta.url));
  const out = execFileSync(process.execPath, [script], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.equal(out, 'capacity: 32768 sectors\nwrite ok, read ok: hello, virtio-blk\n');
});

test('examples/vduse-blk reports a missing VDUSE control device clearly (its kernel run is the 6.12 guest e2e)', () => {
  const script = fileURLToPath(new URL('../../examples/vduse-blk.js', import.meta.url));
  const r = spawnSync(process.execPath, [script, 'example0', '1'], { env: { ...process.env, VDUSE_CONTROL: '/dev/null' }, timeout: 20_000 });
  assert.equal(r.status, 1);
  assert.match(r.stderr.toString(), /^vduse-blk: ioctl failed: ENOTTY .*: VDUSE_SET_API_VERSION\n$/);
});

test('examples/net-switch passes a broadcast and a learnt unicast between two guests', () => {
  const script = fileURLToPath(new URL('../../examples/net-switch.js', import.meta.url));
  const out = execFileSync(process.execPath, [script], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.equal(out, 'B got from 52:54:00:00:00:0a: hello, anyone?\nA got from 52:54:00:00:00:0b: hello A, B here\n' +
    'switch: 1 flooded, 1 forwarded, 2 MACs learnt\n');
});

// --- every example device survives malformed chains and keeps serving -----------------------------

const QSIZE = 64;

interface ExampleCase {
  name: string;
  device: () => VhostUserBackend;
  queues: number[];
  /** Places a good request on `q` and checks its reply. */
  good: (mem: FrontendMemory, q: FrontendQueue) => Promise<void>;
}

async function textRequest(mem: FrontendMemory, q: FrontendQueue, text: string): Promise<string> {
  const gpa = 0x80000 + q.index * 0x1000;
  mem.memory.write(gpa, Buffer.from(text));
  q.driver.addChain([{ gpa, len: text.length }], [{ gpa: gpa + 0x800, len: 0x100 }]);
  q.kick(true);
  const u = await q.nextUsed();
  return Buffer.from(mem.memory.translate(gpa + 0x800, u.len)).toString();
}

const cases: ExampleCase[] = [
  { name: 'readme-device (EchoDevice)', device: () => new EchoDevice(), queues: [0], good: async (mem, q) => assert.equal(await textRequest(mem, q, 'ping'), 'ping') },
  { name: 'custom-device (UpperCaseDevice)', device: () => new UpperCaseDevice(), queues: [0], good: async (mem, q) => assert.equal(await textRequest(mem, q, 'ping'), 'PING') },
  {
    name: 'worker-device (SplitDevice, queue 1 in a worker)', device: () => new SplitDevice(), queues: [0, 1],
    good: async (mem, q) => assert.match(await textRequest(mem, q, 'ping'), /^PING @thread \d+$/),
  },
  {
    name: 'blk-ram-disk (VhostUserBlkBackend)', device: () => createRamDiskDevice(), queues: [0],
    good: async (mem, q) => {
      const hdr = 0x90000;
      mem.memory.writeU32(hdr, VIRTIO_BLK_T_FLUSH);
      mem.memory.writeU8(hdr + 0x100, 0xff);
      q.driver.addChain([{ gpa: hdr, len: 16 }], [{ gpa: hdr + 0x100, len: 1 }]);
      q.kick(true);
      assert.equal((await q.nextUsed()).len, 1);
      assert.equal(mem.memory.readU8(hdr + 0x100), VIRTIO_BLK_S_OK);
    },
  },
];

for (const c of cases) {
  test(`examples: ${c.name} completes malformed chains with 0 and keeps serving its queues`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'vu-example-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const sock = join(dir, 'd.sock');
    const daemon = new VhostUserDaemon(c.name, c.device(), { logger: silentLogger });
    daemon.serve(sock);
    t.after(() => daemon.stop());
    const fe = await Frontend.connect(sock);
    t.after(() => fe.close());
    const mem = new FrontendMemory(1 << 20);
    t.after(() => mem.close());
    await negotiate(fe);
    await fe.setMemTable(mem.regions());
    for (const index of c.queues) {
      const q = await setupQueue(fe, mem, index, QSIZE, 0x10000 * (index + 1), { enable: true });
      t.after(() => q.close());
      await c.good(mem, q);
      // Raw descriptors at the top of the table (addChain takes the lowest free ones): a next index
      // past the table, a two-descriptor loop, a buffer outside guest memory.
      const buf = 0xa0000;
      q.driver.writeDesc(60, buf, 16, VIRTQ_DESC_F_NEXT, 200);
      q.driver.publish(60);
      q.driver.writeDesc(61, buf, 16, VIRTQ_DESC_F_NEXT, 62);
      q.driver.writeDesc(62, buf, 16, VIRTQ_DESC_F_NEXT, 61);
      q.driver.publish(61);
      q.driver.writeDesc(63, 0x7fff_0000_0000, 16, VIRTQ_DESC_F_WRITE, 0);
      q.driver.publish(63);
      q.kick(true);
      for (const id of [60, 61, 63]) assert.deepEqual(await q.nextUsed(), { id, len: 0 }, `malformed head ${id} on queue ${index}`);
      await c.good(mem, q);
      await c.good(mem, q);
    }
  });
}

test('README "Writing a device" shows exactly examples/readme-device.ts', () => {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Writing a device'));
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  assert.ok(m, 'a ts code block in the section');
  const source = readFileSync(join(root, 'examples', 'readme-device.ts'), 'utf8').replace("'../src/index.js'", "'vhost-user'");
  assert.equal(m[1], source);
});

test('examples/any-dataplane sets a device up through VhostBackend over vhost-user', () => {
  const script = fileURLToPath(new URL('../../examples/any-dataplane.js', import.meta.url));
  const out = execFileSync(process.execPath, [script, 'vhost-user'], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.match(out, /^vhost-user: features 0x[0-9a-f]+ offered, 1 queue\(s\) set up\nvhost-user: 32 random bytes from the rng device\n$/);
});
