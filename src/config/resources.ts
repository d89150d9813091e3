import type { z } from 'zod';
import type {
  ContainerSpec,
  MeshResources,
  NamespaceResource,
  PodSource,
  PodSourceKind,
  ProbeSpec,
  ServiceAccountResource,
  WorkloadEntryResource,
} from '../mesh/index.js';
import type {
  DestinationRule,
  Diagnostic,
  ObjectMeta,
  PeerAuthentication,
  RawResource,
  RejectedPolicy,
  Service,
  ServicePort,
} from '../policy/index.js';
import {
  Checker,
  diagnostic,
  formatPath,
  isRecord,
  validateDestinationRule,
  validatePeerAuthentication,
} from '../policy/index.js';
import type { ContainerInput, PodTemplateInput } from './kube-schemas.js';
import {
  cronJobSchema,
  dropNulls,
  jobSchema,
  podSchema,
  replicatedSchema,
  serviceSchema,
  workloadEntrySchema,
} from './kube-schemas.js';
import type { ManifestObject } from './yaml-source.js';

/** The kinds kmtls reads, by API group; the versions of Istio's kinds it accepts. */
const ISTIO_SECURITY_VERSIONS = ['v1', 'v1beta1'];
const ISTIO_NETWORKING_VERSIONS = ['v1', 'v1beta1', 'v1alpha3'];
const KINDS: Record<string, { group: string; versions?: readonly string[]; clusterScoped?: boolean }> = {
  PeerAuthentication: { group: 'security.istio.io', versions: ISTIO_SECURITY_VERSIONS },
  DestinationRule: { group: 'networking.istio.io', versions: ISTIO_NETWORKING_VERSIONS },
  WorkloadEntry: { group: 'networking.istio.io', versions: ISTIO_NETWORKING_VERSIONS },
  Namespace: { group: '', clusterScoped: true },
  ServiceAccount: { group: '' },
  Service: { group: '' },
  Pod: { group: '' },
  ReplicationController: { group: '' },
  Deployment: { group: 'apps' },
  StatefulSet: { group: 'apps' },
  DaemonSet: { group: 'apps' },
  ReplicaSet: { group: 'apps' },
  Job: { group: 'batch' },
  CronJob: { group: 'batch' },
};

export interface ReadResult {
  readonly resources: MeshResources;
  readonly diagnostics: readonly Diagnostic[];
  /** Objects of kinds kmtls does not read, counted by kind. */
  readonly skipped: ReadonlyMap<string, number>;
}

function parseTimestamp(c: Checker, value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  const text = value instanceof Date ? value.toISOString() : value;
  if (
    typeof text === 'string' &&
    /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(text)
  ) {
    const ms = Date.parse(text);
    if (!Number.isNaN(ms)) return ms;
  }
  c.report(
    'KMTLS_SCHEMA_BAD_TIMESTAMP',
    ['metadata', 'creationTimestamp'],
    `metadata.creationTimestamp is not an RFC 3339 time: ${JSON.stringify(value)}`,
    { hint: 'write it like 2024-05-01T12:00:00Z, or remove it' },
  );
  return undefined;
}

/** Reads metadata; a problem there makes the object unusable only when the name is missing. */
function readMeta(
  obj: ManifestObject,
  kind: string,
  clusterScoped: boolean,
): { meta: ObjectMeta; checker: Checker } | Diagnostic {
  const body = obj.body;
  const metadata = isRecord(body.metadata) ? body.metadata : {};
  const name = metadata.name;
  if (typeof name !== 'string' || name === '') {
    return diagnostic(
      'KMTLS_MANIFEST_MISSING_NAME',
      `${kind} without metadata.name in ${obj.location.file}`,
      {
        location: obj.locate(['metadata']) ?? obj.location,
      },
    );
  }
  const namespace = clusterScoped
    ? ''
    : typeof metadata.namespace === 'string' && metadata.namespace !== ''
      ? metadata.namespace
      : 'default';
  const provisional: ObjectMeta = {
    name,
    namespace,
    labels: {},
    annotations: {},
    createdAtMs: undefined,
    location: obj.location,
  };
  const raw: RawResource = {
    apiVersion: String(body.apiVersion ?? ''),
    kind,
    meta: provisional,
    spec: body.spec,
    locate: obj.locate,
  };
  const checker = new Checker(raw);
  const labels = checker.stringMap(metadata.labels, ['metadata', 'labels']) ?? {};
  const annotations = checker.stringMap(metadata.annotations, ['metadata', 'annotations']) ?? {};
  const createdAtMs = parseTimestamp(checker, metadata.creationTimestamp);
  return { meta: { name, namespace, labels, annotations, createdAtMs, location: obj.location }, checker };
}

