import { Document } from 'yaml';
import { checkTrustDomain } from '../identity/index.js';
import {
  INJECT_LABEL,
  ISTIO_INJECTION_LABEL,
  KMTLS_INJECT_LABEL,
  KMTLS_INJECTION_LABEL,
} from '../mesh/index.js';
import { formatDuration, MAX_LEAF_TTL_MS, parseDuration } from '../pki/index.js';
import {
  CONFIG_KEYS,
  CONFIG_MAP_NAME,
  CONTROL_PLANE_CONTAINER,
  CONTROL_PLANE_NAME,
  CONTROL_PLANE_PORTS,
  CONTROL_PLANE_SERVICE_ACCOUNT,
  ISTIO_CRD_NAMES,
  LEADER_ELECTION_LEASE,
  NAMESPACE_WEBHOOK_NAME,
  OBJECT_WEBHOOK_NAME,
  PART_OF_LABEL,
  READY_PATH,
  SIDECAR_UID,
  WEBHOOK_CONFIGURATION_NAME,
  WEBHOOK_NAME,
  WEBHOOK_PATH,
  WEBHOOK_SERVICE_PORT,
} from './constants.js';
import { istioCrds } from './crds.js';

/**
 * A Kubernetes object as it is printed: plain data, no defaults filled in. `metadata.namespace` is
 * set on namespaced kinds only.
 */
export interface KubeObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace?: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly annotations?: Readonly<Record<string, string>>;
  };
  readonly [field: string]: unknown;
}

/**
 * What `--istio-crds` asks for. `auto` becomes `include` unless the cluster is known to have these CRDs
 * from someone else (Istio): see {@link resolveIstioCrds}.
 */
export type IstioCrdsMode = 'auto' | 'include' | 'skip';

/** A Kubernetes minor version of the target cluster, `{ major: 1, minor: 20 }`. */
export interface KubeVersion {
  readonly major: number;
  readonly minor: number;
}

/** Everything the manifests depend on. Checked by {@link checkInstallOptions}; the builder trusts it. */
export interface InstallOptions {
  /** kmtls's own version, printed in the header and used for the default image tag. */
  readonly version: string;
  readonly namespace: string;
  readonly replicas: number;
  readonly image: string;
  readonly istioCrds: IstioCrdsMode;
  /** The target cluster; undefined means "any Kubernetes from 1.21 on". */
  readonly kubeVersion: KubeVersion | undefined;
  readonly trustDomain: string;
  readonly rootNamespace: string;
  /** As written (`24h`): a duration within the CA's limits (checkInstallOptions). */
  readonly leafTtl: string;
}

/** The oldest Kubernetes the manifests can target: apiextensions.k8s.io/v1 and admissionregistration/v1. */
export const MIN_KUBE_VERSION: KubeVersion = { major: 1, minor: 16 };

export { defaultImage } from './constants.js';

/** `1.20`, `v1.20`, `1.20.2`, `v1.29.0-gke.1` → major and minor; anything else → undefined. */
export function parseKubeVersion(text: string): KubeVersion | undefined {
  const m = /^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+][0-9A-Za-z.+-]*)?$/.exec(text.trim());
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]) };
}

