/**
 * The client side of a connection: what a caller's sidecar sends to each endpoint (DestinationRule
 * TLS, auto mTLS) and whether the server accepts it. Cases mirror Istio's
 * pilot/pkg/xds/endpoints/ep_filters_test.go (`mtlsCases`) and
 * pilot/pkg/model/push_context_test.go (`TestBestEffortInferServiceMTLSMode`).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type {
  ClientTlsMode,
  DestinationRule,
  EdgeDecision,
  EdgeEndpoint,
  EndpointVerdict,
  PeerAuthentication,
  ResolvedMtlsMode,
  ServerMode,
  Service,
  Verdict,
  VerdictCode,
  Workload,
} from '../../src/policy/index.js';
import {
  decideEdge,
  endpointsOf,
  indexDestinationRules,
  indexPeerAuthentications,
  judge,
} from '../../src/policy/index.js';
import { dr, pa, service, workload } from '../helpers/builders.js';

const ROOT = 'istio-system';

interface Scenario {
  pas?: PeerAuthentication[];
  drs?: DestinationRule[];
  autoMtls?: boolean;
  source?: { namespace?: string; labels?: Record<string, string>; inMesh?: boolean };
  /** The destination Service; leave out (with `host`) for a host outside the mesh's registry. */
  service?: Service;
  /** Defaults to the Service's first port. */
  servicePort?: number;
  subset?: string;
  workloads?: Workload[];
  /** For a host without Service. */
  host?: string;
  /** For a host without Service: the endpoints to judge. */
  endpoints?: EdgeEndpoint[];
}

/** Runs `decideEdge` the way the mesh layer does: endpoints come from the Service's selector and targetPort. */
function decide(s: Scenario): EdgeDecision {
  const svc = s.service;
  let host = s.host ?? 'unknown.example.com';
  let servicePort = s.servicePort ?? 80;
  let endpoints: EdgeEndpoint[] = s.endpoints ?? [];
  if (svc !== undefined) {
    host = `${svc.meta.name}.${svc.meta.namespace}.svc.cluster.local`;
    const sp = s.servicePort === undefined ? svc.ports[0] : svc.ports.find((p) => p.port === s.servicePort);
    assert.ok(sp, `the test's Service has no port ${String(s.servicePort)}`);
    servicePort = sp.port;
    endpoints = endpointsOf(svc, sp, s.workloads ?? []);
  }
  return decideEdge(
    {
      peerAuthentications: indexPeerAuthentications(s.pas ?? [], ROOT),
      destinationRules: indexDestinationRules(s.drs ?? [], ROOT),
      autoMtls: s.autoMtls ?? true,
    },
    {
      source: {
        ref: undefined,
        namespace: s.source?.namespace ?? 'client',
        labels: s.source?.labels ?? { app: 'sleep' },
        inMesh: s.source?.inMesh ?? true,
      },
      host,
      servicePort,
      service:
        svc === undefined
          ? undefined
          : {
              ref: { kind: 'Service', namespace: svc.meta.namespace, name: svc.meta.name },
              namespace: svc.meta.namespace,
              headless: svc.headless,
            },
      subset: s.subset,
      endpoints,
    },
  );
}

function only(d: EdgeDecision): EndpointVerdict {
  assert.equal(
    d.endpoints.length,
    1,
    `expected one endpoint, got ${d.endpoints.map((e) => e.workload.name).join(', ')}`,
  );
  return d.endpoints[0]!;
}

function byName(d: EdgeDecision, name: string): EndpointVerdict {
  const ep = d.endpoints.find((e) => e.workload.name === name);
  assert.ok(ep, `no endpoint ${name} in ${d.endpoints.map((e) => e.workload.name).join(', ')}`);
  return ep;
}

/** What Istio's ep_filters_test uses: Service port 80 → targetPort 8080, one pod `app=example` with a sidecar. */
const example = service('ns', 'example', { ports: [[80, 8080]] });
const examplePod = workload('ns', 'example-pod', { labels: { app: 'example' }, ports: [8080] });
const exampleHost = 'example.ns.svc.cluster.local';

