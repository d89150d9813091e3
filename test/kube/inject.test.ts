import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import type { InjectionStatus, InjectionTrigger, InjectOptions, PodTemplate } from '../../src/kube/inject.js';
import {
  APP_PROBERS_ENV,
  decideInjection,
  INIT_CONTAINER,
  type INJECTABLE_KINDS,
  injectObject,
  injectTemplate,
  REWRITTEN_PROBES_ANNOTATION,
  SIDECAR_CONTAINER,
  STATUS_ANNOTATION,
  supportsNativeSidecar,
  TLS_MODE_LABEL,
} from '../../src/kube/inject.js';
import { parseAppProbers } from '../../src/proxy/status-port.js';

const OPTIONS: InjectOptions = { image: 'example/kmtls:test', nativeSidecar: false };
const ENABLED: InjectionTrigger = { kind: 'webhook', namespaceLabels: { 'kmtls.io/injection': 'enabled' } };

type Obj = Record<string, unknown>;

function pod(opts: { labels?: Obj; annotations?: Obj; spec?: Obj } = {}): PodTemplate {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: 'web',
      namespace: 'shop',
      ...(opts.labels ? { labels: opts.labels } : {}),
      ...(opts.annotations ? { annotations: opts.annotations } : {}),
    },
    spec: { containers: [{ name: 'web', image: 'nginx' }], ...opts.spec },
  };
}

function injected(template: PodTemplate, options: InjectOptions = OPTIONS): PodTemplate {
  const r = injectTemplate(template, 'shop', ENABLED, options, 'Pod shop/web');
  assert.equal(r.outcome, 'injected', JSON.stringify(r));
  return (r as { template: PodTemplate }).template;
}

function container(template: PodTemplate, name: string): Obj {
  const spec = template.spec as Obj;
  const all = [...((spec.initContainers as Obj[]) ?? []), ...((spec.containers as Obj[]) ?? [])];
  const c = all.find((x) => x.name === name);
  assert.ok(c, `container ${name}`);
  return c;
}

function names(list: unknown): string[] {
  return ((list as Obj[] | undefined) ?? []).map((c) => c.name as string);
}

function envValue(c: Obj, name: string): unknown {
  return (c.env as Obj[]).find((e) => e.name === name);
}

