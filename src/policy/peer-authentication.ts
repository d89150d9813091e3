import { formatLabels, hasLabels, selectorMatches } from './labels.js';
import type { MtlsMode, ObjectRef, PeerAuthentication, ResolvedMtlsMode } from './model.js';
import { refOf } from './model.js';
import { compareByCreation, describeOlder } from './order.js';

/** The root namespace Istio uses when meshConfig does not set one. */
export const DEFAULT_ROOT_NAMESPACE = 'istio-system';

/** Why a PeerAuthentication that could have applied to a workload did not. */
export type IgnoreReason =
  | 'NEWER_MESH_POLICY'
  | 'NEWER_NAMESPACE_POLICY'
  | 'NEWER_WORKLOAD_POLICY'
  | 'SELECTOR_IN_ROOT_NAMESPACE'
  | 'INVALID';

export interface IgnoredPolicy {
  readonly policy: ObjectRef;
  readonly reason: IgnoreReason;
  readonly message: string;
  /** The policy that won instead, where one did. */
  readonly winner?: ObjectRef;
}

/** A PeerAuthentication the API server would refuse; it never takes part in resolution. */
export interface RejectedPolicy {
  readonly policy: ObjectRef;
  readonly errors: readonly string[];
  /** Whether it would have been namespace- or mesh-wide, or a selector policy matching these labels. */
  readonly selector: Readonly<Record<string, string>> | undefined;
}

/** A selector policy in the workload's namespace whose selector does not match it. */
export interface NonMatchingPolicy {
  readonly policy: ObjectRef;
  readonly selector: string;
}

interface NamespaceEntry {
  /** The oldest namespace-wide policy; the others are in `ignoredWide`. */
  readonly wide: PeerAuthentication | undefined;
  readonly ignoredWide: readonly IgnoredPolicy[];
  /** Selector policies, oldest first. */
  readonly selected: readonly PeerAuthentication[];
  readonly rejected: readonly RejectedPolicy[];
}

/**
 * All PeerAuthentications of a mesh, indexed once so that resolving a workload costs only its
 * namespace's policies. Built by `indexPeerAuthentications`; immutable.
 */
export interface PeerAuthenticationIndex {
  readonly rootNamespace: string;
  readonly mesh: PeerAuthentication | undefined;
  readonly ignoredMesh: readonly IgnoredPolicy[];
  /** Selector policies in the root namespace: valid, but Istio never applies them. */
  readonly rootSelected: readonly PeerAuthentication[];
  readonly namespaces: ReadonlyMap<string, NamespaceEntry>;
  /** Policies without creationTimestamp, whose order had to be assumed. */
  readonly withoutTimestamp: readonly ObjectRef[];
  readonly all: readonly PeerAuthentication[];
}

const EMPTY_ENTRY: NamespaceEntry = { wide: undefined, ignoredWide: [], selected: [], rejected: [] };

/** Namespace- or mesh-wide: no selector, or one with no labels (Istio's `addPeerAuthentication`). */
export function isWidePolicy(policy: PeerAuthentication): boolean {
  return !hasLabels(policy.selector?.matchLabels);
}