describe('decideEdge: Istio ep_filters_test mtlsCases', () => {
  const cases: {
    name: string;
    pas?: PeerAuthentication[];
    drs?: DestinationRule[];
    subset?: string;
    clientTls: ClientTlsMode;
    level?: 'destination' | 'destination-port' | 'subset' | 'subset-port';
    serverMode: ServerMode;
    code: VerdictCode;
  }[] = [
    {
      name: 'PeerAuthentication mtls-off-ineffective: a root-namespace selector policy for another app leaves mTLS on',
      pas: [pa(ROOT, 'mtls-partial', { selector: { matchLabels: { app: 'b' } }, mtls: { mode: 'DISABLE' } })],
      clientTls: 'ISTIO_MUTUAL',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'a root-namespace selector policy is ignored even when it matches the endpoint',
      pas: [
        pa(ROOT, 'mtls-partial', {
          selector: { matchLabels: { app: 'example' } },
          mtls: { mode: 'DISABLE' },
        }),
      ],
      clientTls: 'ISTIO_MUTUAL',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'PeerAuthentication mtls-on-strict: mesh-wide STRICT keeps auto mTLS on',
      pas: [pa(ROOT, 'mtls-on', { mtls: { mode: 'STRICT' } })],
      clientTls: 'ISTIO_MUTUAL',
      serverMode: 'STRICT',
      code: 'MTLS',
    },
    {
      name: 'PeerAuthentication mtls-off-global: mesh-wide DISABLE (any name) makes auto mTLS send plaintext',
      pas: [pa(ROOT, 'mtls-off', { mtls: { mode: 'DISABLE' } })],
      clientTls: 'DISABLE',
      serverMode: 'DISABLE',
      code: 'PLAINTEXT',
    },
    {
      name: 'PeerAuthentication mtls-off-namespace: namespace-wide DISABLE makes auto mTLS send plaintext',
      pas: [pa('ns', 'mtls-off', { mtls: { mode: 'DISABLE' } })],
      clientTls: 'DISABLE',
      serverMode: 'DISABLE',
      code: 'PLAINTEXT',
    },
    {
      name: 'PeerAuthentication mtls-off-workload: a workload DISABLE makes auto mTLS send plaintext to that endpoint',
      pas: [
        pa('ns', 'mtls-off', { selector: { matchLabels: { app: 'example' } }, mtls: { mode: 'DISABLE' } }),
      ],
      clientTls: 'DISABLE',
      serverMode: 'DISABLE',
      code: 'PLAINTEXT',
    },
    {
      name: 'PeerAuthentication mtls-off-port: portLevelMtls is keyed by the targetPort (8080), not the Service port (80)',
      pas: [
        pa('ns', 'mtls-off', {
          selector: { matchLabels: { app: 'example' } },
          portLevelMtls: { 8080: { mode: 'DISABLE' } },
        }),
      ],
      clientTls: 'DISABLE',
      serverMode: 'DISABLE',
      code: 'PLAINTEXT',
    },
    {
      name: 'portLevelMtls on the Service port (80) does not touch the endpoint port 8080',
      pas: [
        pa('ns', 'mtls-off', {
          selector: { matchLabels: { app: 'example' } },
          portLevelMtls: { 80: { mode: 'DISABLE' } },
        }),
      ],
      clientTls: 'ISTIO_MUTUAL',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'DestinationRule mtls-on-override-pa: ISTIO_MUTUAL overrides a PeerAuthentication DISABLE (and the server refuses it)',
      pas: [pa('ns', 'mtls-off', { mtls: { mode: 'DISABLE' } })],
      drs: [dr('ns', 'mtls-on', { host: exampleHost, trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } } })],
      clientTls: 'ISTIO_MUTUAL',
      level: 'destination',
      serverMode: 'DISABLE',
      code: 'MTLS_TO_DISABLED_PORT',
    },
    {
      name: 'DestinationRule mtls-off-innefective: a rule for another host changes nothing',
      drs: [
        dr('ns', 'mtls-off', {
          host: 'other.ns.svc.cluster.local',
          trafficPolicy: { tls: { mode: 'DISABLE' } },
        }),
      ],
      clientTls: 'ISTIO_MUTUAL',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'DestinationRule mtls-on-destination-level: trafficPolicy.tls ISTIO_MUTUAL',
      drs: [dr('ns', 'mtls-on', { host: exampleHost, trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } } })],
      clientTls: 'ISTIO_MUTUAL',
      level: 'destination',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'DestinationRule mtls-on-port-level: a portLevelSettings entry for Service port 80 with ISTIO_MUTUAL',
      drs: [
        dr('ns', 'mtls-on', {
          host: exampleHost,
          trafficPolicy: { portLevelSettings: [{ port: { number: 80 }, tls: { mode: 'ISTIO_MUTUAL' } }] },
        }),
      ],
      clientTls: 'ISTIO_MUTUAL',
      level: 'destination-port',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'DestinationRule mtls-off-destination-level: trafficPolicy.tls DISABLE disables mTLS',
      drs: [dr('ns', 'mtls-off', { host: exampleHost, trafficPolicy: { tls: { mode: 'DISABLE' } } })],
      clientTls: 'DISABLE',
      level: 'destination',
      serverMode: 'PERMISSIVE',
      code: 'PLAINTEXT',
    },
    {
      name: 'DestinationRule mtls-off-port-level: a portLevelSettings entry for port 80 with DISABLE disables mTLS',
      drs: [
        dr('ns', 'mtls-off', {
          host: exampleHost,
          trafficPolicy: { portLevelSettings: [{ port: { number: 80 }, tls: { mode: 'DISABLE' } }] },
        }),
      ],
      clientTls: 'DISABLE',
      level: 'destination-port',
      serverMode: 'PERMISSIVE',
      code: 'PLAINTEXT',
    },
    {
      name: 'a DestinationRule portLevelSettings entry for the targetPort (8080) does not apply: it names Service ports',
      drs: [
        dr('ns', 'mtls-off', {
          host: exampleHost,
          trafficPolicy: { portLevelSettings: [{ port: { number: 8080 }, tls: { mode: 'DISABLE' } }] },
        }),
      ],
      clientTls: 'ISTIO_MUTUAL',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
    {
      name: 'DestinationRule mtls-off-subset-level: the subset DISABLE overrides the destination ISTIO_MUTUAL',
      drs: [
        dr('ns', 'mtls-off', {
          host: exampleHost,
          trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } },
          subsets: [
            { name: 'disable-tls', labels: { app: 'example' }, trafficPolicy: { tls: { mode: 'DISABLE' } } },
          ],
        }),
      ],
      subset: 'disable-tls',
      clientTls: 'DISABLE',
      level: 'subset',
      serverMode: 'PERMISSIVE',
      code: 'PLAINTEXT',
    },
    {
      name: 'DestinationRule mtls-on-subset-level: the subset ISTIO_MUTUAL overrides the destination DISABLE',
      drs: [
        dr('ns', 'mtls-on', {
          host: exampleHost,
          trafficPolicy: { tls: { mode: 'DISABLE' } },
          subsets: [
            {
              name: 'enable-tls',
              labels: { app: 'example' },
              trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } },
            },
          ],
        }),
      ],
      subset: 'enable-tls',
      clientTls: 'ISTIO_MUTUAL',
      level: 'subset',
      serverMode: 'PERMISSIVE',
      code: 'MTLS',
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const d = decide({
        pas: c.pas ?? [],
        drs: c.drs ?? [],
        service: example,
        workloads: [examplePod],
        ...(c.subset !== undefined ? { subset: c.subset } : {}),
      });
      assert.equal(d.problem, undefined);
      const ep = only(d);
      assert.equal(ep.port, 8080);
      assert.equal(ep.clientTls, c.clientTls);
      assert.equal(ep.serverMode, c.serverMode);
      assert.equal(ep.code, c.code);
      assert.equal(d.clusterTls.level, c.level);
      if (c.level === undefined) assert.equal(d.clusterTls.tls, undefined);
    });
  }

  test('a named targetPort is resolved per endpoint before portLevelMtls is looked up', () => {
    const svc = service('ns', 'example', { ports: [[80, 'http']] });
    const pod = workload('ns', 'example-pod', { labels: { app: 'example' }, ports: [[8080, 'http']] });
    const ep = only(
      decide({
        pas: [
          pa('ns', 'mtls-off', {
            selector: { matchLabels: { app: 'example' } },
            portLevelMtls: { 8080: { mode: 'DISABLE' } },
          }),
        ],
        service: svc,
        workloads: [pod],
      }),
    );
    assert.equal(ep.port, 8080);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.code, 'PLAINTEXT');
  });
});

