/**
 * Runs INSIDE the QEMU test guest (test/e2e/kernel-vhost.test.ts, guest test host-node): drives
 * the guest kernel's /dev/vhost-net with VhostKernNet and a TAP, as a VMM would, and checks
 *   - TX: a UDP frame placed on our TX ring reaches the TAP's network stack (a UDP socket bound on
 *     the TAP's address receives its payload);
 *   - RX: a UDP datagram the kernel routes out of the TAP lands in our RX ring behind a
 *     virtio-net header (no offloads: all fields 0; MRG_RXBUF: num_buffers 1);
 *   - dirty log: with VHOST_F_LOG_ALL the pages the kernel wrote (RX buffer, used rings) are marked;
 *   - bad input (a memfd as kick, an eventfd as TAP, a closed fd, resizing a live ring): errno-named errors.
 * Prints `detail k=v` lines (the guest copies them onto the VTEST-RESULT line); exit code 0 = pass.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { VhostKernNet } from '../../src/kernel/net.js';
import { openTap } from '../../src/kernel/tap.js';
import * as sys from '../../src/sys/index.js';
import { GuestQueue, GuestRam, detail, runGuestScript } from './harness.js';

const VIRTIO_F_VERSION_1 = 32n;
const VHOST_F_LOG_ALL = 26n;
// With it the kernel fills num_buffers itself (6.1 leaves it untouched for VERSION_1 alone).
const VIRTIO_NET_F_MRG_RXBUF = 15n;
const HDR = 12; // virtio_net_hdr_mrg_rxbuf: VERSION_1 always has num_buffers
const QSIZE = 64;
const MEM = 1 << 20;
const PAGE = 4096;
const TAP_IP = '10.99.0.1';
const PEER_IP = '10.99.0.2';
const PEER_MAC = '02:00:00:00:00:02';

function macBytes(s: string): Uint8Array {
  return Uint8Array.from(s.split(':').map((h) => parseInt(h, 16)));
}
function ipBytes(s: string): Uint8Array {
  return Uint8Array.from(s.split('.').map(Number));
}

/** Ethernet + IPv4 + UDP (checksum 0: optional over IPv4). */
function udpFrame(dstMac: Uint8Array, srcMac: Uint8Array, src: string, dst: string, sport: number, dport: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payload.length);
  const v = new DataView(f.buffer);
  f.set(dstMac, 0); f.set(srcMac, 6); v.setUint16(12, 0x0800);
  v.setUint8(14, 0x45); v.setUint16(16, 20 + 8 + payload.length); v.setUint8(22, 64); v.setUint8(23, 17);
  f.set(ipBytes(src), 26); f.set(ipBytes(dst), 30);
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += v.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  v.setUint16(24, ~sum & 0xffff);
  v.setUint16(34, sport); v.setUint16(36, dport); v.setUint16(38, 8 + payload.length);
  f.set(payload, 42);
  return f;
}

function recvOne(sock: Socket): Promise<{ msg: Buffer; from: string }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timeout waiting for the UDP datagram')), 10_000);
    sock.once('message', (msg, rinfo) => { clearTimeout(timer); resolve({ msg, from: rinfo.address }); });
  });
}

