/**
 * Synthetic meshes for the benchmark: workloads and PeerAuthentications with the mix a real cluster
 * has (one mesh-wide policy, namespace-wide policies in most namespaces, a few duplicates, workload
 * policies with and without portLevelMtls, a few selector policies in the root namespace, part of the
 * objects without creationTimestamp). Policies go through `validatePeerAuthentication`, as manifests
 * do. Deterministic: the same shape and seed always give the same mesh.
 */
import type {
  MtlsMode,
  ObjectMeta,
  PeerAuthentication,
  Workload,
  WorkloadPort,
} from '../src/policy/index.js';
import { DEFAULT_ROOT_NAMESPACE, validatePeerAuthentication } from '../src/policy/index.js';
import { Prng } from './prng.js';

export interface MeshShape {
  /** How the shape is named in the report. */
  readonly label: string;
  readonly workloads: number;
  readonly policies: number;
  /** Application namespaces (the root namespace comes on top). */
  readonly namespaces: number;
  readonly seed: number;
}

/** How many policies of each kind a synthetic mesh holds, for the report. */
export interface PolicyMix {
  readonly meshWide: number;
  readonly meshWideDuplicates: number;
  readonly rootSelector: number;
  readonly namespaceWide: number;
  readonly namespaceWideDuplicates: number;
  readonly selector: number;
  readonly selectorNeverMatching: number;
  readonly withPortLevelMtls: number;
  readonly withoutTimestamp: number;
}

export interface SyntheticMesh {
  readonly shape: MeshShape;
  readonly rootNamespace: string;
  readonly workloads: readonly Workload[];
  readonly policies: readonly PeerAuthentication[];
  readonly mix: PolicyMix;
  readonly declaredPorts: number;
}

/** Selector policies in the root namespace are mistakes Istio ignores: a mesh has a handful, whatever its size. */
const ROOT_SELECTOR_POLICIES = 10;
const ROOT_WORKLOADS = ['istiod', 'istio-ingressgateway', 'istio-eastwestgateway'] as const;
const APP_NAMES = [
  'api',
  'web',
  'worker',
  'db',
  'cache',
  'auth',
  'billing',
  'search',
  'ingest',
  'notify',
] as const;
const TIERS = ['frontend', 'backend', 'data'] as const;
const CONTAINER_PORTS = [80, 443, 5432, 6379, 8080, 8443, 9090, 9091] as const;
const BASE_TIME_MS = Date.UTC(2024, 0, 1);
const MINUTE_MS = 60_000;
const NINETY_DAYS_MIN = 90 * 24 * 60;
/** Share of namespaced policies written without metadata.creationTimestamp (applied from files). */
const WITHOUT_TIMESTAMP = 0.3;

type ModeChoice = MtlsMode | 'ABSENT';
const NAMESPACE_MODES: Readonly<Record<ModeChoice, number>> = {
  STRICT: 45,
  PERMISSIVE: 35,
  DISABLE: 5,
  UNSET: 10,
  ABSENT: 5,
};
const WORKLOAD_MODES: Readonly<Record<ModeChoice, number>> = {
  STRICT: 35,
  PERMISSIVE: 25,
  DISABLE: 15,
  UNSET: 15,
  ABSENT: 10,
};
const PORT_MODES: Readonly<Record<MtlsMode, number>> = { STRICT: 30, PERMISSIVE: 30, DISABLE: 30, UNSET: 10 };

interface AppWorkload {
  readonly namespace: string;
  readonly app: string;
  readonly version: string;
  readonly tier: string;
  readonly ports: readonly number[];
}

