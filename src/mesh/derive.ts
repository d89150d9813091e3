import type { ChainStep, Service, ServicePort } from '../policy/index.js';
import {
  chainOf,
  decideEdge,
  effectiveInboundMtls,
  effectiveModeForPort,
  endpointsOf,
  refName,
  refOf,
  targetPortOf,
} from '../policy/index.js';
import type { OutboundConfig, ProxyConfig } from './proxy-config.js';
import type { MeshSnapshot, MeshWorkload } from './snapshot.js';
import { serviceHosts } from './snapshot.js';

/**
 * From a snapshot to what each sidecar enforces: the pods a snapshot stands for, and the
 * `ProxyConfig` of one of them. Pure; where things listen is the caller's business (`PodAddressing`):
 * loopback addresses in the local mesh, the pod's own network in a cluster.
 */

/** One running pod: a Pod, or one replica of a controller's pod template. */
export interface PodInstance {
  readonly namespace: string;
  readonly name: string;
  readonly workload: MeshWorkload;
  /** 0 for a Pod; the replica's ordinal for a controller. */
  readonly ordinal: number;
}

/** A pod with the address the network gave it. */
export interface PlacedPod extends PodInstance {
  readonly podIP: string;
  /** A pod that is not Ready is no endpoint of its Services (it still gets its own config). */
  readonly ready?: boolean;
}

/** Where a pod's parts listen, decided by whoever runs the pods. */
export interface PodAddressing {
  /** Where the application of `pod` listens for `containerPort`. */
  appAddress(pod: PlacedPod, containerPort: number): string;
  /** Where the sidecar of `pod` takes the application's calls to `service:port`. */
  outboundAddress(pod: PlacedPod, service: Service, port: number): string;
  /** The sidecar's admin endpoint. */
  adminAddress(pod: PlacedPod): string | undefined;
}

/**
 * The pods a snapshot stands for: a Pod is itself; a controller makes `replicas` pods named
 * `<name>-<ordinal>` (StatefulSet style; locally there is no ReplicaSet hash to borrow). WorkloadEntries
 * are VMs, not pods, and are left out.
 */
export function podInstances(snapshot: MeshSnapshot): PodInstance[] {
  const out: PodInstance[] = [];
  for (const w of snapshot.workloads) {
    if (w.kind === 'WorkloadEntry') continue;
    const { namespace, name } = w.meta;
    if (w.kind === 'Pod') {
      out.push({ namespace, name, workload: w, ordinal: 0 });
      continue;
    }
    for (let i = 0; i < Math.max(0, w.replicas); i++) {
      out.push({ namespace, name: `${name}-${i}`, workload: w, ordinal: i });
    }
  }
  return out.sort((a, b) =>
    a.namespace === b.namespace ? compareNames(a.name, b.name) : a.namespace < b.namespace ? -1 : 1,
  );
}

