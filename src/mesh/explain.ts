import type {
  ChainStep,
  EdgeDecision,
  EndpointVerdict,
  IgnoredPolicy,
  NonMatchingPolicy,
  ObjectRef,
  PortMode,
  ResolvedMtlsMode,
  Service,
} from '../policy/index.js';
import {
  chainForPort,
  decideEdge,
  endpointsOf,
  formatLabels,
  modeForPort,
  refName,
  refOf,
  resolveInboundMtls,
  selectorMatches,
  servicesOf,
  targetPortOf,
} from '../policy/index.js';
import type { MeshSnapshot, MeshWorkload } from './snapshot.js';
import { serviceHosts } from './snapshot.js';

/** A lookup that failed, as a value: the CLI turns it into a coded error. */
export interface LookupFailure {
  readonly ok: false;
  readonly code: 'KMTLS_EXPLAIN_NOT_FOUND' | 'KMTLS_EXPLAIN_AMBIGUOUS' | 'KMTLS_EXPLAIN_BAD_TARGET';
  readonly message: string;
}

/** Finds `NS/NAME`: a Pod of that name first, else a controller whose pod template stands for its pods. */
export function findWorkload(
  snapshot: MeshSnapshot,
  target: string,
): { ok: true; workload: MeshWorkload } | LookupFailure {
  const slash = target.indexOf('/');
  if (slash <= 0 || slash === target.length - 1 || target.indexOf('/', slash + 1) !== -1) {
    return {
      ok: false,
      code: 'KMTLS_EXPLAIN_BAD_TARGET',
      message: `not a NAMESPACE/NAME: ${JSON.stringify(target)}`,
    };
  }
  const ns = target.slice(0, slash);
  const name = target.slice(slash + 1);
  const same = snapshot.workloads.filter((w) => w.meta.namespace === ns && w.meta.name === name);
  const pod = same.find((w) => w.kind === 'Pod');
  if (pod) return { ok: true, workload: pod };
  if (same.length === 1) return { ok: true, workload: same[0]! };
  if (same.length > 1) {
    return {
      ok: false,
      code: 'KMTLS_EXPLAIN_AMBIGUOUS',
      message: `ambiguous workload: ${target} (${same.map((w) => w.kind).join(' and ')} share the name)`,
    };
  }
  // A pod as the local mesh names it: `<controller>-<ordinal>`, one replica of a pod template.
  const replica = /^(.+)-([0-9]+)$/.exec(name);
  if (replica) {
    const owners = snapshot.workloads.filter(
      (w) =>
        w.meta.namespace === ns &&
        w.kind !== 'Pod' &&
        w.meta.name === replica[1] &&
        Number(replica[2]) < w.replicas,
    );
    if (owners.length === 1) return { ok: true, workload: owners[0]! };
  }
  const inNs = snapshot.workloads
    .filter((w) => w.meta.namespace === ns)
    .map((w) => `${w.kind} ${w.meta.name}`);
  return {
    ok: false,
    code: 'KMTLS_EXPLAIN_NOT_FOUND',
    message:
      `no workload ${target} in the manifests` +
      (inNs.length > 0
        ? ` (namespace ${ns} has: ${inNs.slice(0, 10).join(', ')})`
        : ` (namespace ${ns} has no workloads)`),
  };
}

export interface PortExplanation extends PortMode {
  readonly name: string | undefined;
  readonly container: string | undefined;
  /** Whether the pod spec declares it; a portLevelMtls key may name an undeclared port. */
  readonly isDeclared: boolean;
  /** Services that send traffic to this port. */
  readonly services: readonly { readonly service: string; readonly port: number }[];
}

export interface PodExplanation {
  readonly workload: {
    readonly kind: string;
    readonly namespace: string;
    readonly name: string;
    readonly location: ObjectRef['location'];
    readonly labels: Readonly<Record<string, string>>;
    readonly serviceAccount: string;
    readonly identity: string | undefined;
    readonly inMesh: boolean;
    readonly meshReason: string;
    readonly template: string | undefined;
  };
  /** The mode for `port` when one was asked, else the workload-level mode. */
  readonly mode: ResolvedMtlsMode;
  readonly port: number | undefined;
  readonly workloadMode: ResolvedMtlsMode;
  /** Declared container ports, then portLevelMtls ports that are not declared. */
  readonly ports: readonly PortExplanation[];
  readonly chain: readonly ChainStep[];
  readonly ignored: readonly IgnoredPolicy[];
  readonly notMatching: readonly NonMatchingPolicy[];
  /** Selector policies in other namespaces that match these labels but cannot apply here. */
  readonly elsewhere: readonly { readonly policy: ObjectRef; readonly message: string }[];
  /** Whether a sidecar enforces the mode; without one the mode is what would apply. */
  readonly enforced: boolean;
  /** Things a reader should know: assumed order, a Service port given for --port, no sidecar. */
  readonly notes: readonly string[];
}

