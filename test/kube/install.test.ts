import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { INSTALL_USAGE, parseInstallArgs, runInstall } from '../../src/cli/install.js';
import type { CommandIo } from '../../src/cli/io.js';
import { KmtlsError } from '../../src/errors.js';
import {
  CONFIG_KEYS,
  CONFIG_MAP_NAME,
  CONTROL_PLANE_NAME,
  CONTROL_PLANE_PORTS,
  ISTIO_CRD_NAMES,
  WEBHOOK_CONFIGURATION_NAME,
  WEBHOOK_SERVICE_PORT,
} from '../../src/kube/constants.js';
import type { InstallOptions, KubeObject, KubeVersion } from '../../src/kube/install.js';
import {
  asList,
  buildInstallManifests,
  checkInstallOptions,
  installHeader,
  parseKubeVersion,
  renderYaml,
  resolveIstioCrds,
  versionLabel,
} from '../../src/kube/install.js';
import { decideMembership } from '../../src/mesh/index.js';

// TODO(lead): apply these manifests to the real kube-apiserver harness (1.20, --kube-version 1.20) and to
// a current one; the checks below are the structural rules that can be verified offline.

const VERSION = '9.8.7';

function defaultImageOf(version: string): string {
  const parsed = parseInstallArgs([], version);
  return parsed.help ? '' : parsed.options.image;
}

function options(overrides: Partial<InstallOptions> = {}): InstallOptions {
  const parsed = parseInstallArgs([], VERSION);
  assert.equal(parsed.help, false);
  return { ...(parsed.help ? ({} as InstallOptions) : parsed.options), ...overrides };
}

function build(argv: readonly string[] = []): KubeObject[] {
  const parsed = parseInstallArgs(argv, VERSION);
  if (parsed.help) throw new Error('help');
  return buildInstallManifests(parsed.options);
}

function find(objects: readonly KubeObject[], kind: string, name?: string): KubeObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  assert.equal(found.length, 1, `exactly one ${kind} ${name ?? ''}`);
  return found[0]!;
}

// biome-ignore lint/suspicious/noExplicitAny: test access to deep, loosely typed manifests
type Loose = any;
const loose = (o: unknown): Loose => o;

// ---------------------------------------------------------------------------------------------------
// Offline checks of what the API server would refuse. `v` is the target; undefined = any from 1.21.

/** apiVersion + kind → the minor versions of Kubernetes 1.x that serve it: [first, first removed). */
const SERVED: Record<string, readonly [number, number]> = {
  'v1/Namespace': [0, Infinity],
  'v1/ServiceAccount': [0, Infinity],
  'v1/ConfigMap': [0, Infinity],
  'v1/Service': [0, Infinity],
  'apiextensions.k8s.io/v1/CustomResourceDefinition': [16, Infinity],
  'rbac.authorization.k8s.io/v1/ClusterRole': [8, Infinity],
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': [8, Infinity],
  'rbac.authorization.k8s.io/v1/Role': [8, Infinity],
  'rbac.authorization.k8s.io/v1/RoleBinding': [8, Infinity],
  'apps/v1/Deployment': [9, Infinity],
  'policy/v1/PodDisruptionBudget': [21, Infinity],
  'policy/v1beta1/PodDisruptionBudget': [5, 25],
  'admissionregistration.k8s.io/v1/MutatingWebhookConfiguration': [16, Infinity],
};
const CLUSTER_SCOPED = new Set([
  'Namespace',
  'CustomResourceDefinition',
  'ClusterRole',
  'ClusterRoleBinding',
  'MutatingWebhookConfiguration',
]);
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const KNOWN_VERBS = new Set([
  'get',
  'list',
  'watch',
  'create',
  'update',
  'patch',
  'delete',
  'deletecollection',
]);
/** JSONSchemaProps fields of apiextensions.k8s.io/v1 in Kubernetes 1.20 (CEL rules came in 1.23/1.25). */
const SCHEMA_KEYS_1_20 = new Set([
  'id',
  '$schema',
  '$ref',
  'description',
  'type',
  'format',
  'title',
  'default',
  'maximum',
  'exclusiveMaximum',
  'minimum',
  'exclusiveMinimum',
  'maxLength',
  'minLength',
  'pattern',
  'maxItems',
  'minItems',
  'uniqueItems',
  'multipleOf',
  'enum',
  'maxProperties',
  'minProperties',
  'required',
  'items',
  'allOf',
  'oneOf',
  'anyOf',
  'not',
  'properties',
  'additionalProperties',
  'patternProperties',
  'dependencies',
  'additionalItems',
  'definitions',
  'externalDocs',
  'example',
  'nullable',
  'x-kubernetes-preserve-unknown-fields',
  'x-kubernetes-embedded-resource',
  'x-kubernetes-int-or-string',
  'x-kubernetes-list-map-keys',
  'x-kubernetes-list-type',
  'x-kubernetes-map-type',
]);

function served(obj: KubeObject, minor: number): boolean {
  const range = SERVED[`${obj.apiVersion}/${obj.kind}`];
  return range !== undefined && minor >= range[0] && minor < range[1];
}

