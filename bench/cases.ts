/**
 * One benchmark case: a synthetic mesh, measured the same way every time (index build, index heap,
 * resolution of every workload, and the reference comparison), with the answers checked against the
 * naive full scan before any figure is reported.
 */
import type { PeerAuthenticationIndex, ResolvedMtlsMode, Workload } from '../src/policy/index.js';
import { indexPeerAuthentications, selectorMatches } from '../src/policy/index.js';
import type { RunPlan, Timing } from './measure.js';
import { measure, measureInterleaved, measureRetainedBytes } from './measure.js';
import type { ModeTable } from './resolvers.js';
import {
  diffTables,
  portModeCounts,
  resolveAllIndexed,
  resolveAllModesOnly,
  resolveAllNaive,
} from './resolvers.js';
import type { MeshShape, PolicyMix, SyntheticMesh } from './synthetic.js';
import { buildSyntheticMesh } from './synthetic.js';

/**
 * How the naive reference runs for a case: timed in alternation with the indexed resolution, timed
 * once, or (where a full scan per workload would take minutes) run on every n-th workload only.
 */
export type NaivePlan =
  | { readonly kind: 'interleaved'; readonly plan: RunPlan }
  | { readonly kind: 'once' }
  | { readonly kind: 'sample'; readonly every: number };

export interface CasePlan {
  readonly shape: MeshShape;
  readonly index: RunPlan;
  readonly heapSamples: number;
  readonly resolve: RunPlan;
  readonly naive: NaivePlan;
}

export interface SideBySide {
  readonly indexed: Timing;
  readonly modesOnly: Timing;
  readonly naive: Timing;
}

export interface CaseResult {
  readonly plan: CasePlan;
  readonly mix: PolicyMix;
  readonly workloads: number;
  readonly policies: number;
  readonly declaredPorts: number;
  readonly generateMs: number;
  /** `selectorMatches` calls `resolveInboundMtls` makes over all workloads: the namespace's selector policies plus the root namespace's. */
  readonly selectorChecks: number;
  /** Largest number of selector policies in one namespace. */
  readonly maxSelectorPerNamespace: number;
  readonly indexBuild: Timing;
  readonly indexRetainedBytes: number;
  readonly resolve: Timing;
  readonly modesOnly: Timing;
  /** Undefined when the naive scan ran on a sample only. */
  readonly naive: Timing | undefined;
  /** The three resolvers timed in alternation on the same data (headline case only). */
  readonly sideBySide: SideBySide | undefined;
  /** Workloads whose answers were compared with the naive scan, and the ports among them. */
  readonly verifiedWorkloads: number;
  readonly verifiedPorts: number;
  readonly portModes: Record<ResolvedMtlsMode, number>;
  readonly portsDecidedByPortLevel: number;
}

type Log = (line: string) => void;

function describeTiming(t: Timing): string {
  return `median ${t.medianMs.toFixed(1)} ms (min ${t.minMs.toFixed(1)}, max ${t.maxMs.toFixed(1)}, ${t.runsMs.length} runs)`;
}

function countSelectorChecks(index: PeerAuthenticationIndex, workloads: readonly Workload[]): number {
  let checks = 0;
  for (const w of workloads) {
    const ns = w.meta.namespace;
    const selected = ns === index.rootNamespace ? 0 : (index.namespaces.get(ns)?.selected.length ?? 0);
    checks += selected + index.rootSelected.length;
  }
  return checks;
}

function countPortLevelDecisions(index: PeerAuthenticationIndex, workloads: readonly Workload[]): number {
  let n = 0;
  for (const w of workloads) {
    const ns = w.meta.namespace;
    const entry = ns === index.rootNamespace ? undefined : index.namespaces.get(ns);
    const chosen = entry?.selected.find((p) => selectorMatches(p.selector?.matchLabels ?? {}, w.meta.labels));
    for (const p of w.ports) if (chosen?.portLevelMtls?.has(p.port)) n++;
  }
  return n;
}

function assertSame(
  reference: ModeTable,
  actual: ModeTable,
  workloads: readonly Workload[],
  what: string,
): void {
  const diffs = diffTables(reference, actual, workloads);
  if (diffs.length > 0) {
    throw new Error(
      `${what} disagrees with the naive full scan: ${diffs.length}+ differences (${diffs.join('; ')})`,
    );
  }
}

