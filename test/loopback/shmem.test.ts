// VIRTIO shared memory (protocol feature SHMEM, vhost-user-newer.md) end to end: a device served
// by the real VhostUserDaemon reports its regions (GET_SHMEM_CONFIG) and maps real memfds into
// them through the back-end channel (BACKEND_SHMEM_MAP / SHMEM_UNMAP); both ends refuse the
// messages when SHMEM was not negotiated, and invalid mappings never reach the wire.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { VhostUserDaemon, type VhostUserBackend } from '../../src/backend/index.js';
import { BackendChannel, BackendChannelEndpoint, BackendRequestFailedError, type BackendChannelHandler } from '../../src/vhost-user/backend-channel.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_MMAP_FLAG_WRITABLE, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { VhostUserError } from '../../src/vhost-user/errors.js';
import type { ShmemConfig, ShmemMapping } from '../../src/vhost-user/messages.js';
import { VIRTIO_F_VERSION_1 } from '../../src/virtio/features.js';
import { silentLogger } from '../../src/log.js';

const pf = protocolFeatureMask;
const CHANNEL = pf(ProtocolFeature.REPLY_ACK) | pf(ProtocolFeature.BACKEND_REQ);
const WITH_SHMEM = CHANNEL | pf(ProtocolFeature.SHMEM);

/** A device with two shared memory regions (id 0 unused), as a virtio-gpu or virtio-fs DAX would. */
class ShmemDevice implements VhostUserBackend {
  channel: BackendChannel | null = null;
  private channelWaiters: Array<(c: BackendChannel) => void> = [];
  constructor(private readonly config: ShmemConfig | null) {}
  numQueues() { return 1; }
  maxQueueSize() { return 64; }
  features() { return (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)); }
  protocolFeatures() { return WITH_SHMEM; }
  setEventIdx() { /* no rings used */ }
  updateMemory() { /* no rings used */ }
  handleEvent() { /* no rings used */ }
  setBackendReqFd(ch: BackendChannel) {
    this.channel = ch;
    for (const w of this.channelWaiters.splice(0)) w(ch);
  }
  /** Resolves with the back-end channel once the front-end has set it up. */
  channelReady(): Promise<BackendChannel> {
    return this.channel !== null ? Promise.resolve(this.channel) : new Promise((r) => this.channelWaiters.push(r));
  }
  get getShmemConfig(): (() => ShmemConfig) | undefined {
    const c = this.config;
    return c === null ? undefined : () => c;
  }
}

function memfdWith(text: string, size = 8192): number {
  const fd = sys.memfdCreate('shmem');
  sys.ftruncate(fd, size);
  writeSync(fd, Buffer.from(text), 0, text.length, 0);
  return fd;
}

function readFd(fd: number, n: number, offset = 0): string {
  const b = Buffer.alloc(n);
  readSync(fd, b, 0, n, offset);
  return b.toString();
}

/** The front-end's view of its shared memory regions: what was mapped where. */
class ShmemRegions implements BackendChannelHandler {
  maps: Array<{ m: ShmemMapping; text: string }> = [];
  unmaps: ShmemMapping[] = [];
  refuse = false;
  shmemMap(m: ShmemMapping, fd: number) {
    if (this.refuse) throw new Error('region busy');
    // The fd is the device's file: read what it holds at fd_offset.
    this.maps.push({ m, text: readFd(fd, 5, Number(m.fdOffset)) });
  }
  shmemUnmap(m: ShmemMapping) { this.unmaps.push(m); }
}

