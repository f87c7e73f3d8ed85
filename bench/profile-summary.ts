// Top functions by self time of a V8 .cpuprofile (what `node --cpu-prof` writes).

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/** The profile as written by --cpu-prof. */
export interface CpuProfile {
  nodes: ProfileNode[];
  samples?: number[];
}

/** A text table of the `top` functions by self samples (percent of all samples, name, location). */
export function summarizeProfile(p: CpuProfile, top: number): string {
  const self = new Map<string, number>();
  let total = 0;
  for (const n of p.nodes) {
    const hits = n.hitCount ?? 0;
    if (hits === 0) continue;
    total += hits;
    const f = n.callFrame;
    const file = f.url === '' ? '' : f.url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/').replace(/^node:/, 'node:');
    const key = `${f.functionName === '' ? '(anonymous)' : f.functionName}  ${file}${file !== '' ? `:${f.lineNumber + 1}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + hits);
  }
  return [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([k, v]) => `${((100 * v) / Math.max(total, 1)).toFixed(1).padStart(5)}%  ${k}`).join('\n');
}