test('decision: the webhook follows the namespace and the pod, as Istio does', () => {
  const ns = (labels: Record<string, string> | undefined): InjectionTrigger => ({
    kind: 'webhook',
    namespaceLabels: labels,
  });
  const enabled = { 'kmtls.io/injection': 'enabled' };
  const cases: {
    name: string;
    template: PodTemplate;
    trigger: InjectionTrigger;
    inject: boolean;
    reason?: RegExp;
  }[] = [
    { name: 'kmtls label on the namespace', template: pod(), trigger: ns(enabled), inject: true },
    {
      name: "Istio's label on the namespace",
      template: pod(),
      trigger: ns({ 'istio-injection': 'enabled' }),
      inject: true,
    },
    {
      name: 'namespace says nothing',
      template: pod(),
      trigger: ns({}),
      inject: false,
      reason: /not labelled/,
    },
    {
      name: 'namespace unknown',
      template: pod(),
      trigger: ns(undefined),
      inject: false,
      reason: /not known/,
    },
    {
      name: 'pod opts in, namespace silent',
      template: pod({ labels: { 'sidecar.istio.io/inject': 'true' } }),
      trigger: ns({}),
      inject: true,
    },
    {
      name: 'pod opts in by annotation, namespace enabled',
      template: pod({ annotations: { 'sidecar.istio.io/inject': 'true' } }),
      trigger: ns(enabled),
      inject: true,
    },
    {
      name: 'pod opts in, namespace disabled',
      template: pod({ labels: { 'sidecar.istio.io/inject': 'true' } }),
      trigger: ns({ 'istio-injection': 'disabled' }),
      inject: false,
    },
    {
      name: 'Istio opt-out label',
      template: pod({ labels: { 'sidecar.istio.io/inject': 'false' } }),
      trigger: ns(enabled),
      inject: false,
      reason: /opts out/,
    },
    {
      name: 'Istio opt-out annotation',
      template: pod({ annotations: { 'sidecar.istio.io/inject': 'false' } }),
      trigger: ns(enabled),
      inject: false,
      reason: /opts out/,
    },
    {
      name: 'kmtls opt-out annotation',
      template: pod({ annotations: { 'kmtls.io/inject': 'false' } }),
      trigger: ns(enabled),
      inject: false,
      reason: /kmtls\.io\/inject/,
    },
    {
      name: 'kmtls opt-out label',
      template: pod({ labels: { 'kmtls.io/inject': 'false' } }),
      trigger: ns(enabled),
      inject: false,
      reason: /kmtls\.io\/inject/,
    },
    {
      name: 'hostNetwork',
      template: pod({ spec: { hostNetwork: true } }),
      trigger: ns(enabled),
      inject: false,
      reason: /hostNetwork/,
    },
    {
      name: 'hostNetwork even when the pod opts in',
      template: pod({ labels: { 'sidecar.istio.io/inject': 'true' }, spec: { hostNetwork: true } }),
      trigger: ns(enabled),
      inject: false,
    },
    {
      name: 'already has the sidecar container',
      template: pod({ spec: { containers: [{ name: 'web' }, { name: SIDECAR_CONTAINER }] } }),
      trigger: ns(enabled),
      inject: false,
      reason: /already injected/,
    },
    {
      name: 'already has a native sidecar',
      template: pod({ spec: { initContainers: [{ name: SIDECAR_CONTAINER, restartPolicy: 'Always' }] } }),
      trigger: ns(enabled),
      inject: false,
      reason: /already injected/,
    },
    {
      name: 'already has the status annotation',
      template: pod({ annotations: { [STATUS_ANNOTATION]: '{}' } }),
      trigger: ns(enabled),
      inject: false,
      reason: /already injected/,
    },
    {
      name: "has Istio's sidecar",
      template: pod({ spec: { containers: [{ name: 'web' }, { name: 'istio-proxy' }] } }),
      trigger: ns(enabled),
      inject: false,
      reason: /istio-proxy/,
    },
    {
      name: 'the tlsMode label alone asks for nothing',
      template: pod({ labels: { [TLS_MODE_LABEL]: 'istio' } }),
      trigger: ns({}),
      inject: false,
    },
    {
      name: 'manual: namespace labels do not matter',
      template: pod(),
      trigger: { kind: 'manual' },
      inject: true,
    },
    {
      name: 'manual: the pod still opts out',
      template: pod({ annotations: { 'sidecar.istio.io/inject': 'false' } }),
      trigger: { kind: 'manual' },
      inject: false,
    },
    {
      name: 'manual: hostNetwork never',
      template: pod({ spec: { hostNetwork: true } }),
      trigger: { kind: 'manual' },
      inject: false,
    },
  ];
  for (const c of cases) {
    const d = decideInjection(c.template, 'shop', c.trigger);
    assert.equal(d.inject, c.inject, `${c.name}: ${d.reason}`);
    if (c.reason) assert.match(d.reason, c.reason, c.name);
  }
});