function atLeast(v: KubeVersion | undefined, major: number, minor: number): boolean | undefined {
  if (v === undefined) return undefined;
  return v.major > major || (v.major === major && v.minor >= minor);
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** What is wrong with the options, one sentence each (`what: value (reason)`); empty when they are fine. */
export function checkInstallOptions(o: InstallOptions): string[] {
  const problems: string[] = [];
  if (!DNS_LABEL.test(o.namespace) || o.namespace.length > 63)
    problems.push(
      `not a namespace name: ${JSON.stringify(o.namespace)} (a DNS label: a-z, 0-9, '-', at most 63)`,
    );
  if (!Number.isInteger(o.replicas) || o.replicas < 1 || o.replicas > 1000)
    problems.push(`not a replica count: ${o.replicas} (an integer from 1 to 1000)`);
  if (o.image === '' || /\s/.test(o.image))
    problems.push(`not an image reference: ${JSON.stringify(o.image)}`);
  if (o.kubeVersion && atLeast(o.kubeVersion, MIN_KUBE_VERSION.major, MIN_KUBE_VERSION.minor) === false)
    problems.push(
      `unsupported Kubernetes version: ${o.kubeVersion.major}.${o.kubeVersion.minor} (the manifests need 1.${MIN_KUBE_VERSION.minor} or later)`,
    );
  if (!DNS_LABEL.test(o.rootNamespace) || o.rootNamespace.length > 63)
    problems.push(`not a namespace name: root namespace ${JSON.stringify(o.rootNamespace)} (a DNS label)`);
  const td = checkTrustDomain(o.trustDomain);
  if (td) problems.push(`not a trust domain: ${JSON.stringify(o.trustDomain)} (${td.reason})`);
  const ttlMs = parseDuration(o.leafTtl);
  if (ttlMs === undefined || ttlMs <= 0)
    problems.push(`not a duration: leaf TTL ${JSON.stringify(o.leafTtl)} (write it like 24h, 90m or 30d)`);
  else if (ttlMs > MAX_LEAF_TTL_MS)
    problems.push(`leaf TTL too long: ${o.leafTtl} (at most ${formatDuration(MAX_LEAF_TTL_MS)})`);
  return problems;
}

/** A CRD already in the cluster, as much of it as {@link resolveIstioCrds} needs. */
export interface ExistingCrd {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
}

/**
 * Whether the Istio CRDs go into the output. `auto` skips them when the cluster is known to have
 * either of them from someone else (no `app.kubernetes.io/part-of: kmtls` label: Istio's), because
 * applying ours would replace Istio's definitions; it includes them when the cluster is known to have
 * none or only ours, and when nothing is known (`existing` undefined: `kmtls install` only prints and
 * reads no cluster).
 */
export function resolveIstioCrds(mode: IstioCrdsMode, existing?: readonly ExistingCrd[]): 'include' | 'skip' {
  switch (mode) {
    case 'include':
    case 'skip':
      return mode;
    case 'auto': {
      const names: readonly string[] = Object.values(ISTIO_CRD_NAMES);
      const foreign = (existing ?? []).some(
        (c) =>
          names.includes(c.name) &&
          c.labels['app.kubernetes.io/part-of'] !== PART_OF_LABEL['app.kubernetes.io/part-of'],
      );
      return foreign ? 'skip' : 'include';
    }
    default: {
      const never: never = mode;
      throw new Error(`BUG: unknown --istio-crds mode ${String(never)}`);
    }
  }
}

/** Comments printed above a node of the YAML output, keyed by the very object or array they explain. */
const explanations = new WeakMap<object, string>();

function explained<T extends object>(value: T, why: string): T {
  explanations.set(value, why);
  return value;
}

/** A version as a label value: at most 63 of A-Z a-z 0-9 - _ . (semver's `+build` becomes `_build`). */
export function versionLabel(version: string): string {
  return version
    .replace(/[^A-Za-z0-9._-]/g, '_')
    .slice(0, 63)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, '');
}

function commonLabels(o: InstallOptions): Record<string, string> {
  return { ...PART_OF_LABEL, 'app.kubernetes.io/version': versionLabel(o.version) };
}

const CONTROL_PLANE_SELECTOR = { 'app.kubernetes.io/name': CONTROL_PLANE_NAME } as const;

function controlPlaneLabels(o: InstallOptions): Record<string, string> {
  return { app: CONTROL_PLANE_NAME, ...CONTROL_PLANE_SELECTOR, ...commonLabels(o) };
}

function namespaceObject(o: InstallOptions): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name: o.namespace,
      // The control plane never gets a sidecar: it issues the certificates sidecars need.
      labels: { ...commonLabels(o), [KMTLS_INJECTION_LABEL]: 'disabled' },
    },
  };
}

function serviceAccount(o: InstallOptions): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: { name: CONTROL_PLANE_SERVICE_ACCOUNT, namespace: o.namespace, labels: controlPlaneLabels(o) },
  };
}

interface PolicyRule {
  readonly apiGroups: readonly string[];
  readonly resources: readonly string[];
  readonly resourceNames?: readonly string[];
  readonly verbs: readonly string[];
}

const READ = ['get', 'list', 'watch'] as const;

