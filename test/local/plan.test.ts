/**
 * How the local mesh lays a snapshot out on loopback: `$(VAR)` expansion as the kubelet does it,
 * addresses that stay with what holds them, and each container's environment. Snapshots are built
 * from YAML; subnet 70 puts pods on 127.70.x.y, outbound listeners on 127.71.x.y, Service VIPs on
 * 127.72.x.y and the control plane on 127.73.0.1. Nothing here listens on those addresses; the only
 * sockets are the OS's free ports on 127.0.0.1 that applications get.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LocalPlan, LocalPod } from '../../src/local/plan.js';
import {
  CONTROL_PLANE_PORT,
  containerEnv,
  expandVars,
  LocalAllocator,
  placementOf,
  planMesh,
  SIDECAR_ADMIN_PORT,
} from '../../src/local/plan.js';
import { placementSchema } from '../../src/mesh/index.js';
import { snapshotOf } from '../helpers/builders.js';

// ---------------------------------------------------------------------------------------------
// expandVars

const ENV = { HOST: '127.0.0.1', PORT: '8080', EMPTY: '', REF: '$(HOST)', ODD: 'a$&b$1' };

const EXPANSIONS: [string, string, string][] = [
  ['known variables are replaced', 'http://$(HOST):$(PORT)/x', 'http://127.0.0.1:8080/x'],
  ['unknown variables are left as they are', '$(NOPE) and $(HOST)', '$(NOPE) and 127.0.0.1'],
  ['$$(VAR) escapes to $(VAR)', '$$(HOST)', '$(HOST)'],
  ['$$ is one $, then the reference is expanded', '$$$(HOST)', '$127.0.0.1'],
  ['$$ alone is one $', 'cost: $$5', 'cost: $5'],
  ['a lone $ stays', 'a $ b $HOST', 'a $ b $HOST'],
  ['an unclosed reference stays', '$(HOST', '$(HOST'],
  ['a variable set to the empty string expands to it', '[$(EMPTY)]', '[]'],
  ['values are not expanded again', '$(REF)', '$(HOST)'],
  ['values are taken literally, not as replacement patterns', '$(ODD)', 'a$&b$1'],
  ['no references, no change', 'plain text', 'plain text'],
];

for (const [what, input, want] of EXPANSIONS) {
  test(`expandVars: ${what}`, () => {
    assert.equal(expandVars(input, ENV), want);
  });
}

// ---------------------------------------------------------------------------------------------
// LocalAllocator

test('LocalAllocator: the subnet must leave room for 127.S..127.(S+3)', () => {
  for (const bad of [0, 251, 1.5, -3]) assert.throws(() => new LocalAllocator(bad), RangeError);
  assert.equal(new LocalAllocator(70).subnet, 70);
});

test('LocalAllocator: pod and Service indexes are stable, and a dropped key frees its index', () => {
  const a = new LocalAllocator(70);
  assert.deepEqual(
    ['ns/a', 'ns/b', 'ns/c', 'ns/a', 'ns/b'].map((k) => a.podIndex(k)),
    [0, 1, 2, 0, 1],
  );
  assert.deepEqual(
    ['ns/x', 'ns/y', 'ns/x'].map((k) => a.serviceIndex(k)),
    [0, 1, 0],
    'services count apart from pods',
  );
  a.retain(new Set(['ns/a', 'ns/c']), new Set(['ns/y']));
  assert.equal(a.podIndex('ns/a'), 0);
  assert.equal(a.podIndex('ns/c'), 2);
  assert.equal(a.podIndex('ns/new'), 1, 'the index of the dropped pod is reused');
  assert.equal(a.podIndex('ns/b'), 3, 'a pod that comes back is a new pod');
  assert.equal(a.serviceIndex('ns/y'), 1);
  assert.equal(a.serviceIndex('ns/z'), 0);
});

test('LocalAllocator: an outbound port is the Service port unless another Service has it; never 15000', () => {
  const a = new LocalAllocator(70);
  assert.equal(a.outboundPort('shop/web', 8080), 8080);
  assert.equal(a.outboundPort('shop/web', 9090), 9090);
  assert.equal(a.outboundPort('shop/api', 8080), 20_000, 'taken by shop/web');
  assert.equal(a.outboundPort('other/web', 8080), 20_001);
  assert.equal(a.outboundPort('shop/admin', SIDECAR_ADMIN_PORT), 20_002, "the sidecar's admin port");
  assert.equal(a.outboundPort('shop/odd', 20_000), 20_003, 'a Service port already handed out as a spare');
  // Asked again, the same answers.
  assert.equal(a.outboundPort('shop/web', 8080), 8080);
  assert.equal(a.outboundPort('shop/api', 8080), 20_000);
  assert.equal(a.outboundPort('shop/admin', SIDECAR_ADMIN_PORT), 20_002);
});

test('LocalAllocator: a Service that is gone frees its outbound ports', {}, () => {
  const a = new LocalAllocator(70);
  assert.equal(a.outboundPort('shop/old', 8080), 8080);
  a.retain(new Set(), new Set(['shop/new']));
  assert.equal(a.outboundPort('shop/new', 8080), 8080);
});

test('LocalAllocator: application ports come from the OS and stay with their pod', async () => {
  const a = new LocalAllocator(70);
  const p1 = await a.appPort('ns/a', 'app', 8080);
  const p2 = await a.appPort('ns/a', 'app', 9090);
  assert.ok(p1 > 0 && p1 < 65_536 && p1 !== 8080);
  assert.notEqual(p1, p2);
  assert.equal(await a.appPort('ns/a', 'app', 8080), p1);
  a.retain(new Set(['ns/a']), new Set());
  assert.equal(await a.appPort('ns/a', 'app', 8080), p1, 'kept while the pod exists');
});

// ---------------------------------------------------------------------------------------------
// planMesh + containerEnv

const MESH = `
apiVersion: v1
kind: Namespace
metadata: {name: finance, labels: {kmtls.io/injection: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: payments, namespace: finance}
spec:
  replicas: 2
  selector: {matchLabels: {app: payments}}
  template:
    metadata: {labels: {app: payments}}
    spec:
      serviceAccountName: payments
      containers:
        - name: payments
          ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9090}]
          env:
            - {name: LEDGER, value: "$(LEDGER_DB_SERVICE_HOST):$(LEDGER_DB_SERVICE_PORT)"}
            - {name: LITERAL, value: "$$(LEDGER_DB_SERVICE_HOST) $(NOPE)"}
            - {name: SELF, value: "$(POD_NAME)@$(HOST):$(PORT_HTTP)"}
            - {name: FROM_FIELD, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: finance}
spec:
  selector: {app: payments}
  ports:
    - {name: http, port: 8080, targetPort: http}
    - {name: http-metrics, port: 9090, targetPort: metrics}
---
apiVersion: v1
kind: Service
metadata: {name: ledger-db, namespace: finance}
spec:
  selector: {app: ledger}
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: ledger, namespace: finance, labels: {app: ledger}}
spec:
  containers: [{name: db, ports: [{containerPort: 5432}]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: finance}
spec:
  template:
    metadata: {labels: {app: migrate}}
    spec:
      containers: [{name: migrate}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: frontend, labels: {app: web}}
spec:
  containers:
    - name: web
      ports: [{containerPort: 8000}]
      env:
        - {name: TARGET, value: "$(PAYMENTS_SERVICE_HOST)"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: frontend}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 8000}]
`;

function pod(plan: LocalPlan, key: string): LocalPod {
  const p = plan.pods.find((x) => x.key === key);
  assert.ok(p, `no pod ${key} in ${plan.pods.map((x) => x.key).join(', ')}`);
  return p;
}

function envOf(plan: LocalPlan, key: string): Record<string, string> {
  const p = pod(plan, key);
  assert.equal(p.containers.length, 1);
  return containerEnv(plan, p, p.containers[0]!);
}

test('planMesh: pods, Services and the control plane on 127.70-73, sidecar or not', async () => {
  const plan = await planMesh(snapshotOf(MESH), new LocalAllocator(70));
  assert.equal(plan.subnet, 70);
  assert.deepEqual(plan.controlPlane, {
    api: `127.73.0.1:${CONTROL_PLANE_PORT}`,
    admin: '127.73.0.1:15014',
  });
  assert.deepEqual(
    plan.pods.map((p) => [p.key, p.podIP, p.outboundIP, p.sidecar, p.restart]),
    [
      ['finance/ledger', '127.70.1.1', '127.71.1.1', true, 'Always'],
      ['finance/migrate-0', '127.70.1.2', '127.71.1.2', true, 'OnFailure'],
      ['finance/payments-0', '127.70.1.3', '127.71.1.3', true, 'Always'],
      ['finance/payments-1', '127.70.1.4', '127.71.1.4', true, 'Always'],
      ['frontend/web', '127.70.1.5', '127.71.1.5', false, 'Always'],
    ],
  );
  const p0 = pod(plan, 'finance/payments-0');
  assert.equal(p0.identity, 'spiffe://cluster.local/ns/finance/sa/payments');
  assert.equal(p0.admin, `127.70.1.3:${SIDECAR_ADMIN_PORT}`);
  assert.deepEqual([...p0.appPorts.keys()], [8080, 9090]);
  for (const port of p0.appPorts.values()) assert.ok(port !== 8080 && port !== 9090, 'an OS port');
  const web = pod(plan, 'frontend/web');
  assert.equal(web.admin, undefined);
  assert.deepEqual([...web.appPorts], [[8000, 8000]], 'without a sidecar the app listens on its own port');

  assert.deepEqual(
    plan.services.map((s) => [`${s.namespace}/${s.name}`, s.fqdn, s.vip]),
    [
      ['finance/payments', 'payments.finance.svc.cluster.local', '127.72.1.1'],
      ['finance/ledger-db', 'ledger-db.finance.svc.cluster.local', '127.72.1.2'],
      ['frontend/web', 'web.frontend.svc.cluster.local', '127.72.1.3'],
    ],
  );
  const payments = plan.services[0]!;
  assert.deepEqual(payments.ports, [
    { port: 8080, name: 'http', endpoints: ['127.70.1.3:8080', '127.70.1.4:8080'], outboundPort: 8080 },
    {
      port: 9090,
      name: 'http-metrics',
      endpoints: ['127.70.1.3:9090', '127.70.1.4:9090'],
      outboundPort: 9090,
    },
  ]);
  assert.equal(plan.services[2]?.ports[0]?.outboundPort, 20_000, 'payments has 8080 already');
  assert.deepEqual(plan.services[2]?.ports[0]?.endpoints, ['127.70.1.5:8000']);
});

test('planMesh: a second plan keeps every address; a pod that goes frees its own', async () => {
  const alloc = new LocalAllocator(70);
  const first = await planMesh(snapshotOf(MESH), alloc);
  const again = await planMesh(snapshotOf(MESH), alloc);
  for (const p of first.pods) {
    const q = pod(again, p.key);
    assert.equal(q.podIP, p.podIP);
    assert.deepEqual([...q.appPorts], [...p.appPorts], `${p.key} keeps its application ports`);
  }
  assert.deepEqual(
    again.services.map((s) => s.vip),
    first.services.map((s) => s.vip),
  );

  // The ledger pod goes and a cache pod comes: the others keep their addresses, the cache gets a
  // new one, and once the plan is made the ledger's address is free for the next pod.
  const withoutLedger = MESH.replace(
    /apiVersion: v1\nkind: Pod\nmetadata: \{name: ledger[\s\S]*?---\n/,
    'apiVersion: v1\nkind: Pod\nmetadata: {name: cache, namespace: finance, labels: {app: cache}}\nspec:\n  containers: [{name: c}]\n---\n',
  );
  assert.notEqual(withoutLedger, MESH);
  const third = await planMesh(snapshotOf(withoutLedger), alloc);
  assert.equal(pod(third, 'finance/cache').podIP, '127.70.1.6');
  assert.equal(pod(third, 'finance/payments-1').podIP, '127.70.1.4');
  assert.equal(pod(third, 'frontend/web').podIP, '127.70.1.5');
  assert.equal(alloc.podIndex('finance/next'), 0, "the ledger's index, 127.70.1.1");
  assert.deepEqual(
    third.services.find((s) => s.name === 'ledger-db')?.ports[0]?.endpoints,
    [],
    'the ledger-db Service has no pod left',
  );
});

test('containerEnv: ports, HOST with a sidecar, and the service variables of its own namespace', async () => {
  const plan = await planMesh(snapshotOf(MESH), new LocalAllocator(70));
  const p0 = pod(plan, 'finance/payments-0');
  const http = String(p0.appPorts.get(8080));
  const metrics = String(p0.appPorts.get(9090));
  const env = envOf(plan, 'finance/payments-0');
  assert.equal(env.HOST, '127.0.0.1', 'behind a sidecar the app listens on loopback only');
  assert.equal(env.PORT, http);
  assert.equal(env.PORT_8080, http);
  assert.equal(env.PORT_HTTP, http);
  assert.equal(env.PORT_9090, metrics);
  assert.equal(env.PORT_METRICS, metrics);
  assert.equal(env.POD_IP, '127.70.1.3');
  assert.equal(env.POD_NAME, 'payments-0');
  assert.equal(env.POD_NAMESPACE, 'finance');
  // Kubernetes names: upper case, dashes to underscores; the first port is *_SERVICE_PORT.
  assert.equal(env.PAYMENTS_SERVICE_HOST, '127.71.1.3');
  assert.equal(env.PAYMENTS_SERVICE_PORT, '8080');
  assert.equal(env.PAYMENTS_SERVICE_PORT_HTTP, '8080');
  assert.equal(env.PAYMENTS_SERVICE_PORT_HTTP_METRICS, '9090');
  assert.equal(env.LEDGER_DB_SERVICE_HOST, '127.71.1.3');
  assert.equal(env.LEDGER_DB_SERVICE_PORT, '5432');
  assert.equal(env.LEDGER_DB_SERVICE_PORT_TCP_DB, '5432');
  assert.equal(env.WEB_SERVICE_HOST, undefined, 'frontend/web is in another namespace');
  // The container's own env, expanded against what came before it.
  assert.equal(env.LEDGER, '127.71.1.3:5432');
  assert.equal(env.LITERAL, '$(LEDGER_DB_SERVICE_HOST) $(NOPE)');
  assert.equal(env.SELF, `payments-0@127.0.0.1:${http}`);
  assert.ok(!('FROM_FIELD' in env), 'valueFrom is not something the local mesh can fill');
  // Every Service of the mesh, at this pod's own outbound address.
  assert.deepEqual(JSON.parse(env.KMTLS_SERVICES ?? ''), {
    'payments.finance:8080': '127.71.1.3:8080',
    'payments.finance:9090': '127.71.1.3:9090',
    'ledger-db.finance:5432': '127.71.1.3:5432',
    'web.frontend:8080': '127.71.1.3:20000',
  });
  // Each replica has its own outbound address.
  assert.equal(envOf(plan, 'finance/payments-1').PAYMENTS_SERVICE_HOST, '127.71.1.4');
});

test('containerEnv: without a sidecar the app listens on the pod IP at its own port', async () => {
  const plan = await planMesh(snapshotOf(MESH), new LocalAllocator(70));
  const env = envOf(plan, 'frontend/web');
  assert.equal(env.HOST, '127.70.1.5');
  assert.equal(env.PORT, '8000');
  assert.equal(env.PORT_8000, '8000');
  assert.equal(env.WEB_SERVICE_HOST, '127.71.1.5');
  assert.equal(env.WEB_SERVICE_PORT, '20000');
  assert.equal(env.PAYMENTS_SERVICE_HOST, undefined, 'finance is not its namespace');
  assert.equal(env.TARGET, '$(PAYMENTS_SERVICE_HOST)', 'so the reference stays unexpanded, as in Kubernetes');
  assert.deepEqual(Object.keys(JSON.parse(env.KMTLS_SERVICES ?? '')).sort(), [
    'ledger-db.finance:5432',
    'payments.finance:8080',
    'payments.finance:9090',
    'web.frontend:8080',
  ]);
  // A container without ports gets no PORT at all.
  const job = envOf(plan, 'finance/migrate-0');
  assert.equal(job.PORT, undefined);
  assert.ok(!Object.keys(job).some((k) => k.startsWith('PORT_')));
});

test('placementOf: what the control plane reads round-trips through placementSchema', async () => {
  const plan = await planMesh(snapshotOf(MESH), new LocalAllocator(70));
  const placement = placementOf(plan);
  const parsed = placementSchema.parse(JSON.parse(JSON.stringify(placement)));
  assert.deepEqual(parsed, placement);
  const p0 = placement.pods.find((p) => p.name === 'payments-0');
  assert.ok(p0);
  const local = pod(plan, 'finance/payments-0');
  assert.deepEqual(p0, {
    namespace: 'finance',
    name: 'payments-0',
    podIP: '127.70.1.3',
    sidecar: true,
    apps: {
      8080: `127.0.0.1:${local.appPorts.get(8080)}`,
      9090: `127.0.0.1:${local.appPorts.get(9090)}`,
    },
    admin: '127.70.1.3:15000',
    outbound: {
      'payments.finance.svc.cluster.local:8080': '127.71.1.3:8080',
      'payments.finance.svc.cluster.local:9090': '127.71.1.3:9090',
      'ledger-db.finance.svc.cluster.local:5432': '127.71.1.3:5432',
      'web.frontend.svc.cluster.local:8080': '127.71.1.3:20000',
    },
  });
  const web = placement.pods.find((p) => p.name === 'web');
  assert.equal(web?.sidecar, false);
  assert.ok(web && !('admin' in web), 'no admin endpoint without a sidecar');
  assert.equal(placementSchema.safeParse({ pods: [{ ...p0, admin: 'nowhere' }] }).success, false);
});