test('injected pod: sidecar first, with the exact contract', () => {
  const original = pod({ labels: { app: 'web' } });
  const before = structuredClone(original);
  const out = injected(original);
  assert.deepEqual(original, before, 'the input is not modified');
  const spec = out.spec as Obj;
  assert.deepEqual(names(spec.containers), [SIDECAR_CONTAINER, 'web']);
  assert.deepEqual(names(spec.initContainers), [INIT_CONTAINER]);
  const meta = out.metadata as { labels: Obj; annotations: Record<string, string> };
  assert.deepEqual(meta.labels, { app: 'web', [TLS_MODE_LABEL]: 'istio' });

  const sidecar = container(out, SIDECAR_CONTAINER);
  assert.equal(sidecar.image, OPTIONS.image);
  assert.deepEqual(sidecar.args, [
    'proxy',
    '--control-plane',
    'kmtls-controlplane.kmtls-system.svc:15012',
    '--pod',
    '$(POD_NAMESPACE)/$(POD_NAME)',
    '--token-file',
    '/var/run/secrets/kmtls/tokens/token',
    '--ca-root',
    '/var/run/secrets/kmtls/root/root-cert.pem',
    '--admin',
    '127.0.0.1:15000',
    '--status',
    '0.0.0.0:15020',
    '--transparent',
  ]);
  assert.deepEqual(envValue(sidecar, 'POD_NAME'), {
    name: 'POD_NAME',
    valueFrom: { fieldRef: { fieldPath: 'metadata.name' } },
  });
  assert.deepEqual(envValue(sidecar, 'POD_NAMESPACE'), {
    name: 'POD_NAMESPACE',
    valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } },
  });
  assert.deepEqual(envValue(sidecar, 'POD_IP'), {
    name: 'POD_IP',
    valueFrom: { fieldRef: { fieldPath: 'status.podIP' } },
  });
  assert.deepEqual(envValue(sidecar, APP_PROBERS_ENV), { name: APP_PROBERS_ENV, value: '{}' });
  assert.deepEqual(sidecar.ports, [{ containerPort: 15020, name: 'http-status', protocol: 'TCP' }]);
  assert.deepEqual((sidecar.readinessProbe as Obj).httpGet, {
    path: '/healthz/ready',
    port: 15020,
    scheme: 'HTTP',
  });
  assert.deepEqual(sidecar.securityContext, {
    runAsUser: 1337,
    runAsGroup: 1337,
    runAsNonRoot: true,
    readOnlyRootFilesystem: true,
    allowPrivilegeEscalation: false,
    privileged: false,
    capabilities: { drop: ['ALL'] },
  });
  assert.deepEqual(sidecar.volumeMounts, [
    { name: 'kmtls-token', mountPath: '/var/run/secrets/kmtls/tokens', readOnly: true },
    { name: 'kmtls-root', mountPath: '/var/run/secrets/kmtls/root', readOnly: true },
  ]);
  assert.deepEqual(sidecar.lifecycle, {
    postStart: { exec: { command: ['node', '/app/bin/kmtls.js', 'proxy-wait', '--timeout', '60s'] } },
  });
  assert.equal(sidecar.restartPolicy, undefined);
  assert.equal(sidecar.startupProbe, undefined);

  const init = container(out, INIT_CONTAINER);
  assert.equal(init.image, OPTIONS.image);
  assert.deepEqual(init.args, [
    'iptables',
    'apply',
    '--proxy-uid',
    '1337',
    '--inbound-port',
    '15006',
    '--outbound-port',
    '15001',
  ]);
  const initSecurity = init.securityContext as Obj;
  assert.equal(initSecurity.runAsUser, 0);
  assert.equal(initSecurity.runAsNonRoot, false);
  assert.deepEqual(initSecurity.capabilities, { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] });

  assert.deepEqual(spec.volumes, [
    {
      name: 'kmtls-token',
      projected: {
        sources: [{ serviceAccountToken: { audience: 'kmtls', expirationSeconds: 43200, path: 'token' } }],
      },
    },
    { name: 'kmtls-root', configMap: { name: 'kmtls-ca-root-cert' } },
  ]);

  const status = JSON.parse(meta.annotations[STATUS_ANNOTATION]!) as InjectionStatus;
  assert.deepEqual(status, {
    image: OPTIONS.image,
    nativeSidecar: false,
    initContainers: [INIT_CONTAINER],
    containers: [SIDECAR_CONTAINER],
    volumes: ['kmtls-token', 'kmtls-root'],
    rewrittenProbes: [],
  });
  assert.deepEqual(JSON.parse(meta.annotations[REWRITTEN_PROBES_ANNOTATION]!), {});
});

