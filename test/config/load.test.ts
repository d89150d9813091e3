import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { loadManifests, parseManifestText } from '../../src/config/index.js';

const FIXTURES = 'test/fixtures/loader';

function codes(list: readonly { code: string }[]): string[] {
  return list.map((d) => d.code);
}

test('a directory is read recursively, in name order, only .yaml/.yml/.json files', async () => {
  const r = await loadManifests([FIXTURES]);
  assert.deepEqual(r.files, [
    path.join(FIXTURES, 'a.yaml'),
    path.join(FIXTURES, 'nested/deeper/pod.json'),
    path.join(FIXTURES, 'nested/list.yml'),
  ]);
  assert.equal(r.resources.namespaces.length, 1);
  assert.equal(r.resources.peerAuthentications.length, 1);
  assert.equal(r.resources.services.length, 1);
  assert.equal(r.resources.podSources.length, 1);
});

test('multi-document files skip empty documents and keep each object located at its own line', async () => {
  const r = await loadManifests([path.join(FIXTURES, 'a.yaml')]);
  const policy = r.resources.peerAuthentications[0];
  assert.ok(policy);
  assert.deepEqual(policy.meta.location, { file: path.join(FIXTURES, 'a.yaml'), line: 8, column: 1 });
  assert.equal(policy.mode, 'STRICT');
  assert.equal(policy.meta.createdAtMs, Date.parse('2024-03-01T10:00:00Z'));
  assert.equal(policy.apiVersion, 'security.istio.io/v1beta1');
});

test('List items become objects located at the item, and unknown kinds are skipped with a note', async () => {
  const r = await loadManifests([path.join(FIXTURES, 'nested/list.yml')]);
  const svc = r.resources.services[0];
  assert.ok(svc);
  assert.equal(svc.meta.location?.line, 4);
  assert.equal(svc.ports[0]?.targetPort, 'http');
  const skipped = r.diagnostics.find((d) => d.code === 'KMTLS_MANIFEST_SKIPPED_KIND');
  assert.ok(skipped);
  assert.equal(skipped.severity, 'info');
  assert.match(skipped.message, /ConfigMap/);
  assert.deepEqual(
    r.diagnostics.filter((d) => d.severity !== 'info'),
    [],
  );
});

test('stdin is read for the path "-"', async () => {
  const r = await loadManifests(['-'], {
    readStdin: async () => 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: from-stdin\n',
  });
  assert.deepEqual(r.files, ['<stdin>']);
  assert.equal(r.resources.namespaces[0]?.meta.name, 'from-stdin');
  assert.equal(r.resources.namespaces[0]?.meta.location?.file, '<stdin>');
});

test('a missing path is a located error and the other paths still load', async () => {
  const r = await loadManifests(['does/not/exist.yaml', path.join(FIXTURES, 'a.yaml')]);
  assert.deepEqual(codes(r.diagnostics), ['KMTLS_MANIFEST_UNREADABLE']);
  assert.match(r.diagnostics[0]?.message ?? '', /does\/not\/exist\.yaml \(no such file or directory\)/);
  assert.equal(r.resources.namespaces.length, 1);
});