describe('decideEdge: Istio TestBestEffortInferServiceMTLSMode', () => {
  // The Istio test's policies: namespace `whole` STRICT; namespace `partial` has only a workload policy.
  const pas = [
    pa('whole', 'default', { mtls: { mode: 'STRICT' } }),
    pa('partial', 'workload-beta-policy', {
      selector: { matchLabels: { app: 'httpbin', version: 'v1' } },
      mtls: { mode: 'DISABLE' },
    }),
  ];
  const cases: { name: string; scenario: Scenario; want: ResolvedMtlsMode | 'UNKNOWN' }[] = [
    {
      name: 'from namespace policy: namespace STRICT gives STRICT',
      scenario: {
        service: service('whole', 'some-service'),
        workloads: [workload('whole', 'pod', { labels: { app: 'some-service' } })],
      },
      want: 'STRICT',
    },
    {
      name: 'from mesh default: a namespace with only a workload policy falls back to PERMISSIVE',
      scenario: {
        service: service('partial', 'some-service'),
        workloads: [workload('partial', 'pod', { labels: { app: 'some-service' } })],
      },
      want: 'PERMISSIVE',
    },
    {
      name: 'headless service with no instances found yet gives DISABLE',
      scenario: { service: service('partial', 'some-service', { headless: true }), workloads: [] },
      want: 'DISABLE',
    },
    {
      name: 'headless service with a plaintext (no sidecar) instance gives DISABLE',
      scenario: {
        service: service('partial', 'some-service', { headless: true }),
        workloads: [workload('partial', 'pod', { labels: { app: 'some-service' }, inMesh: false })],
      },
      want: 'DISABLE',
    },
    {
      name: 'headless service in a STRICT namespace whose instances all have sidecars gives STRICT',
      scenario: {
        service: service('whole', 'some-service', { headless: true }),
        workloads: [workload('whole', 'pod', { labels: { app: 'some-service' } })],
      },
      want: 'STRICT',
    },
    {
      name: 'a mesh-external host is always UNKNOWN',
      scenario: { host: 'some-service.whole.svc.cluster.local' },
      want: 'UNKNOWN',
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      assert.equal(decide({ pas, ...c.scenario }).serviceMtlsMode, c.want);
    });
  }

  test('namespace and mesh policies: mesh mode when the namespace has none; UNSET inherits the mesh', () => {
    const svc = service('app', 'api');
    const pod = workload('app', 'api-pod', { labels: { app: 'api' } });
    const mode = (policies: PeerAuthentication[]) =>
      decide({ pas: policies, service: svc, workloads: [pod] }).serviceMtlsMode;
    assert.equal(mode([pa(ROOT, 'mesh', { mtls: { mode: 'STRICT' } })]), 'STRICT');
    assert.equal(
      mode([
        pa(ROOT, 'mesh', { mtls: { mode: 'DISABLE' } }),
        pa('app', 'default', { mtls: { mode: 'UNSET' } }),
      ]),
      'DISABLE',
    );
    assert.equal(
      mode([
        pa(ROOT, 'mesh', { mtls: { mode: 'DISABLE' } }),
        pa('app', 'default', { mtls: { mode: 'PERMISSIVE' } }),
      ]),
      'PERMISSIVE',
    );
    assert.equal(mode([pa(ROOT, 'mesh', {})]), 'PERMISSIVE');
  });
});