export function indexPeerAuthentications(
  policies: readonly PeerAuthentication[],
  rootNamespace: string = DEFAULT_ROOT_NAMESPACE,
  rejected: readonly RejectedPolicy[] = [],
): PeerAuthenticationIndex {
  const sorted = [...policies].sort((a, b) => compareByCreation(a.meta, b.meta));
  let mesh: PeerAuthentication | undefined;
  const ignoredMesh: IgnoredPolicy[] = [];
  const rootSelected: PeerAuthentication[] = [];
  const building = new Map<
    string,
    {
      wide: PeerAuthentication | undefined;
      ignoredWide: IgnoredPolicy[];
      selected: PeerAuthentication[];
      rejected: RejectedPolicy[];
    }
  >();
  const entry = (ns: string) => {
    let e = building.get(ns);
    if (!e) {
      e = { wide: undefined, ignoredWide: [], selected: [], rejected: [] };
      building.set(ns, e);
    }
    return e;
  };

  for (const policy of sorted) {
    const ns = policy.meta.namespace;
    const wide = isWidePolicy(policy);
    if (ns === rootNamespace) {
      if (!wide) {
        rootSelected.push(policy);
      } else if (mesh === undefined) {
        mesh = policy;
      } else {
        ignoredMesh.push(ignoredBecauseNewer('NEWER_MESH_POLICY', 'mesh-wide', mesh, policy));
      }
      continue;
    }
    const e = entry(ns);
    if (!wide) {
      e.selected.push(policy);
    } else if (e.wide === undefined) {
      e.wide = policy;
    } else {
      e.ignoredWide.push(ignoredBecauseNewer('NEWER_NAMESPACE_POLICY', 'namespace-wide', e.wide, policy));
    }
  }
  for (const r of rejected) entry(r.policy.namespace).rejected.push(r);

  return {
    rootNamespace,
    mesh,
    ignoredMesh,
    rootSelected,
    namespaces: building,
    withoutTimestamp: sorted
      .filter((p) => p.meta.createdAtMs === undefined)
      .map((p) => refOf(p.kind, p.meta)),
    all: sorted,
  };
}

function ignoredBecauseNewer(
  reason: IgnoreReason,
  scope: string,
  winner: PeerAuthentication,
  loser: PeerAuthentication,
): IgnoredPolicy {
  return {
    policy: refOf(loser.kind, loser.meta),
    reason,
    winner: refOf(winner.kind, winner.meta),
    message:
      `only one ${scope} PeerAuthentication applies per namespace and ${winner.meta.namespace}/${winner.meta.name} ` +
      `is older (${describeOlder(winner.meta, loser.meta)})`,
  };
}

/** One level of the decision: what the policy there said, and the mode after it. */
export interface ChainStep {
  readonly level: 'default' | 'mesh' | 'namespace' | 'workload' | 'port';
  /** The policy deciding at this level, if any. */
  readonly policy: ObjectRef | undefined;
  readonly port?: number;
  /** The mode written in the policy; undefined when the policy has no `mtls` (inherits like UNSET). */
  readonly declared: MtlsMode | undefined;
  /** `sets` when this level changed the mode, `inherits` when it said UNSET or nothing, `none` when no policy. */
  readonly effect: 'sets' | 'inherits' | 'none';
  readonly result: ResolvedMtlsMode;
}

export interface PortMode {
  readonly port: number;
  readonly mode: ResolvedMtlsMode;
  /** `port` when a portLevelMtls entry decided, `workload` when the workload mode applies. */
  readonly decidedBy: 'port' | 'workload';
  readonly declared?: MtlsMode;
}

/**
 * The decision alone: which policy applies at each level and the resulting workload mode. Cheap to
 * compute (no allocation per policy), for callers that need modes, not explanations.
 */
export interface EffectiveMtls {
  /** The mode of every port without its own portLevelMtls entry. */
  readonly workloadMode: ResolvedMtlsMode;
  readonly meshPolicy: PeerAuthentication | undefined;
  readonly namespacePolicy: PeerAuthentication | undefined;
  /** The oldest selector policy of the workload's namespace that matches; the only source of port entries. */
  readonly workloadPolicy: PeerAuthentication | undefined;
}

/** The effective inbound mTLS of one workload, with everything that explains it. */
export interface InboundResolution extends EffectiveMtls {
  /** portLevelMtls entries of the chosen workload policy, resolved (UNSET takes the workload mode). */
  readonly portLevel: ReadonlyMap<number, PortMode>;
  /** default → mesh → namespace → workload; `chainForPort` adds the port step. */
  readonly chain: readonly ChainStep[];
  readonly ignored: readonly IgnoredPolicy[];
  readonly notMatching: readonly NonMatchingPolicy[];
}

export interface WorkloadLabels {
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
}