function zodProblems(checker: Checker, error: z.ZodError, base: (string | number)[] = []): void {
  for (const issue of error.issues) {
    const path = [...base, ...issue.path.filter((p): p is string | number => typeof p !== 'symbol')];
    checker.report('KMTLS_SCHEMA_TYPE', path, `${formatPath(path) || 'object'}: ${issue.message}`);
  }
}

function toContainer(c: ContainerInput, isInit: boolean): ContainerSpec {
  const probes: ProbeSpec[] = [];
  for (const [kind, p] of [
    ['liveness', c.livenessProbe],
    ['readiness', c.readinessProbe],
    ['startup', c.startupProbe],
  ] as const) {
    if (!p) continue;
    if (p.httpGet) {
      const scheme = p.httpGet.scheme === 'HTTPS' ? 'HTTPS' : 'HTTP';
      probes.push({ kind, handler: 'httpGet', port: p.httpGet.port, scheme, path: p.httpGet.path });
    } else if (p.tcpSocket)
      probes.push({ kind, handler: 'tcpSocket', port: p.tcpSocket.port, scheme: undefined, path: undefined });
    else if (p.grpc)
      probes.push({ kind, handler: 'grpc', port: p.grpc.port, scheme: undefined, path: undefined });
    else if (p.exec)
      probes.push({ kind, handler: 'exec', port: undefined, scheme: undefined, path: undefined });
  }
  return {
    name: c.name,
    image: c.image,
    ports: (c.ports ?? []).map((p) => ({
      containerPort: p.containerPort,
      name: p.name,
      protocol: p.protocol ?? 'TCP',
    })),
    env: (c.env ?? []).map((e) => ({ name: e.name, value: e.value })),
    command: c.command ?? [],
    args: c.args ?? [],
    probes,
    isInit,
    restartPolicy: c.restartPolicy,
  };
}

function podSource(
  kind: PodSourceKind,
  meta: ObjectMeta,
  body: Record<string, unknown>,
  template: PodTemplateInput | undefined,
  replicas: number,
  serviceName: string | undefined,
): PodSource {
  const spec = template?.spec ?? {};
  const metadata = isRecord(body.metadata) ? body.metadata : {};
  const owners = Array.isArray(metadata.ownerReferences)
    ? metadata.ownerReferences
        .filter(isRecord)
        .filter((o) => typeof o.kind === 'string' && typeof o.name === 'string')
        .map((o) => ({ kind: o.kind as string, name: o.name as string }))
    : [];
  return {
    kind,
    meta,
    podLabels: kind === 'Pod' ? meta.labels : (template?.metadata?.labels ?? {}),
    podAnnotations: kind === 'Pod' ? meta.annotations : (template?.metadata?.annotations ?? {}),
    serviceAccount: spec.serviceAccountName || spec.serviceAccount || 'default',
    containers: [
      ...(spec.initContainers ?? []).map((c) => toContainer(c, true)),
      ...(spec.containers ?? []).map((c) => toContainer(c, false)),
    ],
    replicas,
    owners,
    serviceName,
    hostNetwork: spec.hostNetwork === true,
  };
}

function toService(meta: ObjectMeta, parsed: z.infer<typeof serviceSchema>): Service {
  const spec = parsed.spec ?? {};
  const ports: ServicePort[] = (spec.ports ?? []).map((p) => ({
    port: p.port,
    name: p.name,
    protocol: p.protocol ?? 'TCP',
    appProtocol: p.appProtocol,
    targetPort: p.targetPort ?? p.port,
  }));
  return {
    kind: 'Service',
    meta,
    ports,
    selector: spec.selector,
    headless: spec.clusterIP === 'None',
    clusterIP: spec.clusterIP && spec.clusterIP !== 'None' ? spec.clusterIP : undefined,
    externalName: spec.type === 'ExternalName' ? spec.externalName : undefined,
  };
}

