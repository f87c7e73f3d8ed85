// Loopback: our Frontend against our BackendEndpoint over real AF_UNIX sockets, exchanging real
// memfds and eventfds; every front-end request once, both socket roles, the back-end channel in
// both directions, error acks, and fd-leak checks on failure paths.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend, VhostUserRequestFailedError } from '../../src/vhost-user/frontend.js';
import { BackendEndpoint } from '../../src/vhost-user/backend-endpoint.js';
import type { BackendReqHandler } from '../../src/vhost-user/backend-handler.js';
import { BackendRequestFailedError, type BackendChannel } from '../../src/vhost-user/backend-channel.js';
import { UnixListener } from '../../src/vhost-user/listener.js';
import { encodeFrontendRequest } from '../../src/vhost-user/codec.js';
import {
  DeviceStateDirection, DeviceStatePhase, FrontendReq, IotlbType, PROTOCOL_FEATURES_KNOWN, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, protocolFeatureMask,
} from '../../src/vhost-user/constants.js';
import { VhostUserError } from '../../src/vhost-user/errors.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import type { AnyMemoryRegion, CryptoSession, Inflight, IotlbMsg, Log, MemoryRegionWithFd, VringAddr } from '../../src/vhost-user/messages.js';
import { silentLogger } from '../../src/log.js';
import { readable } from '../helpers/events.js';

const ALL_PROTOCOL = PROTOCOL_FEATURES_KNOWN & ~(1n << BigInt(ProtocolFeature.XEN_MMAP));
// VIRTIO_F_VERSION_1, VIRTIO_F_IOMMU_PLATFORM (gates IOTLB_MSG), VHOST_USER_F_PROTOCOL_FEATURES.
const FEATURES = (1n << 32n) | (1n << 33n) | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES));

/** Records every call; keeps dup'ed copies of fds it must look at after the call returns. */
class RecordingHandler implements BackendReqHandler {
  calls: Array<[string, ...unknown[]]> = [];
  kept: number[] = [];
  channel: BackendChannel | null = null;
  failNext: string | null = null;
  memContent = '';

  private rec(name: string, ...args: unknown[]): void {
    this.calls.push([name, ...args]);
    if (this.failNext === name) {
      this.failNext = null;
      throw Object.assign(new Error(`${name} refused by test`), { errno: 22 });
    }
  }
  private keep(fd: number | null): number | null {
    if (fd === null) return null;
    const d = sys.dup(fd);
    this.kept.push(d);
    return d;
  }
  lastKept(): number {
    return this.kept[this.kept.length - 1]!;
  }
  closeKept(): void {
    for (const fd of this.kept.splice(0)) sys.close(fd);
  }