/** Structural schema rules: a type everywhere, no unknown keys for the target, items for arrays. */
function schemaProblems(schema: Loose, at: string, celAllowed: boolean): string[] {
  const out: string[] = [];
  for (const key of Object.keys(schema)) {
    if (key === 'x-kubernetes-validations') {
      if (!celAllowed) out.push(`${at}: x-kubernetes-validations before Kubernetes 1.25`);
    } else if (!SCHEMA_KEYS_1_20.has(key)) out.push(`${at}: unknown schema key ${key}`);
  }
  const opaque =
    schema['x-kubernetes-preserve-unknown-fields'] === true || schema['x-kubernetes-int-or-string'];
  if (!opaque && typeof schema.type !== 'string') out.push(`${at}: no type`);
  if (schema.properties && schema.additionalProperties)
    out.push(`${at}: properties and additionalProperties`);
  if (schema.type === 'array' && (typeof schema.items !== 'object' || Array.isArray(schema.items)))
    out.push(`${at}: an array needs one items schema`);
  for (const [k, v] of Object.entries(schema.properties ?? {}))
    out.push(...schemaProblems(v, `${at}.${k}`, celAllowed));
  if (typeof schema.additionalProperties === 'object')
    out.push(...schemaProblems(schema.additionalProperties, `${at}.*`, celAllowed));
  if (schema.items) out.push(...schemaProblems(schema.items, `${at}[]`, celAllowed));
  for (const rule of schema['x-kubernetes-validations'] ?? [])
    if (typeof rule.rule !== 'string' || typeof rule.message !== 'string')
      out.push(`${at}: a CEL rule needs rule and message`);
  return out;
}

function matchesSelector(selector: Loose, labels: Readonly<Record<string, string>>): boolean {
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    const value = labels[e.key];
    switch (e.operator) {
      case 'In':
        if (!has || !e.values.includes(value)) return false;
        break;
      case 'NotIn':
        if (has && e.values.includes(value)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
      default:
        throw new Error(`unknown operator ${e.operator}`);
    }
  }
  return true;
}