export function buildSyntheticMesh(shape: MeshShape): SyntheticMesh {
  const rng = new Prng(shape.seed);
  const root = DEFAULT_ROOT_NAMESPACE;
  const width = String(shape.namespaces - 1).length;
  const namespaces = Array.from(
    { length: shape.namespaces },
    (_, i) => `ns-${String(i).padStart(width, '0')}`,
  );

  const apps: AppWorkload[] = [];
  const workloads: Workload[] = [];
  const appsPerNamespace = new Map<string, Map<string, number>>();
  for (const name of ROOT_WORKLOADS.slice(0, Math.min(ROOT_WORKLOADS.length, shape.workloads))) {
    workloads.push(
      makeWorkload(root, name, { app: name, 'pod-template-hash': hash(rng) }, [15010, 15012, 15014]),
    );
  }
  while (workloads.length < shape.workloads) {
    const namespace = rng.pick(namespaces);
    let versions = appsPerNamespace.get(namespace);
    if (!versions) {
      versions = new Map();
      appsPerNamespace.set(namespace, versions);
    }
    // A quarter of the workloads are another version of an app the namespace already runs.
    let app: string;
    if (versions.size > 0 && rng.isHit(0.25)) {
      app = rng.pick([...versions.keys()]);
    } else {
      const k = versions.size;
      app =
        k < APP_NAMES.length
          ? (APP_NAMES[k] ?? 'app')
          : `${APP_NAMES[k % APP_NAMES.length]}-${Math.floor(k / APP_NAMES.length)}`;
    }
    const count = (versions.get(app) ?? 0) + 1;
    versions.set(app, count);
    const version = `v${count}`;
    const tier = rng.pick(TIERS);
    const ports = pickPorts(rng);
    apps.push({ namespace, app, version, tier, ports });
    workloads.push(
      makeWorkload(
        namespace,
        `${app}-${version}`,
        { app, version, tier, 'pod-template-hash': hash(rng) },
        ports,
      ),
    );
  }

  const specs: PolicySpec[] = [];
  specs.push({
    namespace: root,
    name: 'default',
    spec: { mtls: { mode: 'STRICT' } },
    createdAtMs: BASE_TIME_MS,
  });
  // A leftover mesh-wide policy, newer: Istio ignores it.
  specs.push({
    namespace: root,
    name: 'default-permissive',
    spec: { mtls: { mode: 'PERMISSIVE' } },
    createdAtMs: BASE_TIME_MS + 30 * 24 * 60 * MINUTE_MS,
  });
  const rootSelector = Math.min(ROOT_SELECTOR_POLICIES, Math.max(0, shape.policies - specs.length));
  for (let i = 0; i < rootSelector; i++) {
    specs.push({
      namespace: root,
      name: `disable-${i}`,
      spec: { selector: { matchLabels: { app: rng.pick(APP_NAMES) } }, mtls: { mode: 'DISABLE' } },
      createdAtMs: timestamp(rng),
    });
  }

  let namespaceWide = 0;
  let namespaceWideDuplicates = 0;
  for (const namespace of namespaces) {
    if (specs.length >= shape.policies) break;
    if (!rng.isHit(0.9)) continue;
    specs.push({
      namespace,
      name: 'default',
      spec: withMode({}, rng.weighted(NAMESPACE_MODES)),
      createdAtMs: timestamp(rng),
    });
    namespaceWide++;
    if (specs.length < shape.policies && rng.isHit(0.02)) {
      // `selector: {}` is namespace-wide too; only the older of the two applies.
      specs.push({
        namespace,
        name: 'namespace-strict',
        spec: withMode({ selector: {} }, 'STRICT'),
        createdAtMs: timestamp(rng),
      });
      namespaceWideDuplicates++;
    }
  }

  let selector = 0;
  let selectorNeverMatching = 0;
  let withPortLevelMtls = 0;
  while (specs.length < shape.policies) {
    const target = apps.length > 0 ? rng.pick(apps) : undefined;
    if (target === undefined) break;
    const kind = rng.weighted({ app: 55, appVersion: 20, tier: 10, retired: 15 });
    const matchLabels: Record<string, string> =
      kind === 'app'
        ? { app: target.app }
        : kind === 'appVersion'
          ? { app: target.app, version: target.version }
          : kind === 'tier'
            ? { tier: target.tier }
            : { app: `retired-${selector}` };
    if (kind === 'retired') selectorNeverMatching++;
    const spec: Record<string, unknown> = withMode(
      { selector: { matchLabels } },
      rng.weighted(WORKLOAD_MODES),
    );
    if (rng.isHit(0.25)) {
      spec.portLevelMtls = portLevelMtls(rng, target.ports);
      withPortLevelMtls++;
    }
    specs.push({
      namespace: target.namespace,
      name: `${kind}-${selector}`,
      spec,
      createdAtMs: timestamp(rng),
    });
    selector++;
  }

  const policies = specs.map(validated);
  return {
    shape,
    rootNamespace: root,
    workloads,
    policies,
    declaredPorts: workloads.reduce((sum, w) => sum + w.ports.length, 0),
    mix: {
      meshWide: 1,
      meshWideDuplicates: 1,
      rootSelector,
      namespaceWide,
      namespaceWideDuplicates,
      selector,
      selectorNeverMatching,
      withPortLevelMtls,
      withoutTimestamp: policies.filter((p) => p.meta.createdAtMs === undefined).length,
    },
  };
}