  setOwner() { this.rec('setOwner'); }
  resetOwner() { this.rec('resetOwner'); }
  getFeatures() { this.rec('getFeatures'); return FEATURES; }
  setFeatures(f: bigint) { this.rec('setFeatures', f); }
  getProtocolFeatures() { this.rec('getProtocolFeatures'); return ALL_PROTOCOL; }
  setProtocolFeatures(f: bigint) { this.rec('setProtocolFeatures', f); }
  setMemTable(regions: readonly MemoryRegionWithFd[]) {
    this.rec('setMemTable', regions.map((r) => r.guestPhysAddr));
    // Prove the fd is the real memfd: map it and read what the front-end wrote.
    const r = regions[0]!;
    const m = sys.mmap(r.fd, r.mmapOffset, Number(r.memorySize));
    this.memContent = Buffer.from(m.windows[0]!, 0, 5).toString();
    m.unmap();
  }
  setLogBase(log: Log, fd: number) { this.rec('setLogBase', log.mmapSize); this.keep(fd); }
  setLogFd(fd: number) { this.rec('setLogFd'); this.keep(fd); }
  setVringNum(i: number, n: number) { this.rec('setVringNum', i, n); }
  setVringAddr(a: VringAddr) { this.rec('setVringAddr', a.index, a.descUserAddr); }
  setVringBase(i: number, b: number) { this.rec('setVringBase', i, b); }
  async getVringBase(i: number) { this.rec('getVringBase', i); await new Promise(setImmediate); return 42; }
  setVringKick(i: number, fd: number | null) { this.rec('setVringKick', i, fd === null); this.keep(fd); }
  setVringCall(i: number, fd: number | null) { this.rec('setVringCall', i, fd === null); this.keep(fd); }
  setVringErr(i: number, fd: number | null) { this.rec('setVringErr', i, fd === null); }
  getQueueNum() { this.rec('getQueueNum'); return 4n; }
  setVringEnable(i: number, e: boolean) { this.rec('setVringEnable', i, e); }
  sendRarp(mac: Uint8Array) { this.rec('sendRarp', Buffer.from(mac).toString('hex')); }
  netSetMtu(mtu: number) { this.rec('netSetMtu', mtu); }
  setBackendReqFd(ch: BackendChannel) { this.rec('setBackendReqFd'); this.channel = ch; }
  iotlbMsg(m: IotlbMsg) { this.rec('iotlbMsg', m.iova, m.type); }
  setVringEndian(i: number, be: boolean) { this.rec('setVringEndian', i, be); }
  getConfig(offset: number, size: number) {
    this.rec('getConfig', offset, size);
    return Uint8Array.from({ length: size }, (_, k) => (offset + k) & 0xff);
  }
  setConfig(offset: number, data: Uint8Array) { this.rec('setConfig', offset, Array.from(data)); }
  createCryptoSession(s: CryptoSession) { this.rec('createCryptoSession'); return { ...s, sessionId: 7n }; }
  closeCryptoSession(id: bigint) { this.rec('closeCryptoSession', id); }
  postcopyAdvise() { this.rec('postcopyAdvise'); return sys.eventfd(); }
  postcopyListen() { this.rec('postcopyListen'); }
  postcopyEnd() { this.rec('postcopyEnd'); return 0n; }
  getInflightFd(req: Inflight) {
    this.rec('getInflightFd', req.numQueues, req.queueSize);
    const fd = sys.memfdCreate('inflight');
    sys.ftruncate(fd, 4096);
    return { inflight: { ...req, mmapSize: 4096n, mmapOffset: 0n }, fd };
  }
  setInflightFd(i: Inflight, fd: number) { this.rec('setInflightFd', i.mmapSize); this.keep(fd); }
  gpuSetSocket(fd: number) { this.rec('gpuSetSocket'); this.keep(fd); }
  resetDevice() { this.rec('resetDevice'); }
  vringKick(i: number) { this.rec('vringKick', i); }
  getMaxMemSlots() { this.rec('getMaxMemSlots'); return 32n; }
  addMemReg(r: MemoryRegionWithFd) { this.rec('addMemReg', r.guestPhysAddr); }
  remMemReg(r: AnyMemoryRegion) { this.rec('remMemReg', r.guestPhysAddr); }
  setStatus(s: number) { this.rec('setStatus', s); }
  getStatus() { this.rec('getStatus'); return 0x0f; }
  getSharedObject(uuid: Uint8Array) { this.rec('getSharedObject', uuid[0]); return sys.eventfd(); }
  setDeviceStateFd(d: DeviceStateDirection, p: DeviceStatePhase, fd: number) { this.rec('setDeviceStateFd', d, p); this.keep(fd); return null; }
  checkDeviceState() { this.rec('checkDeviceState'); }
  getShmemConfig() { this.rec('getShmemConfig'); return { memorySizes: [0n, 1n << 30n] }; }
}

function memfdWith(text: string, size = 1 << 20): number {
  const fd = sys.memfdCreate('guest');
  sys.ftruncate(fd, size);
  const m = sys.mmap(fd, 0, size);
  Buffer.from(m.windows[0]!).write(text);
  m.unmap();
  return fd;
}