function servicePortsTo(
  snapshot: MeshSnapshot,
  w: MeshWorkload,
  port: number,
): { service: string; port: number }[] {
  const out: { service: string; port: number }[] = [];
  for (const s of servicesOf(w, snapshot.services)) {
    for (const sp of s.ports)
      if (targetPortOf(sp, w) === port) out.push({ service: refName(s.meta), port: sp.port });
  }
  return out;
}

/** The order assumption, said once, when any policy that matters has no creationTimestamp. */
export function orderAssumption(refs: readonly ObjectRef[]): string | undefined {
  if (refs.length === 0) return undefined;
  return (
    `no creationTimestamp on ${refs.map(refName).join(', ')}: assumed created when applied, after every ` +
    'policy that has one, and together, so among them the name decides'
  );
}

export function explainPod(snapshot: MeshSnapshot, w: MeshWorkload, port?: number): PodExplanation {
  const r = resolveInboundMtls(snapshot.peerAuthentications, {
    namespace: w.meta.namespace,
    labels: w.meta.labels,
  });
  const ports: PortExplanation[] = w.ports.map((p) => ({
    ...modeForPort(r, p.port),
    name: p.name,
    container: p.container,
    isDeclared: true,
    services: servicePortsTo(snapshot, w, p.port),
  }));
  for (const [p, entry] of r.portLevel) {
    if (!w.ports.some((d) => d.port === p)) {
      ports.push({
        ...entry,
        name: undefined,
        container: undefined,
        isDeclared: false,
        services: servicePortsTo(snapshot, w, p),
      });
    }
  }
  const notes: string[] = [];
  if (port !== undefined && !w.ports.some((p) => p.port === port)) {
    const viaService = servicesOf(w, snapshot.services).flatMap((s) =>
      s.ports.filter((sp) => sp.port === port).map((sp) => ({ s, target: targetPortOf(sp, w) })),
    );
    const mapped = viaService.find((v) => v.target !== undefined && v.target !== port);
    if (mapped) {
      notes.push(
        `port ${port} is a port of Service ${refName(mapped.s.meta)}, which sends it to container port ${mapped.target}; ` +
          `PeerAuthentication works on container ports: see --port ${mapped.target}`,
      );
    } else {
      notes.push(
        `port ${port} is not a declared container port; the mode shown applies if the application listens there`,
      );
    }
  }
  if (!w.membership.inMesh) {
    notes.push(
      `no sidecar (${w.membership.reason}): nothing enforces this mode, every port accepts whatever the application accepts`,
    );
  }
  const relevant = [r.meshPolicy, r.namespacePolicy, r.workloadPolicy]
    .filter((p) => p !== undefined)
    .filter((p) => p.meta.createdAtMs === undefined);
  const contested = r.ignored.some((i) => i.reason.startsWith('NEWER_'));
  const assumption = contested ? orderAssumption(relevant.map((p) => refOf(p.kind, p.meta))) : undefined;
  if (assumption) notes.push(assumption);

  const elsewhere = snapshot.peerAuthentications.all
    .filter(
      (p) =>
        p.meta.namespace !== w.meta.namespace &&
        p.meta.namespace !== snapshot.peerAuthentications.rootNamespace &&
        p.selector !== undefined &&
        Object.keys(p.selector.matchLabels).length > 0 &&
        selectorMatches(p.selector.matchLabels, w.meta.labels),
    )
    .map((p) => ({
      policy: refOf(p.kind, p.meta),
      message: `its selector ${formatLabels(p.selector?.matchLabels ?? {})} matches this workload's labels, but it is in namespace ${p.meta.namespace}: a PeerAuthentication applies only in its own namespace (and the root namespace)`,
    }));

  const chosen = port === undefined ? undefined : modeForPort(r, port);
  return {
    workload: {
      kind: w.kind,
      namespace: w.meta.namespace,
      name: w.meta.name,
      location: w.meta.location,
      labels: w.meta.labels,
      serviceAccount: w.serviceAccount,
      identity: w.identity?.uri,
      inMesh: w.membership.inMesh,
      meshReason: w.membership.reason,
      template: w.template,
    },
    mode: chosen?.mode ?? r.workloadMode,
    port,
    workloadMode: r.workloadMode,
    ports,
    chain: port === undefined ? r.chain : chainForPort(r, port),
    ignored: r.ignored,
    notMatching: r.notMatching,
    elsewhere,
    enforced: w.membership.inMesh,
    notes,
  };
}

/** One endpoint's outcome, as `explain edge -o json` prints it. */
export interface EdgeEndpointExplanation extends Omit<EndpointVerdict, 'workload'> {
  /** `namespace/name` of the Pod (or of the controller whose template stands for its pods). */
  readonly pod: string;
  readonly kind: string;
  readonly location: ObjectRef['location'];
}

