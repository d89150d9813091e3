import { KmtlsError } from '../errors.js';
import {
  decideMembership,
  KMTLS_INJECTION_LABEL,
  REWRITE_PROBES_ANNOTATION,
  SIDECAR_CONTAINER,
  TLS_MODE_LABEL,
} from '../mesh/index.js';
import { isRecord } from '../policy/index.js';
import type { AppProber } from '../proxy/status-port.js';
import { APP_HEALTH_PREFIX, APP_PROBERS_ENV, READY_PATH } from '../proxy/status-port.js';
import {
  CONTROL_PLANE_NAME,
  CONTROL_PLANE_PORTS,
  DEFAULT_KMTLS_NAMESPACE,
  defaultImage,
  ROOT_CERT_CONFIG_MAP,
  SIDECAR_UID,
} from './constants.js';
import type { InterceptionOptions, Selection } from './iptables.js';
import {
  DEFAULT_INBOUND_PORT,
  DEFAULT_OUTBOUND_PORT,
  INTERCEPTION_ANNOTATIONS,
  interceptionFromAnnotations,
} from './iptables.js';

// ---------------------------------------------------------------------------------------------
// The contract: every name the injector writes, which the webhook, the iptables command, the
// proxy CLI and the installer build against. Change one here and everything else follows.
// ---------------------------------------------------------------------------------------------

export {
  INJECT_LABEL,
  ISTIO_INJECTION_LABEL,
  KMTLS_INJECT_LABEL,
  KMTLS_INJECTION_LABEL,
  REWRITE_PROBES_ANNOTATION,
  SIDECAR_CONTAINER,
  TLS_MODE_LABEL,
} from '../mesh/index.js';
export { APP_HEALTH_PREFIX, APP_PROBERS_ENV, READY_PATH } from '../proxy/status-port.js';

/** The value of {@link TLS_MODE_LABEL} on an injected pod. */
export const TLS_MODE_ISTIO = 'istio';
/** The init container that installs the iptables redirection. */
export const INIT_CONTAINER = 'kmtls-init';
/** Istio's own sidecar: a pod that has it is never given a second one. */
export const ISTIO_SIDECAR_CONTAINER = 'istio-proxy';
/** JSON of {@link InjectionStatus}: what was added. Its presence marks the pod as injected. */
export const STATUS_ANNOTATION = 'kmtls.io/status';
/** JSON of {@link AppProbers}-shaped originals of the rewritten probes (`{}` when none). */
export const REWRITTEN_PROBES_ANNOTATION = 'kmtls.io/rewritten-probes';

/** Istio's traffic-capture annotations (`traffic.sidecar.istio.io/*`), read as Istio reads them. */
export const TRAFFIC_ANNOTATIONS = INTERCEPTION_ANNOTATIONS;

/** The `kmtls iptables apply` flags each annotation becomes. */
export const IPTABLES_FLAGS = {
  proxyUid: '--proxy-uid',
  inboundPort: '--inbound-port',
  outboundPort: '--outbound-port',
  includeInboundPorts: '--include-inbound-ports',
  excludeInboundPorts: '--exclude-inbound-ports',
  excludeOutboundPorts: '--exclude-outbound-ports',
  excludeOutboundCidrs: '--exclude-outbound-cidrs',
  includeOutboundCidrs: '--include-outbound-cidrs',
} as const;

/** The uid and gid the sidecar runs as; iptables lets this uid's traffic through uncaptured. */
export const PROXY_UID = SIDECAR_UID;
export const PROXY_GID = SIDECAR_UID;
/** Where iptables sends captured inbound and outbound connections. */
export const INBOUND_CAPTURE_PORT = DEFAULT_INBOUND_PORT;
export const OUTBOUND_CAPTURE_PORT = DEFAULT_OUTBOUND_PORT;
/** The sidecar's status port: plaintext, never captured, where the kubelet's probes land. */
export const STATUS_PORT = 15020;
export const STATUS_PORT_NAME = 'http-status';
export const STATUS_LISTEN = `0.0.0.0:${STATUS_PORT}`;
/** The sidecar's admin endpoint, on loopback only. */
export const ADMIN_LISTEN = '127.0.0.1:15000';
export const DEFAULT_CONTROL_PLANE_ADDRESS = `${CONTROL_PLANE_NAME}.${DEFAULT_KMTLS_NAMESPACE}.svc:${CONTROL_PLANE_PORTS.api.port}`;
/** The image of the sidecar and of the init container (the same image). */
export const DEFAULT_PROXY_IMAGE = defaultImage('0.1.0');