function pair(handler: BackendReqHandler): { fe: Frontend; be: BackendEndpoint } {
  const [a, b] = sys.socketpair();
  return { fe: new Frontend(a, { timeoutMs: 2000 }), be: new BackendEndpoint(b, handler, { logger: silentLogger }) };
}

test('loopback: every front-end request once, with real memfds and eventfds', async () => {
  const before = sys.openFdCount();
  const h = new RecordingHandler();
  const { fe, be } = pair(h);

  assert.equal(await fe.getFeatures(), FEATURES);
  await fe.setFeatures(FEATURES);
  assert.equal(await fe.getProtocolFeatures(), ALL_PROTOCOL);
  await fe.setProtocolFeatures(ALL_PROTOCOL); // REPLY_ACK from here on: every request below is acked
  await fe.setOwner();
  assert.equal(await fe.getQueueNum(), 4);
  assert.equal(await fe.getMaxMemSlots(), 32);

  const mem = memfdWith('hello');
  await fe.setMemTable([{ guestPhysAddr: 0n, memorySize: 1n << 20n, userAddr: 0x7f0000000000n, mmapOffset: 0n, fd: mem }]);
  assert.equal(h.memContent, 'hello');
  await fe.addMemReg({ guestPhysAddr: 1n << 30n, memorySize: 4096n, userAddr: 0x7f1000000000n, mmapOffset: 0n, fd: mem });
  await fe.remMemReg({ guestPhysAddr: 1n << 30n, memorySize: 4096n, userAddr: 0x7f1000000000n, mmapOffset: 0n });
  await fe.setLogBase({ mmapSize: 4096n, mmapOffset: 0n }, mem);
  await fe.setLogFd(mem);

  await fe.setVringNum(0, 256);
  await fe.setVringAddr({ index: 0, flags: 0, descUserAddr: 0x7f0000001000n, usedUserAddr: 0x7f0000003000n, availUserAddr: 0x7f0000002000n, logGuestAddr: 0n });
  await fe.setVringBase(0, 0);
  const kick = sys.eventfd();
  await fe.setVringKick(0, kick);
  // The back-end's dup of the kick fd is the same eventfd: a kick written here is readable there.
  sys.eventfdWrite(kick, 3);
  assert.equal(sys.eventfdRead(h.lastKept()), 3n);
  const call = sys.eventfd();
  await fe.setVringCall(0, call);
  sys.eventfdWrite(h.lastKept(), 1);
  assert.equal(sys.eventfdRead(call), 1n);
  await fe.setVringErr(0, null);
  await fe.setVringEnable(0, true);
  await fe.setVringEndian(0, false);
  await fe.vringKick(0);
  assert.equal(await fe.getVringBase(0), 42);

  await fe.sendRarp(Uint8Array.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
  await fe.netSetMtu(1500);
  await fe.iotlbMsg({ iova: 0x1000n, size: 0x1000n, userAddr: 0x7f0000000000n, perm: 3, type: IotlbType.UPDATE });
  assert.deepEqual(Array.from(await fe.getConfig(4, 8)), [4, 5, 6, 7, 8, 9, 10, 11]);
  await fe.setConfig(0, Uint8Array.from([1, 2, 3]));
  const session = await fe.createCryptoSession({ layout: 'current', opCode: 1n, sessionId: 0n, body: new Uint8Array(1056) });
  assert.equal(session.sessionId, 7n);
  await fe.closeCryptoSession(7n);
  const uffd = await fe.postcopyAdvise();
  sys.close(uffd);
  await fe.postcopyListen();
  await fe.postcopyEnd();
  const inflight = await fe.getInflightFd(2, 256);
  assert.equal(inflight.inflight.mmapSize, 4096n);
  assert.notEqual(inflight.fd, null);
  await fe.setInflightFd(inflight.inflight, inflight.fd!);
  sys.close(inflight.fd!);
  const gpu = sys.eventfd();
  await fe.gpuSetSocket(gpu);
  await fe.setStatus(0x0f);
  assert.equal(await fe.getStatus(), 0x0f);
  const obj = await fe.getSharedObject(new Uint8Array(16).fill(9));
  sys.close(obj);
  const [p0, p1] = sys.socketpair();
  assert.equal(await fe.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, p0), null);
  await fe.checkDeviceState();
  assert.deepEqual(await fe.getShmemConfig(), { memorySizes: [0n, 1n << 30n] });
  await fe.setBackendReqFd({ configChange: () => undefined });
  await fe.resetDevice();
  await fe.resetOwner();

  const names = h.calls.map((c) => c[0]);
  for (const m of ['setOwner', 'resetOwner', 'getFeatures', 'setFeatures', 'getProtocolFeatures', 'setProtocolFeatures',
    'setMemTable', 'setLogBase', 'setLogFd', 'setVringNum', 'setVringAddr', 'setVringBase', 'getVringBase', 'setVringKick',
    'setVringCall', 'setVringErr', 'getQueueNum', 'setVringEnable', 'sendRarp', 'netSetMtu', 'setBackendReqFd', 'iotlbMsg',
    'setVringEndian', 'getConfig', 'setConfig', 'createCryptoSession', 'closeCryptoSession', 'postcopyAdvise', 'postcopyListen',
    'postcopyEnd', 'getInflightFd', 'setInflightFd', 'gpuSetSocket', 'resetDevice', 'vringKick', 'getMaxMemSlots', 'addMemReg',
    'remMemReg', 'setStatus', 'getStatus', 'getSharedObject', 'setDeviceStateFd', 'checkDeviceState', 'getShmemConfig']) {
    assert.ok(names.includes(m), `handler never saw ${m}`);
  }
  assert.deepEqual(h.calls.find((c) => c[0] === 'sendRarp'), ['sendRarp', '525400123456']);
  assert.deepEqual(h.calls.find((c) => c[0] === 'setVringErr'), ['setVringErr', 0, true]);

  fe.close();
  assert.equal(await be.closed(), null);
  h.channel?.close();
  h.closeKept();
  for (const fd of [mem, kick, call, gpu, p0, p1]) sys.close(fd);
  assert.equal(sys.openFdCount(), before, 'fd leak');
});

