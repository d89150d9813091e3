/**
 * From a snapshot to what each sidecar enforces: the pods a snapshot stands for, the protocol of a
 * port, and one pod's ProxyConfig. Snapshots are built from YAML through the same reader as
 * manifests, so each case reads like the mesh it stands for.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseManifestText, readResources } from '../../src/config/index.js';
import type { OutboundConfig, PlacedPod, PodAddressing, ProxyConfig } from '../../src/mesh/index.js';
import {
  buildMeshSnapshot,
  deriveProxyConfig,
  parseProxyConfig,
  podInstances,
  portIsHttp2,
  portProtocol,
} from '../../src/mesh/index.js';
import { snapshotOf } from '../helpers/builders.js';

// ---------------------------------------------------------------------------------------------
// podInstances

test('podInstances: a Pod is itself, a controller makes name-0..n-1, WorkloadEntries are no pods', () => {
  const s = snapshotOf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: b}
spec:
  replicas: 11
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: b}
spec:
  replicas: 0
  template: {metadata: {labels: {app: db}}, spec: {containers: [{name: c}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: a, labels: {app: solo}}
spec: {containers: [{name: c}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: a}
spec: {address: 10.0.0.9, labels: {app: vm}, ports: {http: 8080}}
`);
  assert.ok(
    s.workloads.some((w) => w.kind === 'WorkloadEntry'),
    'the snapshot has the WorkloadEntry as a workload',
  );
  const pods = podInstances(s);
  assert.deepEqual(
    pods.map((p) => `${p.namespace}/${p.name}#${p.ordinal}`),
    [
      'a/solo#0',
      // web-2 before web-10: numeric order, not string order.
      ...[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => `b/web-${i}#${i}`),
    ],
  );
  const web = s.workloads.find((w) => w.meta.name === 'web');
  assert.ok(pods.filter((p) => p.name.startsWith('web-')).every((p) => p.workload === web));
  assert.equal(pods[0]?.workload.kind, 'Pod');
});

// ---------------------------------------------------------------------------------------------
// portProtocol

const PROTOCOLS: [string, { name?: string; appProtocol?: string } | undefined, 'http' | 'tcp'][] = [
  ['appProtocol http', { name: 'tcp-x', appProtocol: 'http' }, 'http'],
  ['appProtocol kubernetes.io/http', { appProtocol: 'kubernetes.io/http' }, 'http'],
  ['appProtocol wins over an http name', { name: 'http', appProtocol: 'tcp' }, 'tcp'],
  ['appProtocol kubernetes.io/h2c (HTTP/2)', { name: 'tcp', appProtocol: 'kubernetes.io/h2c' }, 'http'],
  ['appProtocol grpc', { name: 'tcp-x', appProtocol: 'grpc' }, 'http'],
  ['appProtocol HTTP2 (case-insensitive)', { appProtocol: 'HTTP2' }, 'http'],
  ['appProtocol kubernetes.io/wss is TLS', { name: 'http', appProtocol: 'kubernetes.io/wss' }, 'tcp'],
  ['an unknown appProtocol falls back to the name', { name: 'http-x', appProtocol: 'example.com/x' }, 'http'],
  ['an unknown appProtocol and no HTTP name', { name: 'db', appProtocol: 'example.com/x' }, 'tcp'],
  ['name http', { name: 'http' }, 'http'],
  ['name http-web', { name: 'http-web' }, 'http'],
  ['name HTTP-Web (case-insensitive)', { name: 'HTTP-Web' }, 'http'],
  ['name http2', { name: 'http2' }, 'http'],
  ['name grpc', { name: 'grpc' }, 'http'],
  ['name grpc-api', { name: 'grpc-api' }, 'http'],
  ['name grpc-web', { name: 'grpc-web' }, 'http'],
  ['name grpc-webx (grpc-web prefix)', { name: 'grpc-webx' }, 'http'],
  ['name http_proxy', { name: 'http_proxy' }, 'http'],
  ['name GRPC (case-insensitive)', { name: 'GRPC' }, 'http'],
  ['name grpcx (a prefix needs the dash)', { name: 'grpcx' }, 'tcp'],
  ['name https', { name: 'https' }, 'tcp'],
  ['name httpfoo (a prefix needs the dash)', { name: 'httpfoo' }, 'tcp'],
  ['name tcp', { name: 'tcp' }, 'tcp'],
  ['unnamed', {}, 'tcp'],
  ['no port at all', undefined, 'tcp'],
];

const HTTP2: [string, { name?: string; appProtocol?: string }, boolean][] = [
  ['name grpc', { name: 'grpc' }, true],
  ['name http2-api', { name: 'http2-api' }, true],
  ['name grpc-web', { name: 'grpc-web' }, true],
  ['appProtocol kubernetes.io/h2c', { appProtocol: 'kubernetes.io/h2c' }, true],
  ['appProtocol grpc over an http name', { name: 'http', appProtocol: 'grpc' }, true],
  ['name http', { name: 'http' }, false],
  ['appProtocol http over a grpc name', { name: 'grpc', appProtocol: 'http' }, false],
  ['name tcp', { name: 'tcp' }, false],
];

for (const [what, port, want] of HTTP2) {
  test(`portIsHttp2: ${what} → ${want}`, () =>
    assert.equal(portIsHttp2({ name: port.name, appProtocol: port.appProtocol }), want));
}

for (const [what, port, want] of PROTOCOLS) {
  test(`portProtocol: ${what} → ${want}`, () => {
    const p = port === undefined ? undefined : { name: port.name, appProtocol: port.appProtocol };
    assert.equal(portProtocol(p), want);
  });
}

// ---------------------------------------------------------------------------------------------
// deriveProxyConfig

/**
 * shop (injection on, namespace STRICT, web's 9090 PERMISSIVE at port level): web (2 replicas, ports
 * 8080/9090/7000) behind two Services, a client pod, and a Service that selects nothing. legacy
 * (no injection): a db pod outside the mesh, reached from shop with a DestinationRule SIMPLE.
 */
