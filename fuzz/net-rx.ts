/**
 * The guest's receive side in the net chain cases: keeps the receive ring stocked with
 * device-writable buffers (one descriptor, header and data split, or indirect), reaps what the
 * device completed, reassembles frames (mergeable buffers per num_buffers), and posts hostile
 * receive chains on demand (device-readable parts, too small for the header, loops, out-of-range
 * indices and heads, buffers outside memory or across the region hole, avail index jumps; on a
 * packed ring only those a driver can place: readable parts, too small, outside memory, empty
 * descriptors).
 * @module
 */
import * as sys from '../src/sys/index.js';
import type { GuestMemory } from '../src/memory/guest-memory.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../src/queue/index.js';
import type { QueueEvents } from './chains.js';
import { SplitPort, type Desc, type RingPort } from './net-rings.js';
import type { Rng } from './rng.js';

/** One received frame: header (hdrLen bytes) and data. */
export interface RxFrame {
  hdr: Uint8Array;
  data: Uint8Array;
  buffers: number;
}

/** Guest placement of the receive buffers. */
export interface RxLayout {
  /** First buffer slot and the distance between slots (a slot holds the largest buffer). */
  dataGpa: number;
  stride: number;
  /** Indirect tables, 64 bytes per slot. */
  indirectGpa: number;
  /** Free scratch for hostile chains (tables and buffers), at least 64 KiB. */
  scratchGpa: number;
  /** The hole between the regions (or, when adjacent, the boundary) and the end of memory. */
  boundaryGpa: number;
  memEnd: number;
}

interface Posted {
  /** Device-writable ranges in chain order (what a used length counts through). */
  bufs: Array<[number, number]>;
  hostile: boolean;
  /** The buffer slot of a valid buffer (free again once its frame was read). */
  slot: number | null;
}

interface Used {
  head: number;
  len: number;
  posted: Posted;
}

/** The driver side of one receive ring. */
export class RxAgent {
  /** A failure the agent saw (bad used id, impossible used length, bad num_buffers...). */
  failure: string | null = null;
  /** Chains completed with length 0 (rejected) and hostile chains the device filled. */
  rejected = 0;
  hostileFilled = 0;
  private readonly freeSlots: number[] = [];
  private readonly posted = new Map<number, Posted>();
  private readonly used: Used[] = [];

  /**
   * @param bufLen device-writable bytes of each valid buffer
   * @param indirect whether INDIRECT_DESC was negotiated
   */
  constructor(
    private readonly ring: RingPort, private readonly mem: GuestMemory, private readonly kickFd: number, readonly events: QueueEvents,
    private readonly layout: RxLayout, private readonly hdrLen: number, private readonly mergeable: boolean, readonly bufLen: number,
    private readonly indirect: boolean, private readonly rng: Rng,
  ) {
    for (let i = Math.min(ring.size, 256) - 1; i >= 0; i--) this.freeSlots.push(i);
  }

  /** The ring was declared broken (its error fd fired). */
  get broken(): boolean {
    return this.events.errFired;
  }

  /** Posts valid buffers while descriptors (all but a quarter, kept for hostile chains) and slots last, then kicks. */
  refill(): void {
    let any = false;
    const reserve = Math.max(2, Math.floor(this.ring.size / 4));
    while (this.freeSlots.length > 0 && this.ring.free >= reserve + 2) {
      const slot = this.freeSlots.pop() as number;
      const gpa = this.layout.dataGpa + slot * this.layout.stride;
      const split = this.bufLen > this.hdrLen && this.rng.chance(0.2);
      const pieces: Array<[number, number]> = split ? [[gpa, this.hdrLen], [gpa + this.hdrLen, this.bufLen - this.hdrLen]] : [[gpa, this.bufLen]];
      const descs: Desc[] = pieces.map(([g, l]) => [g, l, VIRTQ_DESC_F_WRITE]);
      const id = this.indirect && this.rng.chance(0.2) ? this.ring.postIndirect(this.layout.indirectGpa + 64 * slot, descs) : this.ring.post(descs);
      this.posted.set(id, { bufs: pieces, hostile: false, slot });
      any = true;
    }
    if (any) sys.eventfdWrite(this.kickFd, 1);
  }