interface PolicySpec {
  readonly namespace: string;
  readonly name: string;
  readonly spec: Record<string, unknown>;
  readonly createdAtMs: number | undefined;
}

function validated(s: PolicySpec): PeerAuthentication {
  const v = validatePeerAuthentication({
    apiVersion: 'security.istio.io/v1',
    kind: 'PeerAuthentication',
    meta: objectMeta(s.namespace, s.name, {}, s.createdAtMs),
    spec: s.spec,
    locate: () => undefined,
  });
  if (!v.value) {
    const problems = v.diagnostics.map((d) => d.message).join('; ');
    throw new Error(`BUG: synthetic PeerAuthentication is invalid: ${s.namespace}/${s.name} (${problems})`);
  }
  return v.value;
}

function objectMeta(
  namespace: string,
  name: string,
  labels: Record<string, string>,
  createdAtMs: number | undefined,
): ObjectMeta {
  return { name, namespace, labels, annotations: {}, createdAtMs, location: undefined };
}

function makeWorkload(
  namespace: string,
  name: string,
  labels: Record<string, string>,
  ports: readonly number[],
): Workload {
  const declared: WorkloadPort[] = ports.map((port) => ({
    port,
    name: undefined,
    protocol: 'TCP',
    container: 'app',
  }));
  return {
    kind: 'Deployment',
    meta: objectMeta(namespace, name, labels, BASE_TIME_MS),
    serviceAccount: 'default',
    ports: declared,
    membership: { inMesh: true, reason: 'synthetic: has a sidecar' },
    replicas: 1,
  };
}

/** One to three container ports, sorted, as `workloadPorts` returns them. */
function pickPorts(rng: Prng): number[] {
  const count = 1 + rng.int(3);
  const ports = new Set<number>();
  while (ports.size < count) ports.add(rng.pick(CONTAINER_PORTS));
  return [...ports].sort((a, b) => a - b);
}

/** Mostly ports the workload declares; sometimes one it does not (a stale entry). */
function portLevelMtls(rng: Prng, ports: readonly number[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const count = 1 + rng.int(2);
  for (let i = 0; i < count; i++) {
    const port = rng.isHit(0.85) ? rng.pick(ports) : rng.pick(CONTAINER_PORTS);
    const mode = rng.weighted(PORT_MODES);
    // `8080:` with no value is UNSET, like `{ mode: UNSET }`.
    out[String(port)] = mode === 'UNSET' && rng.isHit(0.5) ? null : { mode };
  }
  return out;
}

function withMode(spec: Record<string, unknown>, mode: ModeChoice): Record<string, unknown> {
  return mode === 'ABSENT' ? spec : { ...spec, mtls: { mode } };
}

/**
 * Minute granularity over 90 days, with a millisecond part: at 10,000 policies some share a second,
 * so the one-second resolution and the name tie-break take part.
 */
function timestamp(rng: Prng): number | undefined {
  if (rng.isHit(WITHOUT_TIMESTAMP)) return undefined;
  return BASE_TIME_MS + rng.int(NINETY_DAYS_MIN) * MINUTE_MS + rng.int(1000);
}

function hash(rng: Prng): string {
  return Math.floor(rng.next() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
}
