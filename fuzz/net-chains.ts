/**
 * Net chain cases: a valid vhost-user-net session against the loopback daemon (receive queue 0
 * and transmit queue 1 live on split rings, guest memory in two memfds, adjacent or with a hole),
 * receive buffers posted, then valid transmit batches (virtio_net_hdr + Ethernet frame in one
 * descriptor, split anywhere, or through an indirect table) checked head by head on the transmit
 * ring and byte by byte where the frames loop back, then a hostile phase: a hostile transmit
 * batch ({@link hostileTxBatch}), hostile receive buffers ({@link RxAgent.postHostile}) with
 * traffic that needs them, or both, spurious kicks, and one more valid batch on a ring that
 * survived. Every published transmit head must come back exactly once (used length 0) unless the
 * daemon declares the ring broken through its error fd.
 * @module
 */
import * as sys from '../src/sys/index.js';
import { PackedQueueDriver, SplitQueueDriver, encodePackedState, packedRingLayout, splitRingLayout } from '../src/queue/index.js';
import { FrontendReq } from '../src/vhost-user/constants.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT } from '../src/vhost-user/negotiate.js';
import { VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../src/virtio/features.js';
import {
  MAX_FRAME_LEN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
} from '../src/devices/net/header.js';
import {
  CaseMemory, QueueEvents, REGION_SIZE, UADDR_A, ackOk, ask, bit, openSession, runBatch, type ChainCaseStats, type UsedReaper,
} from './chains.js';
import type { RawClient } from './client.js';
import {
  HOSTILE_TAG, TAGGED_MIN, VALID_MAX, expectedRx, firstDifference, frameTag, headerDifference, rxViolation, taggedFrame, validHeader, type NetFeatures, type RxExpected, type TxFrame,
} from './net-frames.js';
import { hostileTxBatch, type HostileLayout } from './net-hostile.js';
import { PackedPort, SplitPort, type Desc, type RingPort } from './net-rings.js';
import { RxAgent, type RxLayout } from './net-rx.js';
import type { Rng } from './rng.js';
import { memTablePayload, u64Payload, vringSetupSteps, type SetupStep } from './wire.js';

const RX_Q = 0;
const TX_Q = 1;
/** Guest layout in region A: the rings, transmit tables and frames, receive buffers. */
const RX_RING_GPA = 0x0;
const TX_RING_GPA = 0x4000;
/** Transmit indirect tables: 128 bytes (up to 5 pieces of a frame) per slot. */
const TX_INDIRECT_GPA = 0x8000;
const TX_DATA_GPA = 0x10000;
const TX_STRIDE = 0x800;
const RX_DATA_GPA = 0x90000;
const RX_STRIDE = 0x600;
/** Region B (offsets from its start): receive tables, hostile tables, scratch and big frames. */
const B_RX_INDIRECT = 0x1000;
const B_HOSTILE_INDIRECT = 0x8000;
const B_TX_SCRATCH = 0x10000;
const B_RX_SCRATCH = 0x20000;
const B_BIG = 0x40000;
/** Valid frames per transmit batch at most: with what a hostile batch leaves behind, within the device's 256-frame receive backlog. */
const MAX_BATCH_FRAMES = 128;

/** Share of net chain cases on packed rings (VIRTIO_F_RING_PACKED negotiated for both queues). */
const PACKED_SHARE = 0.4;

/** A transmit reaper that also checks what comes back: only outstanding heads, each once, used length 0. */
class TxReaper implements UsedReaper {
  failure: string | null = null;
  private readonly outstanding = new Set<number>();

  constructor(private readonly d: RingPort) {}

  expect(heads: readonly number[]): void {
    for (const h of heads) this.outstanding.add(h);
  }

  popUsed(): number | null {
    let u;
    try {
      u = this.d.popUsed();
    } catch (e) {
      this.failure ??= `transmit ring: ${(e as Error).message}`;
      return null;
    }
    if (u === null) return null;
    if (!this.outstanding.delete(u.id)) this.failure ??= `transmit used id ${u.id} was not outstanding (returned twice or never published)`;
    else if (u.len !== 0) this.failure ??= `transmit head ${u.id} came back with used length ${u.len} (the device writes nothing)`;
    return u.id;
  }

  enableInterrupts(): void {
    this.d.enableInterrupts();
  }

  /** Forgets heads that will never come back (the ring broke or the avail index jumped). */
  clear(): void {
    this.outstanding.clear();
  }
}

/** The features a QEMU-like front-end acknowledges, drawn so that each offload comes with what it depends on. */
function chooseFeatures(rng: Rng, offered: bigint): bigint {
  let f = offered & ~FEATURES_NEEDING_FRONTEND_SUPPORT;
  const drop = (b: number, p: number): void => { if (rng.chance(p)) f &= ~bit(b); };
  drop(VIRTIO_F_VERSION_1, 0.1);
  drop(VIRTIO_RING_F_EVENT_IDX, 0.3);
  drop(VIRTIO_RING_F_INDIRECT_DESC, 0.2);
  drop(VIRTIO_NET_F_MRG_RXBUF, 0.5);
  drop(VIRTIO_NET_F_CSUM, 0.4);
  drop(VIRTIO_NET_F_GUEST_CSUM, 0.4);
  drop(VIRTIO_NET_F_CTRL_VQ, 0.5);
  for (const b of [VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]) drop(b, 0.5);
  // VIRTIO 1.2 §5.1.3.1: TSO needs the checksum offload of the same direction; CTRL_RX needs CTRL_VQ.
  if ((f & bit(VIRTIO_NET_F_CSUM)) === 0n) f &= ~(bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6));
  if ((f & bit(VIRTIO_NET_F_GUEST_CSUM)) === 0n) f &= ~(bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6));
  if ((f & bit(VIRTIO_NET_F_CTRL_VQ)) === 0n) f &= ~bit(VIRTIO_NET_F_CTRL_RX);
  return f;
}