runGuestScript(async () => {
  const t0 = performance.now();
  const net = VhostKernNet.open();
  const tap = openTap({ vnetHdrSize: HDR });
  detail('tap', tap.name);
  execFileSync('ip', ['addr', 'add', `${TAP_IP}/24`, 'dev', tap.name]);
  execFileSync('ip', ['link', 'set', tap.name, 'up']);
  execFileSync('ip', ['neigh', 'replace', PEER_IP, 'lladdr', PEER_MAC, 'dev', tap.name, 'nud', 'permanent']);
  const tapMac = macBytes(readFileSync(`/sys/class/net/${tap.name}/address`, 'utf8').trim());

  // Guest RAM: one memfd at GPA 0, mapped here; the kernel reaches it through the memory table.
  const ram = new GuestRam(MEM);
  const mem = ram.mem;
  const logFd = sys.memfdCreate('dirty-log');
  sys.ftruncate(logFd, PAGE);
  const log = sys.mmap(logFd, 0, PAGE);
  const logBits = new Uint8Array(log.windows[0]!, 0, PAGE);

  await net.setOwner();
  const offered = await net.getFeatures();
  assert.ok(offered & (1n << VIRTIO_F_VERSION_1), 'vhost-net offers VERSION_1');
  assert.ok(offered & (1n << VHOST_F_LOG_ALL), 'vhost-net offers LOG_ALL');
  assert.ok(offered & (1n << VIRTIO_NET_F_MRG_RXBUF), 'vhost-net offers MRG_RXBUF');
  await net.setFeatures((1n << VIRTIO_F_VERSION_1) | (1n << VHOST_F_LOG_ALL) | (1n << VIRTIO_NET_F_MRG_RXBUF));
  await ram.setMemTable(net);
  await net.setLogBase({ userAddr: log.address, size: BigInt(PAGE), fd: logFd, mmapOffset: 0n });

  const rxq = new GuestQueue(ram, 0, QSIZE, 0);
  const txq = new GuestQueue(ram, 1, QSIZE, 0x4000);
  for (const q of [rxq, txq]) {
    await q.attach(net, true);
    await net.setBackend(q.index, tap.fd);
  }
  // Bad input on the real device: clear errors with errno names, and the queues keep working.
  const errno = (code: string, re: RegExp) => (e: unknown): boolean => e instanceof sys.SysError && e.code === code && re.test(e.message);
  await assert.rejects(net.setVringKick(0, ram.fd), errno('EINVAL', /VHOST_SET_VRING_KICK on vhost-net/), 'a memfd is not an eventfd');
  await assert.rejects(net.setBackend(0, rxq.kick), errno('ENOTSOCK', /VHOST_NET_SET_BACKEND/), 'an eventfd is not a TAP');
  await assert.rejects(net.setVringCall(0, 99999), errno('EBADF', /VHOST_SET_VRING_CALL/), 'a closed fd number');
  await assert.rejects(net.setVringNum(0, 128), errno('EBUSY', /VHOST_SET_VRING_NUM/), 'resizing a ring that has a backend');
  detail('bad_input', 'ok');
  const rx = rxq.q;
  const tx = txq.q;
  detail('setup_ms', Math.round(performance.now() - t0));

  // ---- RX: post buffers, make the kernel send a datagram out of the TAP.
  const RXBUF = 0x20000;
  const rxGpa = new Map<number, number>();
  for (let i = 0; i < 8; i++) rxGpa.set(rx.addChain([], [{ gpa: RXBUF + i * PAGE, len: 2048 }]), RXBUF + i * PAGE);
  rxq.notify();
  const sender = createSocket('udp4');
  await new Promise<void>((r) => sender.bind(0, TAP_IP, r));
  const rxPayload = Buffer.from('vhost-net rx check');
  const frames: Uint8Array[] = [];
  const gotRx = rxq.nextUsed('our UDP frame on the RX ring', (e) => {
    const bytes = mem.translate(rxGpa.get(e.id) ?? -1, e.len).slice();
    frames.push(bytes);
    const f = bytes.subarray(HDR);
    // Skip the IPv6 link-local chatter that link-up produces; look for our IPv4/UDP frame.
    return f.length > 42 && f[12] === 0x08 && f[13] === 0x00 && f[23] === 17 && new DataView(f.buffer, f.byteOffset).getUint16(36) === 9999;
  });
  sender.send(rxPayload, 9999, PEER_IP);
  const e = await gotRx;
  const got = frames[frames.length - 1]!;
  const hv = new DataView(got.buffer, got.byteOffset);
  const hdr = { flags: got[0], gso: got[1], hdrLen: hv.getUint16(2, true), gsoSize: hv.getUint16(4, true), csumStart: hv.getUint16(6, true), csumOff: hv.getUint16(8, true), numBuffers: hv.getUint16(10, true) };
  assert.deepEqual(hdr, { flags: 0, gso: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOff: 0, numBuffers: 1 }, 'virtio-net header of the RX frame');
  const frame = got.subarray(HDR);
  assert.deepEqual(frame.subarray(0, 6), macBytes(PEER_MAC), 'destination MAC');
  assert.deepEqual(frame.subarray(6, 12), tapMac, 'source MAC is the TAP');
  assert.equal(Buffer.from(frame.subarray(42)).toString(), rxPayload.toString(), 'UDP payload');
  detail('rx_len', e.len);
  detail('rx_frames_seen', frames.length);

  // ---- dirty log: bit n = GPA page n; the kernel wrote the RX buffer and the RX used ring.
  const bit = (gpa: number): boolean => ((logBits[gpa >> 15]! >> ((gpa >> 12) & 7)) & 1) === 1;
  const rxPage = rxGpa.get(e.id) ?? -1;
  assert.ok(bit(rxPage), `dirty bit of the RX buffer page 0x${rxPage.toString(16)}`);
  assert.ok(bit(rx.usedGpa), 'dirty bit of the RX used ring page');
  assert.ok(!bit(0x80000), 'an untouched page is clean');
  detail('dirty_pages', [...logBits].reduce((n, b) => n + b.toString(2).split('1').length - 1, 0));

  // ---- TX: a frame from the "guest" reaches a socket on the TAP's address.
  const receiver = createSocket('udp4');
  await new Promise<void>((r) => receiver.bind(7777, TAP_IP, r));
  const txPayload = Buffer.from('vhost-net tx check');
  const TXBUF = 0x60000;
  const txFrame = udpFrame(tapMac, macBytes(PEER_MAC), PEER_IP, TAP_IP, 9999, 7777, txPayload);
  const txBuf = mem.translate(TXBUF, HDR + txFrame.length);
  txBuf.fill(0, 0, HDR);
  txBuf.set(txFrame, HDR);
  const arrived = recvOne(receiver);
  const txDone = txq.nextUsed('the TX chain back');
  tx.addChain([{ gpa: TXBUF, len: HDR + txFrame.length }]);
  txq.notify();
  const [dgram] = await Promise.all([arrived, txDone]);
  assert.equal(dgram.msg.toString(), txPayload.toString(), 'payload received on the TAP side');
  assert.equal(dgram.from, PEER_IP);
  detail('tx_rx_packets', readFileSync(`/sys/class/net/${tap.name}/statistics/rx_packets`, 'utf8').trim());

  // ---- teardown: GET_VRING_BASE stops each ring and reports how far the kernel got.
  detail('rx_base', await net.getVringBase(0));
  detail('tx_base', await net.getVringBase(1));
  assert.equal(await net.getVringBase(1), 1, 'TX consumed exactly one chain');
  sender.close(); receiver.close();
  net.close(); tap.close();
  log.unmap();
  sys.close(logFd);
  rxq.close(); txq.close(); ram.close();
  detail('total_ms', Math.round(performance.now() - t0));
  detail('net', 'ok');
});
