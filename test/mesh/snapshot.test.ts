import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  collectProbes,
  discoverCallers,
  explainEdge,
  explainPod,
  findWorkload,
  resolveHost,
} from '../../src/mesh/index.js';
import { snapshotOf } from '../helpers/builders.js';

function ns(name: string, labels: Record<string, string> = {}): string {
  return `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${name}\n  labels: ${JSON.stringify(labels)}\n---\n`;
}

function pod(
  namespace: string,
  name: string,
  opts: { labels?: Record<string, string>; annotations?: Record<string, string>; spec?: string } = {},
): string {
  return [
    'apiVersion: v1',
    'kind: Pod',
    'metadata:',
    `  name: ${name}`,
    `  namespace: ${namespace}`,
    `  labels: ${JSON.stringify(opts.labels ?? { app: name })}`,
    `  annotations: ${JSON.stringify(opts.annotations ?? {})}`,
    'spec:',
    opts.spec ?? '  containers: [{name: app, ports: [{containerPort: 8080, name: http}]}]',
    '---',
    '',
  ].join('\n');
}

const MEMBERSHIP: [string, string, boolean, RegExp][] = [
  [
    'labelled tlsMode=istio is in the mesh wherever it runs',
    pod('plain', 'a', { labels: { 'security.istio.io/tlsMode': 'istio' } }),
    true,
    /tlsMode=istio/,
  ],
  [
    'a pod with the kmtls-proxy container is in the mesh',
    pod('plain', 'a', { spec: '  containers: [{name: app}, {name: kmtls-proxy}]' }),
    true,
    /kmtls-proxy/,
  ],
  [
    'a pod in an injection-enabled namespace is in the mesh',
    ns('on', { 'kmtls.io/injection': 'enabled' }) + pod('on', 'a'),
    true,
    /kmtls.io\/injection=enabled/,
  ],
  [
    "Istio's istio-injection=enabled label counts too",
    ns('on', { 'istio-injection': 'enabled' }) + pod('on', 'a'),
    true,
    /istio-injection=enabled/,
  ],
  [
    'a pod opting out with sidecar.istio.io/inject: "false" stays out in an enabled namespace',
    ns('on', { 'kmtls.io/injection': 'enabled' }) +
      pod('on', 'a', { annotations: { 'sidecar.istio.io/inject': 'false' } }),
    false,
    /opts out/,
  ],
  [
    'a hostNetwork pod is never injected',
    ns('on', { 'kmtls.io/injection': 'enabled' }) +
      pod('on', 'a', { spec: '  hostNetwork: true\n  containers: [{name: app}]' }),
    false,
    /hostNetwork/,
  ],
  [
    'a pod opting in with the label joins a namespace without injection label',
    ns('plain') + pod('plain', 'a', { labels: { app: 'a', 'sidecar.istio.io/inject': 'true' } }),
    true,
    /opts in/,
  ],
  [
    'a namespace that disables injection wins over the pod opting in',
    ns('off', { 'istio-injection': 'disabled' }) +
      pod('off', 'a', { labels: { 'sidecar.istio.io/inject': 'true' } }),
    false,
    /istio-injection=disabled/,
  ],
  [
    'a pod in an unlabelled namespace is outside the mesh',
    ns('plain') + pod('plain', 'a'),
    false,
    /not labelled/,
  ],
  [
    'a pod whose namespace is not among the manifests is outside, and says why',
    pod('unknown', 'a'),
    false,
    /not among the manifests/,
  ],
];

for (const [name, yaml, inMesh, reason] of MEMBERSHIP) {
  test(`membership: ${name}`, () => {
    const s = snapshotOf(yaml);
    const w = s.workloads[0];
    assert.ok(w);
    assert.equal(w.membership.inMesh, inMesh);
    assert.match(w.membership.reason, reason);
  });
}

test('a Deployment, its ReplicaSet and its Pods count once: the Pods stand for them', () => {
  const yaml = [
    'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: n}\nspec: {template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}',
    'apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web-5d4f, namespace: n, ownerReferences: [{kind: Deployment, name: web}]}\nspec: {template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}',
    'apiVersion: v1\nkind: Pod\nmetadata: {name: web-5d4f-abcde, namespace: n, labels: {app: web}, ownerReferences: [{kind: ReplicaSet, name: web-5d4f}]}\nspec: {containers: [{name: c}]}',
  ].join('\n---\n');
  const s = snapshotOf(yaml);
  assert.deepEqual(
    s.workloads.map((w) => `${w.kind}/${w.meta.name}`),
    ['Pod/web-5d4f-abcde'],
  );
});