function netFeatures(f: bigint): NetFeatures {
  const has = (b: number): boolean => (f & bit(b)) !== 0n;
  return {
    hdrLen: has(VIRTIO_F_VERSION_1) || has(VIRTIO_NET_F_MRG_RXBUF) ? 12 : 10, mergeable: has(VIRTIO_NET_F_MRG_RXBUF),
    csum: has(VIRTIO_NET_F_CSUM), hostTso4: has(VIRTIO_NET_F_HOST_TSO4), hostTso6: has(VIRTIO_NET_F_HOST_TSO6),
    guestCsum: has(VIRTIO_NET_F_GUEST_CSUM), guestTso4: has(VIRTIO_NET_F_GUEST_TSO4), guestTso6: has(VIRTIO_NET_F_GUEST_TSO6),
  };
}

/** Places up to `max` valid frames on the transmit ring and makes them available. */
function validTxBatch(rng: Rng, port: RingPort, cm: CaseMemory, ft: NetFeatures, indirect: boolean, tag: number, max: number): { heads: number[]; frames: TxFrame[] } {
  const mem = cm.memory;
  const heads: number[] = [];
  const frames: TxFrame[] = [];
  const count = Math.min(max, MAX_BATCH_FRAMES, 256);
  for (let s = 0; s < count; s++) {
    const r = rng.int(10);
    const len = r < 6 ? rng.range(TAGGED_MIN, 128) : r < 9 ? rng.range(129, VALID_MAX) : rng.pick([TAGGED_MIN, VALID_MAX]);
    const data = taggedFrame(rng, len, tag, s);
    const hdr = validHeader(rng, ft, len);
    const gpa = TX_DATA_GPA + TX_STRIDE * s;
    mem.write(gpa, hdr);
    mem.write(gpa + hdr.length, data);
    const total = hdr.length + len;
    // Header and frame in one buffer (Linux, DPDK), split after the header (legacy drivers), or cut
    // anywhere, the header too, with an empty descriptor sometimes (allowed: it carries nothing).
    const cuts = new Set<number>();
    const shape = rng.int(4);
    if (shape === 1) cuts.add(hdr.length);
    if (shape >= 2) for (let k = rng.range(1, 3); k > 0; k--) cuts.add(rng.range(1, total - 1));
    const edges = [0, ...[...cuts].sort((a, b) => a - b), total];
    const pieces: Desc[] = [];
    for (let k = 0; k + 1 < edges.length; k++) pieces.push([gpa + (edges[k] as number), (edges[k + 1] as number) - (edges[k] as number), 0]);
    if (shape === 3) pieces.splice(rng.int(pieces.length + 1), 0, [gpa, 0, 0]);
    const useIndirect = indirect && rng.chance(0.3);
    if ((useIndirect ? 1 : pieces.length) > port.free) break;
    heads.push(useIndirect ? port.postIndirect(TX_INDIRECT_GPA + 128 * s, pieces) : port.post(pieces));
    frames.push({ hdr, data });
  }
  return { heads, frames };
}

