/**
 * Deterministic randomness for the fuzzer: every case draws from its own stream derived from
 * (run seed, case index), so one case replays alone with FUZZ_SEED + FUZZ_CASE.
 * @module
 */

/** Mixes a 32-bit value (murmur3 finaliser): nearby seeds give unrelated streams. */
export function mix32(x: number): number {
  x >>>= 0;
  x ^= x >>> 16; x = Math.imul(x, 0x85ebca6b) >>> 0;
  x ^= x >>> 13; x = Math.imul(x, 0xc2b2ae35) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** Seed of case `index` of a run seeded with `seed`. */
export function caseSeed(seed: number, index: number): number {
  return mix32((seed >>> 0) ^ mix32(index + 0x9e3779b9));
}

/** A small PRNG (xoshiro128**) with the draws the generators need. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = mix32(seed ^ 0x243f6a88) | 1;
    this.b = mix32(seed ^ 0x85a308d3);
    this.c = mix32(seed ^ 0x13198a2e);
    this.d = mix32(seed ^ 0x03707344);
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5) >>> 0, 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a; this.d ^= this.b; this.b ^= this.c; this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return n <= 0x1_0000_0000 ? Math.floor((this.u32() / 0x1_0000_0000) * n) : Math.floor(this.float() * n);
  }

  /** Uniform integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** Uniform in [0, 1). */
  float(): number {
    return (this.u32() * 0x20_0000 + (this.u32() >>> 11)) / 2 ** 53;
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  /** One element of a non-empty array. */
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)] as T;
  }

  /** Uniform 64-bit unsigned integer. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  /** A 32-bit value biased towards boundaries (0, 1, powers of two ± 1, all-ones) and small numbers. */
  interesting32(): number {
    switch (this.int(6)) {
      case 0: return this.pick([0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff]);
      case 1: { const p = 2 ** this.int(32); return (p + this.pick([-1, 0, 1])) >>> 0; }
      case 2: return this.int(16);
      case 3: return this.int(1024);
      default: return this.u32();
    }
  }

  /** A 64-bit value biased towards boundaries and interesting magnitudes. */
  interesting64(): bigint {
    switch (this.int(5)) {
      case 0: return this.pick([0n, 1n, 0xffff_ffffn, 0x1_0000_0000n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 0x1000n]);
      case 1: { const p = 1n << BigInt(this.int(64)); return (p + BigInt(this.pick([-1, 0, 1]))) & ((1n << 64n) - 1n); }
      case 2: return BigInt(this.interesting32());
      default: return this.u64();
    }
  }

  /** Fills `b` with random bytes. */
  fill(b: Uint8Array): Uint8Array {
    for (let i = 0; i < b.length; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
