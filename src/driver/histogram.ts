/**
 * A latency histogram that allocates nothing per sample: log-linear buckets (16 per power of two,
 * ≤ 6.25% relative error), from 1 ns to ~18 minutes. Percentiles are read off the bucket bounds.
 * @module
 */

const SUB = 16;
const SUB_BITS = 4;
const MAX_EXP = 40;

/** Counts of samples (in nanoseconds) by log-linear bucket. */
export class LatencyHistogram {
  private readonly counts = new Float64Array((MAX_EXP + 1) * SUB);
  /** Samples recorded. */
  count = 0;
  /** Sum of the samples (ns). */
  sum = 0;
  /** Largest sample (ns). */
  max = 0;
  /** Smallest sample (ns). */
  min = Infinity;

  /** Records one sample of `ns` nanoseconds (clamped to [1, 2^40)). */
  record(ns: number): void {
    const v = ns < 1 ? 1 : ns;
    this.count++;
    this.sum += v;
    if (v > this.max) this.max = v;
    if (v < this.min) this.min = v;
    this.counts[bucketOf(v)]!++;
  }

  /** Adds another histogram's samples to this one. */
  merge(o: LatencyHistogram): void {
    for (let i = 0; i < this.counts.length; i++) this.counts[i]! += o.counts[i]!;
    this.count += o.count;
    this.sum += o.sum;
    if (o.max > this.max) this.max = o.max;
    if (o.min < this.min) this.min = o.min;
  }

  /** Mean in ns (0 without samples). */
  get mean(): number {
    return this.count === 0 ? 0 : this.sum / this.count;
  }

  /** The `p`-th percentile (0 < p ≤ 100) in ns: the upper bound of the bucket that reaches it. */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const target = Math.ceil((p / 100) * this.count);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i]!;
      if (seen >= target) return Math.min(upperBound(i), this.max);
    }
    return this.max;
  }
}

function bucketOf(v: number): number {
  const e = Math.min(Math.floor(Math.log2(v)), MAX_EXP);
  const base = 2 ** e;
  const sub = Math.min(SUB - 1, Math.floor(((v - base) / base) * SUB));
  return (e << SUB_BITS) + sub;
}

function upperBound(i: number): number {
  const e = i >> SUB_BITS;
  const sub = i & (SUB - 1);
  return 2 ** e * (1 + (sub + 1) / SUB);
}
