/**
 * Start-up of the device daemon CLIs: the program's modules are loaded with V8's compilers above
 * the interpreter (Sparkplug, TurboFan) switched off, and they are switched back on before the
 * daemon runs.
 *
 * Why: resolving a graph of ~60 ES modules runs node's URL and path helpers often enough that V8
 * optimizes them, and the first TurboFan compilation pages in about 3.6 MiB of the node binary's
 * compiler code, which then stays resident in an idle daemon (issue 10's idle-RSS target); baseline
 * code for them costs another ~0.4 MiB. No code of ours is hot during loading, so nothing is lost:
 * a function that becomes hot later (the request path) is compiled as usual once the flags are
 * back. The entry module must stay small and load the rest through `import()`, since a static
 * import graph is resolved before any of its code runs.
 * @module
 */
import { setFlagsFromString } from 'node:v8';

/**
 * True when the user chose V8's tiering (e.g. `--jitless`, `--no-opt`, `--max-opt`): then the flags
 * are left alone, so that turning TurboFan back on never overrides that choice.
 */
function tieringChosen(): boolean {
  const args = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return args.some((a) => /^--(no-)?(jitless|turbofan|opt|max-opt|lite-mode|sparkplug)(=|$)/.test(a.replaceAll('_', '-')));
}

/** Runs `load` (the program's `import()`) with Sparkplug and TurboFan off; resolves with what it loaded. */
export async function loadWithoutOptimizing<T>(load: () => Promise<T>): Promise<T> {
  if (tieringChosen()) return load();
  setFlagsFromString('--no-turbofan');
  setFlagsFromString('--no-sparkplug');
  try {
    return await load();
  } finally {
    setFlagsFromString('--sparkplug');
    setFlagsFromString('--turbofan');
  }
}