function daemonFor(t: { after(fn: () => void | Promise<void>): void }, dev: ShmemDevice): string {
  const dir = mkdtempSync(join(tmpdir(), 'vu-shmem-'));
  const sock = join(dir, 'dev.sock');
  const daemon = new VhostUserDaemon('shmem', dev, { logger: silentLogger });
  daemon.serve(sock);
  t.after(async () => {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return sock;
}

test('shmem: GET_SHMEM_CONFIG and a device mapping a memfd into a region through the back-end channel', async (t) => {
  const before = sys.openFdCount();
  const dev = new ShmemDevice({ memorySizes: [0n, 1n << 30n] });
  const sock = daemonFor(t, dev);
  const fe = await Frontend.connect(sock);
  const n = await negotiate(fe, { wantProtocolFeatures: WITH_SHMEM });
  assert.equal(n.protocolFeatures, WITH_SHMEM);
  assert.deepEqual(await fe.getShmemConfig(), { memorySizes: [0n, 1n << 30n] });
  const regions = new ShmemRegions();
  await fe.setBackendReqFd(regions);
  const ch = await dev.channelReady();

  const file = memfdWith('page0');
  writeSync(file, Buffer.from('page1'), 0, 5, 4096);
  await ch.shmemMap({ shmid: 1, fd: file, fdOffset: 4096n, shmOffset: 0x10_0000n, len: 4096n, flags: BigInt(VHOST_USER_MMAP_FLAG_WRITABLE) });
  await ch.shmemMap({ shmid: 1, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n });
  await ch.shmemUnmap({ shmid: 1, shmOffset: 0x10_0000n, len: 4096n });
  assert.deepEqual(regions.maps, [
    { m: { shmid: 1, fdOffset: 4096n, shmOffset: 0x10_0000n, len: 4096n, flags: 1n }, text: 'page1' },
    { m: { shmid: 1, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n }, text: 'page0' },
  ]);
  assert.deepEqual(regions.unmaps, [{ shmid: 1, fdOffset: 0n, shmOffset: 0x10_0000n, len: 4096n, flags: 0n }]);

  // The front-end refusing a mapping reaches the device as a failure; the channel goes on.
  regions.refuse = true;
  await assert.rejects(ch.shmemMap({ shmid: 1, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n }), BackendRequestFailedError);
  regions.refuse = false;
  await ch.shmemUnmap({ shmid: 1, shmOffset: 0n, len: 4096n });
  assert.equal(regions.unmaps.length, 2);

  fe.close();
  sys.close(file);
  await fe.closed();
  // The daemon has reset the session (and closed the channel) once the next connection is served.
  const fe2 = await Frontend.connect(sock);
  await negotiate(fe2, { wantProtocolFeatures: WITH_SHMEM });
  fe2.close();
  await fe2.closed();
  t.after(() => assert.equal(sys.openFdCount(), before, 'fd leak'));
});

test('shmem: invalid mappings are refused with typed errors before anything is sent', async (t) => {
  const dev = new ShmemDevice({ memorySizes: [4096n] });
  const sock = daemonFor(t, dev);
  const fe = await Frontend.connect(sock);
  await negotiate(fe, { wantProtocolFeatures: WITH_SHMEM });
  const regions = new ShmemRegions();
  await fe.setBackendReqFd(regions);
  const ch = await dev.channelReady();
  const file = memfdWith('x');
  const bad: Array<[string, Parameters<BackendChannel['shmemMap']>[0]]> = [
    ['zero length', { shmid: 0, fd: file, fdOffset: 0n, shmOffset: 0n, len: 0n, flags: 0n }],
    ['unknown flag', { shmid: 0, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 2n }],
    ['shm_offset + len past 2^64', { shmid: 0, fd: file, fdOffset: 0n, shmOffset: (1n << 64n) - 4096n, len: 8192n, flags: 0n }],
    ['fd_offset + len past 2^64', { shmid: 0, fd: file, fdOffset: (1n << 64n) - 1n, len: 2n, shmOffset: 0n, flags: 0n }],
    ['shmid beyond a u8', { shmid: 256, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n }],
  ];
  for (const [what, m] of bad) {
    await assert.rejects(ch.shmemMap(m), (e: unknown) => e instanceof VhostUserError && e.code === 'invalid-argument'
      && e.request === 'VHOST_USER_BACKEND_SHMEM_MAP', what);
  }
  await assert.rejects(ch.shmemUnmap({ shmid: 0, shmOffset: 0n, len: 0n }), (e: unknown) => e instanceof VhostUserError && e.code === 'invalid-argument');
  // Nothing reached the front-end, and the channel still works.
  assert.deepEqual(regions.maps, []);
  await ch.shmemMap({ shmid: 0, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n });
  assert.equal(regions.maps.length, 1);
  sys.close(file);
  fe.close();
  await fe.closed();
});

test('shmem: without SHMEM negotiated the device cannot map and the front-end refuses SHMEM messages', async (t) => {
  const dev = new ShmemDevice({ memorySizes: [4096n] });
  const sock = daemonFor(t, dev);
  const fe = await Frontend.connect(sock);
  const n = await negotiate(fe, { wantProtocolFeatures: CHANNEL });
  assert.equal(n.protocolFeatures, CHANNEL);
  const regions = new ShmemRegions();
  await fe.setBackendReqFd(regions);
  const ch = await dev.channelReady();
  const file = memfdWith('x');
  await assert.rejects(ch.shmemMap({ shmid: 0, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n }),
    (e: unknown) => e instanceof VhostUserError && e.code === 'not-negotiated');
  await assert.rejects(ch.shmemUnmap({ shmid: 0, shmOffset: 0n, len: 4096n }), (e: unknown) => e instanceof VhostUserError && e.code === 'not-negotiated');
  assert.deepEqual(regions.maps, []);
  fe.close();
  await fe.closed();
  sys.close(file);
});

test('shmem: the front-end side refuses SHMEM messages when SHMEM was not negotiated', async () => {
  // A back-end that sends SHMEM_MAP anyway (a channel that does not check) gets an error ack from
  // the front-end side, which knows what was negotiated; the fd that came along is closed.
  const regions = new ShmemRegions();
  const file = memfdWith('x');
  const before = sys.openFdCount();
  const [a, b] = sys.socketpair();
  const feSide = new BackendChannelEndpoint(a, regions, silentLogger, CHANNEL);
  const rogue = new BackendChannel(b, { replyAck: true });
  await assert.rejects(rogue.shmemMap({ shmid: 0, fd: file, fdOffset: 0n, shmOffset: 0n, len: 4096n, flags: 0n }), BackendRequestFailedError);
  assert.deepEqual(regions.maps, []);
  rogue.close();
  feSide.close();
  assert.equal(sys.openFdCount(), before, 'both channel ends closed, no received fd kept');
  sys.close(file);
});

test('shmem: a device offering SHMEM without getShmemConfig: GET_SHMEM_CONFIG closes the connection, the daemon serves the next', async (t) => {
  const dev = new ShmemDevice(null);
  const sock = daemonFor(t, dev);
  const fe = await Frontend.connect(sock);
  await negotiate(fe, { wantProtocolFeatures: WITH_SHMEM });
  await assert.rejects(fe.getShmemConfig());
  assert.notEqual(await fe.closed(), undefined);
  assert.equal(fe.isClosed, true);
  const fe2 = await Frontend.connect(sock);
  assert.equal((await negotiate(fe2, { wantProtocolFeatures: WITH_SHMEM })).protocolFeatures, WITH_SHMEM);
  fe2.close();
  await fe2.closed();
});

test('shmem: malformed SHMEM_MAP from a back-end gets an error ack and its fds are closed', async () => {
  const regions = new ShmemRegions();
  const before = sys.openFdCount();
  const [a, b] = sys.socketpair();
  const feSide = new BackendChannelEndpoint(a, regions, silentLogger, WITH_SHMEM);
  const mmapImage = (len: bigint, flags: bigint): Uint8Array => {
    const m = new Uint8Array(12 + 40);
    const v = new DataView(m.buffer);
    v.setUint32(0, 9, true); // BACKEND_SHMEM_MAP
    v.setUint32(4, 1 | 8, true); // version 1, NEED_REPLY
    v.setUint32(8, 40, true);
    v.setUint8(12, 1);
    v.setBigUint64(12 + 24, len, true);
    v.setBigUint64(12 + 32, flags, true);
    return m;
  };
  const readable = (): Promise<void> => new Promise((resolve, reject) => {
    const guard = setTimeout(() => { w.close(); reject(new Error('no reply within 2 s')); }, 2000);
    const w = sys.watchFd(b, sys.POLLIN, () => { clearTimeout(guard); w.close(); resolve(); });
  });
  const file = memfdWith('x');
  const extra = sys.eventfd();
  const cases: Array<[string, Uint8Array, number[]]> = [
    ['two fds', mmapImage(4096n, 0n), [file, extra]],
    ['zero length', mmapImage(0n, 0n), [file]],
    ['unknown flag', mmapImage(4096n, 4n), [file]],
  ];
  for (const [what, bytes, fds] of cases) {
    sys.sendmsg(b, bytes, fds);
    const reply = Buffer.alloc(20);
    let r = sys.recvmsg(b, reply);
    while (r === null) {
      await readable();
      r = sys.recvmsg(b, reply);
    }
    assert.deepEqual([r.bytes, r.fds.length], [20, 0], what);
    assert.equal(reply.readUInt32LE(0), 9, `${what}: reply to SHMEM_MAP`);
    assert.equal(reply.readUInt32LE(4) & 4, 4, `${what}: REPLY flag`);
    assert.notEqual(reply.readBigUInt64LE(12), 0n, `${what}: failure ack`);
  }
  assert.deepEqual(regions.maps, [], 'never reached the handler');
  feSide.close();
  sys.close(b);
  sys.close(file);
  sys.close(extra);
  assert.equal(sys.openFdCount(), before, 'no fd of a rejected message is kept');
});

test('shmem: a device reporting more than 256 regions is refused like any handler error (connection closed)', async (t) => {
  const dev = new ShmemDevice({ memorySizes: new Array<bigint>(257).fill(4096n) });
  const sock = daemonFor(t, dev);
  const fe = await Frontend.connect(sock);
  await negotiate(fe, { wantProtocolFeatures: WITH_SHMEM });
  await assert.rejects(fe.getShmemConfig());
  await fe.closed();
  assert.equal(fe.isClosed, true);
});
