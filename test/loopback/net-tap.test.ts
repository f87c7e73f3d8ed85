// vhost-user-net on a real TAP: the host's IP stack on one side, our front-end as the guest on the
// other. The virtio-net header's offload fields travel both ways: a UDP datagram the host sends
// reaches the guest with NEEDS_CSUM (the TAP's offloads follow the guest's GUEST_CSUM/TSO), and a
// datagram the guest sends with only a partial checksum is accepted by the host stack because
// NEEDS_CSUM reached the TAP. Needs root (CAP_NET_ADMIN) and iproute2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { TapPort, TapWire, VhostUserNetBackend } from '../../src/devices/net/index.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 } from '../../src/kernel/tap.js';
import { NetGuest, type RxFrame, udpFrame } from './net-rig.js';
import { withTimeout } from '../helpers/events.js';

const GUEST_MAC = '52:54:00:00:00:31';
const suffix = String(process.pid % 10000);
const TAP = `vutap${suffix}`;
const NET = `10.231.${process.pid % 250}`;
const HOST_IP = `${NET}.1`;
const GUEST_IP = `${NET}.2`;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

const canRun = process.getuid?.() === 0;

test('TAP port: offload fields carried to and from the host stack; TUNSETOFFLOAD follows the guest', { skip: !canRun && !process.env.CI ? 'needs root' : false }, async (t) => {
  const tap = TapPort.open({ name: TAP });
  t.after(() => tap.close());
  const dev = new VhostUserNetBackend({ mac: GUEST_MAC });
  new TapWire(dev, tap);
  tap.start();
  assert.equal(tap.offload, 0, 'no offloads before a guest negotiated them');
  execFileSync('sysctl', ['-qw', `net.ipv6.conf.${TAP}.disable_ipv6=1`], { stdio: 'pipe' });
  ip('addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
  ip('link', 'set', TAP, 'up');
  ip('neigh', 'replace', GUEST_IP, 'lladdr', GUEST_MAC, 'dev', TAP, 'nud', 'permanent');
  const g = await NetGuest.start(t, dev);
  assert.equal(tap.offload, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, 'TUNSETOFFLOAD from GUEST_CSUM/TSO4/TSO6');
  g.postRx(0, 32, 4096);

  // Host to guest.
  const sock = createSocket('udp4');
  t.after(() => sock.close());
  sock.bind(0, HOST_IP);
  await once(sock, 'listening');
  const payload = Buffer.from('hello guest '.repeat(50));
  sock.send(payload, 7777, GUEST_IP);
  let r: RxFrame;
  do {
    r = await g.recv(0);
  } while (!(r.data.readUInt16BE(12) === 0x0800 && r.data[23] === 17));
  assert.equal(r.data.subarray(42).toString(), payload.toString(), 'the datagram reached the guest');
  assert.equal(r.hdr[0]! & 1, 1, 'NEEDS_CSUM: the host left the UDP checksum to the guest');
  assert.equal(r.hdr.readUInt16LE(6), 34, 'csum_start at the UDP header');
  assert.equal(r.hdr.readUInt16LE(8), 6, 'csum_offset of the UDP checksum');

  // Guest to host, with only a partial checksum: the stack accepts it only if NEEDS_CSUM arrived.
  const port = sock.address().port;
  const hostMac = execFileSync('cat', [`/sys/class/net/${TAP}/address`]).toString().trim();
  const msg = Buffer.from('hello host '.repeat(40));
  const { frame, hdr } = udpFrame(hostMac, GUEST_MAC, GUEST_IP, HOST_IP, 5555, port, msg, true);
  const got = once(sock, 'message');
  await g.send(0, frame, hdr);
  const [data] = (await withTimeout(got, 5000, 'the datagram on the host')) as [Buffer];
  assert.equal(data.toString(), msg.toString());
  assert.ok(tap.txCounters[0]!.packets >= 1);
  assert.ok(tap.rxCounters[0]!.packets >= 1);
});