/** The cluster-wide permissions of the control plane; every rule says why it is there. */
function clusterRules(): PolicyRule[] {
  return [
    explained(
      {
        apiGroups: [''],
        resources: ['pods', 'services', 'endpoints', 'namespaces', 'serviceaccounts'],
        verbs: [...READ],
      },
      ' The mesh: workloads, their identities, services and which namespaces opt in; Endpoints for\n' +
        ' Services without a selector on clusters without EndpointSlices.',
    ),
    { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: [...READ] },
    explained(
      { apiGroups: [''], resources: ['nodes'], verbs: ['list'] },
      ' The kubelet versions: native sidecars are injected only when every node runs them (1.29+).',
    ),
    explained(
      { apiGroups: ['security.istio.io'], resources: ['peerauthentications'], verbs: [...READ] },
      " Istio's security API, read only: kmtls never writes a policy or its status.",
    ),
    { apiGroups: ['networking.istio.io'], resources: ['destinationrules'], verbs: [...READ] },
    explained(
      { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
      ' A sidecar proves its identity with its ServiceAccount token; the API server checks it.',
    ),
    explained(
      {
        apiGroups: [''],
        resources: ['configmaps'],
        verbs: ['get', 'list', 'watch', 'create', 'update', 'patch'],
      },
      ' The root certificates are published as ConfigMap kmtls-ca-root-cert in every namespace.\n' +
        ' No delete: a namespace going away takes its ConfigMap with it.',
    ),
    explained(
      {
        apiGroups: [''],
        resources: ['secrets'],
        verbs: ['get', 'list', 'watch', 'create', 'update', 'patch'],
      },
      ' Cluster-wide: workloads that terminate mTLS themselves opt in to a kubernetes.io/tls Secret in\n' +
        ' their own namespace, which the controller issues and renews (it never overwrites a Secret it\n' +
        ' did not make, and deletes none); the CA is a Secret in the control plane namespace. RBAC cannot\n' +
        ' narrow this to those Secrets (their names come from the workloads); they carry\n' +
        ' app.kubernetes.io/managed-by=kmtls.',
    ),
    explained(
      {
        apiGroups: ['rbac.authorization.k8s.io'],
        resources: ['roles', 'rolebindings'],
        verbs: ['get', 'list', 'watch', 'create', 'update', 'patch'],
      },
      ' Each opted-in ServiceAccount gets a Role allowing get and watch on its one TLS Secret, and a\n' +
        ' RoleBinding. Neither escalate nor bind is granted: the API server lets a subject create such a\n' +
        ' Role and bind it because it already holds get and watch on secrets; a Role granting more would\n' +
        ' be refused.',
    ),
    explained(
      {
        apiGroups: ['admissionregistration.k8s.io'],
        resources: ['mutatingwebhookconfigurations'],
        resourceNames: [WEBHOOK_CONFIGURATION_NAME],
        verbs: ['get', 'update', 'patch'],
      },
      ' Keeps the caBundle of its own injection webhook current, and no other webhook.',
    ),
  ];
}

function rbac(o: InstallOptions): KubeObject[] {
  const labels = controlPlaneLabels(o);
  const subjects = [{ kind: 'ServiceAccount', name: CONTROL_PLANE_SERVICE_ACCOUNT, namespace: o.namespace }];
  return [
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: CONTROL_PLANE_NAME, labels },
      rules: clusterRules(),
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: CONTROL_PLANE_NAME, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: CONTROL_PLANE_NAME },
      subjects,
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name: CONTROL_PLANE_NAME, namespace: o.namespace, labels },
      rules: [
        explained(
          { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
          ' Leader election among the replicas, in this namespace only. create cannot be limited by name.',
        ),
        {
          apiGroups: ['coordination.k8s.io'],
          resources: ['leases'],
          resourceNames: [LEADER_ELECTION_LEASE],
          verbs: ['get', 'update'],
        },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: CONTROL_PLANE_NAME, namespace: o.namespace, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: CONTROL_PLANE_NAME },
      subjects,
    },
  ];
}

function configMap(o: InstallOptions): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: CONFIG_MAP_NAME, namespace: o.namespace, labels: controlPlaneLabels(o) },
    data: {
      [CONFIG_KEYS.trustDomain]: o.trustDomain,
      [CONFIG_KEYS.rootNamespace]: o.rootNamespace,
      [CONFIG_KEYS.leafTtl]: o.leafTtl,
    },
  };
}

function service(o: InstallOptions): KubeObject {
  const { api, monitoring, webhook } = CONTROL_PLANE_PORTS;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: CONTROL_PLANE_NAME, namespace: o.namespace, labels: controlPlaneLabels(o) },
    spec: {
      type: 'ClusterIP',
      selector: { ...CONTROL_PLANE_SELECTOR },
      ports: [
        { name: api.name, port: api.port, targetPort: api.port, protocol: 'TCP' },
        { name: monitoring.name, port: monitoring.port, targetPort: monitoring.port, protocol: 'TCP' },
        { name: webhook.name, port: WEBHOOK_SERVICE_PORT, targetPort: webhook.port, protocol: 'TCP' },
      ],
    },
  };
}

