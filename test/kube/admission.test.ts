import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import type { AdmissionContext, AdmissionReviewResponse } from '../../src/kube/admission.js';
import { createJsonPatch, escapePointerSegment, handleAdmissionReview } from '../../src/kube/admission.js';
import { injectTemplate, SIDECAR_CONTAINER, TLS_MODE_LABEL } from '../../src/kube/inject.js';
import type { PatchOperation } from '../helpers/json-patch.js';
import { applyJsonPatch } from '../helpers/json-patch.js';

type Obj = Record<string, unknown>;

const NAMESPACES: Record<string, Record<string, string>> = {
  shop: { 'kmtls.io/injection': 'enabled' },
  legacy: {},
  istio: { 'istio-injection': 'enabled' },
};

const CTX: AdmissionContext = {
  namespaceLabels: (ns) => NAMESPACES[ns],
  nativeSidecar: false,
  image: 'example/kmtls:test',
};

function review(
  object: unknown,
  opts: { apiVersion?: string; namespace?: string; operation?: string; kind?: Obj } = {},
) {
  return {
    apiVersion: opts.apiVersion ?? 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
      kind: opts.kind ?? { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      namespace: opts.namespace ?? 'shop',
      operation: opts.operation ?? 'CREATE',
      object,
    },
  };
}

function pod(metadata: Obj = {}, spec: Obj = {}): Obj {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { generateName: 'web-7d9f-', ...metadata },
    spec: { containers: [{ name: 'web', image: 'nginx', ports: [{ containerPort: 8080 }] }], ...spec },
  };
}

function decodePatch(res: AdmissionReviewResponse): PatchOperation[] {
  assert.equal(res.response.patchType, 'JSONPatch');
  assert.ok(res.response.patch);
  return JSON.parse(Buffer.from(res.response.patch, 'base64').toString('utf8')) as PatchOperation[];
}

test('a pod in an enabled namespace: allowed with a JSONPatch that applies cleanly', () => {
  const cases: { name: string; object: Obj; namespace: string }[] = [
    { name: 'bare pod: every parent path is created', object: pod(), namespace: 'shop' },
    {
      name: 'labels and annotations exist',
      object: pod(
        { labels: { app: 'web', 'app.kubernetes.io/name': 'web' }, annotations: { 'a/b~c': 'x' } },
        { initContainers: [{ name: 'setup' }], volumes: [{ name: 'data', emptyDir: {} }] },
      ),
      namespace: 'istio',
    },
    {
      name: 'probes rewritten',
      object: pod(
        {},
        {
          containers: [
            {
              name: 'web',
              ports: [{ name: 'http', containerPort: 8080 }],
              readinessProbe: { httpGet: { port: 'http', path: '/ready' }, periodSeconds: 3 },
            },
          ],
        },
      ),
      namespace: 'shop',
    },
  ];
  for (const c of cases) {
    const res = handleAdmissionReview(review(c.object, { namespace: c.namespace }), CTX);
    assert.equal(res.apiVersion, 'admission.k8s.io/v1', c.name);
    assert.equal(res.kind, 'AdmissionReview');
    assert.equal(res.response.uid, '705ab4f5-6393-11e8-b7cc-42010a800002');
    assert.equal(res.response.allowed, true);
    const patched = applyJsonPatch(c.object, decodePatch(res));
    const expected = injectTemplate(c.object, c.namespace, { kind: 'manual' }, CTX, 'x');
    assert.equal(expected.outcome, 'injected');
    assert.deepEqual(patched, (expected as { template: Obj }).template, c.name);
  }
});

test('the patch escapes label keys with / as ~1', () => {
  const res = handleAdmissionReview(review(pod({ labels: { app: 'web' } })), CTX);
  const ops = decodePatch(res);
  const label = ops.find((o) => o.path === '/metadata/labels/security.istio.io~1tlsMode');
  assert.deepEqual(label, { op: 'add', path: '/metadata/labels/security.istio.io~1tlsMode', value: 'istio' });
  const patched = applyJsonPatch(pod({ labels: { app: 'web' } }), ops) as { metadata: { labels: Obj } };
  assert.deepEqual(patched.metadata.labels, { app: 'web', [TLS_MODE_LABEL]: 'istio' });
});

