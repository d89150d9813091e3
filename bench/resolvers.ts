/**
 * The three ways the benchmark resolves every workload of a mesh, each writing its answers into the
 * same kind of table so they can be timed alike and then compared slot by slot:
 *
 * - `resolveAllIndexed`: the code under test, `resolveInboundMtls` + `modeForPort`, as `src/mesh/explain.ts`
 *   and `src/policy/analyze.ts` call it.
 * - `resolveAllNaive`: the reference point, a full scan of every policy per workload (`naive.ts`).
 * - `resolveAllModesOnly`: the mode-only fast path over the same index, `effectiveInboundMtls` +
 *   `effectiveModeForPort`, which builds no explanation (what `decideEdge` and the analyzers use).
 */
import type {
  MtlsMode,
  PeerAuthentication,
  PeerAuthenticationIndex,
  ResolvedMtlsMode,
  Workload,
} from '../src/policy/index.js';
import {
  effectiveInboundMtls,
  effectiveModeForPort,
  MTLS_MODES,
  modeForPort,
  refName,
  resolveInboundMtls,
} from '../src/policy/index.js';
import { naiveModeForPort, resolveNaive } from './naive.js';

/** Every answer for one mesh: per workload its mode, the mode of each declared port, and the deciding policies. */
export interface ModeTable {
  /** Per workload, one slot for the workload mode then one per declared port; values index `MTLS_MODES`. */
  readonly modes: Uint8Array;
  readonly meshPolicy: (PeerAuthentication | undefined)[];
  readonly namespacePolicy: (PeerAuthentication | undefined)[];
  readonly workloadPolicy: (PeerAuthentication | undefined)[];
}

const MODE_CODE: Readonly<Record<MtlsMode, number>> = { UNSET: 0, DISABLE: 1, PERMISSIVE: 2, STRICT: 3 };

function emptyTable(workloads: readonly Workload[]): ModeTable {
  const slots = workloads.reduce((sum, w) => sum + 1 + w.ports.length, 0);
  const n = workloads.length;
  return {
    modes: new Uint8Array(slots),
    meshPolicy: new Array<PeerAuthentication | undefined>(n).fill(undefined),
    namespacePolicy: new Array<PeerAuthentication | undefined>(n).fill(undefined),
    workloadPolicy: new Array<PeerAuthentication | undefined>(n).fill(undefined),
  };
}

export function resolveAllIndexed(index: PeerAuthenticationIndex, workloads: readonly Workload[]): ModeTable {
  const table = emptyTable(workloads);
  let slot = 0;
  for (let i = 0; i < workloads.length; i++) {
    const w = workloads[i] as Workload;
    const r = resolveInboundMtls(index, { namespace: w.meta.namespace, labels: w.meta.labels });
    table.modes[slot++] = MODE_CODE[r.workloadMode];
    for (const p of w.ports) table.modes[slot++] = MODE_CODE[modeForPort(r, p.port).mode];
    table.meshPolicy[i] = r.meshPolicy;
    table.namespacePolicy[i] = r.namespacePolicy;
    table.workloadPolicy[i] = r.workloadPolicy;
  }
  return table;
}

export function resolveAllNaive(
  policies: readonly PeerAuthentication[],
  rootNamespace: string,
  workloads: readonly Workload[],
): ModeTable {
  const table = emptyTable(workloads);
  let slot = 0;
  for (let i = 0; i < workloads.length; i++) {
    const w = workloads[i] as Workload;
    const r = resolveNaive(policies, rootNamespace, { namespace: w.meta.namespace, labels: w.meta.labels });
    table.modes[slot++] = MODE_CODE[r.workloadMode];
    for (const p of w.ports) table.modes[slot++] = MODE_CODE[naiveModeForPort(r, p.port)];
    table.meshPolicy[i] = r.meshPolicy;
    table.namespacePolicy[i] = r.namespacePolicy;
    table.workloadPolicy[i] = r.workloadPolicy;
  }
  return table;
}

export function resolveAllModesOnly(
  index: PeerAuthenticationIndex,
  workloads: readonly Workload[],
): ModeTable {
  const table = emptyTable(workloads);
  let slot = 0;
  for (let i = 0; i < workloads.length; i++) {
    const w = workloads[i] as Workload;
    const e = effectiveInboundMtls(index, { namespace: w.meta.namespace, labels: w.meta.labels });
    table.modes[slot++] = MODE_CODE[e.workloadMode];
    for (const p of w.ports) table.modes[slot++] = MODE_CODE[effectiveModeForPort(e, p.port)];
    table.meshPolicy[i] = e.meshPolicy;
    table.namespacePolicy[i] = e.namespacePolicy;
    table.workloadPolicy[i] = e.workloadPolicy;
  }
  return table;
}

/** Counts of each resolved mode over the declared ports of a table. */
export function portModeCounts(
  table: ModeTable,
  workloads: readonly Workload[],
): Record<ResolvedMtlsMode, number> {
  const counts: Record<ResolvedMtlsMode, number> = { DISABLE: 0, PERMISSIVE: 0, STRICT: 0 };
  let slot = 0;
  for (const w of workloads) {
    slot++;
    for (let k = 0; k < w.ports.length; k++) {
      const mode = MTLS_MODES[table.modes[slot++] ?? 0];
      if (mode === undefined || mode === 'UNSET')
        throw new Error(`BUG: unresolved port mode in slot ${slot - 1}`);
      counts[mode]++;
    }
  }
  return counts;
}

function policyName(p: PeerAuthentication | undefined): string {
  return p === undefined ? '(none)' : refName(p.meta);
}

/**
 * Every slot where two tables disagree, described for a reader (at most `limit`); empty when they
 * agree on every workload mode, every declared port's mode and every deciding policy.
 */
export function diffTables(
  expected: ModeTable,
  actual: ModeTable,
  workloads: readonly Workload[],
  limit = 10,
): string[] {
  const out: string[] = [];
  let slot = 0;
  for (let i = 0; i < workloads.length && out.length < limit; i++) {
    const w = workloads[i] as Workload;
    const name = `${w.meta.namespace}/${w.meta.name}`;
    const ports = ['(workload)', ...w.ports.map((p) => String(p.port))];
    for (const port of ports) {
      const e = MTLS_MODES[expected.modes[slot] ?? 0];
      const a = MTLS_MODES[actual.modes[slot] ?? 0];
      if (e !== a) out.push(`${name} port ${port}: expected ${e}, got ${a}`);
      slot++;
    }
    for (const level of ['meshPolicy', 'namespacePolicy', 'workloadPolicy'] as const) {
      const e = expected[level][i];
      const a = actual[level][i];
      if (e !== a) out.push(`${name} ${level}: expected ${policyName(e)}, got ${policyName(a)}`);
    }
  }
  return out.slice(0, limit);
}