describe('decideEdge: the auto-mTLS limitation with workload-level policies', () => {
  const strictApi = pa('ns', 'api-strict', {
    selector: { matchLabels: { app: 'example' } },
    mtls: { mode: 'STRICT' },
  });

  test('namespace DISABLE + workload STRICT: the client sends plaintext and is rejected', () => {
    const d = decide({
      pas: [pa('ns', 'default', { mtls: { mode: 'DISABLE' } }), strictApi],
      service: example,
      workloads: [examplePod],
    });
    assert.equal(d.serviceMtlsMode, 'DISABLE');
    const ep = only(d);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.serverMode, 'STRICT');
    assert.equal(ep.verdict, 'fails');
    assert.equal(ep.code, 'PLAINTEXT_REJECTED');
    assert.match(ep.clientTlsReason, /DestinationRule with ISTIO_MUTUAL/);
  });

  test('mesh DISABLE + workload STRICT fails the same way', () => {
    const ep = only(
      decide({
        pas: [pa(ROOT, 'default', { mtls: { mode: 'DISABLE' } }), strictApi],
        service: example,
        workloads: [examplePod],
      }),
    );
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.code, 'PLAINTEXT_REJECTED');
  });

  test('the documented fix, a DestinationRule with ISTIO_MUTUAL, makes it work', () => {
    const ep = only(
      decide({
        pas: [pa('ns', 'default', { mtls: { mode: 'DISABLE' } }), strictApi],
        drs: [dr('ns', 'example', { host: 'example', trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } } })],
        service: example,
        workloads: [examplePod],
      }),
    );
    assert.equal(ep.clientTls, 'ISTIO_MUTUAL');
    assert.equal(ep.verdict, 'works');
    assert.equal(ep.code, 'MTLS');
  });

  test('headless: namespace DISABLE + workload STRICT behind a headless service is rejected too', () => {
    const d = decide({
      pas: [pa('ns', 'default', { mtls: { mode: 'DISABLE' } }), strictApi],
      service: service('ns', 'example', { ports: [[80, 8080]], headless: true }),
      workloads: [examplePod],
    });
    assert.equal(d.passthrough, true);
    assert.equal(d.serviceMtlsMode, 'DISABLE');
    const ep = only(d);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.code, 'PLAINTEXT_REJECTED');
  });
});