export const TOKEN_VOLUME = 'kmtls-token';
export const TOKEN_MOUNT_PATH = '/var/run/secrets/kmtls/tokens';
export const TOKEN_FILE_NAME = 'token';
export const TOKEN_FILE = `${TOKEN_MOUNT_PATH}/${TOKEN_FILE_NAME}`;
/** The audience of the projected ServiceAccount token the control plane checks with TokenReview. */
export const TOKEN_AUDIENCE = 'kmtls';
export const TOKEN_EXPIRATION_SECONDS = 43200;
export const ROOT_VOLUME = 'kmtls-root';
export const ROOT_MOUNT_PATH = '/var/run/secrets/kmtls/root';
export const ROOT_CERT_FILE = `${ROOT_MOUNT_PATH}/root-cert.pem`;
/** The ConfigMap the controller publishes the root bundle as, in every namespace. */
export const ROOT_CONFIGMAP = ROOT_CERT_CONFIG_MAP;

/** Downward-API env of the sidecar. */
export const POD_ENV = { name: 'POD_NAME', namespace: 'POD_NAMESPACE', ip: 'POD_IP' } as const;

/**
 * Holds the application until the sidecar is ready when the sidecar is a plain container (Istio's
 * holdApplicationUntilProxyStarts): the kubelet starts the next container only after postStart.
 */
export const PROXY_WAIT_COMMAND = ['node', '/app/bin/kmtls.js', 'proxy-wait', '--timeout', '60s'] as const;

/**
 * Native sidecars (init containers with `restartPolicy: Always`, KEP-753): alpha behind the
 * `SidecarContainers` feature gate in 1.28, beta and on by default from 1.29.
 */
export const NATIVE_SIDECAR_MIN_VERSION = { major: 1, minor: 29 } as const;

/** The kinds whose pod template `kmtls inject -f` injects. */
export const INJECTABLE_KINDS = [
  'Pod',
  'Deployment',
  'StatefulSet',
  'DaemonSet',
  'ReplicaSet',
  'ReplicationController',
  'Job',
  'CronJob',
] as const;
export type InjectableKind = (typeof INJECTABLE_KINDS)[number];

const PROBE_FIELDS = [
  ['livenessProbe', 'livez'],
  ['readinessProbe', 'readyz'],
  ['startupProbe', 'startupz'],
] as const;

// ---------------------------------------------------------------------------------------------

export interface InjectOptions {
  /** The sidecar image, also used for the init container. */
  readonly image: string;
  /** The sidecar as an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29, or 1.28 with the feature gate). */
  readonly nativeSidecar: boolean;
  readonly controlPlaneAddress?: string;
  /** The mesh's trust domain (default cluster.local): the sidecar checks peers and the control plane in it. */
  readonly trustDomain?: string;
  /** The SPIFFE ID the control plane serves with (default: kmtls-controlplane in kmtls-system). */
  readonly controlPlaneIdentity?: string;
}

/** What the kmtls.io/status annotation records. */
export interface InjectionStatus {
  readonly image: string;
  readonly nativeSidecar: boolean;
  readonly initContainers: readonly string[];
  readonly containers: readonly string[];
  readonly volumes: readonly string[];
  /** The paths of the rewritten probes under the status port. */
  readonly rewrittenProbes: readonly string[];
}

/**
 * Who asks for injection. The webhook honours the namespace's labels; manual injection (`kmtls
 * inject -f`, like `istioctl kube-inject`) injects regardless of them. Both honour the pod's own
 * opt-out and never inject host-network or already-injected pods.
 */
export type InjectionTrigger =
  | { readonly kind: 'webhook'; readonly namespaceLabels: Readonly<Record<string, string>> | undefined }
  | { readonly kind: 'manual' };

export interface InjectionDecision {
  readonly inject: boolean;
  readonly reason: string;
}

/** A pod, or a pod template: the `metadata` and `spec` the injector reads and writes. */
export type PodTemplate = Record<string, unknown>;

export type TemplateInjection =
  | { readonly outcome: 'injected'; readonly template: PodTemplate; readonly status: InjectionStatus }
  | { readonly outcome: 'skipped'; readonly reason: string }
  | { readonly outcome: 'refused'; readonly error: KmtlsError };