function configEnv(name: string, key: string) {
  return { name, valueFrom: { configMapKeyRef: { name: CONFIG_MAP_NAME, key } } };
}

/** The control plane's command line; Kubernetes expands `$(VAR)` from the container's env. */
export function controlPlaneArgs(): string[] {
  const { api, monitoring } = CONTROL_PLANE_PORTS;
  return [
    'controlplane',
    '--source',
    'kubernetes',
    '--namespace',
    '$(POD_NAMESPACE)',
    // Pod IP, not loopback: the Service and the kubelet's readiness probe come from outside the pod.
    '--listen',
    `0.0.0.0:${api.port}`,
    '--admin',
    `0.0.0.0:${monitoring.port}`,
    '--trust-domain',
    '$(KMTLS_TRUST_DOMAIN)',
    '--root-namespace',
    '$(KMTLS_ROOT_NAMESPACE)',
    '--leaf-ttl',
    '$(KMTLS_LEAF_TTL)',
  ];
}

function deployment(o: InstallOptions): KubeObject {
  const { api, monitoring, webhook } = CONTROL_PLANE_PORTS;
  const labels = controlPlaneLabels(o);
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: CONTROL_PLANE_NAME, namespace: o.namespace, labels },
    spec: {
      replicas: o.replicas,
      selector: { matchLabels: { ...CONTROL_PLANE_SELECTOR } },
      // A new replica is ready before an old one goes: the injection webhook fails closed.
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: {
          // The opt-out label keeps the webhook away from these pods even where the namespace
          // exclusion cannot work (before Kubernetes 1.21 namespaces have no kubernetes.io/metadata.name).
          labels: { ...labels, [INJECT_LABEL]: 'false' },
        },
        spec: {
          serviceAccountName: CONTROL_PLANE_SERVICE_ACCOUNT,
          securityContext: {
            runAsNonRoot: true,
            runAsUser: SIDECAR_UID,
            runAsGroup: SIDECAR_UID,
            seccompProfile: { type: 'RuntimeDefault' },
          },
          affinity: {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [
                {
                  weight: 100,
                  podAffinityTerm: {
                    labelSelector: { matchLabels: { ...CONTROL_PLANE_SELECTOR } },
                    topologyKey: 'kubernetes.io/hostname',
                  },
                },
              ],
            },
          },
          containers: [
            {
              name: CONTROL_PLANE_CONTAINER,
              image: o.image,
              imagePullPolicy: 'IfNotPresent',
              args: controlPlaneArgs(),
              ports: [
                { name: api.name, containerPort: api.port, protocol: 'TCP' },
                { name: monitoring.name, containerPort: monitoring.port, protocol: 'TCP' },
                { name: webhook.name, containerPort: webhook.port, protocol: 'TCP' },
              ],
              env: [
                {
                  name: 'POD_NAME',
                  valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } },
                },
                {
                  name: 'POD_NAMESPACE',
                  valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } },
                },
                configEnv('KMTLS_TRUST_DOMAIN', CONFIG_KEYS.trustDomain),
                configEnv('KMTLS_ROOT_NAMESPACE', CONFIG_KEYS.rootNamespace),
                configEnv('KMTLS_LEAF_TTL', CONFIG_KEYS.leafTtl),
              ],
              readinessProbe: {
                httpGet: { path: READY_PATH, port: monitoring.port, scheme: 'HTTP' },
                initialDelaySeconds: 1,
                periodSeconds: 3,
                timeoutSeconds: 5,
                failureThreshold: 3,
              },
              resources: { requests: { cpu: '100m', memory: '128Mi' } },
              securityContext: {
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                runAsNonRoot: true,
                capabilities: { drop: ['ALL'] },
              },
              // The root filesystem is read-only; Node.js and OpenSSL may still want a temp dir.
              volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
            },
          ],
          volumes: [{ name: 'tmp', emptyDir: {} }],
        },
      },
    },
  };
}

function podDisruptionBudget(o: InstallOptions): KubeObject {
  // policy/v1 arrived in 1.21 and policy/v1beta1 was removed in 1.25: only an explicitly older target
  // gets v1beta1.
  const v1beta1 = atLeast(o.kubeVersion, 1, 21) === false;
  return {
    apiVersion: v1beta1 ? 'policy/v1beta1' : 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: { name: CONTROL_PLANE_NAME, namespace: o.namespace, labels: controlPlaneLabels(o) },
    spec: { minAvailable: 1, selector: { matchLabels: { ...CONTROL_PLANE_SELECTOR } } },
  };
}