function step(
  level: ChainStep['level'],
  policy: PeerAuthentication | undefined,
  declared: MtlsMode | undefined,
  previous: ResolvedMtlsMode,
  port?: number,
): ChainStep {
  const sets = policy !== undefined && declared !== undefined && declared !== 'UNSET';
  return {
    level,
    policy: policy ? refOf(policy.kind, policy.meta) : undefined,
    ...(port !== undefined ? { port } : {}),
    declared,
    effect: policy === undefined ? 'none' : sets ? 'sets' : 'inherits',
    result: sets ? (declared as ResolvedMtlsMode) : previous,
  };
}

/** A level overrides the mode unless it says UNSET or nothing. */
function override(mode: ResolvedMtlsMode, declared: MtlsMode | undefined): ResolvedMtlsMode {
  return declared === undefined || declared === 'UNSET' ? mode : declared;
}

function namespaceEntry(index: PeerAuthenticationIndex, namespace: string): NamespaceEntry {
  // Root-namespace policies are mesh-wide or ignored; the root never has a namespace level.
  return namespace === index.rootNamespace ? EMPTY_ENTRY : (index.namespaces.get(namespace) ?? EMPTY_ENTRY);
}

/**
 * Istio's `ComposePeerAuthentication` for one workload: start PERMISSIVE; mesh, then namespace,
 * then workload policy each overwrite the mode unless they say UNSET (or nothing). Oldest wins at
 * each level: the namespace's selector policies are kept oldest first, so the first match applies.
 */
export function effectiveInboundMtls(
  index: PeerAuthenticationIndex,
  workload: WorkloadLabels,
): EffectiveMtls {
  const entry = namespaceEntry(index, workload.namespace);
  let workloadPolicy: PeerAuthentication | undefined;
  for (const candidate of entry.selected) {
    if (selectorMatches(candidate.selector?.matchLabels ?? {}, workload.labels)) {
      workloadPolicy = candidate;
      break;
    }
  }
  const mesh = index.mesh;
  const namespacePolicy = entry.wide;
  return {
    workloadMode: override(
      override(override('PERMISSIVE', mesh?.mode), namespacePolicy?.mode),
      workloadPolicy?.mode,
    ),
    meshPolicy: mesh,
    namespacePolicy,
    workloadPolicy,
  };
}

/** Every selector policy of the workload's namespace that matches it, oldest (the one that applies) first. */
export function matchingWorkloadPolicies(
  index: PeerAuthenticationIndex,
  workload: WorkloadLabels,
): PeerAuthentication[] {
  return namespaceEntry(index, workload.namespace).selected.filter((p) =>
    selectorMatches(p.selector?.matchLabels ?? {}, workload.labels),
  );
}

/** `GetMutualTLSModeForPort` on the decision alone: portLevelMtls of the workload policy only. */
export function effectiveModeForPort(effective: EffectiveMtls, port: number): ResolvedMtlsMode {
  return override(effective.workloadMode, effective.workloadPolicy?.portLevelMtls?.get(port));
}

/** default → mesh → namespace → workload (→ port, when the workload policy has an entry for it). */
export function chainOf(effective: EffectiveMtls, port?: number): ChainStep[] {
  const chain: ChainStep[] = [
    { level: 'default', policy: undefined, declared: undefined, effect: 'sets', result: 'PERMISSIVE' },
  ];
  let mode: ResolvedMtlsMode = 'PERMISSIVE';
  for (const [level, policy] of [
    ['mesh', effective.meshPolicy],
    ['namespace', effective.namespacePolicy],
    ['workload', effective.workloadPolicy],
  ] as const) {
    const s = step(level, policy, policy?.mode, mode);
    chain.push(s);
    mode = s.result;
  }
  const declared = port === undefined ? undefined : effective.workloadPolicy?.portLevelMtls?.get(port);
  if (port !== undefined && declared !== undefined)
    chain.push(step('port', effective.workloadPolicy, declared, mode, port));
  return chain;
}

/**
 * The decision of `effectiveInboundMtls` with its explanation: the chain, every policy that could
 * have applied but did not (with the reason), and the selector policies that do not match.
 */