/** Whether a version the API server reports (`/version`: major "1", minor "28" or "28+") has native sidecars. */
export function supportsNativeSidecar(version: { major: string; minor: string }): boolean {
  const major = Number.parseInt(version.major, 10);
  const minor = Number.parseInt(version.minor, 10);
  if (!Number.isFinite(major) || !Number.isFinite(minor)) return false;
  if (major !== NATIVE_SIDECAR_MIN_VERSION.major) return major > NATIVE_SIDECAR_MIN_VERSION.major;
  return minor >= NATIVE_SIDECAR_MIN_VERSION.minor;
}

function stringMap(value: unknown): Record<string, string> {
  if (!isRecord(value)) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'string') out[k] = v;
    else if (typeof v === 'number' || typeof v === 'boolean') out[k] = String(v);
  }
  return out;
}

function records(value: unknown): Record<string, unknown>[] {
  return Array.isArray(value) ? value.filter(isRecord) : [];
}

function containerNames(spec: Record<string, unknown>): string[] {
  return [...records(spec.initContainers), ...records(spec.containers)]
    .map((c) => c.name)
    .filter((n): n is string => typeof n === 'string');
}

/**
 * Whether to inject a pod (or template) in `namespace`. Already-injected pods and pods with Istio's
 * sidecar are left alone; everything else follows the mesh membership rules of `src/mesh`, the same
 * rules `explain` and `analyze` apply, so what they predict is what the webhook does.
 */
export function decideInjection(
  template: PodTemplate,
  namespace: string,
  trigger: InjectionTrigger,
): InjectionDecision {
  const metadata = isRecord(template.metadata) ? template.metadata : {};
  const spec = isRecord(template.spec) ? template.spec : {};
  const labels = stringMap(metadata.labels);
  const annotations = stringMap(metadata.annotations);
  const names = containerNames(spec);
  if (names.includes(SIDECAR_CONTAINER)) {
    return { inject: false, reason: `already injected (has the ${SIDECAR_CONTAINER} container)` };
  }
  if (annotations[STATUS_ANNOTATION] !== undefined) {
    return { inject: false, reason: `already injected (has the ${STATUS_ANNOTATION} annotation)` };
  }
  if (names.includes(ISTIO_SIDECAR_CONTAINER)) {
    return { inject: false, reason: `has Istio's ${ISTIO_SIDECAR_CONTAINER} sidecar` };
  }
  // The tlsMode label is what injection writes, not a request for it: Istio's injector ignores it.
  const { [TLS_MODE_LABEL]: _written, ...podLabels } = labels;
  const membership = decideMembership(
    {
      meta: { namespace },
      podLabels,
      podAnnotations: annotations,
      hostNetwork: spec.hostNetwork === true,
      containers: [],
    },
    trigger.kind === 'manual'
      ? { meta: { labels: { [KMTLS_INJECTION_LABEL]: 'enabled' } } }
      : trigger.namespaceLabels === undefined
        ? undefined
        : { meta: { labels: trigger.namespaceLabels } },
  );
  if (!membership.inMesh) return { inject: false, reason: membership.reason };
  return { inject: true, reason: trigger.kind === 'manual' ? 'manual injection' : membership.reason };
}

// --- annotations -----------------------------------------------------------------------------

function selectionText(selection: Selection<number | string>): string {
  return selection === '*' ? '*' : selection.join(',');
}

/**
 * The init container's `kmtls iptables apply` arguments: the capture ports, then one flag per
 * Istio traffic annotation the pod carries (validated by the iptables module, normalised). The
 * proxy's own ports (the status port among them) are always excluded by `kmtls iptables`.
 */
export function initContainerArgs(
  annotations: Readonly<Record<string, string>>,
  where: string,
): { readonly ok: true; readonly args: string[] } | { readonly ok: false; readonly error: KmtlsError } {
  const parsed = interceptionFromAnnotations(annotations);
  if (!parsed.ok) {
    const [first, ...more] = parsed.errors;
    const message = [first, ...more].map((e) => e?.message).join('; ');
    return {
      ok: false,
      error: new KmtlsError('KMTLS_INJECT_BAD_ANNOTATION', `${message} on ${where}`, { cause: first }),
    };
  }
  const args = [
    'iptables',
    'apply',
    IPTABLES_FLAGS.proxyUid,
    String(PROXY_UID),
    IPTABLES_FLAGS.inboundPort,
    String(INBOUND_CAPTURE_PORT),
    IPTABLES_FLAGS.outboundPort,
    String(OUTBOUND_CAPTURE_PORT),
  ];
  const keys = Object.keys(INTERCEPTION_ANNOTATIONS) as (keyof typeof INTERCEPTION_ANNOTATIONS &
    keyof InterceptionOptions)[];
  for (const key of keys) {
    if (annotations[INTERCEPTION_ANNOTATIONS[key]] === undefined) continue;
    args.push(IPTABLES_FLAGS[key], selectionText(parsed.options[key]));
  }
  return { ok: true, args };
}

