/**
 * Runs INSIDE the QEMU test guest: drives the guest kernel's /dev/vhost-vsock with VhostKernVsock as
 * a VMM would. With guest CID 3 set and running, an AF_VSOCK connect() to CID 3 (made by python3,
 * node has no AF_VSOCK) arrives as OP_REQUEST on our RX queue; our OP_RESPONSE on TX completes the
 * connect; then bytes flow both ways (OP_RW each way). A second device cannot take the same CID.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { VhostKernVsock } from '../../src/kernel/vsock.js';
import { GuestQueue, GuestRam, detail, runGuestScript } from './harness.js';

const VIRTIO_F_VERSION_1 = 32n;
const HDR = 44; // struct virtio_vsock_hdr
const OP_REQUEST = 1;
const OP_RESPONSE = 2;
const OP_RW = 5;
const TYPE_STREAM = 1;
const GUEST_CID = 3n;
const PORT = 1234;
const PAGE = 4096;

interface VsockHdr { srcCid: bigint; dstCid: bigint; srcPort: number; dstPort: number; len: number; type: number; op: number; flags: number; bufAlloc: number; fwdCnt: number }

function decode(b: Uint8Array): VsockHdr {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    srcCid: v.getBigUint64(0, true), dstCid: v.getBigUint64(8, true), srcPort: v.getUint32(16, true), dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true), type: v.getUint16(28, true), op: v.getUint16(30, true), flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true), fwdCnt: v.getUint32(40, true),
  };
}
function encode(b: Uint8Array, h: VsockHdr): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  v.setBigUint64(0, h.srcCid, true); v.setBigUint64(8, h.dstCid, true); v.setUint32(16, h.srcPort, true); v.setUint32(20, h.dstPort, true);
  v.setUint32(24, h.len, true); v.setUint16(28, h.type, true); v.setUint16(30, h.op, true); v.setUint32(32, h.flags, true);
  v.setUint32(36, h.bufAlloc, true); v.setUint32(40, h.fwdCnt, true);
}

const CLIENT = `
import socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(20)
s.connect((${GUEST_CID}, ${PORT}))
print("connected", flush=True)
s.sendall(b"ping from the host side")
print("got", s.recv(100).decode(), flush=True)
`;

runGuestScript(async () => {
  const t0 = performance.now();
  const dev = VhostKernVsock.open();
  const ram = new GuestRam(1 << 20);
  await dev.setOwner();
  const offered = await dev.getFeatures();
  assert.ok(offered & (1n << VIRTIO_F_VERSION_1), 'vhost-vsock offers VERSION_1');
  await dev.setFeatures(1n << VIRTIO_F_VERSION_1);
  await ram.setMemTable(dev);
  const rx = new GuestQueue(ram, 0, 64, 0);
  const tx = new GuestQueue(ram, 1, 64, 0x4000);
  await rx.attach(dev);
  await tx.attach(dev);
  await dev.setGuestCid(GUEST_CID);
  await dev.setRunning(true);
  const other = VhostKernVsock.open();
  await assert.rejects(other.setGuestCid(GUEST_CID), (e: unknown) => e instanceof Error && /EADDRINUSE.*VHOST_VSOCK_SET_GUEST_CID/.test(e.message), 'CID 3 is taken');
  other.close();
  const rxGpa = new Map<number, number>();
  for (let i = 0; i < 8; i++) rxGpa.set(rx.q.addChain([], [{ gpa: 0x20000 + i * PAGE, len: PAGE }]), 0x20000 + i * PAGE);
  rx.notify();
  detail('setup_ms', Math.round(performance.now() - t0));

  const client = spawn('/usr/bin/python3', ['-c', CLIENT], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  client.stdout.on('data', (b: Buffer) => { out += b.toString(); });
  const exited = new Promise<number | null>((r) => client.on('exit', (code) => r(code)));

  const packet = async (what: string): Promise<{ h: VsockHdr; payload: Uint8Array }> => {
    const e = await rx.nextUsed(what);
    const gpa = rxGpa.get(e.id);
    assert.ok(gpa !== undefined, `used id ${e.id} is one of ours`);
    const bytes = ram.mem.translate(gpa, e.len).slice();
    rxGpa.delete(e.id);
    rxGpa.set(rx.q.addChain([], [{ gpa, len: PAGE }]), gpa); // recycle the buffer
    rx.notify();
    const h = decode(bytes);
    return { h, payload: bytes.subarray(HDR, HDR + h.len) };
  };
  const send = async (h: VsockHdr, payload: Uint8Array, gpa: number): Promise<void> => {
    const buf = ram.mem.translate(gpa, HDR + payload.length);
    encode(buf, h);
    buf.set(payload, HDR);
    const done = tx.nextUsed(`TX of op ${h.op}`);
    tx.q.addChain([{ gpa, len: HDR + payload.length }]);
    tx.notify();
    await done;
  };

  const req = await packet('OP_REQUEST');
  assert.equal(req.h.op, OP_REQUEST, `first packet op ${req.h.op}`);
  assert.equal(req.h.dstCid, GUEST_CID);
  assert.equal(req.h.dstPort, PORT);
  assert.equal(req.h.type, TYPE_STREAM);
  detail('request_src', `${req.h.srcCid}:${req.h.srcPort}`);
  const reply = (op: number, len: number): VsockHdr => ({
    srcCid: GUEST_CID, dstCid: req.h.srcCid, srcPort: PORT, dstPort: req.h.srcPort, len, type: TYPE_STREAM, op, flags: 0, bufAlloc: 65536, fwdCnt: 0,
  });
  await send(reply(OP_RESPONSE, 0), new Uint8Array(0), 0x60000);

  // The client sends once connected; credit updates may come first.
  let data = await packet('OP_RW from the client');
  while (data.h.op !== OP_RW) data = await packet('OP_RW from the client');
  assert.equal(Buffer.from(data.payload).toString(), 'ping from the host side');
  const pong = Buffer.from('pong from the device');
  await send({ ...reply(OP_RW, pong.length), fwdCnt: data.h.len }, pong, 0x61000);
  const code = await exited;
  assert.equal(code, 0, `python client exit ${code}; output: ${out}`);
  assert.match(out, /connected\ngot pong from the device\n/);
  detail('vsock', 'ok');
  detail('total_ms', Math.round(performance.now() - t0));
  await dev.setRunning(false);
  dev.close();
  rx.close(); tx.close(); ram.close();
});