test('native sidecar: an init container after kmtls-init, before the pod own init containers', () => {
  const out = injected(pod({ spec: { initContainers: [{ name: 'migrate', image: 'db' }] } }), {
    ...OPTIONS,
    nativeSidecar: true,
  });
  const spec = out.spec as Obj;
  assert.deepEqual(names(spec.initContainers), [INIT_CONTAINER, SIDECAR_CONTAINER, 'migrate']);
  assert.deepEqual(names(spec.containers), ['web']);
  const sidecar = container(out, SIDECAR_CONTAINER);
  assert.equal(sidecar.restartPolicy, 'Always');
  assert.deepEqual((sidecar.startupProbe as Obj).httpGet, {
    path: '/healthz/ready',
    port: 15020,
    scheme: 'HTTP',
  });
  assert.equal(sidecar.lifecycle, undefined);
  const status = JSON.parse(
    (out.metadata as { annotations: Record<string, string> }).annotations[STATUS_ANNOTATION]!,
  ) as InjectionStatus;
  assert.deepEqual(status.initContainers, [INIT_CONTAINER, SIDECAR_CONTAINER]);
  assert.deepEqual(status.containers, []);
  assert.equal(status.nativeSidecar, true);
});

test('existing volumes, init containers and annotations are kept', () => {
  const out = injected(
    pod({
      annotations: { team: 'shop' },
      spec: { volumes: [{ name: 'data', emptyDir: {} }], initContainers: [{ name: 'setup' }] },
    }),
  );
  const spec = out.spec as Obj;
  assert.deepEqual(names(spec.volumes), ['data', 'kmtls-token', 'kmtls-root']);
  assert.deepEqual(names(spec.initContainers), [INIT_CONTAINER, 'setup']);
  assert.equal((out.metadata as { annotations: Obj }).annotations.team, 'shop');
});

test('probes: httpGet, tcpSocket and grpc point at the status port; the originals go to KMTLS_APP_PROBERS', () => {
  const out = injected(
    pod({
      spec: {
        containers: [
          {
            name: 'web',
            ports: [
              { name: 'http', containerPort: 8080 },
              { name: 'admin', containerPort: 9901 },
            ],
            livenessProbe: {
              httpGet: {
                path: '/live?full=1',
                port: 'http',
                httpHeaders: [{ name: 'Host', value: 'web.local' }],
              },
              initialDelaySeconds: 3,
              periodSeconds: 7,
              timeoutSeconds: 2,
              failureThreshold: 4,
              successThreshold: 1,
              terminationGracePeriodSeconds: 10,
            },
            readinessProbe: { httpGet: { port: 'admin', scheme: 'HTTPS' } },
            startupProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
          },
          {
            name: 'rpc',
            livenessProbe: { grpc: { port: 9000, service: 'health' } },
            readinessProbe: { grpc: { port: 9000 } },
            startupProbe: { exec: { command: ['true'] } },
          },
        ],
      },
    }),
  );
  const web = container(out, 'web');
  assert.deepEqual(web.livenessProbe, {
    httpGet: { path: '/app-health/web/livez', port: 15020, scheme: 'HTTP' },
    initialDelaySeconds: 3,
    periodSeconds: 7,
    timeoutSeconds: 2,
    failureThreshold: 4,
    successThreshold: 1,
    terminationGracePeriodSeconds: 10,
  });
  assert.deepEqual(web.readinessProbe, {
    httpGet: { path: '/app-health/web/readyz', port: 15020, scheme: 'HTTP' },
  });
  assert.deepEqual(web.startupProbe, {
    httpGet: { path: '/app-health/web/startupz', port: 15020, scheme: 'HTTP' },
    periodSeconds: 1,
  });
  const rpc = container(out, 'rpc');
  assert.deepEqual((rpc.livenessProbe as Obj).httpGet, {
    path: '/app-health/rpc/livez',
    port: 15020,
    scheme: 'HTTP',
  });
  assert.deepEqual(rpc.startupProbe, { exec: { command: ['true'] } }, 'exec probes are untouched');

  const expected = {
    '/app-health/web/livez': {
      httpGet: {
        port: 8080,
        path: '/live?full=1',
        scheme: 'HTTP',
        httpHeaders: [{ name: 'Host', value: 'web.local' }],
      },
      timeoutSeconds: 2,
    },
    '/app-health/web/readyz': { httpGet: { port: 9901, path: '/', scheme: 'HTTPS' } },
    '/app-health/web/startupz': { tcpSocket: { port: 8080 } },
    '/app-health/rpc/livez': { grpc: { port: 9000, service: 'health' } },
    '/app-health/rpc/readyz': { grpc: { port: 9000 } },
  };
  const sidecar = container(out, SIDECAR_CONTAINER);
  const env = (envValue(sidecar, APP_PROBERS_ENV) as { value: string }).value;
  assert.deepEqual(JSON.parse(env), expected);
  // The sidecar reads exactly what the injector writes.
  assert.deepEqual(parseAppProbers(env), expected);
  const annotations = (out.metadata as { annotations: Record<string, string> }).annotations;
  assert.deepEqual(JSON.parse(annotations[REWRITTEN_PROBES_ANNOTATION]!), expected);
  assert.deepEqual(
    (JSON.parse(annotations[STATUS_ANNOTATION]!) as InjectionStatus).rewrittenProbes,
    Object.keys(expected),
  );
});