// --- probes ----------------------------------------------------------------------------------

function resolvePort(port: unknown, container: Record<string, unknown>): number | undefined {
  if (typeof port === 'number')
    return Number.isInteger(port) && port >= 1 && port <= 65535 ? port : undefined;
  if (typeof port !== 'string') return undefined;
  const named = records(container.ports).find((p) => p.name === port);
  return typeof named?.containerPort === 'number' ? named.containerPort : undefined;
}

/** The original probe as the status port runs it; undefined when it is not rewritten. */
function originalProber(
  probe: Record<string, unknown>,
  container: Record<string, unknown>,
): AppProber | undefined {
  const timeout =
    typeof probe.timeoutSeconds === 'number' && probe.timeoutSeconds > 0
      ? { timeoutSeconds: probe.timeoutSeconds }
      : {};
  // A probe with `host` goes to another address, not through this pod's sidecar: left as it is.
  if (isRecord(probe.httpGet)) {
    const get = probe.httpGet;
    const port = resolvePort(get.port, container);
    if (port === undefined || typeof get.host === 'string') return undefined;
    const headers = records(get.httpHeaders)
      .filter((h) => typeof h.name === 'string' && typeof h.value === 'string')
      .map((h) => ({ name: h.name as string, value: h.value as string }));
    return {
      httpGet: {
        port,
        path: typeof get.path === 'string' && get.path !== '' ? get.path : '/',
        scheme: typeof get.scheme === 'string' && get.scheme.toUpperCase() === 'HTTPS' ? 'HTTPS' : 'HTTP',
        ...(headers.length > 0 ? { httpHeaders: headers } : {}),
      },
      ...timeout,
    };
  }
  if (isRecord(probe.tcpSocket)) {
    const port = resolvePort(probe.tcpSocket.port, container);
    if (port === undefined || typeof probe.tcpSocket.host === 'string') return undefined;
    return { tcpSocket: { port }, ...timeout };
  }
  if (isRecord(probe.grpc)) {
    const port = resolvePort(probe.grpc.port, container);
    if (port === undefined) return undefined;
    const service = typeof probe.grpc.service === 'string' ? { service: probe.grpc.service } : {};
    return { grpc: { port, ...service }, ...timeout };
  }
  return undefined;
}

/**
 * Points every httpGet, tcpSocket and grpc probe of the app containers at the status port, keeping
 * the timing fields. Mutates `containers` (a copy owned by the injector); returns the originals.
 */
function rewriteProbes(containers: Record<string, unknown>[]): Record<string, AppProber> {
  const probers: Record<string, AppProber> = {};
  for (const container of containers) {
    if (typeof container.name !== 'string') continue;
    for (const [field, kind] of PROBE_FIELDS) {
      const probe = container[field];
      if (!isRecord(probe)) continue;
      const prober = originalProber(probe, container);
      if (!prober) continue;
      const path = `${APP_HEALTH_PREFIX}${container.name}/${kind}`;
      probers[path] = prober;
      const { httpGet: _h, tcpSocket: _t, grpc: _g, ...timing } = probe;
      container[field] = { httpGet: { path, port: STATUS_PORT, scheme: 'HTTP' }, ...timing };
    }
  }
  return probers;
}

// --- containers and volumes ------------------------------------------------------------------

function initContainer(image: string, args: readonly string[]): Record<string, unknown> {
  return {
    name: INIT_CONTAINER,
    image,
    args: [...args],
    securityContext: {
      runAsUser: 0,
      runAsGroup: 0,
      runAsNonRoot: false,
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: false,
      capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] },
    },
  };
}