describe('decideEdge: passthrough (headless) clusters decide once for the whole service', () => {
  const strictNs = pa('ns', 'default', { mtls: { mode: 'STRICT' } });
  const meshPod = workload('ns', 'with-sidecar', { labels: { app: 'example' }, ports: [8080] });
  const plainPod = workload('ns', 'no-sidecar', { labels: { app: 'example' }, ports: [8080], inMesh: false });

  test('one endpoint without sidecar makes a headless service plaintext for every endpoint', () => {
    const d = decide({
      pas: [strictNs],
      service: service('ns', 'example', { ports: [[80, 8080]], headless: true }),
      workloads: [meshPod, plainPod],
    });
    assert.equal(d.serviceMtlsMode, 'DISABLE');
    assert.deepEqual(
      [byName(d, 'with-sidecar').code, byName(d, 'no-sidecar').code],
      ['PLAINTEXT_REJECTED', 'PLAINTEXT'],
    );
    assert.match(byName(d, 'with-sidecar').clientTlsReason, /has no sidecar/);
  });

  test('the same endpoints behind a normal service are chosen per endpoint (transport socket match)', () => {
    const d = decide({ pas: [strictNs], service: example, workloads: [meshPod, plainPod] });
    assert.equal(d.passthrough, false);
    assert.equal(d.serviceMtlsMode, 'STRICT');
    assert.equal(byName(d, 'with-sidecar').clientTls, 'ISTIO_MUTUAL');
    assert.equal(byName(d, 'with-sidecar').code, 'MTLS');
    assert.equal(byName(d, 'no-sidecar').clientTls, 'DISABLE');
    assert.equal(byName(d, 'no-sidecar').code, 'PLAINTEXT');
  });

  const portOff = pa('ns', 'port-off', {
    selector: { matchLabels: { app: 'example', port: 'off' } },
    portLevelMtls: { 8080: { mode: 'DISABLE' } },
  });
  const offPod = workload('ns', 'port-off', { labels: { app: 'example', port: 'off' }, ports: [8080] });

  test('a headless service with auto mTLS sends ISTIO_MUTUAL to every endpoint, even a DISABLE port', () => {
    const d = decide({
      pas: [portOff],
      service: service('ns', 'example', { ports: [[80, 8080]], headless: true }),
      workloads: [meshPod, offPod],
    });
    assert.equal(byName(d, 'with-sidecar').code, 'MTLS');
    const off = byName(d, 'port-off');
    assert.equal(off.clientTls, 'ISTIO_MUTUAL');
    assert.equal(off.serverMode, 'DISABLE');
    assert.equal(off.code, 'MTLS_TO_DISABLED_PORT');
  });

  test('behind a normal service, the DISABLE port gets plaintext from auto mTLS', () => {
    const d = decide({ pas: [portOff], service: example, workloads: [meshPod, offPod] });
    assert.equal(byName(d, 'port-off').clientTls, 'DISABLE');
    assert.equal(byName(d, 'port-off').code, 'PLAINTEXT');
  });

  test('DestinationRule loadBalancer.simple PASSTHROUGH makes a normal service passthrough', () => {
    const d = decide({
      pas: [strictNs],
      drs: [
        dr('ns', 'example', {
          host: exampleHost,
          trafficPolicy: { loadBalancer: { simple: 'PASSTHROUGH' } },
        }),
      ],
      service: example,
      workloads: [meshPod, plainPod],
    });
    assert.equal(d.passthrough, true);
    assert.equal(d.serviceMtlsMode, 'DISABLE');
    assert.equal(byName(d, 'with-sidecar').code, 'PLAINTEXT_REJECTED');
  });

  test('PASSTHROUGH in a subset policy applies to that subset only', () => {
    const v1 = workload('ns', 'v1', { labels: { app: 'example', version: 'v1' }, ports: [8080] });
    const drs = [
      dr('ns', 'example', {
        host: exampleHost,
        subsets: [
          {
            name: 'v1',
            labels: { version: 'v1' },
            trafficPolicy: { loadBalancer: { simple: 'PASSTHROUGH' } },
          },
          { name: 'v1-plain', labels: { version: 'v1' } },
        ],
      }),
    ];
    const s = { pas: [portOff], drs, service: example, workloads: [v1] };
    assert.equal(decide({ ...s, subset: 'v1' }).passthrough, true);
    assert.equal(decide({ ...s, subset: 'v1-plain' }).passthrough, false);
    assert.equal(decide(s).passthrough, false);
  });

  test('for a subset of a headless service, every endpoint of the port counts, not only the subset', () => {
    const v1 = workload('ns', 'v1', { labels: { app: 'example', version: 'v1' }, ports: [8080] });
    const v2 = workload('ns', 'v2', {
      labels: { app: 'example', version: 'v2' },
      ports: [8080],
      inMesh: false,
    });
    const d = decide({
      pas: [strictNs],
      drs: [
        dr('ns', 'example', {
          host: exampleHost,
          subsets: [
            { name: 'v1', labels: { version: 'v1' } },
            { name: 'v2', labels: { version: 'v2' } },
          ],
        }),
      ],
      service: service('ns', 'example', { ports: [[80, 8080]], headless: true }),
      workloads: [v1, v2],
      subset: 'v1',
    });
    assert.equal(d.serviceMtlsMode, 'DISABLE');
    const ep = only(d);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.code, 'PLAINTEXT_REJECTED');
  });
});