export interface EdgeExplanation {
  readonly source: {
    readonly kind: string;
    readonly namespace: string;
    readonly name: string;
    readonly inMesh: boolean;
    readonly meshReason: string;
    readonly identity: string | undefined;
  };
  readonly host: string;
  readonly port: number;
  readonly service: string | undefined;
  readonly subset: string | undefined;
  readonly destinationRule: EdgeDecision['destinationRule'];
  readonly clusterTls: EdgeDecision['clusterTls'];
  readonly serviceMtlsMode: EdgeDecision['serviceMtlsMode'];
  readonly passthrough: boolean;
  /** Set when the edge fails before any endpoint is chosen (unknown subset, no endpoints). */
  readonly problem: EdgeDecision['problem'];
  /** For a host outside the mesh: what the client sends, and that the outcome depends on the server. */
  readonly outside: EdgeDecision['outside'];
  readonly endpoints: readonly EdgeEndpointExplanation[];
  readonly notes: readonly string[];
}

/** Resolves `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<domain>` (or an outside host) the way cluster DNS does. */
export function resolveHost(
  snapshot: MeshSnapshot,
  clientNamespace: string,
  host: string,
): { fqdn: string; service: Service | undefined } {
  const domain = snapshot.options.clusterDomain;
  const h = host.replace(/\.$/, '');
  const parts = h.split('.');
  const candidates =
    parts.length === 1
      ? [`${h}.${clientNamespace}.svc.${domain}`]
      : [h, `${h}.svc.${domain}`, `${h}.${domain}`];
  for (const c of candidates) {
    const service = snapshot.services.find((s) => serviceHosts(s, domain)[0] === c);
    if (service) return { fqdn: c, service };
  }
  return { fqdn: parts.length === 1 ? candidates[0]! : h, service: undefined };
}

export function explainEdge(
  snapshot: MeshSnapshot,
  source: MeshWorkload,
  hostPort: string,
  subset?: string,
): { ok: true; explanation: EdgeExplanation } | LookupFailure {
  const m = /^(.+):([0-9]{1,5})$/.exec(hostPort);
  if (!m)
    return {
      ok: false,
      code: 'KMTLS_EXPLAIN_BAD_TARGET',
      message: `not a HOST:PORT: ${JSON.stringify(hostPort)}`,
    };
  const port = Number(m[2]);
  const { fqdn, service } = resolveHost(snapshot, source.meta.namespace, m[1]!);
  const notes: string[] = [];
  let endpoints: { workload: MeshWorkload; port: number }[] = [];
  if (service) {
    const sp = service.ports.find((p) => p.port === port);
    if (!sp) {
      return {
        ok: false,
        code: 'KMTLS_EXPLAIN_NOT_FOUND',
        message: `port ${port} is not a port of Service ${refName(service.meta)} (ports: ${service.ports.map((p) => p.port).join(', ') || 'none'})`,
      };
    }
    endpoints = endpointsOf(service, sp, snapshot.workloads) as { workload: MeshWorkload; port: number }[];
    if (service.selector === undefined)
      notes.push(
        `Service ${refName(service.meta)} has no selector: its endpoints are not known from the manifests`,
      );
  } else {
    notes.push(`${fqdn} is not a Service in the manifests: treated as a destination outside the mesh`);
  }
  const decision = decideEdge(
    {
      peerAuthentications: snapshot.peerAuthentications,
      destinationRules: snapshot.destinationRules,
      autoMtls: snapshot.options.autoMtls,
    },
    {
      source: {
        ref: refOf(source.kind, source.meta),
        namespace: source.meta.namespace,
        labels: source.meta.labels,
        inMesh: source.membership.inMesh,
      },
      host: fqdn,
      servicePort: port,
      service: service
        ? {
            ref: refOf('Service', service.meta),
            namespace: service.meta.namespace,
            headless: service.headless,
          }
        : undefined,
      subset,
      endpoints,
    },
  );
  return {
    ok: true,
    explanation: {
      source: {
        kind: source.kind,
        namespace: source.meta.namespace,
        name: source.meta.name,
        inMesh: source.membership.inMesh,
        meshReason: source.membership.reason,
        identity: source.identity?.uri,
      },
      host: fqdn,
      port,
      service: service ? refName(service.meta) : undefined,
      subset,
      destinationRule: decision.destinationRule,
      clusterTls: decision.clusterTls,
      serviceMtlsMode: decision.serviceMtlsMode,
      passthrough: decision.passthrough,
      problem: decision.problem,
      outside: decision.outside,
      endpoints: decision.endpoints.map(({ workload, ...rest }) => ({
        pod: refName(workload),
        kind: workload.kind,
        location: workload.location,
        ...rest,
      })),
      notes,
    },
  };
}
