import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import type { FileError, ResourceSource, SourceState } from '../config/index.js';
import { readResources } from '../config/index.js';
import type { ManifestObject } from '../config/yaml-source.js';
import type { Placement, ServiceEndpointsResource } from '../mesh/index.js';
import type { KindRef } from './client.js';
import { isServed, KubeWatch } from './client.js';

/** The kinds the control plane watches, with the versions tried in order for Istio's CRDs. */
export const WATCHED: readonly (readonly KindRef[])[] = [
  [
    {
      apiVersion: 'security.istio.io/v1',
      kind: 'PeerAuthentication',
      plural: 'peerauthentications',
      namespaced: true,
    },
    {
      apiVersion: 'security.istio.io/v1beta1',
      kind: 'PeerAuthentication',
      plural: 'peerauthentications',
      namespaced: true,
    },
  ],
  [
    {
      apiVersion: 'networking.istio.io/v1',
      kind: 'DestinationRule',
      plural: 'destinationrules',
      namespaced: true,
    },
    {
      apiVersion: 'networking.istio.io/v1beta1',
      kind: 'DestinationRule',
      plural: 'destinationrules',
      namespaced: true,
    },
    {
      apiVersion: 'networking.istio.io/v1alpha3',
      kind: 'DestinationRule',
      plural: 'destinationrules',
      namespaced: true,
    },
  ],
  [{ apiVersion: 'v1', kind: 'Namespace', plural: 'namespaces', namespaced: false }],
  [{ apiVersion: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts', namespaced: true }],
  [{ apiVersion: 'v1', kind: 'Service', plural: 'services', namespaced: true }],
  [{ apiVersion: 'v1', kind: 'Pod', plural: 'pods', namespaced: true }],
  // Where Services without a selector go: EndpointSlices, and Endpoints for a Service that has no
  // slice (a cluster without the EndpointSlice mirroring controller).
  [
    { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', plural: 'endpointslices', namespaced: true },
    {
      apiVersion: 'discovery.k8s.io/v1beta1',
      kind: 'EndpointSlice',
      plural: 'endpointslices',
      namespaced: true,
    },
  ],
  [{ apiVersion: 'v1', kind: 'Endpoints', plural: 'endpoints', namespaced: true }],
];

type EndpointsLike = KubernetesObject & {
  subsets?: {
    addresses?: { ip: string; targetRef?: { kind?: string; name?: string } }[];
    ports?: { name?: string; port: number }[];
  }[];
  endpoints?: {
    addresses?: string[];
    conditions?: { ready?: boolean };
    targetRef?: { kind?: string; name?: string };
  }[];
  ports?: { name?: string; port?: number }[];
};

/** EndpointSlices and Endpoints, reduced to what a selector-less Service needs. */
function toServiceEndpoints(objs: readonly EndpointsLike[]): ServiceEndpointsResource[] {
  const out: ServiceEndpointsResource[] = [];
  const sliced = new Set(
    objs
      .filter((o) => o.kind === 'EndpointSlice')
      .map((o) => `${o.metadata?.namespace}/${o.metadata?.labels?.['kubernetes.io/service-name']}`),
  );
  for (const o of objs) {
    const namespace = o.metadata?.namespace ?? '';
    if (o.kind === 'Endpoints') {
      if (sliced.has(`${namespace}/${o.metadata?.name}`)) continue;
      for (const sub of o.subsets ?? []) {
        out.push({
          namespace,
          service: o.metadata?.name ?? '',
          ports: (sub.ports ?? []).map((p) => ({ name: p.name, port: p.port })),
          addresses: (sub.addresses ?? []).map((a) => ({
            ip: a.ip,
            pod: a.targetRef?.kind === 'Pod' ? a.targetRef.name : undefined,
          })),
        });
      }
      continue;
    }
    const service = o.metadata?.labels?.['kubernetes.io/service-name'];
    if (!service) continue;
    out.push({
      namespace,
      service,
      ports: (o.ports ?? []).flatMap((p) => (p.port === undefined ? [] : [{ name: p.name, port: p.port }])),
      addresses: (o.endpoints ?? [])
        .filter((e) => e.conditions?.ready !== false)
        .flatMap((e) =>
          (e.addresses ?? []).map((ip) => ({
            ip,
            pod: e.targetRef?.kind === 'Pod' ? e.targetRef.name : undefined,
          })),
        ),
    });
  }
  return out;
}

/** The sidecar container the injector adds; a pod with it is in the mesh. */
export const SIDECAR_CONTAINER_NAME = 'kmtls-proxy';

interface PodLike extends KubernetesObject {
  spec?: {
    containers?: { name: string; ports?: { containerPort: number }[] }[];
    initContainers?: { name: string; restartPolicy?: string }[];
  };
  status?: { podIP?: string; phase?: string; conditions?: { type: string; status: string }[] };
}

function isGone(p: PodLike): boolean {
  const phase = p.status?.phase;
  return phase === 'Succeeded' || phase === 'Failed' || p.metadata?.deletionTimestamp !== undefined;
}

/** Ready as the endpoints controller sees it; a pod without conditions yet counts as ready. */
function isReady(p: PodLike): boolean {
  const c = p.status?.conditions?.find((x) => x.type === 'Ready');
  return c === undefined || c.status === 'True';
}

/** Fields the API server sets that mean nothing to policy, dropped so they cannot trigger "changes". */
function strip(obj: KubernetesObject): Record<string, unknown> {
  const { metadata, ...rest } = obj as KubernetesObject & Record<string, unknown>;
  const m = { ...(metadata ?? {}) } as Record<string, unknown>;
  delete m.managedFields;
  delete m.resourceVersion;
  delete m.generation;
  delete m.uid;
  delete m.selfLink;
  const out: Record<string, unknown> = { ...rest, metadata: m };
  if (obj.kind !== 'Pod') delete out.status;
  return out;
}

/**
 * The cluster as a resource source: informers for every kind the mesh reads, turned into the same
 * resources the manifest loader makes. Each object is judged alone, as in a directory: a malformed
 * PeerAuthentication that the API server stored (its schema could not catch it) is reported and left
 * out, and the rest keeps working. Watches that break are re-listed, so no change is lost.
 */
export class KubeSource implements ResourceSource {
  private readonly watches: KubeWatch<KubernetesObject>[] = [];
  private state: SourceState;
  private readonly listeners = new Set<(s: SourceState) => void>();
  private readonly placementListeners = new Set<(p: Placement) => void>();
  private placement: Placement = { pods: [] };
  private timer: NodeJS.Timeout | undefined;
  private lastKey = '';
  private lastPlacementKey = '';
  readonly served: KindRef[] = [];

  private constructor(
    private readonly kc: KubeConfig,
    private readonly now: () => number,
    private readonly log: (
      level: 'info' | 'warn' | 'error',
      msg: string,
      fields?: Record<string, unknown>,
    ) => void,
  ) {
    this.state = {
      generation: 0,
      resources: readResources([]).resources,
      files: [],
      errors: [],
      diagnostics: [],
      changedAtMs: now(),
    };
  }

  static async open(
    kc: KubeConfig,
    options: {
      now?: () => number;
      log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
    } = {},
  ): Promise<KubeSource> {
    const source = new KubeSource(kc, options.now ?? Date.now, options.log ?? (() => {}));
    await source.start();
    return source;
  }

  private async start(): Promise<void> {
    for (const candidates of WATCHED) await this.watchFirstServed(candidates);
    await Promise.all(this.watches.map((w) => w.start()));
    // Fail closed: nothing is published (and the control plane does not serve) until every kind
    // has been listed once; an empty cache would read as "no policies" and push PERMISSIVE.
    for (let i = 0; !this.watches.every((w) => w.synced); i++) {
      if (i % 50 === 0 && i > 0) {
        this.log('warn', 'waiting for the first list of every watched kind', {
          pending: this.watches.filter((w) => !w.synced).map((w) => w.ref.kind),
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    this.rebuild();
    // Kinds not served at start (Istio's CRDs installed later) are looked for again.
    if (this.missing.length > 0) {
      this.recheck = setInterval(() => void this.recheckMissing(), 30_000);
      this.recheck.unref();
    }
  }

  private readonly missing: (readonly KindRef[])[] = [];
  private recheck: NodeJS.Timeout | undefined;

  private async watchFirstServed(candidates: readonly KindRef[]): Promise<boolean> {
    let chosen: KindRef | undefined;
    for (const ref of candidates) {
      if (await isServed(this.kc, ref).catch(() => false)) {
        chosen = ref;
        break;
      }
    }
    if (!chosen) {
      this.log('warn', `${candidates[0]!.kind} is not served by this cluster yet; looking again every 30s`, {
        tried: candidates.map((c) => c.apiVersion),
      });
      if (!this.missing.includes(candidates)) this.missing.push(candidates);
      return false;
    }
    this.served.push(chosen);
    const ref = chosen;
    this.watches.push(
      new KubeWatch<KubernetesObject>(this.kc, ref, {
        onChange: () => this.schedule(),
        onError: (err) =>
          this.log('warn', `watch of ${ref.kind} broke; listing again`, {
            err: (err as Error)?.message ?? String(err),
          }),
        onConnect: () => this.schedule(),
      }),
    );
    return true;
  }

  private async recheckMissing(): Promise<void> {
    for (const candidates of [...this.missing]) {
      const before = this.watches.length;
      if (await this.watchFirstServed(candidates)) {
        this.missing.splice(this.missing.indexOf(candidates), 1);
        const w = this.watches[before]!;
        await w.start();
        this.log('info', `${w.ref.kind} is served now (${w.ref.apiVersion}); reading it`);
        this.schedule();
      }
    }
    if (this.missing.length === 0 && this.recheck) clearInterval(this.recheck);
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.rebuild();
    }, 20);
  }

  /** Reads every watch's cache into resources; publishes when they changed. */
  rebuild(): void {
    const noticed = this.now();
    const objects: ManifestObject[] = [];
    const pods: PodLike[] = [];
    const endpoints: EndpointsLike[] = [];
    for (const w of this.watches) {
      for (const obj of w.list()) {
        if (obj.kind === 'EndpointSlice' || obj.kind === 'Endpoints') {
          endpoints.push(obj as EndpointsLike);
          continue;
        }
        // A pod that has ended, or is being deleted, is no workload any more (its IP may be reused).
        if (obj.kind === 'Pod' && isGone(obj as PodLike)) continue;
        const body = strip(obj);
        const name = `${obj.kind} ${obj.metadata?.namespace ? `${obj.metadata.namespace}/` : ''}${obj.metadata?.name}`;
        const location = { file: `cluster: ${name}`, line: 1, column: 1 };
        objects.push({ body, location, locate: () => location });
        if (obj.kind === 'Pod') pods.push(obj as PodLike);
      }
    }
    objects.sort((a, b) =>
      a.location.file < b.location.file ? -1 : a.location.file > b.location.file ? 1 : 0,
    );
    const serviceEndpoints = toServiceEndpoints(endpoints).sort((a, b) =>
      `${a.namespace}/${a.service}` < `${b.namespace}/${b.service}` ? -1 : 1,
    );
    const key = JSON.stringify([objects.map((o) => o.body), serviceEndpoints]);
    this.updatePlacement(pods);
    if (key === this.lastKey && this.state.generation > 0) return;
    this.lastKey = key;
    const read = readResources(objects);
    const byObject = new Map<string, FileError>();
    for (const d of read.diagnostics) {
      if (d.severity !== 'error' || !d.location) continue;
      const prior = byObject.get(d.location.file);
      byObject.set(d.location.file, {
        file: d.location.file,
        diagnostics: [...(prior?.diagnostics ?? []), d],
        servingLastGood: false,
        sinceMs: this.state.errors.find((e) => e.file === d.location?.file)?.sinceMs ?? noticed,
      });
    }
    this.state = {
      generation: this.state.generation + 1,
      resources: { ...read.resources, serviceEndpoints },
      files: objects.map((o) => o.location.file),
      errors: [...byObject.values()],
      diagnostics: read.diagnostics.filter((d) => d.severity !== 'error'),
      changedAtMs: noticed,
    };
    for (const l of this.listeners) l(this.state);
  }

  /** Pods that run (have an IP) are placed where the kubelet put them; apps listen on localhost. */
  private updatePlacement(pods: readonly PodLike[]): void {
    const placement: Placement = {
      pods: pods
        .filter((p) => p.status?.podIP && p.metadata?.name && p.metadata.namespace)
        .map((p) => {
          const sidecar =
            (p.spec?.containers ?? []).some((c) => c.name === SIDECAR_CONTAINER_NAME) ||
            (p.spec?.initContainers ?? []).some((c) => c.name === SIDECAR_CONTAINER_NAME);
          const ports = (p.spec?.containers ?? [])
            .filter((c) => c.name !== SIDECAR_CONTAINER_NAME)
            .flatMap((c) => (c.ports ?? []).map((cp) => cp.containerPort));
          return {
            namespace: p.metadata!.namespace!,
            name: p.metadata!.name!,
            podIP: p.status!.podIP!,
            sidecar,
            ready: isReady(p),
            // The pod's own IP, not loopback: a listener bound to 127.0.0.1 only is not for the network.
            apps: Object.fromEntries(ports.map((port) => [String(port), `${p.status!.podIP!}:${port}`])),
            outbound: {},
          };
        })
        .sort((a, b) => (`${a.namespace}/${a.name}` < `${b.namespace}/${b.name}` ? -1 : 1)),
    };
    const key = JSON.stringify(placement);
    if (key === this.lastPlacementKey) return;
    this.lastPlacementKey = key;
    this.placement = placement;
    for (const l of this.placementListeners) l(placement);
  }

  current(): SourceState {
    return this.state;
  }

  subscribe(listener: (state: SourceState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Where pods run, from their status: the control plane's placement in a cluster. */
  readonly placementWatch = {
    current: (): Placement => this.placement,
    subscribe: (l: (p: Placement) => void): (() => void) => {
      this.placementListeners.add(l);
      return () => this.placementListeners.delete(l);
    },
  };

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.recheck) clearInterval(this.recheck);
    for (const w of this.watches) void w.stop();
    this.listeners.clear();
    this.placementListeners.clear();
  }
}