/** Every problem the API server (or the first reconcile) would have with the set, as sentences. */
function manifestProblems(objects: readonly KubeObject[], v: KubeVersion | undefined): string[] {
  const out: string[] = [];
  const minors = v ? [v.minor] : [21, 24, 25, 29, 33];
  const named = (kind: string, name: string, ns?: string) =>
    objects.find((o) => o.kind === kind && o.metadata.name === name && o.metadata.namespace === ns);
  for (const obj of objects) {
    const id = `${obj.kind}/${obj.metadata.name}`;
    for (const minor of minors)
      if (!served(obj, minor)) out.push(`${id}: ${obj.apiVersion} not served by 1.${minor}`);
    if (!DNS_SUBDOMAIN.test(obj.metadata.name) || obj.metadata.name.length > 253) out.push(`${id}: bad name`);
    if (CLUSTER_SCOPED.has(obj.kind) === (obj.metadata.namespace !== undefined))
      out.push(`${id}: namespace scope`);
    if (obj.metadata.namespace !== undefined && !named('Namespace', obj.metadata.namespace))
      out.push(`${id}: namespace ${obj.metadata.namespace} is not created`);
    for (const [k, val] of Object.entries(obj.metadata.labels ?? {}))
      if (
        typeof val !== 'string' ||
        val.length > 63 ||
        !/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/.test(val)
      )
        out.push(`${id}: bad label value ${k}=${val}`);
    const o = loose(obj);
    switch (obj.kind) {
      case 'CustomResourceDefinition': {
        const spec = o.spec;
        if (obj.metadata.name !== `${spec.names.plural}.${spec.group}`)
          out.push(`${id}: name is not plural.group`);
        if (spec.versions.filter((x: Loose) => x.storage).length !== 1)
          out.push(`${id}: not exactly one storage version`);
        const celAllowed = minors.every((m) => m >= 25);
        for (const version of spec.versions) {
          out.push(...schemaProblems(version.schema.openAPIV3Schema, `${id} ${version.name}`, celAllowed));
          for (const c of version.additionalPrinterColumns ?? [])
            if (
              !['integer', 'number', 'string', 'boolean', 'date'].includes(c.type) ||
              !c.jsonPath.startsWith('.')
            )
              out.push(`${id}: printer column ${c.name}`);
        }
        break;
      }
      case 'ClusterRole':
      case 'Role':
        for (const rule of o.rules) {
          if (!Array.isArray(rule.apiGroups) || rule.resources.length === 0 || rule.verbs.length === 0)
            out.push(`${id}: incomplete rule`);
          for (const verb of rule.verbs) if (!KNOWN_VERBS.has(verb)) out.push(`${id}: verb ${verb}`);
          if (rule.resourceNames && rule.verbs.some((x: string) => x === 'create' || x === 'list'))
            out.push(`${id}: resourceNames cannot restrict create or list`);
        }
        break;
      case 'ClusterRoleBinding':
      case 'RoleBinding': {
        const ns = obj.kind === 'RoleBinding' ? obj.metadata.namespace : undefined;
        if (o.roleRef.apiGroup !== 'rbac.authorization.k8s.io' || !named(o.roleRef.kind, o.roleRef.name, ns))
          out.push(`${id}: roleRef to nothing`);
        for (const s of o.subjects)
          if (s.kind !== 'ServiceAccount' || !named('ServiceAccount', s.name, s.namespace))
            out.push(`${id}: subject`);
        break;
      }
      case 'Deployment': {
        const tpl = o.spec.template;
        if (!matchesSelector(o.spec.selector, tpl.metadata.labels))
          out.push(`${id}: selector misses the template`);
        if (!named('ServiceAccount', tpl.spec.serviceAccountName, obj.metadata.namespace))
          out.push(`${id}: no SA`);
        const volumes = new Set(tpl.spec.volumes.map((x: Loose) => x.name));
        for (const c of tpl.spec.containers) {
          if (!c.name || !c.image) out.push(`${id}: container without name or image`);
          const ports = c.ports.map((p: Loose) => p.containerPort);
          if (new Set(ports).size !== ports.length) out.push(`${id}: duplicate ports`);
          if (!ports.includes(c.readinessProbe.httpGet.port)) out.push(`${id}: probe on no port`);
          for (const m of c.volumeMounts) if (!volumes.has(m.name)) out.push(`${id}: mount of no volume`);
          for (const e of c.env) {
            const ref = e.valueFrom?.configMapKeyRef;
            if (ref && named('ConfigMap', ref.name, obj.metadata.namespace)?.data === undefined)
              out.push(`${id}: env ${e.name} from no ConfigMap`);
            if (ref && !(ref.key in loose(named('ConfigMap', ref.name, obj.metadata.namespace)).data))
              out.push(`${id}: env ${e.name} from no key`);
          }
          for (const arg of c.args)
            for (const m of String(arg).matchAll(/\$\(([A-Z_]+)\)/g))
              if (!c.env.some((e: Loose) => e.name === m[1]))
                out.push(`${id}: arg refers to unset $(${m[1]})`);
        }
        break;
      }
      case 'Service': {
        const deployment = objects.find(
          (d) =>
            d.kind === 'Deployment' &&
            matchesSelector({ matchLabels: o.spec.selector }, loose(d).spec.template.metadata.labels),
        );
        if (!deployment) out.push(`${id}: selects no pods`);
        const containerPorts = loose(deployment)?.spec.template.spec.containers.flatMap((c: Loose) =>
          c.ports.map((p: Loose) => p.containerPort),
        );
        for (const p of o.spec.ports) {
          if (!DNS_LABEL.test(p.name) || p.name.length > 15) out.push(`${id}: port name ${p.name}`);
          if (!containerPorts?.includes(p.targetPort))
            out.push(`${id}: targetPort ${p.targetPort} not in the pod`);
        }
        break;
      }
      case 'PodDisruptionBudget': {
        const d = objects.find((x) => x.kind === 'Deployment');
        if (!matchesSelector(o.spec.selector, loose(d).spec.template.metadata.labels))
          out.push(`${id}: selects no pods`);
        break;
      }
      case 'MutatingWebhookConfiguration': {
        const names = o.webhooks.map((w: Loose) => w.name);
        if (new Set(names).size !== names.length) out.push(`${id}: duplicate webhook names`);
        for (const w of o.webhooks) {
          if (w.name.split('.').length < 3) out.push(`${id}: webhook name ${w.name} is not fully qualified`);
          const svc = loose(named('Service', w.clientConfig.service.name, w.clientConfig.service.namespace));
          if (!svc?.spec.ports.some((p: Loose) => p.port === w.clientConfig.service.port))
            out.push(`${id}: service port`);
          if (!['None', 'NoneOnDryRun'].includes(w.sideEffects)) out.push(`${id}: sideEffects`);
          if (!w.admissionReviewVersions.includes('v1')) out.push(`${id}: admissionReviewVersions`);
          if (!(w.timeoutSeconds >= 1 && w.timeoutSeconds <= 30)) out.push(`${id}: timeoutSeconds`);
          if (!['Ignore', 'Fail'].includes(w.failurePolicy)) out.push(`${id}: failurePolicy`);
          if (!['Never', 'IfNeeded'].includes(w.reinvocationPolicy)) out.push(`${id}: reinvocationPolicy`);
        }
        break;
      }
      case 'Namespace':
      case 'ServiceAccount':
        break;
      case 'ConfigMap':
        for (const [k, val] of Object.entries(o.data))
          if (typeof val !== 'string') out.push(`${id}: data ${k}`);
        break;
      default:
        out.push(`${id}: a kind this check does not know`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------

describe('kmtls install: the objects', () => {
  it('default options: every object, in apply order, in kmtls-system', () => {
    const objects = build();
    assert.deepEqual(
      objects.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`),
      [
        'Namespace//kmtls-system',
        `CustomResourceDefinition//${ISTIO_CRD_NAMES.peerAuthentication}`,
        `CustomResourceDefinition//${ISTIO_CRD_NAMES.destinationRule}`,
        'ServiceAccount/kmtls-system/kmtls-controlplane',
        'ClusterRole//kmtls-controlplane',
        'ClusterRoleBinding//kmtls-controlplane',
        'Role/kmtls-system/kmtls-controlplane',
        'RoleBinding/kmtls-system/kmtls-controlplane',
        'ConfigMap/kmtls-system/kmtls-config',
        'Service/kmtls-system/kmtls-controlplane',
        'Deployment/kmtls-system/kmtls-controlplane',
        'PodDisruptionBudget/kmtls-system/kmtls-controlplane',
        'MutatingWebhookConfiguration//kmtls-sidecar-injector',
      ],
    );
    const d = loose(find(objects, 'Deployment'));
    assert.equal(d.spec.replicas, 2);
    assert.equal(d.spec.template.spec.containers[0].image, `kmtls/kmtls:${VERSION}`);
    assert.deepEqual(d.spec.template.spec.containers[0].args.slice(0, 5), [
      'controlplane',
      '--source',
      'kubernetes',
      '--namespace',
      '$(POD_NAMESPACE)',
    ]);
    assert.equal(loose(find(objects, 'PodDisruptionBudget')).apiVersion, 'policy/v1');
    assert.deepEqual(loose(find(objects, 'ConfigMap', CONFIG_MAP_NAME)).data, {
      [CONFIG_KEYS.trustDomain]: 'cluster.local',
      [CONFIG_KEYS.rootNamespace]: 'istio-system',
      [CONFIG_KEYS.leafTtl]: '24h',
    });
    assert.deepEqual(manifestProblems(objects, undefined), []);
  });

  it('custom options reach every object that depends on them', () => {
    const objects = build([
      '--namespace',
      'mesh',
      '--replicas',
      '1',
      '--image',
      'registry.example/kmtls:dev',
      '--istio-crds',
      'skip',
      '--trust-domain',
      'corp.example',
      '--root-namespace',
      'mesh-root',
      '--leaf-ttl',
      '12h',
    ]);
    assert.equal(objects.filter((o) => o.kind === 'CustomResourceDefinition').length, 0);
    assert.equal(objects.filter((o) => o.kind === 'PodDisruptionBudget').length, 0, 'no PDB for one replica');
    for (const o of objects)
      if (o.metadata.namespace !== undefined) assert.equal(o.metadata.namespace, 'mesh');
    const d = loose(find(objects, 'Deployment'));
    assert.equal(d.spec.replicas, 1);
    assert.equal(d.spec.template.spec.containers[0].image, 'registry.example/kmtls:dev');
    for (const kind of ['ClusterRoleBinding', 'RoleBinding'])
      assert.deepEqual(loose(find(objects, kind)).subjects, [
        { kind: 'ServiceAccount', name: CONTROL_PLANE_NAME, namespace: 'mesh' },
      ]);
    const webhook = loose(find(objects, 'MutatingWebhookConfiguration', WEBHOOK_CONFIGURATION_NAME));
    for (const w of webhook.webhooks) {
      assert.deepEqual(w.clientConfig.service, {
        name: CONTROL_PLANE_NAME,
        namespace: 'mesh',
        path: '/inject',
        port: 443,
      });
      const exclusion = w.namespaceSelector.matchExpressions.find(
        (e: Loose) => e.key === 'kubernetes.io/metadata.name',
      );
      assert.deepEqual(exclusion.values, ['kube-system', 'mesh']);
    }
    assert.deepEqual(loose(find(objects, 'ConfigMap')).data, {
      trustDomain: 'corp.example',
      rootNamespace: 'mesh-root',
      leafTtl: '12h',
    });
    assert.deepEqual(manifestProblems(objects, undefined), []);
  });

  it('the Service exposes the API, monitoring, and the webhook on 443', () => {
    const svc = loose(find(build(), 'Service'));
    assert.deepEqual(
      svc.spec.ports.map((p: Loose) => [p.name, p.port, p.targetPort]),
      [
        ['tls-api', 15012, 15012],
        ['http-monitoring', 15014, 15014],
        ['https-webhook', WEBHOOK_SERVICE_PORT, CONTROL_PLANE_PORTS.webhook.port],
      ],
    );
  });

  it('the control plane pod is locked down and never injected', () => {
    const pod = loose(find(build(), 'Deployment')).spec.template;
    const c = pod.spec.containers[0];
    assert.equal(pod.spec.securityContext.runAsNonRoot, true);
    assert.deepEqual(c.securityContext, {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ['ALL'] },
    });
    assert.deepEqual(c.readinessProbe.httpGet, { path: '/ready', port: 15014, scheme: 'HTTP' });
    assert.deepEqual(
      c.env.slice(0, 2).map((e: Loose) => [e.name, e.valueFrom.fieldRef.fieldPath]),
      [
        ['POD_NAME', 'metadata.name'],
        ['POD_NAMESPACE', 'metadata.namespace'],
      ],
    );
    assert.equal(pod.metadata.labels['sidecar.istio.io/inject'], 'false');
    assert.equal(
      pod.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm
        .topologyKey,
      'kubernetes.io/hostname',
    );
  });

  it('RBAC: no wildcard anywhere, no escalate or bind, secrets and webhooks only as described', () => {
    const objects = build();
    for (const kind of ['ClusterRole', 'Role']) {
      for (const rule of loose(find(objects, kind)).rules) {
        for (const field of ['apiGroups', 'resources', 'verbs', 'resourceNames'])
          for (const value of rule[field] ?? []) assert.ok(!value.includes('*'), `${kind} ${field} ${value}`);
        assert.ok(
          !rule.verbs.includes('escalate') &&
            !rule.verbs.includes('bind') &&
            !rule.verbs.includes('impersonate'),
        );
      }
    }
    const rules = loose(find(objects, 'ClusterRole')).rules;
    const grants = (group: string, resource: string) =>
      rules.filter((r: Loose) => r.apiGroups.includes(group) && r.resources.includes(resource));
    assert.deepEqual(
      grants('admissionregistration.k8s.io', 'mutatingwebhookconfigurations')[0].resourceNames,
      [WEBHOOK_CONFIGURATION_NAME],
    );
    assert.deepEqual(grants('', 'configmaps')[0].verbs.includes('delete'), false);
    assert.deepEqual(grants('authentication.k8s.io', 'tokenreviews')[0].verbs, ['create']);
    for (const [group, resource] of [
      ['security.istio.io', 'peerauthentications'],
      ['networking.istio.io', 'destinationrules'],
      ['discovery.k8s.io', 'endpointslices'],
    ] as const)
      assert.deepEqual(grants(group, resource)[0].verbs, ['get', 'list', 'watch']);
    // Only what the controller calls: no deletes of Secrets or RBAC objects, no events, no SARs.
    assert.equal(grants('', 'secrets')[0].verbs.includes('delete'), false);
    assert.equal(grants('rbac.authorization.k8s.io', 'roles')[0].verbs.includes('delete'), false);
    assert.equal(grants('', 'events').length, 0);
    assert.equal(grants('authorization.k8s.io', 'subjectaccessreviews').length, 0);
    assert.equal(grants('coordination.k8s.io', 'leases').length, 0, 'leases only in the own namespace');
    const role = loose(find(objects, 'Role'));
    assert.deepEqual(
      role.rules.map((r: Loose) => [r.resources, r.verbs, r.resourceNames]),
      [
        [['leases'], ['create'], undefined],
        [['leases'], ['get', 'update'], ['kmtls-controlplane']],
      ],
    );
  });
});

describe('kmtls install: the injection webhook', () => {
  const webhooks = loose(find(build(), 'MutatingWebhookConfiguration')).webhooks as Loose[];

  it('is Istio-shaped: CREATE pods, fails closed, 10 s, no side effects, v1 reviews', () => {
    assert.deepEqual(
      webhooks.map((w) => w.name),
      [
        'sidecar-injector.kmtls.io',
        'namespace.sidecar-injector.kmtls.io',
        'object.sidecar-injector.kmtls.io',
      ],
    );
    for (const w of webhooks) {
      assert.deepEqual(w.rules, [
        {
          operations: ['CREATE'],
          apiGroups: [''],
          apiVersions: ['v1'],
          resources: ['pods'],
          scope: 'Namespaced',
        },
      ]);
      assert.equal(w.failurePolicy, 'Fail');
      assert.equal(w.timeoutSeconds, 10);
      assert.equal(w.sideEffects, 'None');
      assert.deepEqual(w.admissionReviewVersions, ['v1', 'v1beta1']);
      assert.equal(w.reinvocationPolicy, 'Never');
      assert.equal('caBundle' in w.clientConfig, false, 'the controller owns caBundle');
    }
  });

  // The webhooks must send exactly the pods the membership rules put in the mesh, each once, and never
  // anything in kube-system or the control plane's namespace (namespaces carry kubernetes.io/metadata.name).
  const namespaceLabelSets: Record<string, string>[] = [
    {},
    { 'kmtls.io/injection': 'enabled' },
    { 'kmtls.io/injection': 'disabled' },
    { 'istio-injection': 'enabled' },
    { 'istio-injection': 'disabled' },
    { 'kmtls.io/injection': 'enabled', 'istio-injection': 'disabled' },
    { 'kmtls.io/injection': 'disabled', 'istio-injection': 'enabled' },
    { 'kmtls.io/injection': 'enabled', 'istio-injection': 'enabled' },
    { 'kmtls.io/injection': 'other' },
  ];
  const podLabelSets: Record<string, string>[] = [
    {},
    { 'sidecar.istio.io/inject': 'true' },
    { 'sidecar.istio.io/inject': 'false' },
    { 'kmtls.io/inject': 'false' },
    { 'sidecar.istio.io/inject': 'true', 'kmtls.io/inject': 'false' },
  ];
  for (const ns of ['apps', 'kube-system', 'kmtls-system']) {
    for (const nsLabels of namespaceLabelSets) {
      for (const podLabels of podLabelSets) {
        const nsAll = { ...nsLabels, 'kubernetes.io/metadata.name': ns };
        const sentTo = webhooks
          .filter(
            (w) =>
              matchesSelector(w.namespaceSelector, nsAll) && matchesSelector(w.objectSelector, podLabels),
          )
          .map((w) => w.name);
        const member = decideMembership(
          {
            podLabels,
            podAnnotations: {},
            hostNetwork: false,
            meta: { namespace: ns },
            containers: [{ name: 'app' }],
          },
          { meta: { labels: nsLabels } },
        );
        const expected = ns === 'apps' && member.inMesh ? 1 : 0;
        it(`namespace ${ns} ${JSON.stringify(nsLabels)}, pod ${JSON.stringify(podLabels)}: sent ${expected} time(s)`, () => {
          assert.equal(sentTo.length, expected, `${member.reason}; sent to ${sentTo.join(', ') || 'none'}`);
        });
      }
    }
  }
});

describe('kmtls install: the Istio CRDs', () => {
  const crds = (argv: string[] = []) =>
    build(argv)
      .filter((o) => o.kind === 'CustomResourceDefinition')
      .map(loose);

  it("match Istio's group, versions, storage version, names, scope, status and columns", () => {
    const [pa, dr] = crds();
    const summary = (c: Loose) => ({
      group: c.spec.group,
      scope: c.spec.scope,
      names: c.spec.names,
      versions: c.spec.versions.map((v: Loose) => [
        v.name,
        v.served,
        v.storage,
        v.additionalPrinterColumns.map((x: Loose) => x.name),
        v.subresources,
      ]),
    });
    assert.deepEqual(summary(pa), {
      group: 'security.istio.io',
      scope: 'Namespaced',
      names: {
        categories: ['istio-io', 'security-istio-io'],
        kind: 'PeerAuthentication',
        listKind: 'PeerAuthenticationList',
        plural: 'peerauthentications',
        shortNames: ['pa'],
        singular: 'peerauthentication',
      },
      versions: [
        ['v1', true, false, ['Mode', 'Age'], { status: {} }],
        ['v1beta1', true, true, ['Mode', 'Age'], { status: {} }],
      ],
    });
    assert.deepEqual(summary(dr), {
      group: 'networking.istio.io',
      scope: 'Namespaced',
      names: {
        categories: ['istio-io', 'networking-istio-io'],
        kind: 'DestinationRule',
        listKind: 'DestinationRuleList',
        plural: 'destinationrules',
        shortNames: ['dr'],
        singular: 'destinationrule',
      },
      versions: [
        ['v1', true, true, ['Host', 'Age'], { status: {} }],
        ['v1alpha3', true, false, ['Host', 'Age'], { status: {} }],
        ['v1beta1', true, false, ['Host', 'Age'], { status: {} }],
      ],
    });
    for (const c of [pa, dr]) {
      assert.equal(c.metadata.labels['app.kubernetes.io/part-of'], 'kmtls');
      assert.equal(c.metadata.annotations['helm.sh/resource-policy'], 'keep');
    }
  });

  it('carry CEL rules only for Kubernetes 1.25 and later', () => {
    const hasCel = (objects: Loose[]) => JSON.stringify(objects).includes('x-kubernetes-validations');
    assert.equal(hasCel(crds()), false);
    assert.equal(hasCel(crds(['--kube-version', '1.20'])), false);
    assert.equal(hasCel(crds(['--kube-version', '1.24'])), false);
    assert.equal(hasCel(crds(['--kube-version', '1.25'])), true);
    assert.match(JSON.stringify(crds(['--kube-version', 'v1.30.2'])[0]), /portLevelMtls requires selector/);
  });

  // The API server prunes fields its schema does not know: nothing a kmtls or Istio user writes may go.
  function pruned(value: unknown, schema: Loose, at: string): string[] {
    if (value === null || typeof value !== 'object' || schema['x-kubernetes-preserve-unknown-fields'])
      return [];
    if (Array.isArray(value)) return value.flatMap((v, i) => pruned(v, schema.items, `${at}[${i}]`));
    return Object.entries(value).flatMap(([k, v]) => {
      const sub =
        schema.properties?.[k] ??
        (typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined);
      return sub ? pruned(v, sub, `${at}.${k}`) : [`${at}.${k}`];
    });
  }

  it('keep every field of the policies in examples/ and the analyze fixtures, and of a full DestinationRule', () => {
    const [pa, dr] = crds();
    const schemaFor = (kind: string, apiVersion: string) => {
      const crd = kind === 'PeerAuthentication' ? pa : dr;
      const version = apiVersion.split('/')[1];
      return crd.spec.versions.find((v: Loose) => v.name === version)?.schema.openAPIV3Schema;
    };
    const files = ['examples', 'test/fixtures/analyze'].flatMap(function walk(dir: string): string[] {
      return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory()
          ? walk(path.join(dir, e.name))
          : e.name.endsWith('.yaml')
            ? [path.join(dir, e.name)]
            : [],
      );
    });
    let checked = 0;
    for (const file of files) {
      for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
        const obj = doc.toJS() as Loose;
        if (obj?.kind !== 'PeerAuthentication' && obj?.kind !== 'DestinationRule') continue;
        const schema = schemaFor(obj.kind, obj.apiVersion);
        assert.ok(schema, `${file}: ${obj.apiVersion} ${obj.kind} is served`);
        assert.deepEqual(pruned({ spec: obj.spec }, schema, ''), [], `${file}: ${obj.metadata?.name}`);
        checked++;
      }
    }
    assert.ok(checked >= 5, `checked ${checked} policies`);
    const tls = {
      mode: 'MUTUAL',
      clientCertificate: '/c',
      privateKey: '/k',
      caCertificates: '/ca',
      caCrl: '/crl',
      credentialName: 'cred',
      insecureSkipVerify: false,
      sni: 'a.example',
      subjectAltNames: ['spiffe://td/ns/a/sa/b'],
    };
    const policy = {
      connectionPool: { tcp: { maxConnections: 10 }, http: { idleTimeout: '1s' } },
      loadBalancer: { simple: 'ROUND_ROBIN', localityLbSetting: { enabled: true } },
      outlierDetection: { consecutive5xxErrors: 5 },
      portLevelSettings: [
        {
          port: { number: 8080 },
          tls,
          loadBalancer: { simple: 'RANDOM' },
          connectionPool: {},
          outlierDetection: {},
        },
      ],
      proxyProtocol: { version: 'V2' },
      retryBudget: { percent: 10 },
      tls,
      tunnel: { protocol: 'CONNECT', targetHost: 'h', targetPort: 8443 },
    };
    const full = {
      spec: {
        host: 'payments.finance.svc.cluster.local',
        exportTo: ['.'],
        workloadSelector: { matchLabels: { app: 'web' } },
        trafficPolicy: policy,
        subsets: [{ name: 'v1', labels: { version: 'v1' }, trafficPolicy: policy }],
      },
    };
    for (const version of ['v1', 'v1alpha3', 'v1beta1'])
      assert.deepEqual(pruned(full, schemaFor('DestinationRule', `networking.istio.io/${version}`), ''), []);
    assert.deepEqual(
      pruned({ spec: { host: 'h', bogus: 1 } }, schemaFor('DestinationRule', 'networking.istio.io/v1'), ''),
      ['.spec.bogus'],
      'the check can fail',
    );
  });
});