export function resolveInboundMtls(
  index: PeerAuthenticationIndex,
  workload: WorkloadLabels,
): InboundResolution {
  const effective = effectiveInboundMtls(index, workload);
  const entry = namespaceEntry(index, workload.namespace);
  const ignored: IgnoredPolicy[] = [...index.ignoredMesh, ...entry.ignoredWide];
  const notMatching: NonMatchingPolicy[] = [];
  for (const candidate of entry.selected) {
    const selector = candidate.selector?.matchLabels ?? {};
    if (!selectorMatches(selector, workload.labels)) {
      notMatching.push({ policy: refOf(candidate.kind, candidate.meta), selector: formatLabels(selector) });
    } else if (candidate !== effective.workloadPolicy && effective.workloadPolicy !== undefined) {
      ignored.push(
        ignoredBecauseNewer('NEWER_WORKLOAD_POLICY', 'workload', effective.workloadPolicy, candidate),
      );
    }
  }
  for (const rootPolicy of index.rootSelected) {
    if (selectorMatches(rootPolicy.selector?.matchLabels ?? {}, workload.labels)) {
      ignored.push({
        policy: refOf(rootPolicy.kind, rootPolicy.meta),
        reason: 'SELECTOR_IN_ROOT_NAMESPACE',
        message:
          `its selector matches, but a PeerAuthentication with a selector in the root namespace ` +
          `${index.rootNamespace} is ignored by Istio; move it to namespace ${workload.namespace}`,
      });
    }
  }
  // A rejected policy in the root namespace would have been mesh-wide (or an ignored root selector
  // policy): it concerns workloads in every namespace, and `entry` never holds the root's.
  const rootRejected = index.namespaces.get(index.rootNamespace)?.rejected ?? [];
  for (const r of [...entry.rejected, ...rootRejected]) {
    if (r.selector === undefined || !hasLabels(r.selector) || selectorMatches(r.selector, workload.labels)) {
      ignored.push({
        policy: r.policy,
        reason: 'INVALID',
        message: `the API server would reject it: ${r.errors.join('; ')}`,
      });
    }
  }

  const portLevel = new Map<number, PortMode>();
  for (const [port, declared] of effective.workloadPolicy?.portLevelMtls ?? []) {
    portLevel.set(port, {
      port,
      mode: override(effective.workloadMode, declared),
      decidedBy: 'port',
      declared,
    });
  }
  return { ...effective, portLevel, chain: chainOf(effective), ignored, notMatching };
}

/** Istio's `GetMutualTLSModeForPort`: the port's own entry, else the workload mode. */
export function modeForPort(resolution: InboundResolution, port: number): PortMode {
  return resolution.portLevel.get(port) ?? { port, mode: resolution.workloadMode, decidedBy: 'workload' };
}

/** The decision chain for one port: the workload chain plus the port step when an entry exists. */
export function chainForPort(resolution: InboundResolution, port: number): readonly ChainStep[] {
  return resolution.portLevel.has(port) ? chainOf(resolution, port) : resolution.chain;
}

/**
 * Istio's `GetNamespaceMutualTLSMode`: the namespace-wide policy's mode (UNSET inherits the mesh
 * mode, else PERMISSIVE), else the mesh mode; UNKNOWN when neither exists. Auto mTLS uses this, not
 * the workload's own mode.
 */
export function namespaceMtlsMode(
  index: PeerAuthenticationIndex,
  namespace: string,
): ResolvedMtlsMode | 'UNKNOWN' {
  const mesh = index.mesh;
  let global: ResolvedMtlsMode | 'UNKNOWN' = 'UNKNOWN';
  if (mesh !== undefined)
    global = mesh.mode === undefined || mesh.mode === 'UNSET' ? 'PERMISSIVE' : mesh.mode;
  const wide = namespace === index.rootNamespace ? undefined : index.namespaces.get(namespace)?.wide;
  if (wide === undefined) return global;
  if (wide.mode === undefined || wide.mode === 'UNSET') return global === 'UNKNOWN' ? 'PERMISSIVE' : global;
  return wide.mode;
}