test('an empty directory is an error saying what was looked for', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-load-'));
  try {
    const r = await loadManifests([dir]);
    assert.deepEqual(codes(r.diagnostics), ['KMTLS_MANIFEST_NO_FILES']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('broken YAML is reported with file and line, and the valid documents of the file still load', () => {
  const text = [
    'apiVersion: v1',
    'kind: Namespace',
    'metadata:',
    '  name: ok',
    '---',
    'apiVersion: v1',
    'kind: Namespace',
    'metadata:',
    '  name: [unclosed',
    '',
  ].join('\n');
  const r = parseManifestText(text, 'broken.yaml');
  assert.equal(r.objects.length, 1);
  assert.equal(r.diagnostics.length >= 1, true);
  const d = r.diagnostics[0];
  assert.equal(d?.code, 'KMTLS_MANIFEST_YAML');
  assert.equal(d?.location?.file, 'broken.yaml');
  assert.ok((d?.location?.line ?? 0) >= 9, `line ${d?.location?.line}`);
});

test('duplicate keys are a YAML error, as kubectl reports them', () => {
  const r = parseManifestText('kind: Namespace\nkind: Pod\n', 'dup.yaml');
  assert.equal(r.diagnostics[0]?.code, 'KMTLS_MANIFEST_YAML');
  assert.equal(r.diagnostics[0]?.location?.line, 2);
});

test('a document that is not a mapping is reported', () => {
  const r = parseManifestText('- a\n- b\n', 'seq.yaml');
  assert.deepEqual(codes(r.diagnostics), ['KMTLS_MANIFEST_NOT_OBJECT']);
});

test('the locator finds nested fields, integer map keys included', () => {
  const text = [
    'apiVersion: security.istio.io/v1',
    'kind: PeerAuthentication',
    'metadata:',
    '  name: p',
    'spec:',
    '  selector:',
    '    matchLabels:',
    '      app: x',
    '  portLevelMtls:',
    '    8080:',
    '      mode: ENFORCED',
  ].join('\n');
  const [obj] = parseManifestText(text, 'p.yaml').objects;
  assert.ok(obj);
  assert.equal(obj.locate(['spec', 'portLevelMtls', '8080', 'mode'])?.line, 11);
  assert.equal(obj.locate(['spec', 'selector', 'matchLabels', 'app'])?.line, 8);
  // A path past what exists stops at the deepest existing node.
  assert.equal(obj.locate(['spec', 'mtls', 'mode'])?.line, 5);
});

async function loadText(text: string) {
  return loadManifests(['-'], { readStdin: async () => text });
}

test('an object without kind, apiVersion or name is reported and left out', async () => {
  const r = await loadText(
    [
      'apiVersion: v1',
      'metadata: {name: a}',
      '---',
      'kind: Namespace',
      'metadata: {name: b}',
      '---',
      'apiVersion: v1',
      'kind: Namespace',
    ].join('\n'),
  );
  assert.deepEqual(codes(r.diagnostics).sort(), [
    'KMTLS_MANIFEST_MISSING_KIND',
    'KMTLS_MANIFEST_MISSING_KIND',
    'KMTLS_MANIFEST_MISSING_NAME',
  ]);
  assert.equal(r.resources.namespaces.length, 0);
});

test('a label value that is not a string is a schema error at its line', async () => {
  const r = await loadText(
    [
      'apiVersion: v1',
      'kind: Pod',
      'metadata:',
      '  name: p',
      '  labels:',
      '    version: 2',
      'spec:',
      '  containers: [{name: c}]',
    ].join('\n'),
  );
  const d = r.diagnostics.find((x) => x.code === 'KMTLS_SCHEMA_TYPE');
  assert.ok(d);
  assert.equal(d.location?.line, 6);
  assert.equal(d.hint, 'quote it: "2"');
});

test('a wrong type in a workload is a located schema error and the object is left out', async () => {
  const r = await loadText(
    [
      'apiVersion: apps/v1',
      'kind: Deployment',
      'metadata: {name: d, namespace: n}',
      'spec:',
      '  template:',
      '    spec:',
      '      containers:',
      '        - name: c',
      '          ports:',
      '            - containerPort: "http"',
    ].join('\n'),
  );
  const d = r.diagnostics.find((x) => x.code === 'KMTLS_SCHEMA_TYPE');
  assert.ok(d, JSON.stringify(r.diagnostics));
  assert.equal(d.location?.line, 10);
  assert.equal(r.resources.podSources.length, 0);
});

test('an invalid creationTimestamp is an error naming the expected format', async () => {
  const r = await loadText(
    ['apiVersion: v1', 'kind: Namespace', 'metadata:', '  name: n', '  creationTimestamp: yesterday'].join(
      '\n',
    ),
  );
  assert.deepEqual(codes(r.diagnostics), ['KMTLS_SCHEMA_BAD_TIMESTAMP']);
  assert.equal(r.diagnostics[0]?.location?.line, 5);
});

test('creationTimestamp: null, as kubectl prints it, means no timestamp', async () => {
  const r = await loadText(
    ['apiVersion: v1', 'kind: Namespace', 'metadata:', '  name: n', '  creationTimestamp: null'].join('\n'),
  );
  assert.deepEqual(r.diagnostics, []);
  assert.equal(r.resources.namespaces[0]?.meta.createdAtMs, undefined);
});

test('a duplicate object is a warning and the later one is used', async () => {
  const r = await loadText(
    [
      'apiVersion: security.istio.io/v1',
      'kind: PeerAuthentication',
      'metadata: {name: p, namespace: n}',
      'spec: {mtls: {mode: STRICT}}',
      '---',
      'apiVersion: security.istio.io/v1',
      'kind: PeerAuthentication',
      'metadata: {name: p, namespace: n}',
      'spec: {mtls: {mode: DISABLE}}',
    ].join('\n'),
  );
  assert.deepEqual(codes(r.diagnostics), ['KMTLS_MANIFEST_DUPLICATE']);
  assert.equal(r.resources.peerAuthentications.length, 1);
  assert.equal(r.resources.peerAuthentications[0]?.mode, 'DISABLE');
});

test('an object without namespace lands in "default", as kubectl apply puts it', async () => {
  const r = await loadText(['apiVersion: v1', 'kind: Service', 'metadata: {name: s}'].join('\n'));
  assert.equal(r.resources.services[0]?.meta.namespace, 'default');
});

test('an Istio kind at an unknown version is skipped with a warning', async () => {
  const r = await loadText(
    ['apiVersion: security.istio.io/v2', 'kind: PeerAuthentication', 'metadata: {name: p}'].join('\n'),
  );
  assert.deepEqual(codes(r.diagnostics), ['KMTLS_SCHEMA_UNSUPPORTED_VERSION']);
  assert.equal(r.resources.peerAuthentications.length, 0);
});

test('an invalid PeerAuthentication is kept aside as rejected, with its errors', async () => {
  const r = await loadText(
    [
      'apiVersion: security.istio.io/v1',
      'kind: PeerAuthentication',
      'metadata: {name: p, namespace: n}',
      'spec: {mtls: {mode: ENFORCED}}',
    ].join('\n'),
  );
  assert.equal(r.resources.peerAuthentications.length, 0);
  assert.equal(r.resources.rejectedPeerAuthentications.length, 1);
  assert.match(r.resources.rejectedPeerAuthentications[0]?.errors[0] ?? '', /ENFORCED/);
});

test('every workload controller yields its pod template', async () => {
  const template = (indent: string) =>
    [
      `${indent}template:`,
      `${indent}  metadata: {labels: {app: x}, annotations: {a: b}}`,
      `${indent}  spec: {serviceAccountName: sa, containers: [{name: c, ports: [{containerPort: 1234}]}]}`,
    ].join('\n');
  const docs = [
    ['apps/v1', 'Deployment', `spec:\n  replicas: 3\n${template('  ')}`],
    ['apps/v1', 'StatefulSet', `spec:\n  serviceName: x\n${template('  ')}`],
    ['apps/v1', 'DaemonSet', `spec:\n${template('  ')}`],
    ['apps/v1', 'ReplicaSet', `spec:\n${template('  ')}`],
    ['v1', 'ReplicationController', `spec:\n${template('  ')}`],
    ['batch/v1', 'Job', `spec:\n${template('  ')}`],
    ['batch/v1', 'CronJob', `spec:\n  jobTemplate:\n    spec:\n${template('      ')}`],
  ].map(
    ([api, kind, spec]) =>
      `apiVersion: ${api}\nkind: ${kind}\nmetadata: {name: w-${kind?.toLowerCase()}, namespace: n}\n${spec}`,
  );
  const r = await loadText(docs.join('\n---\n'));
  assert.deepEqual(r.diagnostics, []);
  assert.equal(r.resources.podSources.length, 7);
  for (const s of r.resources.podSources) {
    assert.deepEqual(s.podLabels, { app: 'x' }, s.kind);
    assert.equal(s.serviceAccount, 'sa', s.kind);
    assert.equal(s.containers[0]?.ports[0]?.containerPort, 1234, s.kind);
  }
  assert.equal(r.resources.podSources.find((s) => s.kind === 'Deployment')?.replicas, 3);
});