test('probes: not rewritten when the pod turns rewriting off, or a named port does not resolve', () => {
  const probe = { httpGet: { path: '/live', port: 8080 } };
  const off = injected(
    pod({
      annotations: { 'sidecar.istio.io/rewriteAppHTTPProbers': 'false' },
      spec: { containers: [{ name: 'web', livenessProbe: probe }] },
    }),
  );
  assert.deepEqual(container(off, 'web').livenessProbe, probe);
  assert.deepEqual(envValue(container(off, SIDECAR_CONTAINER), APP_PROBERS_ENV), {
    name: APP_PROBERS_ENV,
    value: '{}',
  });

  const unnamed = { tcpSocket: { port: 'missing' } };
  const out = injected(pod({ spec: { containers: [{ name: 'web', readinessProbe: unnamed }] } }));
  assert.deepEqual(container(out, 'web').readinessProbe, unnamed);
});

test('traffic annotations become kmtls iptables apply flags', () => {
  const out = injected(
    pod({
      annotations: {
        'traffic.sidecar.istio.io/includeInboundPorts': '*',
        'traffic.sidecar.istio.io/excludeInboundPorts': '9090, 9091',
        'traffic.sidecar.istio.io/excludeOutboundPorts': '5432',
        'traffic.sidecar.istio.io/excludeOutboundIPRanges': '169.254.169.254/32,10.0.0.0/8',
        'traffic.sidecar.istio.io/includeOutboundIPRanges': '10.96.0.0/12',
      },
    }),
  );
  assert.deepEqual((container(out, INIT_CONTAINER).args as string[]).slice(8), [
    '--include-inbound-ports',
    '*',
    '--exclude-inbound-ports',
    '9090,9091',
    '--exclude-outbound-ports',
    '5432',
    '--exclude-outbound-cidrs',
    '169.254.169.254/32,10.0.0.0/8',
    '--include-outbound-cidrs',
    '10.96.0.0/12',
  ]);
  const none = injected(pod({ annotations: { 'traffic.sidecar.istio.io/includeInboundPorts': '' } }));
  assert.deepEqual((container(none, INIT_CONTAINER).args as string[]).slice(8), [
    '--include-inbound-ports',
    '',
  ]);
});