/** `web-2` before `web-10`. */
function compareNames(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** Istio's protocols (`protocol.Parse`, case-insensitive) that are HTTP: `IsHTTP()`. */
const HTTP_PROTOCOLS = new Set(['http', 'http2', 'grpc', 'grpc-web', 'http_proxy']);
/** Those that are HTTP/2 to the application: `IsHTTP2()`. */
const HTTP2_PROTOCOLS = new Set(['http2', 'grpc', 'grpc-web']);
/** Istio's protocols that are not HTTP: a name or appProtocol among them is TCP, not "unknown". */
const OTHER_PROTOCOLS = new Set(['tcp', 'udp', 'https', 'tls', 'mongo', 'redis', 'mysql']);

/**
 * The protocol Istio reads from a Service port (`kube.ConvertProtocol`): a known `appProtocol`
 * first (`kubernetes.io/h2c` is HTTP/2, `kubernetes.io/ws` HTTP, `kubernetes.io/wss` TLS), else the
 * port name (`grpc-web*`, or the prefix before the first `-`); `unknown` when neither says.
 */
function istioProtocol(port: Pick<ServicePort, 'name' | 'appProtocol'>): string {
  const app = port.appProtocol?.toLowerCase();
  if (app === 'kubernetes.io/h2c') return 'http2';
  if (app === 'kubernetes.io/http' || app === 'kubernetes.io/ws') return 'http';
  if (app === 'kubernetes.io/wss') return 'tls';
  if (app !== undefined && (HTTP_PROTOCOLS.has(app) || OTHER_PROTOCOLS.has(app))) return app;
  const name = (port.name ?? '').toLowerCase();
  if (name.startsWith('grpc-web')) return 'grpc-web';
  const prefix = name.split('-')[0]!;
  return HTTP_PROTOCOLS.has(prefix) || OTHER_PROTOCOLS.has(prefix) ? prefix : 'unknown';
}

/**
 * The protocol a sidecar speaks on a port, as Istio infers it. HTTP ports carry HTTP/1.1 and
 * HTTP/2 (gRPC, h2c) alike; kmtls treats a port Istio would sniff (no known protocol) as TCP.
 */
export function portProtocol(port: Pick<ServicePort, 'name' | 'appProtocol'> | undefined): 'http' | 'tcp' {
  return port && HTTP_PROTOCOLS.has(istioProtocol(port)) ? 'http' : 'tcp';
}

/** Whether the application behind a Service port speaks HTTP/2 (Istio's `IsHTTP2()`: http2, grpc, grpc-web). */
export function portIsHttp2(port: Pick<ServicePort, 'name' | 'appProtocol'> | undefined): boolean {
  return port !== undefined && HTTP2_PROTOCOLS.has(istioProtocol(port));
}

/** The policy that set the mode: the last step of the chain that set it, or `default`. */
export function decidingPolicy(chain: readonly ChainStep[]): string {
  for (let i = chain.length - 1; i >= 0; i--) {
    const step = chain[i]!;
    if (step.effect === 'sets' && step.policy) return `${step.policy.namespace}/${step.policy.name}`;
  }
  return 'default';
}

/** Every Service port that sends traffic to `containerPort` of the workload. */
function servicePortsTo(snapshot: MeshSnapshot, w: MeshWorkload, containerPort: number): ServicePort[] {
  const out: ServicePort[] = [];
  for (const s of snapshot.services) {
    if (s.meta.namespace !== w.meta.namespace || !s.selector || Object.keys(s.selector).length === 0)
      continue;
    if (!Object.entries(s.selector).every(([k, v]) => w.meta.labels[k] === v)) continue;
    for (const sp of s.ports) if (targetPortOf(sp, w) === containerPort) out.push(sp);
  }
  return out;
}

/** The inbound side of one pod: every declared container port with its mode and protocol. */
export function inboundPorts(
  snapshot: MeshSnapshot,
  w: MeshWorkload,
): {
  port: number;
  mode: ProxyConfig['inbound'][number]['mode'];
  policy: string;
  protocol: 'http' | 'tcp';
  http2: boolean;
}[] {
  const effective = effectiveInboundMtls(snapshot.peerAuthentications, {
    namespace: w.meta.namespace,
    labels: w.meta.labels,
  });
  return w.ports.map((p) => {
    const mode = effectiveModeForPort(effective, p.port);
    const policy = decidingPolicy(chainOf(effective, p.port));
    // Istio reads the protocol from the Service port in front; HTTP only when every such port says so.
    const fronts = servicePortsTo(snapshot, w, p.port);
    const protocol = fronts.length > 0 && fronts.every((sp) => portProtocol(sp) === 'http') ? 'http' : 'tcp';
    const http2 = protocol === 'http' && fronts.every((sp) => portIsHttp2(sp));
    return { port: p.port, mode, policy, protocol, http2 };
  });
}

export interface DeriveOptions {
  readonly version: string;
  readonly trustDomains?: readonly string[];
  readonly limits?: Partial<ProxyConfig['limits']>;
  /**
   * Transparent interception (a cluster with iptables in the pod): one inbound and one outbound
   * listener; outbound services are recognised by their original destination (ClusterIP:port, or
   * the pods' IP:port for a headless Service) instead of a listener of their own.
   */
  readonly interception?: { readonly inbound: string; readonly outbound: string };
}

/**
 * The ProxyConfig of one pod: an inbound listener per container port with the mode the policy core
 * resolves, and an outbound listener per Service port of the mesh with, for each endpoint pod, what
 * the client side sends there (auto mTLS / DestinationRule) and the identities secure naming accepts.
 */
export function deriveProxyConfig(
  snapshot: MeshSnapshot,
  pods: readonly PlacedPod[],
  pod: PlacedPod,
  addressing: PodAddressing,
  options: DeriveOptions,
): ProxyConfig {
  const w = pod.workload;
  const identity =
    w.identity?.uri ?? `spiffe://${snapshot.options.trustDomain}/ns/${pod.namespace}/sa/default`;
  const transparent = options.interception;
  const inbound = inboundPorts(snapshot, w).map((p) => ({
    port: p.port,
    ...(transparent ? {} : { listen: `${pod.podIP}:${p.port}` }),
    forward: addressing.appAddress(pod, p.port),
    mode: p.mode,
    protocol: p.protocol,
    ...(p.http2 ? { http2: true } : {}),
    policy: p.policy,
  }));
  const podsOf = new Map<MeshWorkload, PlacedPod[]>();
  for (const p of pods) {
    const list = podsOf.get(p.workload) ?? [];
    list.push(p);
    podsOf.set(p.workload, list);
  }
  const outbound: OutboundConfig[] = [];
  const matched = new Set<string>();
  for (const service of snapshot.services) {
    if (service.externalName !== undefined) continue;
    for (const sp of service.ports) {
      const out = outboundFor(snapshot, podsOf, pod, service, sp);
      if (!out) continue;
      if (!transparent) {
        outbound.push({ ...out, listen: addressing.outboundAddress(pod, service, sp.port) });
        continue;
      }
      // What the application dials: the ClusterIP, or for a headless Service each pod's IP (DNS
      // answers with those). The first Service to claim an address keeps it.
      const candidates = service.clusterIP
        ? [`${service.clusterIP}:${sp.port}`]
        : out.endpoints.map((e) => e.address);
      const match = candidates.filter((m) => !matched.has(m));
      for (const m of match) matched.add(m);
      if (match.length > 0) outbound.push({ ...out, match });
    }
  }
  let interception: ProxyConfig['interception'];
  if (transparent) {
    const effective = effectiveInboundMtls(snapshot.peerAuthentications, {
      namespace: w.meta.namespace,
      labels: w.meta.labels,
    });
    // portLevelMtls entries for ports no container declares: the passthrough applies them too.
    const declared = new Set(w.ports.map((p) => p.port));
    const portModes: NonNullable<ProxyConfig['interception']>['portModes'] = {};
    for (const port of effective.workloadPolicy?.portLevelMtls?.keys() ?? []) {
      if (declared.has(port)) continue;
      portModes[String(port)] = {
        mode: effectiveModeForPort(effective, port),
        policy: decidingPolicy(chainOf(effective, port)),
      };
    }
    interception = {
      inbound: transparent.inbound,
      outbound: transparent.outbound,
      defaultMode: effective.workloadMode,
      defaultPolicy: decidingPolicy(chainOf(effective)),
      ...(Object.keys(portModes).length > 0 ? { portModes } : {}),
    };
  }
  const admin = addressing.adminAddress(pod);
  return {
    version: options.version,
    workload: { namespace: pod.namespace, name: pod.name, identity },
    trustDomains: [...(options.trustDomains ?? [snapshot.options.trustDomain])],
    inbound,
    outbound,
    ...(admin ? { admin } : {}),
    ...(interception ? { interception } : {}),
    // In a pod the kernel picks the pod's address itself; locally it must be named.
    ...(transparent ? {} : { sourceAddress: pod.podIP }),
    limits: {
      maxConnections: 10_000,
      handshakeTimeoutMs: 10_000,
      idleTimeoutMs: 3_600_000,
      maxHeaderBytes: 64 * 1024,
      detectTimeoutMs: 300,
      drainMs: 5_000,
      ...options.limits,
    },
  };
}

function outboundFor(
  snapshot: MeshSnapshot,
  podsOf: ReadonlyMap<MeshWorkload, PlacedPod[]>,
  pod: PlacedPod,
  service: Service,
  sp: ServicePort,
): Omit<OutboundConfig, 'listen'> | undefined {
  const w = pod.workload;
  const host = serviceHosts(service, snapshot.options.clusterDomain)[0]!;
  // A Service without a selector: the cluster's Endpoints say where it goes. Addresses of pods are
  // judged like any pod endpoint; other addresses are outside the mesh and get plaintext.
  const listed = service.selector === undefined ? listedEndpoints(snapshot, service, sp) : undefined;
  const endpoints = (listed?.pods ?? endpointsOf(service, sp, snapshot.workloads)) as {
    workload: MeshWorkload;
    port: number;
  }[];
  const decision = decideEdge(
    {
      peerAuthentications: snapshot.peerAuthentications,
      destinationRules: snapshot.destinationRules,
      autoMtls: snapshot.options.autoMtls,
    },
    {
      source: {
        ref: refOf(w.kind, w.meta),
        namespace: w.meta.namespace,
        labels: w.meta.labels,
        inMesh: true,
      },
      host,
      servicePort: sp.port,
      service: {
        ref: refOf('Service', service.meta),
        namespace: service.meta.namespace,
        headless: service.headless,
      },
      subset: undefined,
      endpoints,
    },
  );
  const byWorkload = new Map(endpoints.map((e) => [refName(e.workload.meta), e]));
  const list: OutboundConfig['endpoints'] = [];
  const identities = new Set<string>();
  for (const v of decision.endpoints) {
    const ep = byWorkload.get(`${v.workload.namespace}/${v.workload.name}`);
    if (!ep) continue;
    if (ep.workload.identity && ep.workload.membership.inMesh) identities.add(ep.workload.identity.uri);
    for (const p of podsOf.get(ep.workload) ?? []) {
      if (p.ready === false) continue;
      list.push({ address: `${p.podIP}:${ep.port}`, tls: v.clientTls, workload: `${p.namespace}/${p.name}` });
    }
  }
  for (const address of listed?.others ?? []) list.push({ address, tls: 'DISABLE' });
  if (list.length === 0) return undefined;
  const tls = decision.clusterTls.tls;
  const drTls =
    tls && (tls.mode === 'SIMPLE' || tls.mode === 'MUTUAL')
      ? {
          ...(tls.caCertificates ? { caCertificates: tls.caCertificates } : {}),
          ...(tls.mode === 'MUTUAL' && tls.clientCertificate
            ? { clientCertificate: tls.clientCertificate }
            : {}),
          ...(tls.mode === 'MUTUAL' && tls.privateKey ? { privateKey: tls.privateKey } : {}),
          ...(tls.sni ? { sni: tls.sni } : {}),
          ...(tls.subjectAltNames && tls.subjectAltNames.length > 0
            ? { subjectAltNames: [...tls.subjectAltNames] }
            : {}),
        }
      : undefined;
  return {
    name: `${host}:${sp.port}`,
    protocol: portProtocol(sp),
    endpoints: list,
    expectedIdentities: [...identities].sort(),
    ...(drTls ? { tls: drTls } : {}),
  };
}

/** The listed endpoints of a selector-less Service port: pods by their workload, the rest by address. */
function listedEndpoints(
  snapshot: MeshSnapshot,
  service: Service,
  sp: ServicePort,
): { pods: { workload: MeshWorkload; port: number }[]; others: string[] } {
  const pods: { workload: MeshWorkload; port: number }[] = [];
  const others: string[] = [];
  for (const e of snapshot.resources.serviceEndpoints ?? []) {
    if (e.namespace !== service.meta.namespace || e.service !== service.meta.name) continue;
    // The endpoint port is the one named like the Service port (or the only one).
    const port =
      e.ports.find((p) => p.name === sp.name)?.port ?? (e.ports.length === 1 ? e.ports[0]!.port : undefined);
    if (port === undefined) continue;
    for (const a of e.addresses) {
      const w = a.pod
        ? snapshot.workloads.find(
            (x) => x.kind === 'Pod' && x.meta.namespace === e.namespace && x.meta.name === a.pod,
          )
        : undefined;
      if (w) {
        if (!pods.some((p) => p.workload === w && p.port === port)) pods.push({ workload: w, port });
      } else others.push(`${a.ip}:${port}`);
    }
  }
  return { pods, others };
}