const MESH = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kmtls.io/injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls:
    9090: {mode: PERMISSIVE}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
        - name: web
          ports:
            - {name: http, containerPort: 8080}
            - {name: metrics, containerPort: 9090}
            - {name: admin, containerPort: 7000}
---
# 8080 is HTTP here...
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: http-metrics, port: 9090, targetPort: metrics}
---
# ...and raw TCP here, so the sidecar cannot take 8080 as HTTP.
apiVersion: v1
kind: Service
metadata: {name: web-raw, namespace: shop}
spec:
  selector: {app: web}
  ports:
    - {name: tcp, port: 8081, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: ghost, namespace: shop}
spec:
  selector: {app: nobody}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: shop}
spec:
  type: ExternalName
  externalName: api.example.com
  # A selector on an ExternalName Service is ignored, as by kube-proxy.
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccountName: client
  containers: [{name: client}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: legacy, labels: {app: db}}
spec:
  containers: [{name: db, ports: [{containerPort: 5432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: legacy}
spec:
  selector: {app: db}
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: legacy}
spec:
  selector: {app: db}
  ports: [{name: tcp-plain, port: 6000, targetPort: 5432}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-tls, namespace: shop}
spec:
  host: db.legacy.svc.cluster.local
  trafficPolicy:
    tls: {mode: SIMPLE, sni: db.example.com, caCertificates: /etc/db/ca.pem, subjectAltNames: [db.example.com]}
`;

const SNAPSHOT = snapshotOf(MESH);
const POD_IPS: Record<string, string> = {
  'legacy/db': '127.70.0.10',
  'shop/client': '127.70.0.20',
  'shop/web-0': '127.70.0.30',
  'shop/web-1': '127.70.0.31',
};
const PLACED: PlacedPod[] = podInstances(SNAPSHOT).map((p) => {
  const podIP = POD_IPS[`${p.namespace}/${p.name}`];
  assert.ok(podIP, `no address for ${p.namespace}/${p.name}`);
  return { ...p, podIP };
});

/** Where things listen: application ports at 127.0.0.1:(port+10000), outbound listeners by service port. */
const ADDRESSING: PodAddressing = {
  appAddress: (_pod, port) => `127.0.0.1:${port + 10_000}`,
  outboundAddress: (pod, service, port) =>
    `${pod.podIP.replace(/^127\.70\./, '127.71.')}:${service.meta.name === 'web-raw' ? 20_000 : port}`,
  adminAddress: (pod) => `${pod.podIP}:15000`,
};

function placed(key: string): PlacedPod {
  const p = PLACED.find((x) => `${x.namespace}/${x.name}` === key);
  assert.ok(p, `no pod ${key}`);
  return p;
}

function derive(key: string, pods: readonly PlacedPod[] = PLACED): ProxyConfig {
  const config = deriveProxyConfig(SNAPSHOT, pods, placed(key), ADDRESSING, { version: '7' });
  // What the control plane sends must pass the proxy's own check.
  const checked = parseProxyConfig(config);
  assert.ok(checked.ok, `derived config refused: ${checked.ok ? '' : checked.problems.join('; ')}`);
  return config;
}

function outbound(config: ProxyConfig, name: string): OutboundConfig {
  const o = config.outbound.find((x) => x.name === name);
  assert.ok(o, `no outbound ${name} in ${config.outbound.map((x) => x.name).join(', ')}`);
  return o;
}

test('deriveProxyConfig: the workload, its identity, the pod IP as source address, admin and limits', () => {
  const c = deriveProxyConfig(SNAPSHOT, PLACED, placed('shop/web-1'), ADDRESSING, {
    version: '7',
    trustDomains: ['cluster.local', 'old.example'],
    limits: { drainMs: 1_234 },
  });
  assert.equal(c.version, '7');
  assert.deepEqual(c.workload, {
    namespace: 'shop',
    name: 'web-1',
    identity: 'spiffe://cluster.local/ns/shop/sa/web',
  });
  assert.deepEqual(c.trustDomains, ['cluster.local', 'old.example']);
  assert.equal(c.sourceAddress, '127.70.0.31');
  assert.equal(c.admin, '127.70.0.31:15000');
  assert.equal(c.limits.drainMs, 1_234);
  assert.equal(c.limits.maxConnections, 10_000);
  assert.deepEqual(derive('shop/web-1').trustDomains, ['cluster.local'], 'default: the mesh trust domain');
});

test('deriveProxyConfig: inbound mode and deciding policy per port (namespace STRICT, port-level PERMISSIVE)', () => {
  assert.deepEqual(derive('shop/web-0').inbound, [
    {
      port: 7000,
      listen: '127.70.0.30:7000',
      forward: '127.0.0.1:17000',
      mode: 'STRICT',
      // No Service in front of 7000: TCP.
      protocol: 'tcp',
      policy: 'shop/strict',
    },
    {
      port: 8080,
      listen: '127.70.0.30:8080',
      forward: '127.0.0.1:18080',
      mode: 'STRICT',
      // web:80 says http, web-raw:8081 says tcp: HTTP only when every port in front says so.
      protocol: 'tcp',
      policy: 'shop/strict',
    },
    {
      port: 9090,
      listen: '127.70.0.30:9090',
      forward: '127.0.0.1:19090',
      mode: 'PERMISSIVE',
      protocol: 'http',
      policy: 'shop/web-metrics',
    },
  ]);
});

test('deriveProxyConfig: a pod no policy covers is PERMISSIVE by default, policy "default"', () => {
  assert.deepEqual(derive('legacy/db').inbound, [
    {
      port: 5432,
      listen: '127.70.0.10:5432',
      forward: '127.0.0.1:15432',
      mode: 'PERMISSIVE',
      protocol: 'tcp',
      policy: 'default',
    },
  ]);
});

test('deriveProxyConfig: one outbound listener per Service port with endpoints, one endpoint per replica pod', () => {
  const c = derive('shop/client');
  assert.deepEqual(c.inbound, []);
  assert.deepEqual(c.outbound.map((o) => o.name).sort(), [
    'db.legacy.svc.cluster.local:5432',
    'plain.legacy.svc.cluster.local:6000',
    'web-raw.shop.svc.cluster.local:8081',
    'web.shop.svc.cluster.local:80',
    'web.shop.svc.cluster.local:9090',
  ]);
  const web = outbound(c, 'web.shop.svc.cluster.local:80');
  assert.deepEqual(web, {
    name: 'web.shop.svc.cluster.local:80',
    listen: '127.71.0.20:80',
    protocol: 'http',
    // targetPort "http" resolved to the container port 8080, on each replica's pod IP.
    endpoints: [
      { address: '127.70.0.30:8080', tls: 'ISTIO_MUTUAL', workload: 'shop/web-0' },
      { address: '127.70.0.31:8080', tls: 'ISTIO_MUTUAL', workload: 'shop/web-1' },
    ],
    expectedIdentities: ['spiffe://cluster.local/ns/shop/sa/web'],
  });
  const raw = outbound(c, 'web-raw.shop.svc.cluster.local:8081');
  assert.equal(raw.protocol, 'tcp');
  assert.equal(raw.listen, '127.71.0.20:20000', 'the listen address is the addressing’s choice');
  assert.deepEqual(
    raw.endpoints.map((e) => e.address),
    ['127.70.0.30:8080', '127.70.0.31:8080'],
  );
  assert.equal(outbound(c, 'web.shop.svc.cluster.local:9090').protocol, 'http');
});

test('deriveProxyConfig: endpoints come from the pods placed, not the replicas declared', () => {
  const onlyFirst = PLACED.filter((p) => p.name !== 'web-1');
  const web = outbound(derive('shop/client', onlyFirst), 'web.shop.svc.cluster.local:80');
  assert.deepEqual(
    web.endpoints.map((e) => e.workload),
    ['shop/web-0'],
  );
  const none = PLACED.filter((p) => !p.name.startsWith('web-'));
  const c = derive('shop/client', none);
  assert.ok(
    !c.outbound.some((o) => o.name.startsWith('web')),
    'a Service without a placed pod gets no listener',
  );
});

test('deriveProxyConfig: auto mTLS sends plaintext to a pod outside the mesh, and it proves no identity', () => {
  const plain = outbound(derive('shop/web-0'), 'plain.legacy.svc.cluster.local:6000');
  assert.deepEqual(plain.endpoints, [{ address: '127.70.0.10:5432', tls: 'DISABLE', workload: 'legacy/db' }]);
  assert.deepEqual(plain.expectedIdentities, []);
  assert.equal(plain.tls, undefined);
});

test('deriveProxyConfig: a DestinationRule SIMPLE is passed through with its files, SNI and SANs', () => {
  const db = outbound(derive('shop/client'), 'db.legacy.svc.cluster.local:5432');
  assert.deepEqual(db.endpoints, [{ address: '127.70.0.10:5432', tls: 'SIMPLE', workload: 'legacy/db' }]);
  assert.deepEqual(db.tls, {
    caCertificates: '/etc/db/ca.pem',
    sni: 'db.example.com',
    subjectAltNames: ['db.example.com'],
  });
  // The rule lives in shop: a client in legacy is not under it and sends plaintext to the db.
  const fromLegacy = outbound(derive('legacy/db'), 'db.legacy.svc.cluster.local:5432');
  assert.equal(fromLegacy.endpoints[0]?.tls, 'DISABLE');
  assert.equal(fromLegacy.tls, undefined);
});

test('deriveProxyConfig: Services that select nothing and ExternalName Services get no listener', () => {
  assert.equal(SNAPSHOT.services.find((x) => x.meta.name === 'external')?.externalName, 'api.example.com');
  const names = derive('shop/client').outbound.map((o) => o.name);
  assert.ok(!names.some((n) => n.startsWith('ghost.')), names.join(', '));
  assert.ok(!names.some((n) => n.startsWith('external.')), names.join(', '));
});

test('deriveProxyConfig, transparent: portLevelMtls for a port no container declares goes to interception.portModes', () => {
  const snapshot = snapshotOf(`
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kmtls.io/injection: enabled}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: DISABLE}
    9000: {mode: STRICT}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  containers: [{name: api, ports: [{containerPort: 8080}]}]