export function runCase(plan: CasePlan, log: Log): CaseResult {
  const { shape } = plan;
  const tag = `[${shape.label}]`;
  const started = performance.now();
  const mesh: SyntheticMesh = buildSyntheticMesh(shape);
  const generateMs = performance.now() - started;
  const { workloads, policies, rootNamespace } = mesh;
  log(
    `${tag} generated ${workloads.length} workloads, ${policies.length} PeerAuthentications in ${generateMs.toFixed(0)} ms`,
  );

  const indexBuild = measure(plan.index, () => indexPeerAuthentications(policies, rootNamespace));
  log(`${tag} index build: ${describeTiming(indexBuild)}`);
  const indexRetainedBytes = measureRetainedBytes(plan.heapSamples, () =>
    indexPeerAuthentications(policies, rootNamespace),
  );
  log(`${tag} index heap: ${(indexRetainedBytes / 1024 / 1024).toFixed(2)} MiB retained`);

  const index = indexPeerAuthentications(policies, rootNamespace);
  let indexed: ModeTable | undefined;
  const resolve = measure(plan.resolve, () => {
    indexed = resolveAllIndexed(index, workloads);
    return indexed;
  });
  log(`${tag} resolve all (indexed): ${describeTiming(resolve)}`);
  let modesOnlyTable: ModeTable | undefined;
  const modesOnly = measure(plan.resolve, () => {
    modesOnlyTable = resolveAllModesOnly(index, workloads);
    return modesOnlyTable;
  });
  log(`${tag} resolve all (mode-only fast path): ${describeTiming(modesOnly)}`);
  if (indexed === undefined || modesOnlyTable === undefined) throw new Error('BUG: a resolver never ran');

  let naive: Timing | undefined;
  let sideBySide: SideBySide | undefined;
  let checked: readonly Workload[] = workloads;
  const naivePlan = plan.naive;
  if (naivePlan.kind === 'sample') {
    checked = workloads.filter((_, i) => i % naivePlan.every === 0);
    const reference = resolveAllNaive(policies, rootNamespace, checked);
    assertSame(reference, resolveAllIndexed(index, checked), checked, 'resolveInboundMtls');
    assertSame(reference, resolveAllModesOnly(index, checked), checked, 'the mode-only fast path');
  } else {
    let reference: ModeTable | undefined;
    const runNaive = () => {
      reference = resolveAllNaive(policies, rootNamespace, workloads);
      return reference;
    };
    if (naivePlan.kind === 'interleaved') {
      sideBySide = measureInterleaved(naivePlan.plan, {
        indexed: () => {
          indexed = resolveAllIndexed(index, workloads);
          return indexed;
        },
        modesOnly: () => {
          modesOnlyTable = resolveAllModesOnly(index, workloads);
          return modesOnlyTable;
        },
        naive: runNaive,
      });
      naive = sideBySide.naive;
      for (const [name, t] of Object.entries(sideBySide)) {
        log(`${tag} side by side, ${name}: ${describeTiming(t)}`);
      }
      const speedup = sideBySide.naive.medianMs / sideBySide.indexed.medianMs;
      log(`${tag} naive ÷ indexed (medians, same runs): ${speedup.toFixed(1)}×`);
    } else {
      naive = measure({ warmup: 0, runs: 1 }, runNaive);
      log(`${tag} naive full scan: ${describeTiming(naive)}`);
    }
    if (reference === undefined) throw new Error('BUG: the naive scan never ran');
    assertSame(reference, indexed, workloads, 'resolveInboundMtls');
    assertSame(reference, modesOnlyTable, workloads, 'the mode-only fast path');
  }
  const verifiedPorts = checked.reduce((sum, w) => sum + w.ports.length, 0);
  log(`${tag} identical modes and deciding policies for ${checked.length} workloads, ${verifiedPorts} ports`);

  let maxSelectorPerNamespace = 0;
  for (const entry of index.namespaces.values()) {
    maxSelectorPerNamespace = Math.max(maxSelectorPerNamespace, entry.selected.length);
  }
  return {
    plan,
    mix: mesh.mix,
    workloads: workloads.length,
    policies: policies.length,
    declaredPorts: mesh.declaredPorts,
    generateMs,
    selectorChecks: countSelectorChecks(index, workloads),
    maxSelectorPerNamespace,
    indexBuild,
    indexRetainedBytes,
    resolve,
    modesOnly,
    naive,
    sideBySide,
    verifiedWorkloads: checked.length,
    verifiedPorts,
    portModes: portModeCounts(indexed, workloads),
    portsDecidedByPortLevel: countPortLevelDecisions(index, workloads),
  };
}