  /**
   * Posts `n` hostile receive chains (some acceptable), then kicks. Returns whether the avail
   * index jumped (the device must then break the ring before it fills anything past it).
   */
  postHostile(n: number): { kinds: string[]; jump: boolean } {
    const rng = this.rng;
    const kinds: string[] = [];
    const L = this.layout;
    const scratch = (k: number): number => L.scratchGpa + 0x1000 * (k % 16);
    let acrossUsed = false;
    // Ring-level lies (loops, indices, heads, tables, avail index) need a split ring's raw table.
    const raw = this.ring instanceof SplitPort ? this.ring : null;
    for (let c = 0; c < n && this.ring.free >= 4; c++) {
      const buf = scratch(c);
      let kind = rng.int(9);
      if (raw === null && [2, 3, 5, 6].includes(kind)) kind = rng.pick([0, 1, 4, 7, 8]);
      switch (kind) {
        case 0: // device-readable only, or readable before writable
          kinds.push('readable');
          this.publishChain(rng.chance(0.5) ? [[buf, 256, 0]] : [[buf, 64, VIRTQ_DESC_F_NEXT], [buf + 64, 1536, VIRTQ_DESC_F_WRITE]], [], true);
          break;
        case 1: // smaller than the header
          kinds.push('tiny');
          this.publishChain([[buf, rng.int(this.hdrLen), VIRTQ_DESC_F_WRITE]], [], true);
          break;
        case 2: { // a loop through the chain's own descriptors
          kinds.push('loop');
          const r = raw as SplitPort;
          const ds = r.take(2);
          r.d.writeDesc(ds[0] as number, buf, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, ds[1] as number);
          r.d.writeDesc(ds[1] as number, buf + 512, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, ds[rng.int(2)] as number);
          this.posted.set(r.publishRaw(ds), { bufs: [], hostile: true, slot: null });
          break;
        }
        case 3: { // next out of range
          kinds.push('next-range');
          const r = raw as SplitPort;
          const ds = r.take(1);
          r.d.writeDesc(ds[0] as number, buf, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, r.size + rng.int(0x10000 - r.size));
          this.posted.set(r.publishRaw(ds), { bufs: [], hostile: true, slot: null });
          break;
        }
        case 4: { // outside memory, in the hole, or across the boundary (valid when the regions touch)
          kinds.push('outside');
          // One buffer at most across the boundary: two there would overlap, and a frame in the
          // second would overwrite the first before the guest reads it.
          const g: number = rng.pick([L.memEnd - 8, L.memEnd + 4096, 2 ** 40, acrossUsed ? L.memEnd : L.boundaryGpa - 256]);
          acrossUsed ||= g === L.boundaryGpa - 256;
          // Without mergeable buffers a frame larger than the buffer is dropped (the driver must post
          // buffers for the largest frame), so an acceptable hostile buffer is never small then.
          const l = rng.pick(this.mergeable ? [512, 1536, 0xffffffff] : [1536, 0xffffffff]);
          this.publishChain([[g, l, VIRTQ_DESC_F_WRITE]], [[g, l]], true);
          break;
        }
        case 5: // a malformed indirect table
          kinds.push('indirect');
          (raw as SplitPort).d.writeIndirectDesc(buf, 0, buf + 256, 1536, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, rng.pick([0, 1, 300]));
          this.publishChain([[buf, rng.pick([0, 15, 17, 32, 0xfff0, 0xffffffff]), VIRTQ_DESC_F_INDIRECT]], [], true);
          break;
        case 6: // head out of range: the ring cannot be trusted past it
          kinds.push('head-range');
          (raw as SplitPort).d.publish((raw as SplitPort).size + rng.int(0x10000 - (raw as SplitPort).size));
          break;
        case 7: // zero-length descriptors around a good buffer: acceptable
          kinds.push('zero-len');
          this.publishChain([[buf, 0, VIRTQ_DESC_F_WRITE], [buf, 1536, VIRTQ_DESC_F_WRITE], [buf, 0, VIRTQ_DESC_F_WRITE]], [[buf, 0], [buf, 1536], [buf, 0]], true);
          break;
        default: // a valid buffer in scratch memory among the hostile ones
          kinds.push('valid');
          this.publishChain([[buf, 1536, VIRTQ_DESC_F_WRITE]], [[buf, 1536]], true);
      }
    }
    let jump = false;
    if (raw !== null && rng.chance(0.1)) {
      jump = true;
      raw.d.setAvailIdx(raw.d.availIdx + raw.size + rng.range(1, 0x1000));
    }
    sys.eventfdWrite(this.kickFd, 1);
    return { kinds, jump };
  }

