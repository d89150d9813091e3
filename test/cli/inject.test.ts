import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { runInject } from '../../src/cli/inject.js';
import type { CommandIo } from '../../src/cli/io.js';
import { KmtlsError } from '../../src/errors.js';

type Obj = Record<string, unknown>;

const MANIFEST = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /ready, port: http}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: batch/v1
    kind: Job
    metadata: {name: migrate, namespace: shop}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: migrate, image: db}]
  - apiVersion: v1
    kind: Pod
    metadata:
      name: legacy
      namespace: shop
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      containers: [{name: legacy, image: legacy}]
`;

async function run(argv: string[], stdin = '') {
  let stdout = '';
  let stderr = '';
  const io: CommandIo = {
    stdout: (s) => {
      stdout += s;
    },
    stderr: (s) => {
      stderr += s;
    },
    readStdin: async () => stdin,
    isTty: false,
  };
  const code = await runInject(argv, io);
  return { code, stdout, stderr };
}

function docs(text: string): Obj[] {
  return parseAllDocuments(text).map((d) => {
    assert.equal(d.errors.length, 0);
    return d.toJS() as Obj;
  });
}

function templateOf(o: Obj): {
  metadata: { labels: Obj; annotations: Obj };
  spec: { containers: Obj[]; initContainers?: Obj[] };
} {
  const spec = o.spec as Obj;
  return (o.kind === 'Pod' ? o : spec.template) as ReturnType<typeof templateOf>;
}

test('kmtls inject -f -: workloads injected, Lists flattened, other objects unchanged, opt-outs noted', async () => {
  const r = await run(['-f', '-'], MANIFEST);
  assert.equal(r.code, 0, r.stderr);
  const out = docs(r.stdout);
  assert.deepEqual(
    out.map((o) => o.kind),
    ['Namespace', 'Deployment', 'Job', 'Pod'],
  );
  assert.deepEqual(out[0], { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
  const web = templateOf(out[1]!);
  assert.deepEqual(
    web.spec.containers.map((c) => c.name),
    ['kmtls-proxy', 'web'],
  );
  assert.equal(web.metadata.labels['security.istio.io/tlsMode'], 'istio');
  assert.deepEqual(web.spec.containers[1]?.readinessProbe, {
    httpGet: { path: '/app-health/web/readyz', port: 15020, scheme: 'HTTP' },
  });
  assert.deepEqual(
    templateOf(out[2]!).spec.containers.map((c) => c.name),
    ['kmtls-proxy', 'migrate'],
  );
  assert.deepEqual(
    templateOf(out[3]!).spec.containers.map((c) => c.name),
    ['legacy'],
  );
  assert.match(
    r.stderr,
    /left unchanged: Pod shop\/legacy \(opts out with sidecar\.istio\.io\/inject: "false"\)/,
  );
  assert.match(r.stderr, /Job shop\/migrate: without --native-sidecar .* does not complete/);

  // Injecting the output again changes nothing.
  const again = await run(['-f', '-'], r.stdout);
  assert.equal(again.code, 0);
  assert.deepEqual(docs(again.stdout), out);
});

test('kmtls inject -o json --native-sidecar --image --control-plane-address', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kmtls-inject-'));
  try {
    const file = path.join(dir, 'job.yaml');
    writeFileSync(file, MANIFEST.split('---\n')[2]!);
    const r = await run([
      '-f',
      file,
      '-o',
      'json',
      '--native-sidecar',
      '--image',
      'registry.local/kmtls:dev',
      '--control-plane-address',
      'cp.example:15012',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout) as { kind: string; items: Obj[] };
    assert.equal(list.kind, 'List');
    const job = templateOf(list.items[0]!);
    assert.deepEqual(
      job.spec.initContainers?.map((c) => [c.name, c.image, c.restartPolicy]),
      [
        ['kmtls-init', 'registry.local/kmtls:dev', undefined],
        ['kmtls-proxy', 'registry.local/kmtls:dev', 'Always'],
      ],
    );
    assert.ok((job.spec.initContainers?.[1]?.args as string[] | undefined)?.includes('cp.example:15012'));
    assert.doesNotMatch(r.stderr, /does not complete/);

    const single = await run(
      ['-f', '-', '-o', 'json'],
      'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n',
    );
    assert.deepEqual(JSON.parse(single.stdout), {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'x' },
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kmtls inject: bad input prints nothing on stdout', async () => {
  const broken = await run(['-f', '-'], 'kind: Pod\nmetadata: {name: [\n');
  assert.equal(broken.code, 1);
  assert.equal(broken.stdout, '');
  assert.match(broken.stderr, /KMTLS_MANIFEST_YAML/);

  const missing = await run(['-f', '/nonexistent/pod.yaml']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /KMTLS_MANIFEST_UNREADABLE/);

  const badAnnotation = `apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations: {traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/40"}
spec:
  containers: [{name: app}]
`;
  await assert.rejects(
    run(['-f', '-'], badAnnotation),
    (err: unknown) =>
      err instanceof KmtlsError &&
      err.code === 'KMTLS_INJECT_BAD_ANNOTATION' &&
      /excludeOutboundIPRanges.*10\.0\.0\.0\/40.*Pod default\/p/.test(err.message),
  );

  for (const argv of [
    [],
    ['-f', '-', '-o', 'text'],
    ['-f', '-', '--image', ''],
    ['-f', '-', '--control-plane-address', 'nope'],
  ]) {
    await assert.rejects(
      run(argv),
      (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_CLI_USAGE',
      JSON.stringify(argv),
    );
  }
});
