/**
 * Runs the vhost-user-blk CLI unchanged (same argv) with one addition for the leak check: on
 * SIGUSR2 it runs a full garbage collection (node --expose-gc) and prints `fuzz-heap <bytes>` with
 * the live heap, so the fuzzer compares live objects, not RSS, which the GC grows and shrinks at will.
 * @module
 */
const gc = (globalThis as { gc?: () => void }).gc;
process.on('SIGUSR2', () => {
  gc?.();
  process.stdout.write(`fuzz-heap ${gc === undefined ? -1 : process.memoryUsage().heapUsed}\n`);
});
await import('../src/cli/blk.js');
