/**
 * A virtio-blk load generator over vhost-user, the engine of `vhost-user-bench`: it plays the
 * guest driver for any vhost-user-blk back-end (ours, qemu-storage-daemon, SPDK...), keeps a fixed
 * number of requests in flight per queue, and measures IOPS, bandwidth, latency percentiles and,
 * given the back-end's pid, its CPU time per request. With `verify`, every block it writes carries
 * a stamp (block number, generation) that later reads of that block must return.
 *
 * Request slots (header, data and status buffers in guest memory, the views on them and the
 * buffer lists handed to the driver) are set up once, so the generator itself builds nothing per
 * request; completions are reaped in batches per interrupt, and each batch is resubmitted with a
 * single kick.
 * @module
 */
import { readFileSync } from 'node:fs';
import type { Frontend } from '../vhost-user/frontend.js';
import { FEATURES_NEEDING_FRONTEND_SUPPORT, negotiate } from '../vhost-user/negotiate.js';
import { ProtocolFeature, hasProtocolFeature, protocolFeatureMask } from '../vhost-user/constants.js';
import { DEFAULT_PROTOCOL_FEATURES } from '../vhost-user/negotiate.js';
import { VIRTIO_RING_F_EVENT_IDX, featureMask, hasFeature } from '../virtio/features.js';
import { splitRingLayout, type GuestBuffer } from '../queue/driver.js';
import { FrontendMemory, setupQueue, type FrontendQueue } from './frontend-driver.js';
import { LatencyHistogram } from './histogram.js';

/** I/O patterns, as fio names them. */
export type BlkRw = 'read' | 'write' | 'randread' | 'randwrite' | 'randrw';

/** Options of {@link runBlkLoad}. */
export interface BlkLoadOptions {
  /** A connected front-end on which nothing was negotiated yet. */
  frontend: Frontend;
  /** I/O pattern. */
  rw: BlkRw;
  /** Bytes per request (a multiple of 512). */
  bs: number;
  /** Requests in flight per queue. */
  iodepth: number;
  /** Request queues to drive (each gets `iodepth` requests in flight). */
  numQueues: number;
  /** Measured run time in ms. */
  runtimeMs: number;
  /** Stamp written blocks and check every read of them; read back everything written at the end. */
  verify?: boolean;
  /** Negotiate VIRTIO_RING_F_EVENT_IDX when offered (default true). */
  eventIdx?: boolean;
  /** Percentage of reads in `randrw` (default 50). */
  rwmixread?: number;
  /** Bytes of the disk to use from offset 0 (default: the whole capacity from GET_CONFIG). */
  sizeBytes?: number;
  /** Seed of the offset generator (default 1). */
  seed?: number;
  /** The back-end's pid: its CPU time per request is measured from /proc/PID/stat. */
  backendPid?: number;
  /** Called about every `progressIntervalMs` with the figures so far. */
  onProgress?: (p: BlkLoadProgress) => void;
  /** Period of `onProgress` calls in ms (default 1000). */
  progressIntervalMs?: number;
}

/** Figures reported while running. */
export interface BlkLoadProgress {
  /** Milliseconds since the measured run started. */
  elapsedMs: number;
  /** Requests completed so far (all queues). */
  requests: number;
  /** Requests completed with a status other than VIRTIO_BLK_S_OK so far. */
  errors: number;
  /** Average completions per second since the start (not an instantaneous rate). */
  iops: number;
}