/**
 * Waits until every frame of batch `tag` that must loop back arrived, in order and intact,
 * refilling the receive ring as a guest does. Frames of other tags (hostile leftovers) are
 * skipped. Null when all arrived; 'broken' when the receive ring was declared broken; else why not.
 */
async function expectRx(rx: RxAgent, ft: NetFeatures, tag: number, sent: readonly TxFrame[], timeoutMs: number): Promise<{ kind: string; detail: string } | 'broken' | null> {
  const want: Array<{ index: number; exp: RxExpected }> = [];
  sent.forEach((tx, index) => {
    const exp = expectedRx(tx, ft);
    if (exp !== null) want.push({ index, exp });
  });
  let next = 0;
  let foreign = 0;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    rx.reap();
    for (let f = rx.nextFrame(); f !== null; f = rx.nextFrame()) {
      const bad = rxViolation(ft, f.hdr, f.data);
      if (bad !== null) return { kind: 'rx-invalid', detail: `batch ${tag}: the receive queue got ${bad}` };
      const t = frameTag(f.data);
      if (t === null || t.tag !== tag) {
        if (t !== null && t.tag !== HOSTILE_TAG && t.tag < tag) return { kind: 'rx-stale', detail: `a frame of batch ${t.tag} (index ${t.index}) arrived during batch ${tag}` };
        foreign++;
        continue;
      }
      const w = want[next];
      if (w === undefined || w.index !== t.index) {
        return { kind: 'rx-order', detail: `batch ${tag}: frame ${t.index} arrived where frame ${w?.index ?? 'none'} was due (${next} of ${want.length} matched)` };
      }
      const hd = headerDifference(f.hdr, w.exp.hdr);
      if (hd >= 0) return { kind: 'rx-header', detail: `batch ${tag} frame ${t.index}: header byte ${hd} is ${f.hdr[hd]}, expected ${w.exp.hdr[hd]} (sent ${Array.from(sent[t.index]?.hdr ?? []).join(',')})` };
      const dd = firstDifference(f.data, w.exp.data);
      if (dd >= 0) return { kind: 'rx-data', detail: `batch ${tag} frame ${t.index}: ${f.data.length} bytes received, ${w.exp.data.length} sent, first difference at ${dd}` };
      next++;
    }
    if (rx.failure !== null) return { kind: 'rx-ring', detail: rx.failure };
    if (next === want.length) return null;
    if (rx.broken) return 'broken';
    const left = deadline - Date.now();
    if (left <= 0) return { kind: 'rx-missing', detail: `batch ${tag}: ${want.length - next} of ${want.length} frames never looped back (${foreign} other frames seen)` };
    rx.refill();
    await rx.events.next(Math.min(left, 50));
  }
}

