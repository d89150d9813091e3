import type { SpiffeId } from '../identity/index.js';
import { DEFAULT_TRUST_DOMAIN, meshIdentity } from '../identity/index.js';
import type {
  CallerFact,
  DestinationRuleIndex,
  MeshMembership,
  PeerAuthenticationIndex,
  ProbeFact,
  Service,
  Workload,
  WorkloadPort,
} from '../policy/index.js';
import {
  DEFAULT_CLUSTER_DOMAIN,
  DEFAULT_ROOT_NAMESPACE,
  indexDestinationRules,
  indexPeerAuthentications,
} from '../policy/index.js';
import { decideMembership, SIDECAR_CONTAINER, TLS_MODE_LABEL } from './membership.js';
import type {
  ContainerSpec,
  MeshResources,
  NamespaceResource,
  PodSource,
  WorkloadEntryResource,
} from './resources.js';

export interface MeshOptions {
  /** meshConfig.rootNamespace; Istio's default is istio-system. */
  readonly rootNamespace: string;
  readonly clusterDomain: string;
  readonly trustDomain: string;
  /** meshConfig.enableAutoMtls; Istio's default is true. */
  readonly autoMtls: boolean;
}

export const DEFAULT_MESH_OPTIONS: MeshOptions = {
  rootNamespace: DEFAULT_ROOT_NAMESPACE,
  clusterDomain: DEFAULT_CLUSTER_DOMAIN,
  trustDomain: DEFAULT_TRUST_DOMAIN,
  autoMtls: true,
};

/** A workload with what the mesh knows beyond the policy view: its containers and identity. */
export interface MeshWorkload extends Workload {
  readonly containers: readonly ContainerSpec[];
  /** The SPIFFE identity its certificate carries; undefined if the names do not make a valid ID. */
  readonly identity: SpiffeId | undefined;
  /** For controllers, a sentence naming the pod template the answer is read from. */
  readonly template: string | undefined;
}

/**
 * Everything the mesh is at one moment: the resources, the workloads they make, and the policy
 * indexes built once. Immutable; a change makes a new snapshot with a higher version.
 */
export interface MeshSnapshot {
  readonly version: number;
  readonly options: MeshOptions;
  readonly resources: MeshResources;
  readonly namespaces: ReadonlyMap<string, NamespaceResource>;
  readonly workloads: readonly MeshWorkload[];
  readonly services: readonly Service[];
  readonly peerAuthentications: PeerAuthenticationIndex;
  readonly destinationRules: DestinationRuleIndex;
}

const SIDECAR_NAMES = new Set([SIDECAR_CONTAINER, 'istio-proxy']);

function workloadPorts(containers: readonly ContainerSpec[]): WorkloadPort[] {
  const out: WorkloadPort[] = [];
  for (const c of containers) {
    if (SIDECAR_NAMES.has(c.name)) continue;
    // Plain init containers end before the pod serves; native sidecars (restartPolicy Always) serve.
    if (c.isInit && c.restartPolicy !== 'Always') continue;
    for (const p of c.ports) {
      if (!out.some((o) => o.port === p.containerPort)) {
        out.push({ port: p.containerPort, name: p.name, protocol: p.protocol, container: c.name });
      }
    }
  }
  return out.sort((a, b) => a.port - b.port);
}

/** Sources that stand for pods also present: a Deployment whose ReplicaSet or Pods are in the set. */
function ownedElsewhere(sources: readonly PodSource[]): Set<PodSource> {
  const byKey = new Map(sources.map((s) => [`${s.meta.namespace}/${s.kind}/${s.meta.name}`, s]));
  const shadowed = new Set<PodSource>();
  for (const s of sources) {
    for (const owner of s.owners) {
      const o = byKey.get(`${s.meta.namespace}/${owner.kind}/${owner.name}`);
      if (o) shadowed.add(o);
    }
  }
  return shadowed;
}

function fromPodSource(
  source: PodSource,
  namespace: NamespaceResource | undefined,
  opts: MeshOptions,
): MeshWorkload {
  const membership = decideMembership(source, namespace);
  const identity = meshIdentity(opts.trustDomain, source.meta.namespace, source.serviceAccount);
  return {
    kind: source.kind,
    // The pod's labels decide policy; the controller's own labels do not.
    meta: { ...source.meta, labels: source.podLabels, annotations: source.podAnnotations },
    serviceAccount: source.serviceAccount,
    ports: workloadPorts(source.containers),
    membership,
    replicas: source.replicas,
    containers: source.containers,
    identity: identity.ok ? identity.id : undefined,
    template:
      source.kind === 'Pod'
        ? undefined
        : `the pod template of ${source.kind} ${source.meta.namespace}/${source.meta.name}`,
  };
}

function fromWorkloadEntry(entry: WorkloadEntryResource, opts: MeshOptions): MeshWorkload {
  const inMesh = entry.labels[TLS_MODE_LABEL] === 'istio';
  const membership: MeshMembership = inMesh
    ? { inMesh: true, reason: `WorkloadEntry labelled ${TLS_MODE_LABEL}=istio` }
    : {
        inMesh: false,
        reason: `WorkloadEntry without label ${TLS_MODE_LABEL}=istio (no sidecar on that host)`,
      };
  const identity = meshIdentity(opts.trustDomain, entry.meta.namespace, entry.serviceAccount);
  return {
    kind: 'WorkloadEntry',
    meta: { ...entry.meta, labels: entry.labels },
    serviceAccount: entry.serviceAccount,
    ports: Object.entries(entry.ports)
      .map(([name, port]) => ({ port, name, protocol: 'TCP', container: undefined }))
      .sort((a, b) => a.port - b.port),
    membership,
    replicas: 1,
    containers: [],
    identity: identity.ok ? identity.id : undefined,
    template: undefined,
  };
}

