/**
 * kmtls in a cluster, end to end, as a user installs it — with the test playing the kubelet:
 *
 * - a "node" network namespace holds etcd, the real kube-apiserver, the control plane process and a
 *   bridge (10.251.0.1/16); each pod gets a network namespace of its own on that bridge;
 * - `kmtls install | kubectl apply -f -`, then the webhook's URL is pointed at the control plane
 *   (no Service routing without kube-proxy); the controller fills its caBundle;
 * - pods are created with kubectl in a namespace labelled for injection; the webhook injects them;
 * - for each pod the test does what the kubelet would: gives it an IP (status patch), runs the
 *   injected init step (`kmtls iptables apply`, for real, in the pod's namespace), writes the
 *   projected token and the root ConfigMap where the sidecar reads them, and runs the injected
 *   sidecar (as uid 1337, with the injected args and env) and the application;
 * - then, over real sockets: mTLS between injected pods through a Service's ClusterIP with the
 *   right identities, plaintext from an uninjected pod accepted under PERMISSIVE and refused once a
 *   STRICT PeerAuthentication is applied with kubectl, the kubelet's rewritten probe answered under
 *   STRICT, and the mesh surviving a restart of the control plane with the same CA.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { TestCluster } from '../helpers/kube.js';
import { kubeUnavailable, required, startCluster } from '../helpers/kube.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const BIN = path.join(REPO, 'bin', 'kmtls.js');
const AGENT = path.join(REPO, 'test', 'kube', 'netns-agent.mjs');
const ADDON = path.join(REPO, 'native', 'original-dst', 'build', 'Release', 'original_dst.node');
const BRIDGE_IP = '10.251.0.1';
const CP_API = `${BRIDGE_IP}:15012`;

function unavailable(): string | undefined {
  const k = kubeUnavailable();
  if (k) return k;
  let why: string | undefined;
  if (process.getuid?.() !== 0) why = 'needs root (network namespaces, iptables)';
  else if (spawnSync('ip', ['netns', 'list']).status !== 0) why = 'ip netns is unavailable';
  else if (spawnSync('iptables', ['--version']).status !== 0) why = 'iptables is unavailable';
  else if (spawnSync('setpriv', ['--version']).status !== 0) why = 'setpriv is unavailable (util-linux)';
  else if (!existsSync(ADDON)) why = `the original-dst addon is not built (${ADDON})`;
  return required(why);
}

function sh(
  cmd: string,
  args: string[],
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    child.on('error', (err) => resolve({ code: 127, stdout, stderr: `${stderr}${err.message}` }));
    // A command that exits before reading its input must not fail the test with EPIPE.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

async function must(cmd: string, args: string[], input?: string): Promise<string> {
  const r = await sh(cmd, args, input);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function eventually<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

/** A process that lives until the test ends; its output is kept for failure messages. */
function daemon(t: TestContext, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  const child: ChildProcess = spawn(cmd, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t2 = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(t2);
    }
  };
  t.after(stop);
  return { child, output: () => out, stop, exited };
}

/** One request from inside a namespace (netns-agent.mjs); its JSON answer. */
async function agent(ns: string, cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await sh('ip', ['netns', 'exec', ns, process.execPath, AGENT, JSON.stringify(cmd)]);
  return JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as Record<string, unknown>;
}

interface PodSpec {
  metadata: { name: string; namespace: string; labels?: Record<string, string> };
  spec: {
    serviceAccountName?: string;
    initContainers?: Container[];
    containers: Container[];
  };
}
interface Container {
  name: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  ports?: { containerPort: number }[];
  restartPolicy?: string;
  readinessProbe?: { httpGet?: { path: string; port: number | string } };
}