`);
  const pods = podInstances(snapshot).map((p) => ({ ...p, podIP: '10.1.0.5' }));
  const config = deriveProxyConfig(
    snapshot,
    pods,
    pods[0]!,
    {
      appAddress: (pod, port) => `${pod.podIP}:${port}`,
      outboundAddress: () => '',
      adminAddress: () => undefined,
    },
    { version: '1', interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' } },
  );
  assert.ok(parseProxyConfig(config).ok);
  // 8080 is declared: its port-level mode is on its inbound entry; 9000 is not, so the passthrough has it.
  assert.deepEqual(
    config.inbound.map((p) => [p.port, p.mode, p.policy]),
    [[8080, 'DISABLE', 'shop/api']],
  );
  assert.deepEqual(config.interception, {
    inbound: '0.0.0.0:15006',
    outbound: '0.0.0.0:15001',
    defaultMode: 'PERMISSIVE',
    defaultPolicy: 'shop/api',
    portModes: { '9000': { mode: 'STRICT', policy: 'shop/api' } },
  });
});

test('deriveProxyConfig: a Service without a selector goes where its listed endpoints say: pods by workload, other addresses in plaintext', () => {
  const parsed = parseManifestText(
    `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kmtls.io/injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  serviceAccountName: api
  containers: [{name: api, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80}]
`,
    'x.yaml',
  );
  const read = readResources(parsed.objects);
  const snapshot = buildMeshSnapshot({
    ...read.resources,
    serviceEndpoints: [
      {
        namespace: 'shop',
        service: 'ext',
        ports: [{ name: 'http', port: 8080 }],
        addresses: [
          { ip: '10.250.1.1', pod: 'api' },
          { ip: '10.9.9.9', pod: undefined },
        ],
      },
    ],
  });
  const pods: PlacedPod[] = podInstances(snapshot).map((p) => ({ ...p, podIP: '10.250.1.1' }));
  const config = deriveProxyConfig(snapshot, pods, pods[0]!, ADDRESSING, {
    version: '1',
    interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' },
  });
  const ext = outbound(config, 'ext.shop.svc.cluster.local:80');
  assert.deepEqual(ext.endpoints, [
    { address: '10.250.1.1:8080', tls: 'ISTIO_MUTUAL', workload: 'shop/api' },
    { address: '10.9.9.9:8080', tls: 'DISABLE' },
  ]);
  assert.deepEqual(ext.expectedIdentities, ['spiffe://cluster.local/ns/shop/sa/api']);
  assert.deepEqual(ext.match, ['10.96.0.50:80']);
});