/** What a run measured. */
export interface BlkLoadResult {
  /** I/O pattern that ran. */
  rw: BlkRw;
  /** Bytes per request. */
  bs: number;
  /** Requests in flight per queue. */
  iodepth: number;
  /** Queues actually driven. */
  numQueues: number;
  /** Whether VIRTIO_RING_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** Measured wall-clock time in ms (excludes set-up and the `verify` read-back). */
  runtimeMs: number;
  /** Requests completed during the measured time. */
  requests: number;
  /** Reads among `requests`. */
  reads: number;
  /** Writes among `requests`. */
  writes: number;
  /** Requests completed with a status other than VIRTIO_BLK_S_OK. */
  errors: number;
  /** Completed requests per second over `runtimeMs`. */
  iops: number;
  /** MiB/s of data moved. */
  mibPerSec: number;
  /** Completion latency in µs. */
  latencyUs: {
    /** Mean. */
    mean: number;
    /** Fastest completion. */
    min: number;
    /** Median. */
    p50: number;
    /** 99th percentile. */
    p99: number;
    /** 99.9th percentile. */
    p999: number;
    /** Slowest completion. */
    max: number;
  };
  /** With `verify`: blocks checked and stamps that did not match. */
  verify: {
    /** Reads whose data was checked against the stamps (measured run plus read-back). */
    checkedReads: number;
    /** Blocks read back after the measured run. */
    readBackBlocks: number;
    /** Reads that returned a stamp other than the last one written; non-zero means data corruption. */
    mismatches: number;
    /** Description of the first mismatch (block, word, stamp found and expected), or null. */
    firstMismatch: string | null;
  } | null;
  /** With `backendPid`: the back-end's CPU time (user + system) per completed request. */
  backend: {
    /** The pid that was measured. */
    pid: number;
    /** User + system CPU seconds the back-end used during the measured run. */
    cpuSeconds: number;
    /** `cpuSeconds` per completed request, in µs. */
    cpuUsPerRequest: number;
  } | null;
}

const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const VIRTIO_BLK_S_OK = 0;
const SECTOR = 512;
const HDR = 16;
/** Guest memory is laid out in pages: rings, then per slot a header page and the data. */
const PAGE = 4096;
/** A back-end that completes nothing for this long has stalled: the run fails. */
const STALL_MS = 30_000;

/** One request slot: its buffers in guest memory and the views on them, made once. */
interface Slot {
  hdr: DataView;
  data: Uint32Array;
  status: Uint8Array;
  /** Buffer lists of a write (header + data readable, status writable) and of a read. */
  outReadable: GuestBuffer[];
  outWritable: GuestBuffer[];
  inReadable: GuestBuffer[];
  inWritable: GuestBuffer[];
  block: number;
  write: boolean;
  gen: number;
  startNs: number;
}

interface QueueRun {
  q: FrontendQueue;
  slots: Slot[];
  /** Descriptor head -> slot index. */
  byHead: Int32Array;
}

/** xorshift32: cheap, reproducible offsets. */
class Rng {
  private x: number;
  constructor(seed: number) { this.x = (seed >>> 0) || 0x2545f491; }
  next(): number {
    let x = this.x;
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    this.x = x >>> 0;
    return this.x;
  }
}

/** Smallest power of two ≥ n. */
function pow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start after the last ')'.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
}

/** Clock ticks per second of /proc/PID/stat times (USER_HZ: 100 on every Linux ABI Node runs on). */
const USER_HZ = 100;

/**
 * Negotiates, maps guest memory, sets up `numQueues` queues and runs the load for `runtimeMs`.
 * The front-end is left connected (the caller closes it).
 */