test('loopback: REPLY_ACK reports handler failures and the connection keeps serving', async () => {
  const h = new RecordingHandler();
  const { fe, be } = pair(h);
  await fe.getFeatures();
  await fe.setProtocolFeatures((1n << BigInt(ProtocolFeature.REPLY_ACK)) | (1n << BigInt(ProtocolFeature.MQ)));
  h.failNext = 'setVringNum';
  await assert.rejects(fe.setVringNum(0, 256), (e: unknown) => e instanceof VhostUserRequestFailedError && e.value === 22n);
  // A gated request whose feature was not negotiated: refused with EPERM, the connection goes on.
  await assert.rejects(fe.setStatus(1), (e: unknown) => e instanceof VhostUserRequestFailedError && e.value === 1n);
  assert.equal(h.calls.some((c) => c[0] === 'setStatus'), false, 'the handler never sees a request that is not negotiated');
  await assert.rejects(fe.setVringEndian(0, false), (e: unknown) => e instanceof VhostUserRequestFailedError && e.value === 1n);
  await fe.setVringNum(0, 128);
  // A handler without the method: the request is refused with EOPNOTSUPP, not fatal.
  delete (h as Partial<RecordingHandler>).gpuSetSocket;
  (h as { gpuSetSocket?: unknown }).gpuSetSocket = undefined;
  const gpu = sys.eventfd();
  await assert.rejects(fe.gpuSetSocket(gpu), (e: unknown) => e instanceof VhostUserRequestFailedError && e.value === 95n);
  sys.close(gpu);
  assert.equal(await fe.getQueueNum(), 4);
  fe.close();
  await be.closed();
});

