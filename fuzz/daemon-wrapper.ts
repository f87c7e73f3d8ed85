/**
 * Runs a device CLI unchanged (same argv, once the first argument, `blk` or `net`, has chosen it)
 * with one addition for the leak check: on SIGUSR2 it runs a full garbage collection (node
 * --expose-gc) and prints `fuzz-heap <bytes>` with the live heap, so the fuzzer compares live
 * objects, not RSS, which the GC grows and shrinks at will.
 * @module
 */
const gc = (globalThis as { gc?: () => void }).gc;
process.on('SIGUSR2', () => {
  gc?.();
  process.stdout.write(`fuzz-heap ${gc === undefined ? -1 : process.memoryUsage().heapUsed}\n`);
});
// The CLIs read process.argv.slice(2): the device argument must be gone before they load.
const [device] = process.argv.splice(2, 1);
if (device === 'net') await import('../src/cli/net.js');
else if (device === 'blk') await import('../src/cli/blk.js');
else throw new Error(`daemon-wrapper: unknown device ${String(device)} (blk or net)`);