test('a bad traffic annotation refuses the injection with KMTLS_INJECT_BAD_ANNOTATION', () => {
  const bad: [string, string, RegExp][] = [
    ['traffic.sidecar.istio.io/includeInboundPorts', '80,http', /"http"/],
    ['traffic.sidecar.istio.io/excludeInboundPorts', '0', /"0"/],
    ['traffic.sidecar.istio.io/excludeInboundPorts', '*', /\*/],
    ['traffic.sidecar.istio.io/excludeOutboundPorts', '65536', /"65536"/],
    ['traffic.sidecar.istio.io/excludeOutboundIPRanges', '10.0.0.0', /"10\.0\.0\.0"/],
    ['traffic.sidecar.istio.io/excludeOutboundIPRanges', '10.0.0.0/33', /"10\.0\.0\.0\/33"/],
    ['traffic.sidecar.istio.io/includeOutboundIPRanges', 'example.com/8', /example\.com/],
  ];
  for (const [annotation, value, item] of bad) {
    const r = injectTemplate(
      pod({ annotations: { [annotation]: value } }),
      'shop',
      ENABLED,
      OPTIONS,
      'Pod shop/web',
    );
    assert.equal(r.outcome, 'refused', `${annotation}=${value}`);
    const error = (r as { error: KmtlsError }).error;
    assert.ok(error instanceof KmtlsError);
    assert.equal(error.code, 'KMTLS_INJECT_BAD_ANNOTATION');
    assert.match(error.message, new RegExp(annotation.replace(/[./]/g, '\\$&')));
    assert.match(error.message, item);
    assert.match(error.message, /Pod shop\/web/);
  }
  // A skipped pod is not judged by annotations it does not use.
  const skipped = injectTemplate(
    pod({
      annotations: {
        'sidecar.istio.io/inject': 'false',
        'traffic.sidecar.istio.io/excludeOutboundPorts': 'x',
      },
    }),
    'shop',
    ENABLED,
    OPTIONS,
    'Pod shop/web',
  );
  assert.equal(skipped.outcome, 'skipped');
});

test('injectObject: the pod template of every workload kind; other kinds unchanged; idempotent', () => {
  const template = { metadata: { labels: { app: 'x' } }, spec: { containers: [{ name: 'app' }] } };
  const objects: Record<(typeof INJECTABLE_KINDS)[number], Obj> = {
    Pod: { kind: 'Pod', metadata: { name: 'p', namespace: 'a' }, spec: { containers: [{ name: 'app' }] } },
    Deployment: { kind: 'Deployment', metadata: { name: 'd' }, spec: { template } },
    StatefulSet: { kind: 'StatefulSet', metadata: { name: 's' }, spec: { template } },
    DaemonSet: { kind: 'DaemonSet', metadata: { name: 'ds' }, spec: { template } },
    ReplicaSet: { kind: 'ReplicaSet', metadata: { name: 'rs' }, spec: { template } },
    ReplicationController: { kind: 'ReplicationController', metadata: { name: 'rc' }, spec: { template } },
    Job: { kind: 'Job', metadata: { name: 'j' }, spec: { template } },
    CronJob: { kind: 'CronJob', metadata: { name: 'c' }, spec: { jobTemplate: { spec: { template } } } },
  };
  for (const [kind, object] of Object.entries(objects)) {
    const before = structuredClone(object);
    const r = injectObject(object, OPTIONS);
    assert.equal(r.outcome, 'injected', kind);
    assert.deepEqual(object, before, `${kind}: input not modified`);
    const path =
      kind === 'Pod'
        ? []
        : kind === 'CronJob'
          ? ['spec', 'jobTemplate', 'spec', 'template']
          : ['spec', 'template'];
    let t: unknown = r.object;
    for (const key of path) t = (t as Obj)[key];
    assert.deepEqual(names((t as { spec: Obj }).spec.containers), [SIDECAR_CONTAINER, 'app'], kind);
    assert.equal(
      ((t as { metadata: { labels: Obj } }).metadata.labels as Obj)[TLS_MODE_LABEL],
      'istio',
      kind,
    );
    assert.equal(
      injectObject(r.object, OPTIONS).outcome,
      'skipped',
      `${kind}: injecting twice changes nothing`,
    );
  }
  const cm = { kind: 'ConfigMap', metadata: { name: 'x' }, data: { a: 'b' } };
  assert.deepEqual(injectObject(cm, OPTIONS), { outcome: 'not-a-workload', object: cm });
  assert.equal(
    injectObject({ kind: 'Deployment', metadata: { name: 'd' }, spec: {} }, OPTIONS).outcome,
    'skipped',
  );
});

test('native sidecars from the API server version', () => {
  const cases: [string, string, boolean][] = [
    ['1', '27', false],
    ['1', '28', false],
    ['1', '29+', true],
    ['1', '30', true],
    ['2', '0', true],
    ['1', '', false],
  ];
  for (const [major, minor, expected] of cases) {
    assert.equal(supportsNativeSidecar({ major, minor }), expected, `${major}.${minor}`);
  }
});