test('loopback: without REPLY_ACK a failed request closes only that connection', async () => {
  const h = new RecordingHandler();
  const a = pair(h);
  const b = pair(new RecordingHandler());
  h.failNext = 'setVringNum';
  await a.fe.setVringNum(0, 256); // written; the failure cannot be reported
  const err = await a.be.closed();
  assert.ok(err instanceof VhostUserError, String(err));
  assert.equal(err.request, 'VHOST_USER_SET_VRING_NUM');
  assert.equal(err.code, 'device-error');
  assert.equal(err.errno, 22);
  await assert.rejects(a.fe.getFeatures());
  assert.equal(await b.fe.getFeatures(), FEATURES, 'the other connection keeps serving');
  b.fe.close();
  await b.be.closed();
});

test('loopback: a malformed message closes the connection without leaking fds', async () => {
  const before = sys.openFdCount();
  const [a, b] = sys.socketpair();
  const be = new BackendEndpoint(b, new RecordingHandler(), { logger: silentLogger });
  // SET_MEM_TABLE (5) announcing 2 regions but carrying 3 fds.
  const msg = Buffer.alloc(12 + 8 + 64);
  msg.writeUInt32LE(5, 0); msg.writeUInt32LE(1, 4); msg.writeUInt32LE(8 + 64, 8); msg.writeUInt32LE(2, 12);
  const fds = [sys.eventfd(), sys.eventfd(), sys.eventfd()];
  sys.sendmsg(a, msg, fds);
  for (const fd of fds) sys.close(fd);
  const err = await be.closed();
  assert.match(String(err?.message), /VHOST_USER_SET_MEM_TABLE/);
  sys.close(a);
  assert.equal(sys.openFdCount(), before, 'fd leak');
});

test('loopback: malformed request with NEED_REPLY under REPLY_ACK gets an error ack', async () => {
  const [a, b] = sys.socketpair();
  const be = new BackendEndpoint(b, new RecordingHandler(), { logger: silentLogger });
  const recvReply = async (): Promise<Buffer> => {
    const reply = Buffer.alloc(20);
    for (;;) {
      const r = sys.recvmsg(a, reply);
      if (r !== null) {
        assert.equal(r.bytes, 20);
        return reply;
      }
      await readable(a, 2000, 'a reply from the back-end');
    }
  };
  // GET_FEATURES first: SET_PROTOCOL_FEATURES is only legal once VHOST_USER_F_PROTOCOL_FEATURES was offered.
  sys.sendmsg(a, encodeFrontendRequest({ request: FrontendReq.GET_FEATURES }, { protocolFeatures: 0n }).bytes);
  assert.equal((await recvReply()).readBigUInt64LE(12), FEATURES);
  // SET_PROTOCOL_FEATURES (16) = REPLY_ACK, itself with NEED_REPLY: acked with 0 once in effect.
  const spf = encodeFrontendRequest({ request: FrontendReq.SET_PROTOCOL_FEATURES, features: 1n << BigInt(ProtocolFeature.REPLY_ACK) },
    { protocolFeatures: 0n });
  sys.sendmsg(a, spf.bytes);
  // SET_VRING_NUM (8) with a 4-byte payload and NEED_REPLY.
  const bad = Buffer.alloc(16);
  bad.writeUInt32LE(8, 0); bad.writeUInt32LE(1 | 8, 4); bad.writeUInt32LE(4, 8);
  sys.sendmsg(a, bad);
  const reply = await recvReply();
  assert.equal(reply.readUInt32LE(0), 8);
  assert.equal(reply.readUInt32LE(4) & 4, 4, 'REPLY flag');
  assert.notEqual(reply.readBigUInt64LE(12), 0n, 'non-zero ack');
  // The connection is still in step: a well-formed request with NEED_REPLY gets a zero ack.
  const good = encodeFrontendRequest({ request: FrontendReq.SET_VRING_NUM, index: 0, num: 64 }, { protocolFeatures: 0n }, 8);
  sys.sendmsg(a, good.bytes);
  const ok = await recvReply();
  assert.equal(ok.readUInt32LE(0), 8);
  assert.equal(ok.readBigUInt64LE(12), 0n);
  sys.close(a);
  assert.equal(await be.closed(), null);
});

