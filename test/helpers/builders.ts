/**
 * Builders for policy-core tests: objects are made from YAML-shaped specs and go through the same
 * validators as manifests, so a test reads like the manifest it stands for.
 */
import assert from 'node:assert/strict';
import { parseManifestText, readResources } from '../../src/config/index.js';
import type { MeshSnapshot } from '../../src/mesh/index.js';
import { buildMeshSnapshot } from '../../src/mesh/index.js';
import type {
  DestinationRule,
  MeshMembership,
  ObjectMeta,
  PeerAuthentication,
  RawResource,
  Service,
  ServicePort,
  Workload,
  WorkloadPort,
} from '../../src/policy/index.js';
import { validateDestinationRule, validatePeerAuthentication } from '../../src/policy/index.js';

export interface MetaOptions {
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** ISO time, e.g. '2024-01-01T00:00:00Z'; omitted means no creationTimestamp. */
  created?: string;
}

export function meta(namespace: string, name: string, opts: MetaOptions = {}): ObjectMeta {
  return {
    name,
    namespace,
    labels: opts.labels ?? {},
    annotations: opts.annotations ?? {},
    createdAtMs: opts.created === undefined ? undefined : Date.parse(opts.created),
    location: { file: 'test.yaml', line: 1 },
  };
}

/** A PeerAuthentication from its spec; fails the test if the spec is invalid. */
export function pa(
  namespace: string,
  name: string,
  spec: unknown,
  opts: MetaOptions = {},
): PeerAuthentication {
  const v = validatePeerAuthentication({
    apiVersion: 'security.istio.io/v1',
    kind: 'PeerAuthentication',
    meta: meta(namespace, name, opts),
    spec,
    locate: () => undefined,
  });
  assert.ok(
    v.value,
    `invalid PeerAuthentication ${namespace}/${name}: ${v.diagnostics.map((d) => d.message).join('; ')}`,
  );
  return v.value;
}

/** A DestinationRule from its spec; fails the test if the spec is invalid. */
export function dr(namespace: string, name: string, spec: unknown, opts: MetaOptions = {}): DestinationRule {
  const v = validateDestinationRule({
    apiVersion: 'networking.istio.io/v1',
    kind: 'DestinationRule',
    meta: meta(namespace, name, opts),
    spec,
    locate: () => undefined,
  });
  assert.ok(
    v.value,
    `invalid DestinationRule ${namespace}/${name}: ${v.diagnostics.map((d) => d.message).join('; ')}`,
  );
  return v.value;
}

export interface WorkloadOptions {
  labels?: Record<string, string>;
  /** Container ports: numbers, or [number, name]. */
  ports?: (number | [number, string])[];
  /** Whether it has a sidecar; default true. */
  inMesh?: boolean;
  kind?: string;
  serviceAccount?: string;
}

export function workload(namespace: string, name: string, opts: WorkloadOptions = {}): Workload {
  const inMesh = opts.inMesh ?? true;
  const membership: MeshMembership = { inMesh, reason: inMesh ? 'test: has a sidecar' : 'test: no sidecar' };
  const ports: WorkloadPort[] = (opts.ports ?? []).map((p) =>
    typeof p === 'number'
      ? { port: p, name: undefined, protocol: 'TCP', container: 'app' }
      : { port: p[0], name: p[1], protocol: 'TCP', container: 'app' },
  );
  return {
    kind: opts.kind ?? 'Pod',
    meta: meta(namespace, name, { labels: opts.labels ?? { app: name } }),
    serviceAccount: opts.serviceAccount ?? 'default',
    ports,
    membership,
    replicas: 1,
  };
}

export interface ServiceOptions {
  selector?: Record<string, string> | undefined;
  /** [port, targetPort] pairs, or a bare port (targetPort = port). */
  ports?: (number | [number, number | string])[];
  headless?: boolean;
}

export function service(namespace: string, name: string, opts: ServiceOptions = {}): Service {
  const ports: ServicePort[] = (opts.ports ?? [80]).map((p) =>
    typeof p === 'number'
      ? { port: p, name: undefined, protocol: 'TCP', appProtocol: undefined, targetPort: p }
      : { port: p[0], name: undefined, protocol: 'TCP', appProtocol: undefined, targetPort: p[1] },
  );
  return {
    kind: 'Service',
    meta: meta(namespace, name),
    ports,
    selector: 'selector' in opts ? opts.selector : { app: name },
    headless: opts.headless ?? false,
    externalName: undefined,
  };
}

/** A PeerAuthentication as read from a manifest, before validation: for tests of the validator itself. */
export function paRaw(namespace: string, name: string, spec: unknown, opts: MetaOptions = {}): RawResource {
  return {
    apiVersion: 'security.istio.io/v1',
    kind: 'PeerAuthentication',
    meta: meta(namespace, name, opts),
    spec,
    locate: () => undefined,
  };
}

/**
 * A mesh snapshot from manifest YAML, read the way `kmtls` reads files; the YAML must be free of
 * errors, so a typo in a test fails loudly instead of silently dropping an object.
 */
export function snapshotOf(yaml: string, rootNamespace?: string): MeshSnapshot {
  const parsed = parseManifestText(yaml, 'test.yaml');
  assert.deepEqual(parsed.diagnostics, []);
  const read = readResources(parsed.objects);
  assert.deepEqual(
    read.diagnostics.filter((d) => d.severity === 'error'),
    [],
  );
  return buildMeshSnapshot(read.resources, rootNamespace ? { rootNamespace } : {});
}