describe('decideEdge: port-level entries without tls', () => {
  const svc = service('ns', 'example', {
    ports: [
      [80, 8080],
      [9090, 9090],
    ],
  });
  const pod = workload('ns', 'example-pod', { labels: { app: 'example' }, ports: [8080, 9090] });
  const strictNs = pa('ns', 'default', { mtls: { mode: 'STRICT' } });
  const simpleWithPort80 = dr('ns', 'example', {
    host: exampleHost,
    trafficPolicy: {
      tls: { mode: 'SIMPLE' },
      portLevelSettings: [{ port: { number: 80 }, connectionPool: { tcp: { maxConnections: 10 } } }],
    },
  });

  test('the destination-level tls still applies to the ports without an entry', () => {
    const d = decide({
      pas: [strictNs],
      drs: [simpleWithPort80],
      service: svc,
      servicePort: 9090,
      workloads: [pod],
    });
    assert.equal(d.clusterTls.level, 'destination');
    const ep = only(d);
    assert.equal(ep.clientTls, 'SIMPLE');
    assert.equal(ep.code, 'NO_CLIENT_CERT');
  });

  test('an entry without tls drops the destination tls for its port: the cluster goes back to auto mTLS', () => {
    const d = decide({
      pas: [strictNs],
      drs: [simpleWithPort80],
      service: svc,
      servicePort: 80,
      workloads: [pod],
    });
    assert.equal(d.clusterTls.tls, undefined);
    assert.equal(d.clusterTls.level, 'destination-port');
    // Endpoint level (checkMtlsEnabled) only lets a port entry override when it has tls, so the
    // destination's SIMPLE still marks the endpoint non-mTLS: auto mTLS sends plaintext.
    const ep = only(d);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.code, 'PLAINTEXT_REJECTED');
  });

  test('destination ISTIO_MUTUAL + an entry without tls: auto mTLS marks every endpoint for mTLS, even one without sidecar', () => {
    const plain = workload('ns', 'no-sidecar', { labels: { app: 'example' }, ports: [8080], inMesh: false });
    const d = decide({
      drs: [
        dr('ns', 'example', {
          host: exampleHost,
          trafficPolicy: {
            tls: { mode: 'ISTIO_MUTUAL' },
            portLevelSettings: [{ port: { number: 80 }, loadBalancer: { simple: 'ROUND_ROBIN' } }],
          },
        }),
      ],
      service: svc,
      workloads: [pod, plain],
    });
    assert.equal(d.clusterTls.tls, undefined);
    assert.equal(byName(d, 'example-pod').code, 'MTLS');
    assert.equal(byName(d, 'no-sidecar').clientTls, 'ISTIO_MUTUAL');
    assert.equal(byName(d, 'no-sidecar').code, 'MTLS_TO_NON_MESH_WORKLOAD');
  });

  test('a subset port entry without tls re-enables plain auto mTLS: the subset has no tls of its own', () => {
    const d = decide({
      pas: [strictNs],
      drs: [
        dr('ns', 'example', {
          host: exampleHost,
          trafficPolicy: { tls: { mode: 'SIMPLE' } },
          subsets: [
            {
              name: 'v1',
              labels: { app: 'example' },
              trafficPolicy: {
                portLevelSettings: [{ port: { number: 80 }, connectionPool: { tcp: { maxConnections: 1 } } }],
              },
            },
          ],
        }),
      ],
      service: svc,
      servicePort: 80,
      subset: 'v1',
      workloads: [pod],
    });
    assert.equal(d.clusterTls.tls, undefined);
    assert.equal(d.clusterTls.level, 'subset-port');
    const ep = only(d);
    assert.equal(ep.clientTls, 'ISTIO_MUTUAL');
    assert.equal(ep.code, 'MTLS');
  });

  test("endpoint level reads only the subset's policy, never the destination tls behind it", () => {
    const drs = [
      dr('ns', 'example', {
        host: exampleHost,
        trafficPolicy: {
          tls: { mode: 'DISABLE' },
          portLevelSettings: [{ port: { number: 80 }, connectionPool: { tcp: { maxConnections: 1 } } }],
        },
        subsets: [
          { name: 'v1', labels: { app: 'example' }, trafficPolicy: { loadBalancer: { simple: 'RANDOM' } } },
        ],
      }),
    ];
    const withSubset = decide({ pas: [strictNs], drs, service: svc, subset: 'v1', workloads: [pod] });
    assert.equal(withSubset.clusterTls.tls, undefined);
    assert.equal(only(withSubset).clientTls, 'ISTIO_MUTUAL');
    assert.equal(only(withSubset).code, 'MTLS');
    const withoutSubset = decide({ pas: [strictNs], drs, service: svc, workloads: [pod] });
    assert.equal(only(withoutSubset).clientTls, 'DISABLE');
    assert.equal(only(withoutSubset).code, 'PLAINTEXT_REJECTED');
  });
});