/** The `kmtls proxy` arguments of the injected sidecar. */
export function sidecarArgs(
  controlPlaneAddress: string,
  extra: { trustDomain?: string | undefined; controlPlaneIdentity?: string | undefined } = {},
): string[] {
  return [
    'proxy',
    '--control-plane',
    controlPlaneAddress,
    '--pod',
    `$(${POD_ENV.namespace})/$(${POD_ENV.name})`,
    '--token-file',
    TOKEN_FILE,
    '--ca-root',
    ROOT_CERT_FILE,
    '--admin',
    ADMIN_LISTEN,
    '--status',
    STATUS_LISTEN,
    '--transparent',
    ...(extra.trustDomain ? ['--trust-domain', extra.trustDomain] : []),
    ...(extra.controlPlaneIdentity ? ['--control-plane-identity', extra.controlPlaneIdentity] : []),
  ];
}

function sidecarContainer(
  options: InjectOptions,
  probers: Readonly<Record<string, AppProber>>,
): Record<string, unknown> {
  const ready = { httpGet: { path: READY_PATH, port: STATUS_PORT, scheme: 'HTTP' } };
  const fieldEnv = (name: string, fieldPath: string) => ({ name, valueFrom: { fieldRef: { fieldPath } } });
  const container: Record<string, unknown> = {
    name: SIDECAR_CONTAINER,
    image: options.image,
    args: sidecarArgs(options.controlPlaneAddress ?? DEFAULT_CONTROL_PLANE_ADDRESS, {
      trustDomain: options.trustDomain,
      controlPlaneIdentity: options.controlPlaneIdentity,
    }),
    env: [
      fieldEnv(POD_ENV.name, 'metadata.name'),
      fieldEnv(POD_ENV.namespace, 'metadata.namespace'),
      fieldEnv(POD_ENV.ip, 'status.podIP'),
      { name: APP_PROBERS_ENV, value: JSON.stringify(probers) },
    ],
    ports: [{ containerPort: STATUS_PORT, name: STATUS_PORT_NAME, protocol: 'TCP' }],
    readinessProbe: {
      ...ready,
      initialDelaySeconds: 1,
      periodSeconds: 2,
      timeoutSeconds: 3,
      failureThreshold: 30,
    },
    securityContext: {
      runAsUser: PROXY_UID,
      runAsGroup: PROXY_GID,
      runAsNonRoot: true,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      privileged: false,
      capabilities: { drop: ['ALL'] },
    },
    volumeMounts: [
      { name: TOKEN_VOLUME, mountPath: TOKEN_MOUNT_PATH, readOnly: true },
      { name: ROOT_VOLUME, mountPath: ROOT_MOUNT_PATH, readOnly: true },
    ],
  };
  if (options.nativeSidecar) {
    container.restartPolicy = 'Always';
    // The kubelet starts the next init container (and then the app) only once this succeeds.
    container.startupProbe = { ...ready, periodSeconds: 1, timeoutSeconds: 3, failureThreshold: 600 };
  } else {
    container.lifecycle = { postStart: { exec: { command: [...PROXY_WAIT_COMMAND] } } };
  }
  return container;
}

function volumes(): Record<string, unknown>[] {
  return [
    {
      name: TOKEN_VOLUME,
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: TOKEN_AUDIENCE,
              expirationSeconds: TOKEN_EXPIRATION_SECONDS,
              path: TOKEN_FILE_NAME,
            },
          },
        ],
      },
    },
    { name: ROOT_VOLUME, configMap: { name: ROOT_CONFIGMAP } },
  ];
}

/**
 * Injects one pod or pod template: decides (see {@link decideInjection}), then returns a new
 * template with the init container, the sidecar, the volumes, the rewritten probes and the status
 * annotations. The input is never modified. A bad traffic annotation refuses the injection: a
 * sidecar that captures the wrong ports would fail silently.
 */
