/**
 * Packed-ring chain cases (VIRTIO 1.2 §2.8): the same blk session as the split cases but with
 * VIRTIO_F_RING_PACKED negotiated, valid batches checked request by request, then a hostile batch
 * written straight into the descriptor ring: heads marked for the wrong wrap counter (must stay
 * unseen until fixed), ids at or beyond the queue size, chains whose NEXT runs off the available
 * descriptors or around the whole ring, indirect descriptors with NEXT, malformed and nested
 * indirect tables, buffers outside memory or across the region hole, zero lengths, random words.
 * Every chain the device takes must come back once, at the used position the ring rules give,
 * unless the daemon declares the ring broken through its error fd.
 * @module
 */
import * as sys from '../src/sys/index.js';
import {
  PackedQueueDriver, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE,
  encodePackedState, packedRingLayout, type GuestBuffer,
} from '../src/queue/index.js';
import { FrontendReq } from '../src/vhost-user/constants.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT } from '../src/vhost-user/negotiate.js';
import { VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../src/virtio/features.js';
import {
  CaseMemory, DATA_GPA, DATA_STRIDE, DISK_SECTORS, HDR_GPA, INDIRECT_GPA, MiB, QueueEvents, REGION_SIZE, RING_GPA, STATUS_GPA,
  UADDR_A, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  ackOk, ask, bit, openSession, runBatch, type ChainCaseStats, type Placed, type UsedReaper,
} from './chains.js';
import type { RawClient } from './client.js';
import type { Rng } from './rng.js';
import { memTablePayload, u64Payload, vringSetupSteps, type SetupStep } from './wire.js';

/**
 * Reaps used descriptors of chains written raw (not through {@link PackedQueueDriver}): each id
 * maps to the number of ring descriptors its chain took, which is how far the device's used
 * position moves for it.
 */
class RawPackedReaper implements UsedReaper {
  /** Ids the device returned that were never published (or twice). */
  readonly strangers: number[] = [];
  returned = 0;
  private readonly pending = new Map<number, number>();

  constructor(private readonly d: PackedQueueDriver, private readonly mem: CaseMemory, private pos: number, private wrap: boolean) {}

  expect(id: number, ringDescs: number): void {
    this.pending.set(id, ringDescs);
  }

  get position(): { pos: number; wrap: boolean } {
    return { pos: this.pos, wrap: this.wrap };
  }

  popUsed(): number | null {
    const at = this.d.descGpa + 16 * this.pos;
    const flags = this.mem.memory.readU16(at + 14);
    const used = ((flags & VIRTQ_DESC_F_AVAIL) !== 0) === this.wrap && ((flags & VIRTQ_DESC_F_USED) !== 0) === this.wrap;
    if (!used) return null;
    const id = this.mem.memory.readU16(at + 12);
    const n = this.pending.get(id);
    this.returned++;
    if (n === undefined) {
      // Nothing sane to skip by: stop here (the case fails on the stranger).
      this.strangers.push(id);
      return null;
    }
    this.pending.delete(id);
    this.pos += n;
    if (this.pos >= this.d.size) {
      this.pos -= this.d.size;
      this.wrap = !this.wrap;
    }
    return id;
  }

  enableInterrupts(): void {
    this.d.enableInterrupts();
  }
}

/** Runs one packed-ring chain case on `client`. */
export async function packedChainCase(rng: Rng, client: RawClient, timeoutMs: number): Promise<ChainCaseStats> {
  const stats: ChainCaseStats = { messages: 0, chains: 0, hostileChains: 0, batches: 0, broken: false, failure: null, check: 'skipped' };
  const fail = (kind: string, detail: string): ChainCaseStats => {
    stats.failure ??= { kind, detail: `packed: ${detail}` };
    return stats;
  };
  const mem = new CaseMemory(rng.chance(0.3));
  const kickFd = sys.eventfd();
  const callFd = sys.eventfd();
  const errFd = sys.eventfd();
  const events = new QueueEvents(callFd, errFd);
  try {
    const offered = await openSession(client, timeoutMs);
    if (typeof offered === 'string') return fail('setup', offered);
    stats.messages += 3;
    if ((offered & bit(VIRTIO_F_RING_PACKED)) === 0n) return fail('setup', 'the daemon does not offer VIRTIO_F_RING_PACKED');
    let features = (offered & ~FEATURES_NEEDING_FRONTEND_SUPPORT) | bit(VIRTIO_F_RING_PACKED);
    if (rng.chance(0.3)) features &= ~bit(VIRTIO_RING_F_EVENT_IDX);
    if (rng.chance(0.2)) features &= ~bit(VIRTIO_RING_F_INDIRECT_DESC);
    const eventIdx = (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    const indirect = (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n;
    // Packed sizes need not be powers of two.
    const qsize = rng.pick([16, 48, 64, 100, 256, 256]);
    const q = rng.chance(0.8) ? 0 : 1;
    const layout = packedRingLayout(qsize, RING_GPA);
    // Start mid-ring on either wrap counter sometimes, as after a migration.
    const start = rng.chance(0.3) ? { pos: rng.int(qsize), wrap: rng.chance(0.5) } : { pos: 0, wrap: true };
    const base = encodePackedState({ nextAvail: start.pos, availWrap: start.wrap, nextUsed: start.pos, usedWrap: start.wrap });
    const uva = (gpa: number): bigint => BigInt(UADDR_A + gpa);
    const steps: SetupStep[] = [
      ['SET_OWNER', FrontendReq.SET_OWNER, new Uint8Array(0), []],
      ['SET_FEATURES', FrontendReq.SET_FEATURES, u64Payload(features), []],
      ['SET_MEM_TABLE', FrontendReq.SET_MEM_TABLE, memTablePayload(mem.wire), mem.fds],
      ...vringSetupSteps(q, qsize, base, { desc: uva(layout.descGpa), driver: uva(layout.driverGpa), device: uva(layout.deviceGpa) }, { call: callFd, err: errFd, kick: kickFd }),
    ];
    const driver = new PackedQueueDriver(mem.memory, qsize, layout.descGpa, layout.driverGpa, layout.deviceGpa, { eventIdx });
    driver.setPositions(start.pos, start.wrap);
    // The ring as a previous lap left it: positions before `pos` used in lap `wrap`, the rest in
    // the lap before (a zeroed descriptor would read as used for wrap counter 0).
    for (let i = 0; i < qsize; i++) {
      const lap = i < start.pos ? start.wrap : !start.wrap;
      driver.writeDesc(i, 0, 0, 0, lap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0);
    }
    for (const [name, request, payload, fds] of steps) {
      const r = await ask(client, request, payload, fds, timeoutMs);
      stats.messages++;
      if (!ackOk(r)) return fail('setup', `${name}: ${typeof r === 'string' ? r : 'refused'}`);
    }

    const batches = rng.range(1, 10);
    for (let b = 0; b < batches; b++) {
      const placed = validBatch(rng, driver, mem, indirect);
      const res = await runBatch(driver, events, kickFd, placed.length, timeoutMs);
      stats.batches++;
      stats.chains += placed.length;
      if (res !== 'ok') return fail(res === 'broken' ? 'broken-on-valid' : 'stall', `valid batch ${b}: ${placed.length} chains, ${res}`);
      for (const p of placed) {
        const status = mem.memory.readU8(STATUS_GPA + p.slot);
        if (status !== VIRTIO_BLK_S_OK) return fail('wrong-status', `valid batch ${b}: slot ${p.slot} status ${status}`);
      }
    }

    if (rng.chance(0.85)) {
      const reaper = new RawPackedReaper(driver, mem, driver.nextUsedPos, driver.usedWrapCounter);
      const h = hostileBatch(rng, driver, mem, reaper);
      stats.hostileChains += h.published;
      stats.chains += h.published;
      stats.batches++;
      if (h.hidden !== null) {
        // A head marked for the other wrap counter is not available: the device must leave it
        // (and everything behind it) alone. Nothing can come back, so give it a moment to misbehave.
        const early = await runBatch(reaper, events, kickFd, 1, Math.min(timeoutMs, 150));
        if (early !== 'timeout' || reaper.returned > 0) return fail('took-unavailable', `a head flagged for the wrong wrap counter was consumed (${early}, ${reaper.returned} used)`);
        h.hidden();
      }
      const res = await runBatch(reaper, events, kickFd, h.published, timeoutMs);
      if (reaper.strangers.length > 0) return fail('bad-used-id', `the device returned id(s) ${reaper.strangers.join(',')} that were not outstanding`);
      stats.broken = res === 'broken';
      const kicks = rng.range(1, 3);
      for (let k = 0; k < kicks; k++) sys.eventfdWrite(kickFd, 1);
      if (res === 'timeout') fail('stall', `hostile batch (${h.published} chains, kinds ${h.kinds.join(',')}): neither completed nor error fd`);
      const r = await ask(client, FrontendReq.GET_FEATURES, new Uint8Array(0), [], timeoutMs);
      stats.messages++;
      stats.check = r === 'closed' || r === 'timeout' ? r : 'ok';
      if (!stats.broken && stats.check === 'ok' && stats.failure === null) {
        // Every hostile chain came back: the driver resumes where the raw writes left the ring.
        const at = reaper.position;
        driver.setPositions(h.nextAvail.pos, h.nextAvail.wrap, at.pos, at.wrap);
        const placed = validBatch(rng, driver, mem, indirect, 16);
        const res2 = await runBatch(driver, events, kickFd, placed.length, timeoutMs);
        stats.chains += placed.length;
        stats.batches++;
        if (res2 === 'timeout') fail('stall-after-hostile', `valid batch after a survived hostile batch: ${placed.length} chains not returned`);
      }
    }
    return stats;
  } finally {
    events.close();
    sys.close(kickFd);
    sys.close(callFd);
    sys.close(errFd);
    mem.close();
  }
}

/** Places valid blk requests (3-descriptor chains or indirect ones) through the driver. */
function validBatch(rng: Rng, d: PackedQueueDriver, mem: CaseMemory, indirect: boolean, max = 200): Placed[] {
  const placed: Placed[] = [];
  const useIndirect = indirect && rng.chance(0.5);
  const count = Math.min(max, useIndirect ? d.freeCount : Math.floor(d.freeCount / 3));
  for (let s = 0; s < count; s++) {
    const type = rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID]);
    const len = type === VIRTIO_BLK_T_GET_ID ? 20 : 512 * rng.range(1, 4);
    const hdr = HDR_GPA + 16 * s;
    mem.memory.writeU32(hdr, type);
    mem.memory.writeU32(hdr + 4, 0);
    mem.memory.writeU64(hdr + 8, BigInt(rng.int(DISK_SECTORS - 4)));
    mem.memory.writeU8(STATUS_GPA + s, 0xff);
    const readable: GuestBuffer[] = [{ gpa: hdr, len: 16 }];
    const writable: GuestBuffer[] = [];
    const data = { gpa: DATA_GPA + DATA_STRIDE * s, len };
    if (type === VIRTIO_BLK_T_OUT) readable.push(data);
    else if (type !== VIRTIO_BLK_T_FLUSH) writable.push(data);
    writable.push({ gpa: STATUS_GPA + s, len: 1 });
    let head: number;
    if (useIndirect) head = d.addIndirectChain(INDIRECT_GPA + 64 * s, readable, writable);
    else head = d.addChain(readable, writable);
    placed.push({ head, slot: s });
  }
  return placed;
}

/** One raw ring descriptor of a hostile chain (AVAIL/USED are set when it is written). */
interface RawDesc {
  gpa: number;
  len: number;
  flags: number;
  /** Written for the other wrap counter: not available. */
  wrongWrap?: boolean;
}

interface HostileBatch {
  published: number;
  kinds: string[];
  /** Where the driver's next descriptor goes after the batch. */
  nextAvail: { pos: number; wrap: boolean };
  /** Set when the first head was written with the wrong wrap flags: call to make it available. */
  hidden: (() => void) | null;
}

/**
 * Writes up to 8 hostile chains at the driver's next positions, raw, and registers each id with
 * `reaper`. Chains the device cannot trust (no end, an unavailable later descriptor, an id out of
 * range) may break the ring; chains with sound extent but bad contents must come back (length 0).
 */
function hostileBatch(rng: Rng, d: PackedQueueDriver, mem: CaseMemory, reaper: RawPackedReaper): HostileBatch {
  const size = d.size;
  let pos = d.nextAvailPos;
  let wrap = d.availWrapCounter;
  const avail = (w: boolean): number => PackedQueueDriver.availFlags(w);
  const MEM_END = mem.bGpa + REGION_SIZE;
  const kinds: string[] = [];
  // Ids 0..size-1 are all free (every valid chain came back); hostile chains use distinct ids.
  const ids = Array.from({ length: size }, (_, i) => i);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [ids[i], ids[j]] = [ids[j] as number, ids[i] as number];
  }
  const n = rng.range(1, Math.min(8, Math.max(1, Math.floor(size / 4))));
  let published = 0;
  let ringUsed = 0;
  let hidden: (() => void) | null = null;
  for (let c = 0; c < n && ringUsed < size; c++) {
    const slot = 200 + (c % 50);
    const hdr = HDR_GPA + 16 * slot;
    mem.memory.writeU32(hdr, rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, rng.u32()]));
    mem.memory.writeU64(hdr + 8, rng.chance(0.5) ? BigInt(rng.int(DISK_SECTORS)) : rng.interesting64());
    let id = ids[published] as number;
    let descs: RawDesc[];
    let kind: string;
    switch (rng.int(11)) {
      case 0: // id at or beyond the queue size
        kind = 'id-range';
        id = size + rng.int(0x10000 - size);
        descs = [{ gpa: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT }, { gpa: STATUS_GPA + slot, len: 1, flags: VIRTQ_DESC_F_WRITE }];
        break;
      case 1: // NEXT on every descriptor through the rest of the ring (no end within size)
        kind = 'endless';
        descs = Array.from({ length: size - ringUsed }, () => ({ gpa: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT }));
        break;
      case 2: // overflowing lengths and addresses
        kind = 'overflow';
        descs = [{
          gpa: rng.pick([hdr, 2 ** 53 - 8, MEM_END - 8, mem.bGpa - 8]),
          len: rng.pick([0xffffffff, 0x80000000, 0x7fffffff, REGION_SIZE + 1]),
          flags: rng.chance(0.5) ? VIRTQ_DESC_F_WRITE : 0,
        }];
        break;
      case 3: // a buffer outside guest memory or in the hole between the regions
        kind = 'outside';
        descs = [{ gpa: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT }, { gpa: rng.pick([2 * MiB + 4096, 16 * MiB, 2 ** 40]), len: 512, flags: VIRTQ_DESC_F_WRITE }];
        break;
      case 4: { // indirect with NEXT (forbidden), or nested indirect
        kind = 'indirect-rules';
        const t1 = INDIRECT_GPA + 64 * slot;
        const t2 = INDIRECT_GPA + 64 * ((slot + 1) % 256);
        d.writeIndirectDesc(t1, 0, hdr, 16, 0);
        d.writeIndirectDesc(t1, 1, t2, 32, VIRTQ_DESC_F_INDIRECT);
        d.writeIndirectDesc(t2, 0, STATUS_GPA + slot, 1, VIRTQ_DESC_F_WRITE);
        descs = rng.chance(0.5)
          ? [{ gpa: t1, len: 32, flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT }, { gpa: STATUS_GPA + slot, len: 1, flags: VIRTQ_DESC_F_WRITE }]
          : [{ gpa: t1, len: 32, flags: VIRTQ_DESC_F_INDIRECT }];
        break;
      }
      case 5: { // malformed indirect tables: odd, empty, huge, outside memory
        kind = 'indirect-table';
        const t = INDIRECT_GPA + 64 * slot;
        d.writeIndirectDesc(t, 0, hdr, 16, 0);
        d.writeIndirectDesc(t, 1, STATUS_GPA + slot, 1, VIRTQ_DESC_F_WRITE);
        descs = [{ gpa: rng.chance(0.8) ? t : rng.pick([MEM_END, 2 ** 45]), len: rng.pick([0, 15, 17, 48, 0xfff0, 0x100000, 0xffffffff]), flags: VIRTQ_DESC_F_INDIRECT }];
        break;
      }
      case 6: // a data buffer across the A/B boundary (valid when adjacent, a hole otherwise)
        kind = 'boundary';
        descs = [
          { gpa: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT },
          { gpa: REGION_SIZE - 256, len: 512, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT },
          { gpa: STATUS_GPA + slot, len: 1, flags: VIRTQ_DESC_F_WRITE },
        ];
        break;
      case 7: // zero-length or device-writable header
        kind = 'zero-len';
        descs = [{ gpa: hdr, len: 0, flags: rng.chance(0.5) ? VIRTQ_DESC_F_WRITE : 0 }];
        break;
      case 8: // a random descriptor (its AVAIL/USED bits are set below so that it is seen)
        kind = 'random';
        descs = [{ gpa: rng.chance(0.5) ? rng.int(2 * MiB) : rng.float() * 2 ** 53, len: rng.u32(), flags: rng.u32() & 0xffff & ~VIRTQ_DESC_F_NEXT }];
        break;
      case 9: // a later descriptor of the chain marked for the other wrap counter
        kind = 'tail-unavailable';
        descs = [{ gpa: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT }, { gpa: STATUS_GPA + slot, len: 1, flags: VIRTQ_DESC_F_WRITE, wrongWrap: true }];
        break;
      default: // a valid request among the hostile ones
        kind = 'valid';
        mem.memory.writeU32(hdr, VIRTIO_BLK_T_IN);
        mem.memory.writeU64(hdr + 8, 0n);
        descs = [{ gpa: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT }, { gpa: STATUS_GPA + slot, len: 1, flags: VIRTQ_DESC_F_WRITE }];
    }
    if (descs.length > size - ringUsed) break;
    kinds.push(kind);
    const first = pos;
    const firstWrap = wrap;
    let headFlags = 0;
    descs.forEach((x, k) => {
      const f = (x.flags & ~(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) | avail(x.wrongWrap === true ? !wrap : wrap);
      if (k === 0) headFlags = f;
      else d.writeDesc(pos, x.gpa, x.len, id, f);
      if (++pos === size) { pos = 0; wrap = !wrap; }
    });
    ringUsed += descs.length;
    const head = descs[0] as RawDesc;
    // The head's flags are written last (release), as a driver does.
    const makeAvailable = (): void => d.writeDesc(first, head.gpa, head.len, id, headFlags);
    if (c === 0 && rng.chance(0.15)) {
      d.writeDesc(first, head.gpa, head.len, id, (headFlags & ~(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) | avail(!firstWrap));
      hidden = makeAvailable;
    } else {
      makeAvailable();
    }
    reaper.expect(id, descs.length);
    published++;
  }
  return { published, kinds, nextAvail: { pos, wrap }, hidden };

}