describe('kmtls install: Kubernetes versions', () => {
  it('targets 1.20 with policy/v1beta1 and nothing 1.20 lacks', () => {
    const objects = build(['--kube-version', '1.20']);
    assert.equal(loose(find(objects, 'PodDisruptionBudget')).apiVersion, 'policy/v1beta1');
    assert.deepEqual(manifestProblems(objects, { major: 1, minor: 20 }), []);
  });

  it('the default output is valid on 1.21 and later, not on 1.20 (policy/v1), and the check notices', () => {
    const objects = build();
    assert.deepEqual(manifestProblems(objects, { major: 1, minor: 30 }), []);
    assert.deepEqual(manifestProblems(objects, { major: 1, minor: 20 }), [
      'PodDisruptionBudget/kmtls-controlplane: policy/v1 not served by 1.20',
    ]);
  });

  it('1.25 and later: policy/v1 and CEL, both accepted', () => {
    for (const v of ['1.25', '1.33'])
      assert.deepEqual(manifestProblems(build(['--kube-version', v]), parseKubeVersion(v)), []);
    assert.deepEqual(
      manifestProblems(build(['--kube-version', '1.25']), { major: 1, minor: 24 }).filter((p) =>
        p.includes('x-kubernetes-validations'),
      ).length > 0,
      true,
      'CEL rules are flagged for a server before 1.25',
    );
  });

  it('parses the usual ways of writing a version', () => {
    assert.deepEqual(parseKubeVersion('1.20'), { major: 1, minor: 20 });
    assert.deepEqual(parseKubeVersion('v1.29.3'), { major: 1, minor: 29 });
    assert.deepEqual(parseKubeVersion('v1.28.5-gke.1200'), { major: 1, minor: 28 });
    assert.equal(parseKubeVersion('latest'), undefined);
    assert.equal(parseKubeVersion('1'), undefined);
  });
});