/** Runs one net chain case on `client`. */
export async function netChainCase(rng: Rng, client: RawClient, timeoutMs: number): Promise<ChainCaseStats> {
  const stats: ChainCaseStats = { messages: 0, chains: 0, hostileChains: 0, batches: 0, broken: false, failure: null, check: 'skipped' };
  let rings = 'split';
  const fail = (kind: string, detail: string): ChainCaseStats => {
    stats.failure ??= { kind, detail: `net (${rings} rings): ${detail}` };
    return stats;
  };
  const cm = new CaseMemory(rng.chance(0.3));
  const fds = { rxKick: sys.eventfd(), rxCall: sys.eventfd(), rxErr: sys.eventfd(), txKick: sys.eventfd(), txCall: sys.eventfd(), txErr: sys.eventfd() };
  const rxEvents = new QueueEvents(fds.rxCall, fds.rxErr);
  const txEvents = new QueueEvents(fds.txCall, fds.txErr);
  try {
    const offered = await openSession(client, timeoutMs);
    if (typeof offered === 'string') return fail('setup', offered);
    stats.messages += 3;
    const packed = (offered & bit(VIRTIO_F_RING_PACKED)) !== 0n && rng.chance(PACKED_SHARE);
    const features = chooseFeatures(rng, offered) | (packed ? bit(VIRTIO_F_RING_PACKED) : 0n);
    if (packed) rings = 'packed';
    const ft = netFeatures(features);
    const eventIdx = (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    const indirect = (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n;
    // Packed sizes need not be powers of two.
    const sizes = packed ? [16, 48, 64, 100, 256] : [16, 64, 128, 256, 256];
    const rxSize = rng.pick(sizes);
    const txSize = rng.pick(sizes);
    // A receive buffer holds a whole valid frame unless buffers merge; merged ones are small enough
    // to span several, yet the buffers posted at once (3/8 of the ring at least: some take two
    // descriptors, a quarter is kept for hostile chains) hold the largest frame that may loop
    // back, so nothing waits forever for buffers the guest will never add.
    const posted = (rxSize * 3) / 8;
    const bufLen = ft.mergeable ? rng.pick([64, 128, 256, 512, 1536].filter((b) => b >= 2 * ft.hdrLen && b * posted >= 2 * (ft.hdrLen + VALID_MAX))) : rng.chance(0.2) ? ft.hdrLen + VALID_MAX : RX_STRIDE;
    const bigOk = ft.mergeable && bufLen * posted >= ft.hdrLen + MAX_FRAME_LEN;
    // vhost-user carries a packed ring's driver area in the "avail" field and its device area in "used".
    const ring = (size: number, base: number): { desc: number; avail: number; used: number } => {
      if (!packed) {
        const l = splitRingLayout(size, base);
        return { desc: l.descGpa, avail: l.availGpa, used: l.usedGpa };
      }
      const l = packedRingLayout(size, base);
      return { desc: l.descGpa, avail: l.driverGpa, used: l.deviceGpa };
    };
    const rxLayout = ring(rxSize, RX_RING_GPA);
    const txLayout = ring(txSize, TX_RING_GPA);
    const vringBase = packed ? encodePackedState({ nextAvail: 0, availWrap: true, nextUsed: 0, usedWrap: true }) : 0;
    const uva = (gpa: number): bigint => BigInt(UADDR_A + gpa);
    const steps: SetupStep[] = [
      ['SET_OWNER', FrontendReq.SET_OWNER, new Uint8Array(0), []],
      ['SET_FEATURES', FrontendReq.SET_FEATURES, u64Payload(features), []],
      ['SET_MEM_TABLE', FrontendReq.SET_MEM_TABLE, memTablePayload(cm.wire), cm.fds],
    ];
    for (const [q, size, l, kick, call, err] of [[RX_Q, rxSize, rxLayout, fds.rxKick, fds.rxCall, fds.rxErr], [TX_Q, txSize, txLayout, fds.txKick, fds.txCall, fds.txErr]] as const) {
      steps.push(...vringSetupSteps(q, size, vringBase, { desc: uva(l.desc), driver: uva(l.avail), device: uva(l.used) }, { call, err, kick }));
    }
    // The drivers zero the rings before the back-end may look at them.
    const port = (size: number, l: { desc: number; avail: number; used: number }): RingPort => packed
      ? new PackedPort(new PackedQueueDriver(cm.memory, size, l.desc, l.avail, l.used, { eventIdx }))
      : new SplitPort(new SplitQueueDriver(cm.memory, size, l.desc, l.avail, l.used, { eventIdx }));
    const rxPort = port(rxSize, rxLayout);
    const txPort = port(txSize, txLayout);
    for (const [name, request, payload, stepFds] of steps) {
      const r = await ask(client, request, payload, stepFds, timeoutMs);
      stats.messages++;
      if (!ackOk(r)) return fail('setup', `${name}: ${typeof r === 'string' ? r : 'refused'}`);
    }
    const memEnd = cm.bGpa + REGION_SIZE;
    const rxL: RxLayout = { dataGpa: RX_DATA_GPA, stride: RX_STRIDE, indirectGpa: cm.bGpa + B_RX_INDIRECT, scratchGpa: cm.bGpa + B_RX_SCRATCH, boundaryGpa: REGION_SIZE, memEnd };
    const hostileL: HostileLayout = {
      scratchGpa: cm.bGpa + B_TX_SCRATCH, indirectGpa: cm.bGpa + B_HOSTILE_INDIRECT, bigGpa: cm.bGpa + B_BIG, boundaryGpa: REGION_SIZE,
      adjacent: cm.bGpa === REGION_SIZE, memEnd, bigOk,
    };
    const rx = new RxAgent(rxPort, cm.memory, fds.rxKick, rxEvents, rxL, ft.hdrLen, ft.mergeable, bufLen, indirect, rng);
    const tx = new TxReaper(txPort);
    rx.refill();
    let tag = 1;

    /** A valid batch: every head back, then (receive ring intact) every frame looped back intact. */
    const validRound = async (what: string, max: number): Promise<'ok' | 'failed' | 'tx-broken'> => {
      const b = validTxBatch(rng, txPort, cm, ft, indirect, tag, max);
      tx.expect(b.heads);
      const res = await runBatch(tx, txEvents, fds.txKick, b.heads.length, timeoutMs);
      stats.batches++;
      stats.chains += b.heads.length;
      if (tx.failure !== null) { fail('bad-used', `${what}: ${tx.failure}`); return 'failed'; }
      if (res === 'broken') { fail('broken-on-valid', `${what}: ${b.heads.length} frames, transmit ring declared broken`); return 'tx-broken'; }
      if (res === 'timeout') { fail('stall', `${what}: ${b.heads.length} frames, heads not returned`); return 'failed'; }
      if (!rx.broken) {
        const r = await expectRx(rx, ft, tag, b.frames, timeoutMs);
        if (r !== null && r !== 'broken') { fail(r.kind, `${what}: ${r.detail}`); return 'failed'; }
      }
      tag++;
      return 'ok';
    };

    const batches = rng.range(1, 8);
    for (let b = 0; b < batches; b++) {
      if (await validRound(`valid batch ${b}`, txSize) !== 'ok') return stats;
    }

    if (rng.chance(0.85)) {
      const r = rng.int(20);
      const hostileRx = r >= 12;
      const hostileTx = r < 12 || r >= 17;
      let rxJump = false;
      let rxKinds = '';
      if (hostileRx) {
        const h = rx.postHostile(rng.range(1, 16));
        stats.hostileChains += h.kinds.length;
        rxJump = h.jump;
        rxKinds = h.kinds.join(',');
        rx.refill();
      }
      let jump = false;
      let res: 'ok' | 'broken' | 'timeout' = 'ok';
      let txKinds = '';
      if (hostileTx) {
        const h = hostileTxBatch(rng, txPort, cm.memory, ft, hostileL);
        txKinds = h.kinds.join(',');
        jump = h.jump;
        stats.hostileChains += h.published;
        stats.chains += h.published;
        stats.batches++;
        tx.expect(h.heads.filter((x) => x < txSize));
        // A jumped avail index leaves only a broken ring (error fd) acceptable: wait for it alone.
        res = await runBatch(tx, txEvents, fds.txKick, jump ? Number.POSITIVE_INFINITY : h.published, timeoutMs);
        stats.broken = res === 'broken';
        if (tx.failure !== null) fail('bad-used', `hostile batch (${h.kinds.join(',')}): ${tx.failure}`);
        if (res === 'timeout') fail(jump ? 'silent-stall' : 'stall', `hostile batch (${h.published} heads, kinds ${h.kinds.join(',')}${jump ? ', avail idx jump' : ''}): neither completed nor error fd`);
        if (res !== 'ok') tx.clear();
      }
      // A guest kicks again whatever the device did with the rings: a broken ring is neither spun on nor served.
      for (let k = rng.range(1, 3); k > 0; k--) sys.eventfdWrite(rng.chance(0.5) ? fds.txKick : fds.rxKick, 1);
      const r2 = await ask(client, FrontendReq.GET_FEATURES, new Uint8Array(0), [], timeoutMs);
      stats.messages++;
      stats.check = r2 === 'closed' || r2 === 'timeout' ? r2 : 'ok';
      // A transmit ring that survived serves one more valid batch, whose frames need the receive
      // buffers (hostile ones included): they must loop back unless the receive ring broke.
      if (res === 'ok' && !jump && stats.check === 'ok' && stats.failure === null) {
        // A jumped receive avail index may go unnoticed for a while: the device serves the entries
        // it already saw before it reads the index again. It breaks the ring then, or the frames
        // arrive: both are fine, a frame that does neither is not.
        await validRound(`valid batch after the hostile one${hostileTx ? ` (hostile transmit chains ${txKinds})` : ''}${hostileRx ? ` (hostile receive buffers ${rxKinds}${rxJump ? ', avail idx jump' : ''})` : ''}`, Math.min(txSize, 32));
      }
      if (rx.broken) stats.broken = true;
    }
    return stats;
  } finally {
    rxEvents.close();
    txEvents.close();
    for (const fd of Object.values(fds)) sys.close(fd);
    cm.close();
  }
}
