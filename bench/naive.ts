/**
 * The reference point for the indexed resolution: Istio's `getConfigsForWorkload` followed by
 * `ComposePeerAuthentication` and `GetMutualTLSModeForPort`, written out plainly with no index, so
 * every workload scans every PeerAuthentication of the mesh. It answers modes only (no explanation).
 *
 * It is written from Istio's Go code, not from `src/policy`, so that agreement between the two means
 * something. One deliberate exception: "oldest" uses kmtls's `compareByCreation`, because objects
 * without creationTimestamp have no order in Istio (zero time) that a file-based mesh could match;
 * the ordering rule has its own tests, and this comparison is about selection and composition.
 */
import type { MtlsMode, PeerAuthentication, ResolvedMtlsMode, WorkloadLabels } from '../src/policy/index.js';
import { compareByCreation } from '../src/policy/index.js';

export interface NaiveResolution {
  readonly workloadMode: ResolvedMtlsMode;
  readonly portLevel: ReadonlyMap<number, ResolvedMtlsMode>;
  readonly meshPolicy: PeerAuthentication | undefined;
  readonly namespacePolicy: PeerAuthentication | undefined;
  readonly workloadPolicy: PeerAuthentication | undefined;
}

/** Istio's `labels.Instance.SubsetOf`: an empty selector matches everything. */
function isSubsetOf(
  selector: Readonly<Record<string, string>>,
  labels: Readonly<Record<string, string>>,
): boolean {
  const keys = Object.keys(selector);
  if (keys.length === 0) return true;
  for (const key of keys) {
    if (!Object.hasOwn(labels, key) || labels[key] !== selector[key]) return false;
  }
  return true;
}

/** Istio's `isMtlsModeUnset` negated: a nil `mtls` and UNSET both inherit. */
function isSet(mode: MtlsMode | undefined): mode is ResolvedMtlsMode {
  return mode !== undefined && mode !== 'UNSET';
}

function isOlder(candidate: PeerAuthentication, current: PeerAuthentication | undefined): boolean {
  return current === undefined || compareByCreation(candidate.meta, current.meta) < 0;
}

export function resolveNaive(
  policies: readonly PeerAuthentication[],
  rootNamespace: string,
  workload: WorkloadLabels,
): NaiveResolution {
  let meshPolicy: PeerAuthentication | undefined;
  let namespacePolicy: PeerAuthentication | undefined;
  let workloadPolicy: PeerAuthentication | undefined;
  // getConfigsForWorkload: the workload's namespace and the root namespace, selector ⊆ labels.
  // ComposePeerAuthentication: the oldest per level; selector policies in the root namespace never apply.
  for (const policy of policies) {
    const ns = policy.meta.namespace;
    if (ns !== workload.namespace && ns !== rootNamespace) continue;
    const selector = policy.selector?.matchLabels ?? {};
    if (!isSubsetOf(selector, workload.labels)) continue;
    if (Object.keys(selector).length === 0) {
      if (ns === rootNamespace) {
        if (isOlder(policy, meshPolicy)) meshPolicy = policy;
      } else if (isOlder(policy, namespacePolicy)) {
        namespacePolicy = policy;
      }
    } else if (ns !== rootNamespace && isOlder(policy, workloadPolicy)) {
      workloadPolicy = policy;
    }
  }

  let mode: ResolvedMtlsMode = 'PERMISSIVE';
  for (const policy of [meshPolicy, namespacePolicy, workloadPolicy]) {
    const declared = policy?.mode;
    if (isSet(declared)) mode = declared;
  }
  const portLevel = new Map<number, ResolvedMtlsMode>();
  for (const [port, declared] of workloadPolicy?.portLevelMtls ?? []) {
    portLevel.set(port, isSet(declared) ? declared : mode);
  }
  return { workloadMode: mode, portLevel, meshPolicy, namespacePolicy, workloadPolicy };
}

/** `GetMutualTLSModeForPort`. */
export function naiveModeForPort(resolution: NaiveResolution, port: number): ResolvedMtlsMode {
  return resolution.portLevel.get(port) ?? resolution.workloadMode;
}