test('loopback: both socket roles (back-end server and back-end client)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-'));
  try {
    // Back-end listens, front-end connects (QEMU's usual setup).
    const l1 = UnixListener.listen(join(dir, 'be.sock'));
    const beP = BackendEndpoint.accept(l1, new RecordingHandler(), { logger: silentLogger });
    const fe1 = await Frontend.connect(join(dir, 'be.sock'));
    const be1 = await beP;
    assert.equal(await fe1.getFeatures(), FEATURES);
    fe1.close();
    await be1.closed();
    l1.close();
    // Front-end listens (QEMU `server=on` chardev), back-end connects.
    const l2 = UnixListener.listen(join(dir, 'fe.sock'));
    const feP = Frontend.accept(l2);
    const be2 = await BackendEndpoint.connect(join(dir, 'fe.sock'), new RecordingHandler(), { logger: silentLogger });
    const fe2 = await feP;
    assert.equal((await negotiate(fe2, { wantProtocolFeatures: protocolFeatureMask(ProtocolFeature.MQ) })).queueNum, 4);
    fe2.close();
    await be2.closed();
    l2.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('loopback: back-end channel carries requests, acks and fds back to the front-end', async () => {
  const before = sys.openFdCount();
  const h = new RecordingHandler();
  const { fe, be } = pair(h);
  await fe.getFeatures();
  const P = ProtocolFeature;
  await fe.setProtocolFeatures([P.REPLY_ACK, P.BACKEND_REQ, P.CONFIG, P.INBAND_NOTIFICATIONS, P.SHARED_OBJECT]
    .reduce((m, f) => m | protocolFeatureMask(f), 0n));
  const seen: string[] = [];
  const shared = sys.memfdCreate('shared');
  await fe.setBackendReqFd({
    configChange: () => { seen.push('config'); },
    vringCall: (i) => { seen.push(`call${i}`); },
    sharedObjectLookup: (uuid) => { seen.push(`lookup${uuid[0]}`); return sys.dup(shared); },
    sharedObjectAdd: () => { throw new Error('refused'); },
  });
  const ch = h.channel!;
  await ch.configChange();
  await ch.vringCall(1);
  const fd = await ch.sharedObjectLookup(new Uint8Array(16).fill(5));
  sys.ftruncate(fd, 8192); // the same memfd: size seen through the original fd
  sys.close(fd);
  await assert.rejects(ch.sharedObjectAdd(new Uint8Array(16)), /failure/);
  // Not implemented by the front-end handler: refused with EOPNOTSUPP.
  await assert.rejects(ch.vringErr(0), (e: unknown) => e instanceof BackendRequestFailedError && e.value === 95n);
  // HOST_NOTIFIER was not negotiated: the back-end side refuses before sending anything.
  await assert.rejects(ch.vringHostNotifier({ index: 0, size: 4096n, offset: 0n }, null),
    (e: unknown) => e instanceof VhostUserError && e.code === 'not-negotiated' && e.request === 'VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG');
  assert.deepEqual(seen, ['config', 'call1', 'lookup5']);
  fe.close();
  await be.closed();
  sys.close(shared);
  assert.equal(sys.openFdCount(), before, 'fd leak');
});

test('loopback: a reply timeout closes the front-end connection', async () => {
  const [a, b] = sys.socketpair();
  const fe = new Frontend(a, { timeoutMs: 100 });
  await assert.rejects(fe.getFeatures(), /no reply within 100 ms/);
  assert.equal(fe.isClosed, true);
  sys.close(b);
});