  /** Reaps completed chains (descriptors and slots are free again) and asks for the next interrupt. */
  reap(): void {
    for (let pass = 0; pass < 2; pass++) {
      for (;;) {
        let u;
        try {
          u = this.ring.popUsed();
        } catch (e) {
          this.failure ??= `receive ring: ${(e as Error).message}`;
          return;
        }
        if (u === null) break;
        const p = this.posted.get(u.id);
        if (p === undefined) {
          this.failure ??= `receive used id ${u.id} was not outstanding`;
          continue;
        }
        this.posted.delete(u.id);
        const cap = p.bufs.reduce((a, [, l]) => a + l, 0);
        if (u.len > cap) this.failure ??= `receive used length ${u.len} exceeds the ${cap} writable bytes of head ${u.id}`;
        if (u.len === 0) {
          if (!p.hostile) this.failure ??= `a valid receive buffer (head ${u.id}) came back empty`;
          this.rejected++;
          this.releaseSlot(p);
          continue;
        }
        if (p.hostile) this.hostileFilled++;
        this.used.push({ head: u.id, len: u.len, posted: p });
      }
      if (pass === 0) this.ring.enableInterrupts();
    }
  }

  /** The next complete frame, or null when its buffers have not all come back. */
  nextFrame(): RxFrame | null {
    const first = this.used[0];
    if (first === undefined) return null;
    const head = this.bytesOf(first);
    if (head.length < this.hdrLen) {
      this.failure ??= `receive buffer (head ${first.head}) holds ${head.length} bytes, less than the ${this.hdrLen}-byte header`;
      this.dropUsed(1);
      return null;
    }
    const nb = this.hdrLen === 12 ? head[10]! | (head[11]! << 8) : 1;
    const k = this.mergeable ? nb : 1;
    if (this.mergeable && nb === 0) {
      this.failure ??= `num_buffers 0 in receive buffer (head ${first.head})`;
      this.dropUsed(1);
      return null;
    }
    if (!this.mergeable && this.hdrLen === 12 && nb !== 1) this.failure ??= `num_buffers ${nb} without MRG_RXBUF`;
    if (this.used.length < k) return null;
    const parts = [head.subarray(this.hdrLen)];
    for (let j = 1; j < k; j++) parts.push(this.bytesOf(this.used[j] as Used));
    const total = parts.reduce((a, p) => a + p.length, 0);
    const data = new Uint8Array(total);
    let at = 0;
    for (const p of parts) { data.set(p, at); at += p.length; }
    this.dropUsed(k);
    return { hdr: head.slice(0, this.hdrLen), data, buffers: k };
  }

  private dropUsed(k: number): void {
    for (const u of this.used.splice(0, k)) this.releaseSlot(u.posted);
  }

  private releaseSlot(p: Posted): void {
    if (p.slot !== null) this.freeSlots.push(p.slot);
  }

  /** The first `len` bytes the device wrote through the chain's writable ranges. */
  private bytesOf(u: Used): Uint8Array {
    const out = new Uint8Array(u.len);
    let at = 0;
    for (const [gpa, l] of u.posted.bufs) {
      if (at >= u.len) break;
      const n = Math.min(l, u.len - at);
      if (n === 0) continue;
      try {
        this.mem.read(gpa, out.subarray(at, at + n));
      } catch {
        // Only a device that wrote outside guest memory gets a used length over such a buffer.
        this.failure ??= `the device filled ${u.len} bytes of head ${u.head}, whose buffer 0x${gpa.toString(16)}+${l} is outside guest memory`;
        break;
      }
      at += n;
    }
    return out;
  }

  /** Places a hostile direct chain of `descs` whose writable ranges are `bufs`. */
  private publishChain(descs: Desc[], bufs: Array<[number, number]>, hostile: boolean): void {
    this.posted.set(this.ring.post(descs), { bufs, hostile, slot: null });
  }
}