export async function runBlkLoad(o: BlkLoadOptions): Promise<BlkLoadResult> {
  if (!Number.isInteger(o.bs) || o.bs < SECTOR || o.bs % SECTOR !== 0 || o.bs > 16 << 20) throw new RangeError(`bs ${o.bs}: a multiple of 512 up to 16 MiB`);
  if (!Number.isInteger(o.iodepth) || o.iodepth < 1 || o.iodepth > 4096) throw new RangeError(`iodepth ${o.iodepth}: 1..4096`);
  if (!Number.isInteger(o.numQueues) || o.numQueues < 1 || o.numQueues > 64) throw new RangeError(`numQueues ${o.numQueues}: 1..64`);
  const fe = o.frontend;
  const wantEventIdx = o.eventIdx ?? true;
  const n = await negotiate(fe, {
    wantProtocolFeatures: DEFAULT_PROTOCOL_FEATURES | protocolFeatureMask(ProtocolFeature.CONFIG),
    ...(wantEventIdx ? {} : { wantFeatures: ~FEATURES_NEEDING_FRONTEND_SUPPORT & ~featureMask(VIRTIO_RING_F_EVENT_IDX) }),
  });
  const eventIdx = hasFeature(n.features, VIRTIO_RING_F_EVENT_IDX);
  if (wantEventIdx === false && eventIdx) throw new Error('EVENT_IDX negotiated although not wanted');
  const queues = n.queueNum ?? 1;
  if (o.numQueues > queues) throw new RangeError(`the back-end has ${queues} queue(s); ${o.numQueues} asked for`);
  let size = o.sizeBytes;
  if (size === undefined) {
    if (n.protocolFeatures === null || !hasProtocolFeature(n.protocolFeatures, ProtocolFeature.CONFIG)) {
      throw new Error('the back-end does not offer CONFIG: give the size to use');
    }
    const cfg = await fe.getConfig(0, 8);
    size = Number(new DataView(cfg.buffer, cfg.byteOffset, 8).getBigUint64(0, true)) * SECTOR;
  }
  const blocks = Math.floor(size / o.bs);
  if (blocks < 1) throw new RangeError(`the disk (${size} bytes) is smaller than one ${o.bs}-byte block`);
  if (o.verify && blocks < o.iodepth * o.numQueues) throw new RangeError('--verify needs more blocks than requests in flight');

  // Guest memory: per queue a ring, then per slot a page for header + status and the data buffer.
  const qsize = Math.min(32768, pow2(Math.max(256, o.iodepth * 3)));
  const ringBytes = Math.ceil(splitRingLayout(qsize, 0).end / PAGE) * PAGE;
  const slotBytes = PAGE + Math.ceil(o.bs / PAGE) * PAGE;
  const memBytes = o.numQueues * (ringBytes + o.iodepth * slotBytes);
  const mem = new FrontendMemory(Math.ceil(memBytes / (2 << 20)) * (2 << 20));
  const runs: QueueRun[] = [];
  try {
    await fe.setMemTable(mem.regions());
    let gpa = 0;
    for (let qi = 0; qi < o.numQueues; qi++) {
      const q = await setupQueue(fe, mem, qi, qsize, gpa, { eventIdx, enable: n.protocolFeatures !== null });
      gpa += ringBytes;
      const slots: Slot[] = [];
      for (let s = 0; s < o.iodepth; s++, gpa += slotBytes) {
        const h = mem.memory.translate(gpa, HDR);
        const d = mem.memory.translate(gpa + PAGE, o.bs);
        slots.push({
          hdr: new DataView(h.buffer, h.byteOffset, HDR),
          data: new Uint32Array(d.buffer, d.byteOffset, o.bs / 4),
          status: mem.memory.translate(gpa + HDR, 1),
          outReadable: [{ gpa, len: HDR }, { gpa: gpa + PAGE, len: o.bs }],
          outWritable: [{ gpa: gpa + HDR, len: 1 }],
          inReadable: [{ gpa, len: HDR }],
          inWritable: [{ gpa: gpa + PAGE, len: o.bs }, { gpa: gpa + HDR, len: 1 }],
          block: 0, write: false, gen: 0, startNs: 0,
        });
      }
      runs.push({ q, slots, byHead: new Int32Array(qsize).fill(-1) });
    }
    return await measure(o, runs, blocks, eventIdx);
  } finally {
    for (const r of runs) r.q.close();
    mem.close();
  }
}