test('native sidecar from the context', () => {
  const res = handleAdmissionReview(review(pod()), { ...CTX, nativeSidecar: true });
  const patched = applyJsonPatch(pod(), decodePatch(res)) as {
    spec: { initContainers: Obj[]; containers: Obj[] };
  };
  assert.deepEqual(
    patched.spec.initContainers.map((c) => [c.name, c.restartPolicy]),
    [
      ['kmtls-init', undefined],
      [SIDECAR_CONTAINER, 'Always'],
    ],
  );
  assert.deepEqual(
    patched.spec.containers.map((c) => c.name),
    ['web'],
  );
});

test('v1beta1 is answered in v1beta1', () => {
  const res = handleAdmissionReview(review(pod(), { apiVersion: 'admission.k8s.io/v1beta1' }), CTX);
  assert.equal(res.apiVersion, 'admission.k8s.io/v1beta1');
  assert.equal(res.response.allowed, true);
  assert.ok(res.response.patch);
});

test('allowed without a patch when nothing is injected', () => {
  const cases: { name: string; body: unknown }[] = [
    { name: 'namespace not enabled', body: review(pod(), { namespace: 'legacy' }) },
    { name: 'namespace unknown', body: review(pod(), { namespace: 'nowhere' }) },
    { name: 'pod opts out', body: review(pod({ annotations: { 'sidecar.istio.io/inject': 'false' } })) },
    { name: 'hostNetwork', body: review(pod({}, { hostNetwork: true })) },
    {
      name: 'already injected',
      body: review(pod({}, { containers: [{ name: 'web' }, { name: SIDECAR_CONTAINER }] })),
    },
    { name: 'an update', body: review(pod(), { operation: 'UPDATE' }) },
    {
      name: 'not a pod',
      body: review({ kind: 'Deployment' }, { kind: { group: 'apps', version: 'v1', kind: 'Deployment' } }),
    },
  ];
  for (const c of cases) {
    const res = handleAdmissionReview(c.body, CTX);
    assert.deepEqual(res.response, { uid: '705ab4f5-6393-11e8-b7cc-42010a800002', allowed: true }, c.name);
  }
});

test('the pod opts in inside a silent namespace: injected', () => {
  const res = handleAdmissionReview(
    review(pod({ labels: { 'sidecar.istio.io/inject': 'true' } }), { namespace: 'legacy' }),
    CTX,
  );
  assert.ok(res.response.patch);
});

test('a bad traffic annotation denies the pod with the coded reason', () => {
  const res = handleAdmissionReview(
    review(pod({ annotations: { 'traffic.sidecar.istio.io/excludeOutboundPorts': '80,eighty' } })),
    CTX,
  );
  assert.equal(res.response.allowed, false);
  assert.equal(res.response.patch, undefined);
  assert.equal(res.response.status?.code, 400);
  assert.match(
    res.response.status?.message ?? '',
    /^KMTLS_INJECT_BAD_ANNOTATION: .*excludeOutboundPorts.*"eighty"/,
  );
  assert.match(res.response.status?.message ?? '', /Pod shop\/web-7d9f-<generated>/);
});

test('a body that is not an AdmissionReview request throws KMTLS_INJECT_BAD_REVIEW', () => {
  const good = review(pod());
  const bodies: [string, unknown][] = [
    ['null', null],
    ['array', []],
    ['wrong kind', { ...good, kind: 'Pod' }],
    ['unknown version', { ...good, apiVersion: 'admission.k8s.io/v2' }],
    ['no request', { apiVersion: good.apiVersion, kind: good.kind }],
    ['no uid', { ...good, request: { ...good.request, uid: undefined } }],
  ];
  for (const [name, body] of bodies) {
    assert.throws(
      () => handleAdmissionReview(body, CTX),
      (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_INJECT_BAD_REVIEW',
      name,
    );
  }
});

test('createJsonPatch and pointer escaping', () => {
  assert.equal(escapePointerSegment('a/b~c'), 'a~1b~0c');
  const cases: [unknown, unknown][] = [
    [{ a: 1 }, { a: 1 }],
    [{ a: 1, b: 2 }, { a: 2 }],
    [{ a: [1, 2] }, { a: [1, 2, 3] }],
    [{ a: [{ x: 1 }, { y: 2 }] }, { a: [{ x: 1, z: 3 }, { y: 2 }] }],
    [{ 'k/~': { n: null } }, { 'k/~': { n: 'v' }, new: { deep: [1] } }],
  ];
  for (const [before, after] of cases) {
    assert.deepEqual(
      applyJsonPatch(before, createJsonPatch(before, after)),
      after,
      JSON.stringify([before, after]),
    );
  }
  assert.deepEqual(createJsonPatch({ a: 1 }, { a: 1 }), []);
});
