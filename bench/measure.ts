/**
 * Timing and heap measurement for the benchmark. A garbage collection is forced before every timed
 * run (outside the timer) so that one run does not pay for the garbage of the previous one; that
 * needs `--expose-gc`, which `run.ts` arranges. Figures are reported as median and min/max: the
 * machine is shared, so a single run or a mean means little.
 */

export interface Timing {
  readonly runsMs: readonly number[];
  readonly medianMs: number;
  readonly minMs: number;
  readonly maxMs: number;
}

export interface RunPlan {
  /** Untimed runs first, to let the JIT settle. */
  readonly warmup: number;
  readonly runs: number;
}

/** Keeps results reachable so the JIT cannot drop the work that made them. */
export let sink: unknown;

export function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('BUG: global gc() missing (the benchmark must run with --expose-gc)');
  gc();
}

export function hasGc(): boolean {
  return typeof (globalThis as { gc?: unknown }).gc === 'function';
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) throw new Error('BUG: median of no values');
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

function summarize(runsMs: readonly number[]): Timing {
  return { runsMs, medianMs: median(runsMs), minMs: Math.min(...runsMs), maxMs: Math.max(...runsMs) };
}

function timeOnce(fn: () => unknown): number {
  collectGarbage();
  const start = performance.now();
  sink = fn();
  return performance.now() - start;
}

export function measure(plan: RunPlan, fn: () => unknown): Timing {
  for (let i = 0; i < plan.warmup; i++) timeOnce(fn);
  const runsMs: number[] = [];
  for (let i = 0; i < plan.runs; i++) runsMs.push(timeOnce(fn));
  return summarize(runsMs);
}

/**
 * Several functions timed in alternation (A B A B …) so that a slow patch of the shared machine
 * lands on all of them rather than on one.
 */
export function measureInterleaved<K extends string>(
  plan: RunPlan,
  fns: Readonly<Record<K, () => unknown>>,
): Record<K, Timing> {
  const keys = Object.keys(fns) as K[];
  for (let i = 0; i < plan.warmup; i++) for (const k of keys) timeOnce(fns[k]);
  const runs = new Map<K, number[]>(keys.map((k) => [k, []]));
  for (let i = 0; i < plan.runs; i++) for (const k of keys) runs.get(k)?.push(timeOnce(fns[k]));
  return Object.fromEntries(keys.map((k) => [k, summarize(runs.get(k) ?? [])])) as Record<K, Timing>;
}

/**
 * Bytes the heap holds after `build` minus before, with the built value still reachable and a full
 * collection on both sides: what the built structure retains, not what building it allocated.
 */
export function measureRetainedBytes(samples: number, build: () => unknown): number {
  const deltas: number[] = [];
  for (let i = 0; i < samples; i++) {
    collectGarbage();
    const before = process.memoryUsage().heapUsed;
    const kept = build();
    collectGarbage();
    const after = process.memoryUsage().heapUsed;
    sink = kept;
    deltas.push(after - before);
  }
  sink = undefined;
  return median(deltas);
}