export function buildMeshSnapshot(
  resources: MeshResources,
  options: Partial<MeshOptions> = {},
  version = 1,
): MeshSnapshot {
  const opts: MeshOptions = { ...DEFAULT_MESH_OPTIONS, ...options };
  const namespaces = new Map(resources.namespaces.map((n) => [n.meta.name, n]));
  const shadowed = ownedElsewhere(resources.podSources);
  const workloads: MeshWorkload[] = [
    ...resources.podSources
      .filter((s) => !shadowed.has(s))
      .map((s) => fromPodSource(s, namespaces.get(s.meta.namespace), opts)),
    ...resources.workloadEntries.map((e) => fromWorkloadEntry(e, opts)),
  ];
  return {
    version,
    options: opts,
    resources,
    namespaces,
    workloads,
    services: resources.services,
    peerAuthentications: indexPeerAuthentications(
      resources.peerAuthentications,
      opts.rootNamespace,
      resources.rejectedPeerAuthentications,
    ),
    destinationRules: indexDestinationRules(
      resources.destinationRules,
      opts.rootNamespace,
      opts.clusterDomain,
    ),
  };
}

/** The host forms a client can use for a Service, most qualified first. */
export function serviceHosts(service: Service, clusterDomain: string): string[] {
  const { name, namespace } = service.meta;
  return [`${name}.${namespace}.svc.${clusterDomain}`, `${name}.${namespace}.svc`, `${name}.${namespace}`];
}

/**
 * Calls a workload is known to make, read from its containers' env values, command and args: any
 * `svc.ns[.svc[.cluster.local]][:port]` token, or a bare `svc` of the same namespace when it stands
 * as a URL host, a `host:port`, or a whole value. A hint for analyzers, never a guess presented as fact:
 * each fact says where it was read.
 */
export function discoverCallers(snapshot: MeshSnapshot): CallerFact[] {
  const qualified = new Map<string, Service>();
  const bare = new Map<string, Service>();
  for (const s of snapshot.services) {
    for (const h of serviceHosts(s, snapshot.options.clusterDomain)) qualified.set(h, s);
    bare.set(`${s.meta.namespace}/${s.meta.name}`, s);
  }
  const out: CallerFact[] = [];
  const token = /([A-Za-z0-9][A-Za-z0-9.-]*)(?::([0-9]{1,5}))?/g;
  for (const w of snapshot.workloads) {
    const seen = new Set<string>();
    for (const c of w.containers) {
      const texts: { text: string; via: string }[] = [
        ...c.env
          .filter((e) => e.value !== undefined)
          .map((e) => ({ text: e.value ?? '', via: `env ${e.name} of container ${c.name}` })),
        ...c.command.map((t) => ({ text: t, via: `command of container ${c.name}` })),
        ...c.args.map((t) => ({ text: t, via: `args of container ${c.name}` })),
      ];
      for (const { text, via } of texts) {
        for (const m of text.matchAll(token)) {
          const host = m[1] ?? '';
          const port = m[2] === undefined ? undefined : Number(m[2]);
          const start = m.index ?? 0;
          let service = qualified.get(host.replace(/\.$/, ''));
          if (!service) {
            const standalone =
              m[0] === text || text.slice(Math.max(0, start - 3), start) === '://' || port !== undefined;
            if (standalone) service = bare.get(`${w.meta.namespace}/${host}`);
          }
          if (!service) continue;
          if (service.selector && w.meta.namespace === service.meta.namespace && isSelf(w, service)) continue;
          const servicePort =
            port !== undefined && service.ports.some((p) => p.port === port) ? port : undefined;
          const key = `${service.meta.namespace}/${service.meta.name}:${servicePort ?? '*'}`;
          if (seen.has(key)) continue;
          seen.add(key);
          out.push({ source: w, service, port: servicePort, via: `${via}: ${JSON.stringify(text)}` });
        }
      }
    }
  }
  return out;
}

function isSelf(w: Workload, s: Service): boolean {
  const sel = s.selector ?? {};
  return Object.keys(sel).length > 0 && Object.entries(sel).every(([k, v]) => w.meta.labels[k] === v);
}

/** The annotation that turns the injector's probe rewriting off for a pod. */
export const REWRITE_PROBES_ANNOTATION = 'sidecar.istio.io/rewriteAppHTTPProbers';

/** Every kubelet probe with a port, resolved to a number, and whether the injector rewrites it. */
export function collectProbes(snapshot: MeshSnapshot): ProbeFact[] {
  const out: ProbeFact[] = [];
  for (const w of snapshot.workloads) {
    const rewritten = w.meta.annotations[REWRITE_PROBES_ANNOTATION] !== 'false';
    for (const c of w.containers) {
      for (const p of c.probes) {
        if (p.handler === 'exec' || p.port === undefined) continue;
        const port =
          typeof p.port === 'number' ? p.port : c.ports.find((cp) => cp.name === p.port)?.containerPort;
        if (port === undefined) continue;
        out.push({ workload: w, container: c.name, kind: p.kind, handler: p.handler, port, rewritten });
      }
    }
  }
  return out;
}