describe('decideEdge: sources, subsets and endpoints', () => {
  const strictNs = pa('ns', 'default', { mtls: { mode: 'STRICT' } });
  const istioMutual = dr('ns', 'example', {
    host: exampleHost,
    trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } },
  });

  test('a source without sidecar ignores DestinationRules and sends plaintext: STRICT rejects it', () => {
    const d = decide({
      pas: [strictNs],
      drs: [istioMutual],
      source: { inMesh: false },
      service: example,
      workloads: [examplePod],
    });
    assert.equal(d.destinationRule, undefined);
    const ep = only(d);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.code, 'PLAINTEXT_REJECTED');
    assert.match(ep.clientTlsReason, /no sidecar/);
  });

  test('a source without sidecar reaches a PERMISSIVE server in plaintext', () => {
    const ep = only(
      decide({ drs: [istioMutual], source: { inMesh: false }, service: example, workloads: [examplePod] }),
    );
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.verdict, 'works');
    assert.equal(ep.code, 'PLAINTEXT');
  });

  test('auto mTLS sends plaintext to an endpoint without sidecar, mTLS to one with', () => {
    const plain = workload('ns', 'no-sidecar', { labels: { app: 'example' }, ports: [8080], inMesh: false });
    const d = decide({ service: example, workloads: [examplePod, plain] });
    assert.equal(byName(d, 'example-pod').clientTls, 'ISTIO_MUTUAL');
    assert.equal(byName(d, 'no-sidecar').clientTls, 'DISABLE');
    assert.equal(byName(d, 'no-sidecar').serverMode, 'NO_SIDECAR');
    assert.equal(byName(d, 'no-sidecar').code, 'PLAINTEXT');
  });

  test('with meshConfig.enableAutoMtls false the client sends plaintext unless a DestinationRule sets tls', () => {
    const off = only(decide({ pas: [strictNs], autoMtls: false, service: example, workloads: [examplePod] }));
    assert.equal(off.clientTls, 'DISABLE');
    assert.equal(off.code, 'PLAINTEXT_REJECTED');
    const withRule = only(
      decide({
        pas: [strictNs],
        drs: [istioMutual],
        autoMtls: false,
        service: example,
        workloads: [examplePod],
      }),
    );
    assert.equal(withRule.clientTls, 'ISTIO_MUTUAL');
    assert.equal(withRule.code, 'MTLS');
  });

  test('a host outside the mesh gets no auto mTLS and an EXTERNAL verdict', () => {
    const external = workload('ext', 'vm', { labels: { app: 'vm' } });
    const d = decide({ host: 'api.example.com', endpoints: [{ workload: external, port: 443 }] });
    assert.equal(d.problem, undefined);
    const ep = only(d);
    assert.equal(ep.clientTls, 'DISABLE');
    assert.equal(ep.serverMode, 'UNKNOWN');
    assert.equal(ep.verdict, 'depends');
    assert.equal(ep.code, 'EXTERNAL');
  });

  test('a DestinationRule in the client namespace can originate TLS to an external host', () => {
    const external = workload('ext', 'vm', { labels: { app: 'vm' } });
    const d = decide({
      drs: [dr('client', 'api', { host: 'api.example.com', trafficPolicy: { tls: { mode: 'SIMPLE' } } })],
      host: 'api.example.com',
      servicePort: 443,
      endpoints: [{ workload: external, port: 443 }],
    });
    assert.equal(d.destinationRule?.foundIn, 'client-namespace');
    assert.equal(only(d).clientTls, 'SIMPLE');
    assert.equal(only(d).code, 'EXTERNAL');
  });

  const v1 = workload('ns', 'example-v1', { labels: { app: 'example', version: 'v1' }, ports: [8080] });
  const v2 = workload('ns', 'example-v2', { labels: { app: 'example', version: 'v2' }, ports: [8080] });
  const subsets = dr('ns', 'example', {
    host: exampleHost,
    subsets: [
      { name: 'v1', labels: { version: 'v1' } },
      { name: 'v3', labels: { version: 'v3' } },
    ],
  });

  test('a subset keeps only the endpoints whose labels match its labels', () => {
    assert.deepEqual(
      decide({ drs: [subsets], service: example, workloads: [v1, v2] }).endpoints.map((e) => e.workload.name),
      ['example-v1', 'example-v2'],
    );
    const d = decide({ drs: [subsets], service: example, workloads: [v1, v2], subset: 'v1' });
    assert.equal(d.problem, undefined);
    assert.deepEqual(
      d.endpoints.map((e) => e.workload.name),
      ['example-v1'],
    );
  });

  test('SUBSET_NOT_FOUND when the rule does not define the subset', () => {
    const d = decide({ drs: [subsets], service: example, workloads: [v1, v2], subset: 'v2' });
    assert.equal(d.problem?.code, 'SUBSET_NOT_FOUND');
    assert.match(d.problem.message, /ns\/example/);
    assert.deepEqual(d.endpoints, []);
  });

  test('SUBSET_NOT_FOUND when no DestinationRule applies at all', () => {
    const d = decide({ service: example, workloads: [v1], subset: 'v1' });
    assert.equal(d.problem?.code, 'SUBSET_NOT_FOUND');
    assert.match(d.problem.message, /there is none/);
  });

  test('NO_ENDPOINTS when no workload backs the Service port', () => {
    const d = decide({
      service: example,
      workloads: [workload('ns', 'other', { labels: { app: 'other' } })],
    });
    assert.equal(d.problem?.code, 'NO_ENDPOINTS');
    assert.deepEqual(d.endpoints, []);
  });

  test('NO_ENDPOINTS when the subset exists but selects none of the endpoints', () => {
    const d = decide({ drs: [subsets], service: example, workloads: [v1, v2], subset: 'v3' });
    assert.equal(d.problem?.code, 'NO_ENDPOINTS');
    assert.match(d.problem.message, /subset v3/);
  });
});