export function injectTemplate(
  template: PodTemplate,
  namespace: string,
  trigger: InjectionTrigger,
  options: InjectOptions,
  where: string,
): TemplateInjection {
  const decision = decideInjection(template, namespace, trigger);
  if (!decision.inject) return { outcome: 'skipped', reason: decision.reason };
  const out = structuredClone(template);
  const metadata = isRecord(out.metadata) ? out.metadata : {};
  out.metadata = metadata;
  const annotations = stringMap(metadata.annotations);
  const args = initContainerArgs(annotations, where);
  if (!args.ok) return { outcome: 'refused', error: args.error };

  const spec = isRecord(out.spec) ? out.spec : {};
  out.spec = spec;
  const containers = Array.isArray(spec.containers) ? (spec.containers as unknown[]) : [];
  const probers =
    annotations[REWRITE_PROBES_ANNOTATION] === 'false' ? {} : rewriteProbes(containers.filter(isRecord));
  const sidecar = sidecarContainer(options, probers);
  const userInit = Array.isArray(spec.initContainers) ? (spec.initContainers as unknown[]) : [];
  const init = initContainer(options.image, args.args);
  // kmtls-init runs first; a native sidecar right after it, so the pod's own init containers
  // already have the mesh. As a plain container the sidecar goes first, and its postStart hook
  // holds the application containers until it is ready.
  spec.initContainers = options.nativeSidecar ? [init, sidecar, ...userInit] : [init, ...userInit];
  spec.containers = options.nativeSidecar ? containers : [sidecar, ...containers];
  spec.volumes = [...(Array.isArray(spec.volumes) ? spec.volumes : []), ...volumes()];

  const status: InjectionStatus = {
    image: options.image,
    nativeSidecar: options.nativeSidecar,
    initContainers: options.nativeSidecar ? [INIT_CONTAINER, SIDECAR_CONTAINER] : [INIT_CONTAINER],
    containers: options.nativeSidecar ? [] : [SIDECAR_CONTAINER],
    volumes: [TOKEN_VOLUME, ROOT_VOLUME],
    rewrittenProbes: Object.keys(probers),
  };
  metadata.labels = {
    ...(isRecord(metadata.labels) ? metadata.labels : {}),
    [TLS_MODE_LABEL]: TLS_MODE_ISTIO,
  };
  metadata.annotations = {
    ...(isRecord(metadata.annotations) ? metadata.annotations : {}),
    [STATUS_ANNOTATION]: JSON.stringify(status),
    [REWRITTEN_PROBES_ANNOTATION]: JSON.stringify(probers),
  };
  return { outcome: 'injected', template: out, status };
}

// --- manifests -------------------------------------------------------------------------------

export type ObjectInjection =
  | {
      readonly outcome: 'injected';
      readonly object: Record<string, unknown>;
      readonly status: InjectionStatus;
    }
  | { readonly outcome: 'skipped'; readonly object: Record<string, unknown>; readonly reason: string }
  | { readonly outcome: 'not-a-workload'; readonly object: Record<string, unknown> }
  | { readonly outcome: 'refused'; readonly object: Record<string, unknown>; readonly error: KmtlsError };

function isInjectableKind(kind: unknown): kind is InjectableKind {
  return typeof kind === 'string' && (INJECTABLE_KINDS as readonly string[]).includes(kind);
}

/** The path from the object to its pod template ([] for a Pod itself). */
function templatePath(kind: InjectableKind): readonly string[] {
  switch (kind) {
    case 'Pod':
      return [];
    case 'CronJob':
      return ['spec', 'jobTemplate', 'spec', 'template'];
    case 'Deployment':
    case 'StatefulSet':
    case 'DaemonSet':
    case 'ReplicaSet':
    case 'ReplicationController':
    case 'Job':
      return ['spec', 'template'];
    default: {
      const never: never = kind;
      throw new Error(`BUG: unhandled kind ${String(never)}`);
    }
  }
}

/**
 * Manual injection of one manifest object (`kmtls inject -f`): a Pod, or the pod template of a
 * workload controller. Objects of other kinds come back unchanged; the input is never modified.
 */
export function injectObject(object: Record<string, unknown>, options: InjectOptions): ObjectInjection {
  const kind = object.kind;
  if (!isInjectableKind(kind)) return { outcome: 'not-a-workload', object };
  const metadata = isRecord(object.metadata) ? object.metadata : {};
  const namespace = typeof metadata.namespace === 'string' ? metadata.namespace : 'default';
  const where = `${kind} ${namespace}/${typeof metadata.name === 'string' ? metadata.name : '?'}`;
  const path = templatePath(kind);
  let template: unknown = object;
  for (const key of path) template = isRecord(template) ? template[key] : undefined;
  if (!isRecord(template)) return { outcome: 'skipped', object, reason: `${where} has no pod template` };
  const result = injectTemplate(template, namespace, { kind: 'manual' }, options, where);
  if (result.outcome === 'skipped') return { outcome: 'skipped', object, reason: result.reason };
  if (result.outcome === 'refused') return { outcome: 'refused', object, error: result.error };
  if (path.length === 0) return { outcome: 'injected', object: result.template, status: result.status };
  const out = structuredClone(object);
  let parent: Record<string, unknown> = out;
  for (const key of path.slice(0, -1)) parent = parent[key] as Record<string, unknown>;
  parent[path[path.length - 1]!] = result.template;
  return { outcome: 'injected', object: out, status: result.status };
}