test('a controller template uses the pod labels, not the controller labels', () => {
  const s = snapshotOf(
    'apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: n, labels: {team: x}}\nspec: {replicas: 3, template: {metadata: {labels: {app: db}}, spec: {containers: [{name: c}]}}}',
  );
  assert.deepEqual(s.workloads[0]?.meta.labels, { app: 'db' });
  assert.equal(s.workloads[0]?.replicas, 3);
  assert.match(s.workloads[0]?.template ?? '', /pod template of StatefulSet n\/db/);
});

test('workload ports leave out the sidecar and plain init containers, keep native sidecars', () => {
  const s = snapshotOf(
    pod('n', 'a', {
      spec: [
        '  initContainers:',
        '    - {name: setup, ports: [{containerPort: 1111}]}',
        '    - {name: log-shipper, restartPolicy: Always, ports: [{containerPort: 2222}]}',
        '  containers:',
        '    - {name: app, ports: [{containerPort: 8080}]}',
        '    - {name: istio-proxy, ports: [{containerPort: 15090}]}',
      ].join('\n'),
    }),
  );
  assert.deepEqual(
    s.workloads[0]?.ports.map((p) => p.port),
    [2222, 8080],
  );
});

test('a WorkloadEntry is a workload; it is in the mesh only with tlsMode=istio', () => {
  const s = snapshotOf(
    'apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm-1, namespace: n}\nspec: {address: 10.0.0.5, serviceAccount: vm, labels: {app: vm, security.istio.io/tlsMode: istio}, ports: {http: 8080}}',
  );
  const w = s.workloads[0];
  assert.equal(w?.kind, 'WorkloadEntry');
  assert.equal(w?.membership.inMesh, true);
  assert.equal(w?.identity?.uri, 'spiffe://cluster.local/ns/n/sa/vm');
  assert.deepEqual(
    w?.ports.map((p) => [p.port, p.name]),
    [[8080, 'http']],
  );
});

const SERVICES = `
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: finance}
spec: {selector: {app: payments}, ports: [{port: 8080, targetPort: http}, {port: 9090}]}
---
${pod('finance', 'payments-0', { labels: { app: 'payments' }, spec: '  containers: [{name: app, ports: [{containerPort: 8000, name: http}, {containerPort: 9090}]}]' })}
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
`;

test('callers are found in env values, args and command, qualified or bare, with the port when it is a Service port', () => {
  const s = snapshotOf(
    SERVICES +
      pod('shop', 'web', {
        spec: [
          '  containers:',
          '    - name: app',
          '      command: ["curl", "http://web:80/"]',
          '      args: ["--upstream=payments.finance.svc.cluster.local:9090"]',
          '      env:',
          '        - {name: PAY, value: "http://payments.finance:8080/charge"}',
          '        - {name: MODE, value: "web"}',
          '        - {name: OTHER, value: "payments"}',
        ].join('\n'),
      }),
  );
  const facts = discoverCallers(s).map(
    (f) =>
      `${f.source.meta.name} -> ${f.service.meta.namespace}/${f.service.meta.name}:${f.port ?? '*'} via ${f.via.split(':')[0]}`,
  );
  assert.deepEqual(facts, [
    'web -> finance/payments:8080 via env PAY of container app',
    'web -> finance/payments:9090 via args of container app',
  ]);
});

test('a bare name is a caller fact only in the same namespace and only as a URL host, host:port or whole value', () => {
  const s = snapshotOf(
    `${SERVICES}${pod('finance', 'batch', { spec: '  containers:\n    - name: app\n      env:\n        - {name: A, value: "payments"}\n        - {name: B, value: "use payments here"}' })}`,
  );
  const facts = discoverCallers(s).filter((f) => f.source.meta.name === 'batch');
  assert.equal(facts.length, 1);
  assert.match(facts[0]?.via ?? '', /env A/);
});

test('probes resolve named ports and know whether the injector rewrites them', () => {
  const s = snapshotOf(
    pod('n', 'a', {
      annotations: { 'sidecar.istio.io/rewriteAppHTTPProbers': 'false' },
      spec: [
        '  containers:',
        '    - name: app',
        '      ports: [{containerPort: 8080, name: http}]',
        '      livenessProbe: {httpGet: {port: http, path: /live}}',
        '      readinessProbe: {tcpSocket: {port: 8080}}',
        '      startupProbe: {exec: {command: [true]}}',
      ].join('\n'),
    }),
  );
  assert.deepEqual(
    collectProbes(s).map((p) => [p.kind, p.handler, p.port, p.rewritten]),
    [
      ['liveness', 'httpGet', 8080, false],
      ['readiness', 'tcpSocket', 8080, false],
    ],
  );
});