async function measure(o: BlkLoadOptions, runs: QueueRun[], blocks: number, eventIdx: boolean): Promise<BlkLoadResult> {
  const rng = new Rng(o.seed ?? 1);
  const seq = o.rw === 'read' || o.rw === 'write';
  const mixRead = o.rw === 'randrw' ? (o.rwmixread ?? 50) : o.rw.endsWith('read') ? 100 : 0;
  const hist = new LatencyHistogram();
  const busy = new Uint8Array(blocks);
  // Generation stamped into each block written (0: never written by this run).
  const written = o.verify ? new Uint32Array(blocks) : null;
  let gen = 0;
  let nextSeq = 0;
  let requests = 0;
  let reads = 0;
  let writes = 0;
  let errors = 0;
  let checkedReads = 0;
  let mismatches = 0;
  let firstMismatch: string | null = null;
  let stopping = false;
  let reading = false; // the read-back phase of --verify
  let readBackNext = 0;

  const pickBlock = (): number => {
    if (reading) {
      while (readBackNext < blocks && written![readBackNext] === 0) readBackNext++;
      return readBackNext < blocks ? readBackNext++ : -1;
    }
    if (seq) {
      for (let tries = 0; tries < blocks; tries++) {
        const b = nextSeq;
        nextSeq = (nextSeq + 1) % blocks;
        if (busy[b] === 0) return b;
      }
      return -1;
    }
    // Random: a block not in flight (overlapping requests would make verification meaningless).
    for (let tries = 0; tries < 64; tries++) {
      const b = rng.next() % blocks;
      if (busy[b] === 0) return b;
    }
    return -1;
  };

  const submit = (r: QueueRun, si: number): boolean => {
    const s = r.slots[si]!;
    const b = pickBlock();
    if (b < 0) return false;
    busy[b] = 1;
    s.block = b;
    s.write = !reading && (mixRead === 0 || (mixRead < 100 && rng.next() % 100 >= mixRead));
    const sector = (b * o.bs) / SECTOR;
    s.hdr.setUint32(0, s.write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, true);
    s.hdr.setUint32(4, 0, true);
    s.hdr.setUint32(8, sector >>> 0, true);
    s.hdr.setUint32(12, Math.floor(sector / 2 ** 32), true);
    s.status[0] = 0xff;
    if (s.write && written !== null) {
      s.gen = ++gen;
      for (let i = 0; i < s.data.length; i += 2) { s.data[i] = b; s.data[i + 1] = s.gen; }
    }
    const head = s.write
      ? r.q.driver.addChain(s.outReadable, s.outWritable)
      : r.q.driver.addChain(s.inReadable, s.inWritable);
    r.byHead[head] = si;
    s.startNs = performance.now() * 1e6;
    return true;
  };

  const complete = (r: QueueRun, si: number, nowNs: number): void => {
    const s = r.slots[si]!;
    busy[s.block] = 0;
    if (!reading) hist.record(nowNs - s.startNs);
    requests++;
    if (s.status[0] !== VIRTIO_BLK_S_OK) {
      errors++;
      return;
    }
    if (s.write) {
      writes++;
      if (written !== null) written[s.block] = s.gen;
      return;
    }
    reads++;
    if (written === null) return;
    const want = written[s.block]!;
    if (want === 0) return;
    checkedReads++;
    const d = s.data;
    for (let i = 0; i < d.length; i += 2) {
      if (d[i] !== s.block || d[i + 1] !== want) {
        mismatches++;
        firstMismatch ??= `block ${s.block} (byte ${s.block * o.bs}): word ${i} reads block ${d[i]} generation ${d[i + 1]}, expected block ${s.block} generation ${want}`;
        break;
      }
    }
  };

  /** Keeps one queue busy until `stopping`, then drains it. */
  const drive = async (r: QueueRun): Promise<void> => {
    let inFlight = 0;
    const idle: number[] = [];
    for (let si = 0; si < r.slots.length; si++) {
      if (submit(r, si)) inFlight++;
      else idle.push(si);
    }
    r.q.kick(true);
    /** Completes every used entry, resubmitting each slot; returns how many completed. */
    const reap = (): number => {
      let got = 0;
      const now = performance.now() * 1e6;
      for (let u = r.q.driver.popUsed(); u !== null; u = r.q.driver.popUsed()) {
        const si = r.byHead[u.id] ?? -1;
        if (si < 0) throw new Error(`queue ${r.q.index}: the back-end used descriptor ${u.id}, which is not in flight`);
        r.byHead[u.id] = -1;
        complete(r, si, now);
        inFlight--;
        got++;
        if (!stopping && submit(r, si)) inFlight++;
        else idle.push(si);
      }
      // Slots that found no free block earlier get another chance now that blocks were freed.
      while (!stopping && idle.length > 0 && submit(r, idle[idle.length - 1]!)) {
        idle.pop();
        inFlight++;
      }
      return got;
    };
    let lastProgress = performance.now();
    while (inFlight > 0) {
      if (reap() === 0) {
        // Ask for an interrupt, then look again before sleeping: a completion may have landed.
        r.q.driver.enableInterrupts();
        if (reap() === 0) {
          if (performance.now() - lastProgress > STALL_MS) {
            throw new Error(`queue ${r.q.index}: no completion for ${STALL_MS / 1000} s with ${inFlight} requests in flight`);
          }
          await r.q.waitInterrupt(1000);
          continue;
        }
      }
      lastProgress = performance.now();
      r.q.kick();
    }
  };

  const before = o.backendPid !== undefined ? cpuTicks(o.backendPid) : 0;
  const t0 = performance.now();
  const interval = o.progressIntervalMs ?? 1000;
  const progress = o.onProgress === undefined ? null : setInterval(() => {
    const ms = performance.now() - t0;
    o.onProgress!({ elapsedMs: ms, requests, errors, iops: requests / (ms / 1000) });
  }, interval);
  const stopTimer = setTimeout(() => { stopping = true; }, o.runtimeMs);
  try {
    await Promise.all(runs.map(drive));
  } finally {
    clearTimeout(stopTimer);
    if (progress !== null) clearInterval(progress);
  }
  const elapsedMs = performance.now() - t0;
  const after = o.backendPid !== undefined ? cpuTicks(o.backendPid) : 0;
  const measured = { requests, reads, writes, errors };
  let readBackBlocks = 0;
  if (written !== null) {
    // Read back everything written, with the same depth, after the measured part.
    reading = true;
    stopping = false;
    const before2 = checkedReads;
    const rb = runs.map(drive);
    await Promise.all(rb);
    readBackBlocks = checkedReads - before2;
  }
  const us = (ns: number): number => +(ns / 1000).toFixed(1);
  const cpuSeconds = (after - before) / USER_HZ;
  return {
    rw: o.rw, bs: o.bs, iodepth: o.iodepth, numQueues: runs.length, eventIdx, runtimeMs: Math.round(elapsedMs),
    requests: measured.requests, reads: measured.reads, writes: measured.writes, errors: errors,
    iops: Math.round(measured.requests / (elapsedMs / 1000)),
    mibPerSec: +((measured.requests * o.bs) / (elapsedMs / 1000) / (1 << 20)).toFixed(1),
    latencyUs: {
      mean: us(hist.mean), min: us(hist.count === 0 ? 0 : hist.min), p50: us(hist.percentile(50)), p99: us(hist.percentile(99)),
      p999: us(hist.percentile(99.9)), max: us(hist.max),
    },
    verify: written === null ? null : { checkedReads, readBackBlocks, mismatches, firstMismatch },
    backend: o.backendPid === undefined ? null : {
      pid: o.backendPid, cpuSeconds, cpuUsPerRequest: measured.requests === 0 ? 0 : +((cpuSeconds * 1e6) / measured.requests).toFixed(2),
    },
  };
}