test('in a cluster: install, inject, intercept with iptables, mTLS between pods, STRICT by kubectl, probes, control-plane restart', {
  skip: unavailable(),
  timeout: 420_000,
}, async (t) => {
  const tag = randomBytes(3).toString('hex');
  const node = `kmtls-e2e-${tag}-node`;
  const work = await mkdtemp(path.join(os.tmpdir(), 'kmtls-e2e-'));
  await chmod(work, 0o755);
  const namespaces: string[] = [node];
  t.after(async () => {
    for (const ns of namespaces.reverse()) await sh('ip', ['netns', 'del', ns]);
    await rm(work, { recursive: true, force: true });
  });
  // The node: loopback for the API server and etcd, a bridge for the pods.
  await must('ip', ['netns', 'add', node]);
  await must('ip', ['-n', node, 'link', 'set', 'lo', 'up']);
  await must('ip', ['-n', node, 'link', 'add', 'br0', 'type', 'bridge']);
  await must('ip', ['-n', node, 'addr', 'add', `${BRIDGE_IP}/16`, 'dev', 'br0']);
  await must('ip', ['-n', node, 'link', 'set', 'br0', 'up']);

  const cluster: TestCluster = await startCluster({ netns: node });
  t.after(() => cluster.stop());
  const kubectl = async (args: string[], input?: string) => {
    const r = await cluster.kubectl(args, input);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  // Install as a user would; then the webhook is reached by URL, as there is no kube-proxy here.
  const install = await must(process.execPath, [
    BIN,
    'install',
    '--istio-crds',
    'include',
    '--kube-version',
    '1.20',
  ]);
  await kubectl(['apply', '-f', '-'], install);
  const webhookCfg = JSON.parse(
    await kubectl(['get', 'mutatingwebhookconfiguration', 'kmtls-sidecar-injector', '-o', 'json']),
  ) as {
    webhooks: { clientConfig: Record<string, unknown> }[];
  };
  for (const w of webhookCfg.webhooks) w.clientConfig = { url: 'https://127.0.0.1:15017/inject' };
  await kubectl(['replace', '-f', '-'], JSON.stringify(webhookCfg));

  // The control plane, in the node, with the kubeconfig a Deployment would not need.
  const startControlPlane = () =>
    daemon(
      t,
      'ip',
      [
        'netns',
        'exec',
        node,
        process.execPath,
        BIN,
        'controlplane',
        '--source',
        'kubernetes',
        '--kubeconfig',
        cluster.kubeconfig,
        '--namespace',
        'kmtls-system',
        '--pod-name',
        `cp-${Date.now()}`,
        '--listen',
        '0.0.0.0:15012',
        '--admin',
        '127.0.0.1:15014',
        '--webhook',
        '127.0.0.1:15017',
      ],
      {
        KMTLS_INJECT_CONTROL_PLANE_ADDRESS: CP_API,
      },
    );
  let cp = startControlPlane();
  const cpReady = () =>
    eventually(
      'the control plane and the webhook caBundle',
      async () => {
        const cfg = JSON.parse(
          await kubectl(['get', 'mutatingwebhookconfiguration', 'kmtls-sidecar-injector', '-o', 'json']),
        ) as {
          webhooks: { clientConfig: { caBundle?: string } }[];
        };
        return cfg.webhooks.every((w) => w.clientConfig.caBundle) ? true : undefined;
      },
      60_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${cp.output()}`);
    });
  await cpReady();
  const rootPem = await eventually('the root ConfigMap in shop', async () => {
    const r = await cluster.kubectl([
      'get',
      'configmap',
      '-n',
      'default',
      'kmtls-ca-root-cert',
      '-o',
      'jsonpath={.data.root-cert\\.pem}',
    ]);
    return r.code === 0 && r.stdout.includes('BEGIN') ? r.stdout : undefined;
  });

  // Workloads: two injected pods behind a Service in `shop`, and one without a sidecar in `legacy`.
  await kubectl(['apply', '-f', '-'], MANIFESTS);
  const podJson = async (ns: string, name: string) =>
    JSON.parse(await kubectl(['get', 'pod', '-n', ns, name, '-o', 'json'])) as PodSpec;
  const web = await podJson('shop', 'web');
  const api = await podJson('shop', 'api');
  const legacy = await podJson('legacy', 'cron');
  for (const p of [web, api]) {
    assert.equal(p.metadata.labels?.['security.istio.io/tlsMode'], 'istio', 'injected');
    assert.ok(p.spec.initContainers?.some((c) => c.name === 'kmtls-init'));
  }
  assert.ok(!legacy.spec.initContainers?.some((c) => c.name === 'kmtls-init'), 'legacy is not injected');
  assert.equal(
    api.spec.containers.find((c) => c.name === 'api')?.readinessProbe?.httpGet?.port,
    15020,
    'probe rewritten',
  );

  // Playing the kubelet.
  let nextIp = 10;
  const runPod = async (pod: PodSpec) => {
    const ip = `10.251.0.${nextIp++}`;
    const ns = `kmtls-e2e-${tag}-${pod.metadata.name}`;
    namespaces.push(ns);
    await must('ip', ['netns', 'add', ns]);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const vethHost = `v${tag}${pod.metadata.name}`.slice(0, 15);
    await must('ip', [
      '-n',
      ns,
      'link',
      'add',
      'eth0',
      'type',
      'veth',
      'peer',
      'name',
      vethHost,
      'netns',
      node,
    ]);
    await must('ip', ['-n', node, 'link', 'set', vethHost, 'master', 'br0', 'up']);
    await must('ip', ['-n', ns, 'addr', 'add', `${ip}/16`, 'dev', 'eth0']);
    await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    await must('ip', ['-n', ns, 'route', 'add', 'default', 'via', BRIDGE_IP]);
    await kubectl([
      'patch',
      'pod',
      '-n',
      pod.metadata.namespace,
      pod.metadata.name,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] } }),
    ]);
    const env = { POD_NAME: pod.metadata.name, POD_NAMESPACE: pod.metadata.namespace, POD_IP: ip };
    const expand = (a: string) => a.replace(/\$\(([A-Z_]+)\)/g, (m, n: keyof typeof env) => env[n] ?? m);
    const init = pod.spec.initContainers?.find((c) => c.name === 'kmtls-init');
    const sidecar = [...(pod.spec.initContainers ?? []), ...pod.spec.containers].find(
      (c) => c.name === 'kmtls-proxy',
    );
    if (init && sidecar) {
      // The projected token and the root ConfigMap, where the sidecar's volumes would put them.
      const dir = path.join(work, pod.metadata.name);
      await mkdir(dir, { recursive: true });
      const token = (
        await kubectl([
          'create',
          'token',
          '-n',
          pod.metadata.namespace,
          pod.spec.serviceAccountName ?? 'default',
          '--audience',
          'kmtls',
        ])
      ).trim();
      await writeFile(path.join(dir, 'token'), token, { mode: 0o600 });
      await writeFile(path.join(dir, 'root-cert.pem'), rootPem);
      await chown(dir, 1337, 1337);
      await chown(path.join(dir, 'token'), 1337, 1337);
      const args = (sidecar.args ?? [])
        .map(expand)
        .map((a) =>
          a
            .replace('/var/run/secrets/kmtls/tokens/token', path.join(dir, 'token'))
            .replace('/var/run/secrets/kmtls/root/root-cert.pem', path.join(dir, 'root-cert.pem')),
        );
      const initArgs = (init.args ?? []).map(expand);
      await must('ip', ['netns', 'exec', ns, process.execPath, BIN, ...initArgs]);
      const sidecarEnv: Record<string, string> = { ...env };
      for (const e of sidecar.env ?? []) if (e.value !== undefined) sidecarEnv[e.name] = e.value;
      const proc = daemon(
        t,
        'ip',
        [
          'netns',
          'exec',
          ns,
          'setpriv',
          '--reuid',
          '1337',
          '--regid',
          '1337',
          '--clear-groups',
          process.execPath,
          BIN,
          ...args,
        ],
        sidecarEnv,
      );
      await eventually(
        `the sidecar of ${pod.metadata.name} to be ready`,
        async () => {
          const r = await agent(node, { op: 'http', host: ip, port: 15020, path: '/healthz/ready' });
          return r.status === 200 ? true : undefined;
        },
        60_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n${proc.output()}`);
      });
    }
    const ports = pod.spec.containers
      .filter((c) => c.name !== 'kmtls-proxy')
      .flatMap((c) => (c.ports ?? []).map((p) => p.containerPort));
    const app = daemon(t, 'ip', [
      'netns',
      'exec',
      ns,
      process.execPath,
      AGENT,
      JSON.stringify({
        op: 'serve',
        http: ports.map((port) => ({ host: '0.0.0.0', port, name: `${pod.metadata.name}:${port}` })),
      }),
    ]);
    await eventually(`the app of ${pod.metadata.name}`, async () =>
      app.output().includes('"listening":true') ? true : undefined,
    );
    return { ip, ns };
  };
  const webPod = await runPod(web);
  const apiPod = await runPod(api);
  const legacyPod = await runPod(legacy);
  const svcIp = (
    await kubectl(['get', 'service', '-n', 'shop', 'api', '-o', 'jsonpath={.spec.clusterIP}'])
  ).trim();

  // web -> api through the ClusterIP: intercepted, mTLS with both identities.
  const viaService = await eventually('web to reach api over mTLS', async () => {
    const r = await agent(webPod.ns, { op: 'http', host: svcIp, port: 80 });
    const xfcc = (r.body as { xfcc?: string } | undefined)?.xfcc;
    return r.status === 200 && xfcc ? xfcc : undefined;
  });
  assert.match(viaService, /By=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/api/);
  assert.match(viaService, /URI=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web/);

  // PERMISSIVE (the default): the uninjected pod gets through in plaintext.
  const plain = await agent(legacyPod.ns, { op: 'http', host: apiPod.ip, port: 8080 });
  assert.equal(plain.status, 200, JSON.stringify(plain));
  // STRICT, applied with kubectl: refused within seconds; the mesh client still gets through.
  await kubectl(['apply', '-f', '-'], STRICT);
  await eventually('STRICT to refuse the uninjected pod', async () => {
    const r = await agent(legacyPod.ns, { op: 'http', host: apiPod.ip, port: 8080 });
    return r.status === undefined ? true : undefined;
  });
  const afterStrict = await agent(webPod.ns, { op: 'http', host: svcIp, port: 80 });
  assert.equal(afterStrict.status, 200, JSON.stringify(afterStrict));
  // The kubelet's probe, rewritten to the status port, still succeeds under STRICT.
  const probe = await agent(node, {
    op: 'http',
    host: apiPod.ip,
    port: 15020,
    path: '/app-health/api/readyz',
  });
  assert.equal(probe.status, 200, JSON.stringify(probe));

  // The control plane restarts: pods keep working meanwhile, and it comes back with the same CA.
  await cp.stop();
  const during = await agent(webPod.ns, { op: 'http', host: svcIp, port: 80 });
  assert.equal(during.status, 200, 'the mesh works without the control plane');
  cp = startControlPlane();
  await cpReady();
  const rootAfter = (
    await kubectl([
      'get',
      'configmap',
      '-n',
      'default',
      'kmtls-ca-root-cert',
      '-o',
      'jsonpath={.data.root-cert\\.pem}',
    ])
  ).trim();
  assert.equal(rootAfter, rootPem.trim(), 'the CA survived the restart');
  // A policy change after the restart reaches the sidecars again.
  await kubectl(['delete', 'peerauthentication', '-n', 'shop', 'default']);
  await eventually('PERMISSIVE again after the restart', async () => {
    const r = await agent(legacyPod.ns, { op: 'http', host: apiPod.ip, port: 8080 });
    return r.status === 200 ? true : undefined;
  });
});

const MANIFESTS = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kmtls.io/injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cron, namespace: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  serviceAccountName: api
  containers:
    - name: api
      image: example/api
      ports: [{containerPort: 8080, name: http}]
      readinessProbe: {httpGet: {path: /healthz, port: http}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
    - name: web
      image: example/web
      ports: [{containerPort: 8000, name: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: cron, namespace: legacy, labels: {app: cron}}
spec:
  serviceAccountName: cron
  containers:
    - name: cron
      image: example/cron
      ports: [{containerPort: 9000}]
`;

const STRICT = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
`;