test('findWorkload prefers a Pod, resolves controllers, and names what exists when nothing matches', () => {
  const s = snapshotOf(SERVICES);
  const found = findWorkload(s, 'finance/payments-0');
  assert.ok(found.ok);
  const missing = findWorkload(s, 'finance/payment');
  assert.equal(missing.ok, false);
  if (!missing.ok) {
    assert.equal(missing.code, 'KMTLS_EXPLAIN_NOT_FOUND');
    assert.match(missing.message, /Pod payments-0/);
  }
  const bad = findWorkload(s, 'payments');
  assert.equal(bad.ok, false);
  if (!bad.ok) assert.equal(bad.code, 'KMTLS_EXPLAIN_BAD_TARGET');
});

test('explain pod: a Service port given for --port is pointed at its container port', () => {
  const s = snapshotOf(SERVICES);
  const w = findWorkload(s, 'finance/payments-0');
  assert.ok(w.ok);
  const x = explainPod(s, w.workload, 8080);
  assert.ok(
    x.notes.some((n) => /Service finance\/payments, which sends it to container port 8000/.test(n)),
    x.notes.join('\n'),
  );
  const ports = x.ports.map((p) => [p.port, p.services.map((sp) => `${sp.service}:${sp.port}`)]);
  assert.deepEqual(ports, [
    [8000, ['finance/payments:8080']],
    [9090, ['finance/payments:9090']],
  ]);
});

test('explain pod lists undeclared portLevelMtls ports and says when the creation order was assumed', () => {
  const s = snapshotOf(
    `${SERVICES}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: finance}
spec: {selector: {matchLabels: {app: payments}}, mtls: {mode: STRICT}, portLevelMtls: {7070: {mode: DISABLE}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: finance}
spec: {selector: {matchLabels: {app: payments}}, mtls: {mode: PERMISSIVE}}
`,
  );
  const w = findWorkload(s, 'finance/payments-0');
  assert.ok(w.ok);
  const x = explainPod(s, w.workload);
  assert.equal(x.workloadMode, 'PERMISSIVE');
  assert.equal(x.ignored[0]?.policy.name, 'b');
  assert.ok(
    x.notes.some((n) => /no creationTimestamp on finance\/a/.test(n)),
    x.notes.join('\n'),
  );
  assert.ok(!x.ports.some((p) => p.port === 7070), 'the ignored policy contributes no port');
});

test('explain pod names selector policies in other namespaces that match the labels', () => {
  const s = snapshotOf(
    `${SERVICES}apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict-payments, namespace: default}\nspec: {selector: {matchLabels: {app: payments}}, mtls: {mode: STRICT}}\n`,
  );
  const w = findWorkload(s, 'finance/payments-0');
  assert.ok(w.ok);
  const x = explainPod(s, w.workload);
  assert.equal(x.mode, 'PERMISSIVE');
  assert.deepEqual(
    x.elsewhere.map((e) => `${e.policy.namespace}/${e.policy.name}`),
    ['default/strict-payments'],
  );
});

test('hosts resolve like cluster DNS from the client namespace', () => {
  const s = snapshotOf(SERVICES);
  assert.equal(resolveHost(s, 'finance', 'payments').service?.meta.name, 'payments');
  assert.equal(resolveHost(s, 'shop', 'payments').service, undefined);
  for (const h of [
    'payments.finance',
    'payments.finance.svc',
    'payments.finance.svc.cluster.local',
    'payments.finance.svc.cluster.local.',
  ]) {
    assert.equal(resolveHost(s, 'shop', h).fqdn, 'payments.finance.svc.cluster.local', h);
  }
  assert.equal(resolveHost(s, 'shop', 'api.example.com').service, undefined);
});

test('explain edge refuses a port the Service does not have, listing its ports', () => {
  const s = snapshotOf(SERVICES);
  const w = findWorkload(s, 'finance/payments-0');
  assert.ok(w.ok);
  const r = explainEdge(s, w.workload, 'payments:8000');
  assert.equal(r.ok, false);
  if (!r.ok) assert.match(r.message, /ports: 8080, 9090/);
});

test('findWorkload takes the local mesh pod names <controller>-<ordinal>, within the replica count', () => {
  const s = snapshotOf(`apiVersion: apps/v1
kind: StatefulSet
metadata: {name: ledger, namespace: finance}
spec:
  replicas: 2
  selector: {matchLabels: {app: ledger}}
  template:
    metadata: {labels: {app: ledger}}
    spec: {containers: [{name: ledger, image: x}]}
`);
  for (const name of ['finance/ledger', 'finance/ledger-0', 'finance/ledger-1']) {
    const found = findWorkload(s, name);
    assert.ok(found.ok, name);
    if (found.ok) assert.equal(found.workload.meta.name, 'ledger');
  }
  const beyond = findWorkload(s, 'finance/ledger-2');
  assert.equal(beyond.ok, false);
  if (!beyond.ok) assert.equal(beyond.code, 'KMTLS_EXPLAIN_NOT_FOUND');
});