function webhookConfiguration(o: InstallOptions): KubeObject {
  // kube-system and the control plane's namespace are never sent to the webhook, whatever their labels.
  // `kubernetes.io/metadata.name` is set on every namespace from Kubernetes 1.21 on; before that the
  // expression matches everything and the pods' opt-out label does the job.
  const notSystem = {
    key: 'kubernetes.io/metadata.name',
    operator: 'NotIn',
    values: [...new Set(['kube-system', o.namespace])],
  };
  const podNotOptedOut = {
    matchExpressions: [
      { key: INJECT_LABEL, operator: 'NotIn', values: ['false'] },
      { key: KMTLS_INJECT_LABEL, operator: 'NotIn', values: ['false'] },
    ],
  };
  const common = (name: string, namespaceSelector: object, objectSelector: object) => ({
    name,
    clientConfig: {
      // No caBundle here: the controller fills it in, and a field this manifest does not set is one
      // that a later `kubectl apply` of it leaves alone (an empty one would break injection until the
      // controller noticed).
      service: {
        name: CONTROL_PLANE_NAME,
        namespace: o.namespace,
        path: WEBHOOK_PATH,
        port: WEBHOOK_SERVICE_PORT,
      },
    },
    rules: [
      {
        operations: ['CREATE'],
        apiGroups: [''],
        apiVersions: ['v1'],
        resources: ['pods'],
        scope: 'Namespaced',
      },
    ],
    namespaceSelector,
    objectSelector,
    failurePolicy: 'Fail',
    matchPolicy: 'Equivalent',
    sideEffects: 'None',
    timeoutSeconds: 10,
    admissionReviewVersions: ['v1', 'v1beta1'],
    reinvocationPolicy: 'Never',
  });
  // The three webhooks select disjoint sets of pods (a pod is never sent twice) and together the pods
  // the membership rules put in the mesh: namespace kmtls.io/injection=enabled; else namespace
  // istio-injection=enabled; else a pod labelled sidecar.istio.io/inject=true in a namespace with
  // neither label set to enabled or disabled. An opt-in or opt-out written as an annotation cannot be
  // selected on: the injector reads those itself.
  const webhooks = [
    common(
      WEBHOOK_NAME,
      {
        matchExpressions: [{ key: KMTLS_INJECTION_LABEL, operator: 'In', values: ['enabled'] }, notSystem],
      },
      podNotOptedOut,
    ),
    common(
      NAMESPACE_WEBHOOK_NAME,
      {
        matchExpressions: [
          { key: ISTIO_INJECTION_LABEL, operator: 'In', values: ['enabled'] },
          { key: KMTLS_INJECTION_LABEL, operator: 'NotIn', values: ['enabled'] },
          notSystem,
        ],
      },
      podNotOptedOut,
    ),
    common(
      OBJECT_WEBHOOK_NAME,
      {
        matchExpressions: [
          { key: KMTLS_INJECTION_LABEL, operator: 'NotIn', values: ['enabled', 'disabled'] },
          { key: ISTIO_INJECTION_LABEL, operator: 'NotIn', values: ['enabled', 'disabled'] },
          notSystem,
        ],
      },
      {
        matchExpressions: [
          { key: INJECT_LABEL, operator: 'In', values: ['true'] },
          { key: KMTLS_INJECT_LABEL, operator: 'NotIn', values: ['false'] },
        ],
      },
    ),
  ];
  explanations.set(
    webhooks[0] as object,
    ' failurePolicy Fail: while the control plane is down, a new pod in a namespace that asked for\n' +
      ' injection is refused rather than started without its sidecar, outside mTLS (Istio does the\n' +
      ' same). Pods nobody asked to inject are never sent here (the selectors), so an outage blocks\n' +
      ' only injected pods, and the control plane itself is never injected (it could not restart).\n' +
      ' timeoutSeconds 10: injection is local work, so a stuck control plane delays a pod 10 s at most.\n' +
      ' No caBundle: the control plane fills it in, and re-applying this file leaves it alone.',
  );
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name: WEBHOOK_CONFIGURATION_NAME, labels: controlPlaneLabels(o) },
    webhooks,
  };
}