/** istioctl analyze reports every schema or webhook error of an Istio resource as IST0106. */
function asIstioSchemaErrors(list: readonly Diagnostic[]): Diagnostic[] {
  return list.map((d) =>
    d.severity === 'error' && d.istioCode === undefined ? { ...d, istioCode: 'IST0106' } : d,
  );
}

/**
 * Turns manifest objects into the mesh's resources. Every object is checked on its own: one bad
 * object is reported and left out, the rest still load. Later duplicates replace earlier ones, as
 * a later `kubectl apply` would, with a warning.
 */
export function readResources(objects: readonly ManifestObject[]): ReadResult {
  const diagnostics: Diagnostic[] = [];
  const skipped = new Map<string, number>();
  const seen = new Map<string, ManifestObject>();
  const pas = new Map<string, PeerAuthentication>();
  const rejected = new Map<string, RejectedPolicy>();
  const drs = new Map<string, DestinationRule>();
  const namespaces = new Map<string, NamespaceResource>();
  const serviceAccounts = new Map<string, ServiceAccountResource>();
  const services = new Map<string, Service>();
  const podSources = new Map<string, PodSource>();
  const workloadEntries = new Map<string, WorkloadEntryResource>();

  for (const obj of objects) {
    const body = obj.body;
    const kind = body.kind;
    const apiVersion = body.apiVersion;
    if (typeof kind !== 'string' || kind === '' || typeof apiVersion !== 'string' || apiVersion === '') {
      diagnostics.push(
        diagnostic(
          'KMTLS_MANIFEST_MISSING_KIND',
          `object without ${typeof kind !== 'string' || kind === '' ? 'kind' : 'apiVersion'} in ${obj.location.file}`,
          {
            location: obj.location,
          },
        ),
      );
      continue;
    }
    const known = KINDS[kind];
    const slash = apiVersion.lastIndexOf('/');
    const group = slash === -1 ? '' : apiVersion.slice(0, slash);
    const version = apiVersion.slice(slash + 1);
    if (!known || known.group !== group) {
      skipped.set(kind, (skipped.get(kind) ?? 0) + 1);
      continue;
    }
    if (known.versions && !known.versions.includes(version)) {
      diagnostics.push(
        diagnostic(
          'KMTLS_SCHEMA_UNSUPPORTED_VERSION',
          `unsupported version: ${apiVersion} ${kind} (kmtls reads ${known.versions.map((v) => `${group}/${v}`).join(', ')}); skipped`,
          {
            location: obj.location,
          },
        ),
      );
      continue;
    }
    const metaResult = readMeta(obj, kind, known.clusterScoped === true);
    if ('code' in metaResult) {
      diagnostics.push(metaResult);
      continue;
    }
    const { meta, checker } = metaResult;
    const key = `${kind}/${meta.namespace}/${meta.name}`;
    const earlier = seen.get(key);
    if (earlier) {
      diagnostics.push(
        diagnostic(
          'KMTLS_MANIFEST_DUPLICATE',
          `duplicate object: ${kind} ${meta.namespace ? `${meta.namespace}/` : ''}${meta.name} (also at ${earlier.location.file}:${earlier.location.line}; the later one is used)`,
          { location: obj.location },
        ),
      );
    }
    seen.set(key, obj);
    const raw: RawResource = { apiVersion, kind, meta, spec: body.spec, locate: obj.locate };
    const clean = dropNulls(body) as Record<string, unknown>;

    switch (kind) {
      case 'PeerAuthentication': {
        const v = validatePeerAuthentication(raw);
        diagnostics.push(...checker.diagnostics, ...asIstioSchemaErrors(v.diagnostics));
        pas.delete(key);
        rejected.delete(key);
        if (v.value && !checker.hasErrors()) pas.set(key, v.value);
        else {
          const spec = isRecord(body.spec) ? body.spec : {};
          const sel =
            isRecord(spec.selector) && isRecord(spec.selector.matchLabels)
              ? spec.selector.matchLabels
              : undefined;
          rejected.set(key, {
            policy: {
              kind,
              namespace: meta.namespace,
              name: meta.name,
              ...(meta.location ? { location: meta.location } : {}),
            },
            errors: [...checker.diagnostics, ...v.diagnostics]
              .filter((d) => d.severity === 'error')
              .map((d) => d.message),
            selector: sel
              ? Object.fromEntries(Object.entries(sel).map(([k, val]) => [k, String(val)]))
              : undefined,
          });
        }
        continue;
      }
      case 'DestinationRule': {
        const v = validateDestinationRule(raw);
        diagnostics.push(...checker.diagnostics, ...asIstioSchemaErrors(v.diagnostics));
        drs.delete(key);
        if (v.value && !checker.hasErrors()) drs.set(key, v.value);
        continue;
      }
      case 'Namespace':
        namespaces.set(key, { meta });
        break;
      case 'ServiceAccount':
        serviceAccounts.set(key, { meta });
        break;
      case 'Service': {
        const parsed = serviceSchema.safeParse(clean);
        if (parsed.success) services.set(key, toService(meta, parsed.data));
        else zodProblems(checker, parsed.error);
        break;
      }
      case 'Pod': {
        const parsed = podSchema.safeParse(clean);
        if (parsed.success) {
          podSources.set(key, podSource('Pod', meta, body, { spec: parsed.data.spec ?? {} }, 1, undefined));
        } else zodProblems(checker, parsed.error);
        break;
      }
      case 'Deployment':
      case 'StatefulSet':
      case 'DaemonSet':
      case 'ReplicaSet':
      case 'ReplicationController': {
        const parsed = replicatedSchema.safeParse(clean);
        if (parsed.success) {
          const spec = parsed.data.spec ?? {};
          // A DaemonSet runs one pod per node; locally that is one.
          const replicas = kind === 'DaemonSet' ? 1 : (spec.replicas ?? 1);
          podSources.set(key, podSource(kind, meta, body, spec.template, replicas, spec.serviceName));
        } else zodProblems(checker, parsed.error);
        break;
      }
      case 'Job': {
        const parsed = jobSchema.safeParse(clean);
        if (parsed.success) {
          podSources.set(
            key,
            podSource(
              'Job',
              meta,
              body,
              parsed.data.spec?.template,
              parsed.data.spec?.parallelism ?? 1,
              undefined,
            ),
          );
        } else zodProblems(checker, parsed.error);
        break;
      }
      case 'CronJob': {
        const parsed = cronJobSchema.safeParse(clean);
        if (parsed.success) {
          const jobSpec = parsed.data.spec?.jobTemplate?.spec;
          podSources.set(
            key,
            podSource('CronJob', meta, body, jobSpec?.template, jobSpec?.parallelism ?? 1, undefined),
          );
        } else zodProblems(checker, parsed.error);
        break;
      }
      case 'WorkloadEntry': {
        const parsed = workloadEntrySchema.safeParse(clean);
        if (parsed.success) {
          const spec = parsed.data.spec ?? {};
          workloadEntries.set(key, {
            meta,
            address: spec.address,
            labels: spec.labels ?? {},
            ports: spec.ports ?? {},
            serviceAccount: spec.serviceAccount || 'default',
          });
        } else zodProblems(checker, parsed.error);
        break;
      }
      default:
        throw new Error(`BUG: kind ${kind} is listed but not read`);
    }
    diagnostics.push(...checker.diagnostics);
  }
  for (const [kind, count] of skipped) {
    diagnostics.push(
      diagnostic(
        'KMTLS_MANIFEST_SKIPPED_KIND',
        `skipped ${count} ${kind} object${count === 1 ? '' : 's'}: kmtls does not read this kind`,
        {},
      ),
    );
  }
  return {
    resources: {
      peerAuthentications: [...pas.values()],
      rejectedPeerAuthentications: [...rejected.values()],
      destinationRules: [...drs.values()],
      namespaces: [...namespaces.values()],
      serviceAccounts: [...serviceAccounts.values()],
      services: [...services.values()],
      podSources: [...podSources.values()],
      workloadEntries: [...workloadEntries.values()],
    },
    diagnostics,
    skipped,
  };
}