describe('kmtls install: output', () => {
  function capture(): { io: CommandIo; out: () => string } {
    const chunks: string[] = [];
    return {
      io: {
        stdout: (t) => chunks.push(t),
        stderr: (t) => chunks.push(t),
        readStdin: async () => '',
        isTty: false,
      },
      out: () => chunks.join(''),
    };
  }

  it('YAML: a header naming the version and options, documents that parse back to the same objects', async () => {
    const { io, out } = capture();
    assert.equal(await runInstall(['--replicas', '3'], io), 0);
    const text = out();
    assert.match(
      text,
      /^# kmtls \d+\.\d+\.\d+\S*: install manifests\n# options: --namespace kmtls-system --replicas 3 /,
    );
    assert.match(text, /use --istio-crds skip/);
    const docs = parseAllDocuments(text);
    for (const d of docs) assert.deepEqual(d.errors, []);
    // Both YAML 1.2 and the YAML 1.1 that kubectl's parser speaks read the same values.
    const expected = JSON.parse(JSON.stringify(build(['--replicas', '3']).map((o) => o)));
    const version = docs.map((d) => d.toJS()).find((o) => o.kind === 'Namespace').metadata.labels[
      'app.kubernetes.io/version'
    ];
    const normalize = (list: unknown[]) => JSON.parse(JSON.stringify(list).replaceAll(version, VERSION));
    assert.deepEqual(normalize(docs.map((d) => d.toJS())), expected);
    assert.deepEqual(normalize(parseAllDocuments(text, { version: '1.1' }).map((d) => d.toJS())), expected);
    assert.equal(text.split('\n---\n').length, expected.length);
    assert.match(text, /# failurePolicy Fail: /);
    assert.match(text, /sidecar\.istio\.io\/inject: "false"/, 'YAML 1.1 booleans are quoted');
  });

  it('renderYaml and the header, directly', () => {
    const o = options({ istioCrds: 'skip', kubeVersion: { major: 1, minor: 20 } });
    const objects = buildInstallManifests(o);
    const header = installHeader(o, objects);
    assert.match(header, /--istio-crds skip .*--kube-version 1\.20/);
    assert.match(header, /not included/);
    const text = renderYaml(objects, header);
    assert.ok(text.startsWith('# kmtls 9.8.7: install manifests\n'));
    assert.deepEqual(
      parseAllDocuments(text).map((d) => d.toJS()),
      JSON.parse(JSON.stringify(objects)),
    );
  });

  it('-o json: one v1 List of the same objects', async () => {
    const { io, out } = capture();
    assert.equal(await runInstall(['-o', 'json', '--istio-crds', 'include'], io), 0);
    const list = JSON.parse(out());
    assert.equal(list.apiVersion, 'v1');
    assert.equal(list.kind, 'List');
    assert.equal(list.items.length, asList(build()).items.length);
    assert.deepEqual(
      list.items.map((o: Loose) => o.kind),
      build().map((o) => o.kind),
    );
  });

  it('--help prints the usage', async () => {
    const { io, out } = capture();
    assert.equal(await runInstall(['--help'], io), 0);
    assert.equal(out(), INSTALL_USAGE);
  });

  const bad: [string[], RegExp][] = [
    [['--replicas', '0'], /replica count: 0/],
    [['--replicas', 'two'], /replica count: --replicas "two"/],
    [['--replicas', '-1'], /replica/],
    [['--namespace', 'Kmtls_System'], /not a namespace name/],
    [['--image', ''], /not an image reference/],
    [['--istio-crds', 'maybe'], /--istio-crds "maybe"/],
    [['--kube-version', 'latest'], /not a Kubernetes version/],
    [['--kube-version', '1.15'], /unsupported Kubernetes version: 1\.15/],
    [['--trust-domain', 'Bad:Domain'], /not a trust domain/],
    [['--leaf-ttl', '1y'], /not a duration/],
    [['--leaf-ttl', '100d'], /leaf TTL too long/],
    [['-o', 'text'], /unknown output format/],
    [['--bogus'], /bad arguments/],
    [['extra'], /unexpected argument: "extra"/],
  ];
  for (const [argv, message] of bad) {
    it(`refuses ${argv.join(' ')} with KMTLS_CLI_USAGE`, async () => {
      const { io, out } = capture();
      await assert.rejects(runInstall(argv, io), (err: unknown) => {
        assert.ok(err instanceof KmtlsError);
        assert.equal(err.code, 'KMTLS_CLI_USAGE');
        assert.match(err.message, message);
        return true;
      });
      assert.equal(out(), '', 'nothing printed');
    });
  }
});

describe('kmtls install: options and --istio-crds auto', () => {
  it('a version that is no label value or image tag as it stands is made into one', () => {
    const objects = buildInstallManifests(options({ version: '1.2.3-rc.1+build.5' }));
    assert.equal(objects[0]!.metadata.labels?.['app.kubernetes.io/version'], '1.2.3-rc.1_build.5');
    assert.equal(versionLabel(`${'x'.repeat(70)}+`), 'x'.repeat(63));
    assert.equal(
      parseInstallArgs([], '1.0.0+abc').help === false && defaultImageOf('1.0.0+abc'),
      'kmtls/kmtls:1.0.0_abc',
    );
  });

  it('checkInstallOptions accepts the defaults and names each problem', () => {
    assert.deepEqual(checkInstallOptions(options()), []);
    assert.equal(checkInstallOptions(options({ replicas: 1.5, namespace: '' })).length, 2);
  });

  it('buildInstallManifests refuses unchecked options as a bug', () => {
    assert.throws(() => buildInstallManifests(options({ replicas: 0 })), /^Error: BUG: /);
  });

  it('auto includes the CRDs unless the cluster is known to have them from someone else', () => {
    assert.equal(resolveIstioCrds('auto'), 'include');
    assert.equal(resolveIstioCrds('auto', []), 'include');
    assert.equal(
      resolveIstioCrds('auto', [
        { name: ISTIO_CRD_NAMES.peerAuthentication, labels: { 'app.kubernetes.io/part-of': 'kmtls' } },
      ]),
      'include',
    );
    assert.equal(
      resolveIstioCrds('auto', [{ name: ISTIO_CRD_NAMES.destinationRule, labels: { app: 'istio-pilot' } }]),
      'skip',
    );
    assert.equal(resolveIstioCrds('auto', [{ name: 'gateways.networking.istio.io', labels: {} }]), 'include');
    assert.equal(
      resolveIstioCrds('include', [{ name: ISTIO_CRD_NAMES.destinationRule, labels: {} }]),
      'include',
    );
    assert.equal(resolveIstioCrds('skip'), 'skip');
    const withIstio = buildInstallManifests(options(), [
      { name: ISTIO_CRD_NAMES.peerAuthentication, labels: {} },
    ]);
    assert.equal(
      withIstio.some((o) => o.kind === 'CustomResourceDefinition'),
      false,
    );
  });
});
