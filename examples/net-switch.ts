/**
 * Example: two virtio-net devices (two "VMs", one vhost-user socket each) on an in-process L2
 * switch, and this package's front-end as both guests: guest A broadcasts a frame, guest B
 * receives it and answers A by unicast (the switch learnt where A lives).
 *
 * Run: npx tsc -p . && node dist/examples/net-switch.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Frontend, VhostUserDaemon, negotiate } from 'vhost-user';
import { FrontendMemory, setupQueue, type FrontendQueue } from 'vhost-user/driver';
import { NetSwitch, VhostUserNetBackend, formatMac, parseMac } from 'vhost-user/devices/net';

const HDR = 12; // virtio_net_hdr_v1
const BUF = 2048;

/** One guest: memory, receive queue 0 with buffers posted, transmit queue 1. */
async function guest(sock: string): Promise<{ fe: Frontend; mem: FrontendMemory; rx: FrontendQueue; tx: FrontendQueue }> {
  const fe = await Frontend.connect(sock);
  const mem = new FrontendMemory(4 << 20);
  await negotiate(fe, { wantFeatures: 1n << 32n }); // VERSION_1 only: one buffer per frame
  await fe.setMemTable(mem.regions());
  const rx = await setupQueue(fe, mem, 0, 16, 0x1000, { enable: true });
  const tx = await setupQueue(fe, mem, 1, 16, 0x8000, { enable: true });
  for (let i = 0; i < 8; i++) rx.driver.addChain([], [{ gpa: 0x100000 + i * BUF, len: BUF }]);
  rx.kick(true);
  return { fe, mem, rx, tx };
}

async function send(g: { mem: FrontendMemory; tx: FrontendQueue }, dst: string, src: string, text: string): Promise<void> {
  const frame = Buffer.concat([Buffer.alloc(HDR), parseMac(dst), parseMac(src), Buffer.from([0x88, 0xb5]), Buffer.from(text)]);
  g.mem.memory.write(0x200000, frame);
  g.tx.driver.addChain([{ gpa: 0x200000, len: frame.length }]);
  g.tx.kick(true);
  await g.tx.nextUsed();
}

async function receive(g: { mem: FrontendMemory; rx: FrontendQueue }): Promise<Buffer> {
  const u = await g.rx.nextUsed();
  return Buffer.from(g.mem.memory.translate(0x100000 + u.id * BUF + HDR, u.len - HDR));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vu-net-example-'));
  const sw = new NetSwitch();
  const daemons = ['52:54:00:00:00:0a', '52:54:00:00:00:0b'].map((mac, i) => {
    const dev = new VhostUserNetBackend({ mac, name: `vm${i}` });
    sw.addDevice(dev);
    const d = new VhostUserDaemon('net', dev);
    d.serve(join(dir, `vm${i}.sock`));
    return d;
  });
  const a = await guest(join(dir, 'vm0.sock'));
  const b = await guest(join(dir, 'vm1.sock'));

  await send(a, 'ff:ff:ff:ff:ff:ff', '52:54:00:00:00:0a', 'hello, anyone?');
  const got = await receive(b);
  console.log(`B got from ${formatMac(got, 6)}: ${got.subarray(14).toString()}`);
  await send(b, formatMac(got, 6), '52:54:00:00:00:0b', 'hello A, B here');
  const back = await receive(a);
  console.log(`A got from ${formatMac(back, 6)}: ${back.subarray(14).toString()}`);
  console.log(`switch: ${sw.flooded} flooded, ${sw.forwarded} forwarded, ${sw.macCount} MACs learnt`);

  for (const g of [a, b]) {
    g.rx.close();
    g.tx.close();
    g.fe.close();
  }
  for (const d of daemons) await d.stop();
  for (const g of [a, b]) g.mem.close();
  rmSync(dir, { recursive: true, force: true });
}

await main();