describe('judge: every client × server cell', () => {
  const cells: [ClientTlsMode, ServerMode, Verdict, VerdictCode][] = [
    ['ISTIO_MUTUAL', 'STRICT', 'works', 'MTLS'],
    ['ISTIO_MUTUAL', 'PERMISSIVE', 'works', 'MTLS'],
    ['ISTIO_MUTUAL', 'DISABLE', 'fails', 'MTLS_TO_DISABLED_PORT'],
    ['ISTIO_MUTUAL', 'NO_SIDECAR', 'fails', 'MTLS_TO_NON_MESH_WORKLOAD'],
    ['ISTIO_MUTUAL', 'UNKNOWN', 'depends', 'EXTERNAL'],
    ['DISABLE', 'STRICT', 'fails', 'PLAINTEXT_REJECTED'],
    ['DISABLE', 'PERMISSIVE', 'works', 'PLAINTEXT'],
    ['DISABLE', 'DISABLE', 'works', 'PLAINTEXT'],
    ['DISABLE', 'NO_SIDECAR', 'works', 'PLAINTEXT'],
    ['DISABLE', 'UNKNOWN', 'depends', 'EXTERNAL'],
    ['SIMPLE', 'STRICT', 'fails', 'NO_CLIENT_CERT'],
    ['SIMPLE', 'PERMISSIVE', 'depends', 'APP_TLS'],
    ['SIMPLE', 'DISABLE', 'depends', 'APP_TLS'],
    ['SIMPLE', 'NO_SIDECAR', 'depends', 'APP_TLS'],
    ['SIMPLE', 'UNKNOWN', 'depends', 'EXTERNAL'],
    ['MUTUAL', 'STRICT', 'fails', 'UNKNOWN_CA'],
    ['MUTUAL', 'PERMISSIVE', 'depends', 'APP_TLS'],
    ['MUTUAL', 'DISABLE', 'depends', 'APP_TLS'],
    ['MUTUAL', 'NO_SIDECAR', 'depends', 'APP_TLS'],
    ['MUTUAL', 'UNKNOWN', 'depends', 'EXTERNAL'],
  ];
  for (const [client, server, verdict, code] of cells) {
    test(`${client} to a ${server} server ${verdict} (${code})`, () => {
      const j = judge(client, server);
      assert.equal(j.verdict, verdict);
      assert.equal(j.code, code);
      assert.ok(j.reason.length > 0);
    });
  }
});