/**
 * Every object of an installation, in the order they are applied: Namespace, CRDs, ServiceAccount,
 * RBAC, ConfigMap, Service, Deployment, PodDisruptionBudget (more than one replica only),
 * MutatingWebhookConfiguration — last, so it never points at a control plane that is not there yet.
 * `existingCrds` is what the cluster is known to hold, for `--istio-crds auto`.
 */
export function buildInstallManifests(
  o: InstallOptions,
  existingCrds?: readonly ExistingCrd[],
): KubeObject[] {
  const problems = checkInstallOptions(o);
  if (problems.length > 0) throw new Error(`BUG: install options not checked: ${problems.join('; ')}`);
  const withCel = atLeast(o.kubeVersion, 1, 25) === true;
  return [
    namespaceObject(o),
    ...(resolveIstioCrds(o.istioCrds, existingCrds) === 'include' ? istioCrds({ withCel }) : []),
    serviceAccount(o),
    ...rbac(o),
    configMap(o),
    service(o),
    deployment(o),
    ...(o.replicas > 1 ? [podDisruptionBudget(o)] : []),
    webhookConfiguration(o),
  ];
}

/** The command line that reproduces these options, for the header. */
export function describeOptions(o: InstallOptions): string {
  const parts = [
    `--namespace ${o.namespace}`,
    `--replicas ${o.replicas}`,
    `--image ${o.image}`,
    `--istio-crds ${o.istioCrds}`,
    `--trust-domain ${o.trustDomain}`,
    `--root-namespace ${o.rootNamespace}`,
    `--leaf-ttl ${o.leafTtl}`,
  ];
  if (o.kubeVersion) parts.push(`--kube-version ${o.kubeVersion.major}.${o.kubeVersion.minor}`);
  return parts.join(' ');
}

/** The comment block at the top of the YAML output. */
export function installHeader(o: InstallOptions, objects: readonly KubeObject[]): string {
  const lines = [
    ` kmtls ${o.version}: install manifests`,
    ` options: ${describeOptions(o)}`,
    ` target: ${o.kubeVersion ? `Kubernetes ${o.kubeVersion.major}.${o.kubeVersion.minor}` : 'Kubernetes 1.21 or later (--kube-version to target another)'}`,
    ' apply:   kmtls install ... | kubectl apply -f -',
  ];
  const hasCrds = objects.some((x) => x.kind === 'CustomResourceDefinition');
  if (hasCrds) {
    lines.push(
      ' Istio CRDs: this output defines PeerAuthentication and DestinationRule itself. If Istio is',
      ' installed, use --istio-crds skip: applying these would replace the definitions Istio installed',
      ' (ours keep every field, but check less than Istio and carry no descriptions).',
    );
  } else {
    lines.push(' Istio CRDs: not included (--istio-crds skip); the cluster must already have them.');
  }
  return lines.join('\n');
}

/** Copies the registered explanations onto the nodes of `doc` that hold the same values. */
function attachComments(doc: Document, value: unknown, path: (string | number)[]): void {
  if (value === null || typeof value !== 'object') return;
  const why = explanations.get(value);
  if (why !== undefined && path.length > 0) {
    const node = doc.getIn(path, true) as { commentBefore?: string | null } | undefined;
    if (node) node.commentBefore = why;
  }
  const entries: [string | number, unknown][] = Array.isArray(value)
    ? value.map((v, i): [number, unknown] => [i, v])
    : Object.entries(value);
  for (const [k, v] of entries) attachComments(doc, v, [...path, k]);
}

/**
 * YAML documents separated by `---`, the header as a leading comment. Scalars are quoted as YAML 1.1
 * requires, because kubectl reads YAML 1.1 (an unquoted `yes` or `on` would be a boolean there).
 */
export function renderYaml(objects: readonly KubeObject[], header?: string): string {
  const docs = objects.map((obj, i) => {
    const doc = new Document(obj, { version: '1.1', aliasDuplicateObjects: false });
    attachComments(doc, obj, []);
    if (i === 0 && header !== undefined) doc.commentBefore = header;
    return doc.toString({ lineWidth: 0, directives: false });
  });
  return docs.join('---\n');
}

/** A `v1` List, as `kubectl get -o json` prints several objects. */
export interface KubeList {
  readonly apiVersion: 'v1';
  readonly kind: 'List';
  readonly metadata: Readonly<Record<string, never>>;
  readonly items: readonly KubeObject[];
}

/** The objects as one List, for `-o json`. */
export function asList(objects: readonly KubeObject[]): KubeList {
  return { apiVersion: 'v1', kind: 'List', metadata: {}, items: objects };
}
