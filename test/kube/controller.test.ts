/**
 * The control plane against a real kube-apiserver and etcd: CA in a Secret, the root bundle in every
 * namespace, sidecars authenticated by TokenReview, configs pushed on kubectl changes, malformed
 * policies ignored, leader election, opt-in TLS Secrets, repair of deleted objects, and restarts of
 * the controller and of the API server. Waits are on conditions, never fixed sleeps.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { KubeControlPlaneOptions } from '../../src/kube/index.js';
import {
  auditSecretReaders,
  clusterSupportsNativeSidecars,
  loadKubeConfig,
  startKubeControlPlane,
} from '../../src/kube/index.js';
import type { ProxyConfig } from '../../src/mesh/index.js';
import { controlPlaneIdentity } from '../../src/mesh/index.js';
import { createRoot } from '../../src/pki/index.js';
import { toPem } from '../../src/pki/x509.js';
import type { ProxyIdentity } from '../../src/proxy/index.js';
import { ControlPlaneClient, requestCertificate } from '../../src/proxy/index.js';
import { signIntermediate } from '../helpers/ca.js';
import type { TestCluster } from '../helpers/kube.js';
import { freePort, kubeUnavailable, startCluster } from '../helpers/kube.js';

const skip = kubeUnavailable();
const BIN = path.join(fileURLToPath(new URL('../..', import.meta.url)), 'bin', 'kmtls.js');
const NS = 'kmtls-system';
const log = pino({ level: process.env.KMTLS_TEST_LOG ?? 'silent' });

let cluster: TestCluster;

async function eventually<T>(
  what: string,
  fn: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 20_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

async function kubectl(args: string[], input?: string): Promise<string> {
  const r = await cluster.kubectl(args, input);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function startController(name: string, extra: Partial<KubeControlPlaneOptions> = {}) {
  const listen = { host: '127.0.0.1', port: await freePort() };
  const admin = { host: '127.0.0.1', port: await freePort() };
  const cp = await startKubeControlPlane({
    kc: loadKubeConfig(cluster.kubeconfig),
    namespace: NS,
    podName: name,
    trustDomain: 'cluster.local',
    rootNamespace: 'istio-system',
    listen,
    admin,
    log: log.child({ replica: name }),
    leaseDurationMs: 2_000,
    resyncMs: 500,
    tlsSecretTtlMs: 6_000,
    ...extra,
  });
  return { ...cp, listen, admin };
}

before(async () => {
  if (skip) return;
  cluster = await startCluster();
  // Installed as a user would: kmtls install | kubectl apply -f -
  const install = spawnSync(
    process.execPath,
    [BIN, 'install', '--istio-crds', 'include', '--kube-version', '1.20'],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(install.status, 0, install.stderr);
  await kubectl(['apply', '-f', '-'], install.stdout);
});

after(async () => {
  if (cluster) await cluster.stop();
});

test('the controller keeps the CA in a Secret, publishes the root everywhere, repairs deletions, and survives restarts', {
  skip,
  timeout: 180_000,
}, async () => {
  await kubectl(['create', 'namespace', 'shop']);
  const a = await startController('replica-a');
  const secretRoot = async () => {
    const out = JSON.parse(await kubectl(['get', 'secret', '-n', NS, 'kmtls-ca', '-o', 'json'])) as {
      data: Record<string, string>;
    };
    return Buffer.from(out.data['root-cert.pem']!, 'base64').toString('utf8');
  };
  const root = await eventually('the CA Secret', secretRoot);
  assert.match(root, /BEGIN CERTIFICATE/);
  const configMapRoot = async (ns: string) => {
    const r = await cluster.kubectl([
      'get',
      'configmap',
      '-n',
      ns,
      'kmtls-ca-root-cert',
      '-o',
      'jsonpath={.data.root-cert\\.pem}',
    ]);
    return r.code === 0 && r.stdout.includes('BEGIN CERTIFICATE') ? r.stdout : undefined;
  };
  for (const ns of ['default', 'kube-system', 'shop', NS]) {
    assert.equal(
      (await eventually(`the root ConfigMap in ${ns}`, () => configMapRoot(ns))).trim(),
      root.trim(),
    );
  }
  // A new namespace gets it; a deleted ConfigMap comes back; a deleted CA Secret is written again.
  await kubectl(['create', 'namespace', 'late']);
  await eventually('the root ConfigMap in a new namespace', () => configMapRoot('late'));
  await kubectl(['delete', 'configmap', '-n', 'shop', 'kmtls-ca-root-cert']);
  await eventually('the deleted ConfigMap to come back', () => configMapRoot('shop'));
  await kubectl(['delete', 'secret', '-n', NS, 'kmtls-ca']);
  assert.equal(await eventually('the deleted CA Secret to come back', secretRoot), root);

  // A second replica agrees on the same CA; when the leader stops, it takes over the writers.
  const b = await startController('replica-b');
  await a.stop();
  await kubectl(['delete', 'configmap', '-n', 'late', 'kmtls-ca-root-cert']);
  await eventually('the new leader to repair the ConfigMap', () => configMapRoot('late'));
  await b.stop();
  // A controller started afresh keeps the CA.
  const c = await startController('replica-c');
  assert.equal(await secretRoot(), root);
  // A root rotation begun with `kmtls ca rotate --kubeconfig`: every namespace gets both roots.
  const rootsIn = async (ns: string) =>
    ((await configMapRoot(ns)) ?? '').match(/BEGIN CERTIFICATE/g)?.length ?? 0;
  const cli = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  const begin = cli(['ca', 'rotate', 'begin', '--kubeconfig', cluster.kubeconfig]);
  assert.equal(begin.status, 0, begin.stderr);
  await eventually('both roots in every namespace', async () =>
    (await rootsIn('shop')) === 2 && (await rootsIn('late')) === 2 ? true : undefined,
  );
  const abort = cli(['ca', 'rotate', 'abort', '--kubeconfig', cluster.kubeconfig]);
  assert.equal(abort.status, 0, abort.stderr);
  await eventually('one root again', async () => ((await rootsIn('shop')) === 1 ? true : undefined));
  await c.stop();
});

test('sidecars authenticate with a projected ServiceAccount token; configs follow kubectl; bad policies are ignored', {
  skip,
  timeout: 180_000,
}, async () => {
  await kubectl(['create', 'namespace', 'pay']);
  await kubectl(['create', 'serviceaccount', '-n', 'pay', 'payments']);
  const cp = await startController('replica-token', {
    interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' },
  });
  try {
    const rootsPem = await eventually('the root ConfigMap', async () => {
      const r = await cluster.kubectl([
        'get',
        'configmap',
        '-n',
        'pay',
        'kmtls-ca-root-cert',
        '-o',
        'jsonpath={.data.root-cert\\.pem}',
      ]);
      return r.code === 0 && r.stdout.includes('BEGIN') ? r.stdout : undefined;
    });
    const link = {
      address: cp.listen,
      rootsPem,
      controlPlaneIdentity: controlPlaneIdentity('cluster.local', NS),
    };
    const token = (await kubectl(['create', 'token', '-n', 'pay', 'payments', '--audience', 'kmtls'])).trim();
    const cert = await requestCertificate(link, async () => token, Date.now());
    assert.equal(cert.identity.identity, 'spiffe://cluster.local/ns/pay/sa/payments');
    // A token for another audience, or garbage, is refused.
    const wrongAudience = (
      await kubectl(['create', 'token', '-n', 'pay', 'payments', '--audience', 'someone-else'])
    ).trim();
    await assert.rejects(
      requestCertificate(link, async () => wrongAudience, Date.now()),
      /403/,
    );
    await assert.rejects(
      requestCertificate(link, async () => 'a.b.c', Date.now()),
      /403/,
    );

    // A pod with a sidecar, as the webhook would make it; the kubelet's part: its IP.
    await kubectl(['apply', '-f', '-'], POD);
    await kubectl([
      'patch',
      'pod',
      '-n',
      'pay',
      'payments-0',
      '--subresource=status',
      '--type=merge',
      '-p',
      '{"status":{"podIP":"10.250.1.5","phase":"Running"}}',
    ]);
    const configs: ProxyConfig[] = [];
    let identity: ProxyIdentity | undefined;
    const client = new ControlPlaneClient({
      address: cp.listen,
      pod: 'pay/payments-0',
      token: async () => token,
      rootsPem,
      controlPlaneIdentity: link.controlPlaneIdentity,
      clock: { now: Date.now },
      log: log.child({ pod: 'pay/payments-0' }),
      applyConfig: async (c) => {
        configs.push(c);
      },
      setIdentity: (id) => {
        identity = id;
      },
    });
    await client.start();
    try {
      assert.equal(identity?.identity, 'spiffe://cluster.local/ns/pay/sa/payments');
      const first = await eventually('the first config', () => configs.at(-1));
      assert.deepEqual(
        first.inbound.map((p) => [p.port, p.mode]),
        [[8080, 'PERMISSIVE']],
      );

      // A Service without a selector: its Endpoints (written by hand here) say where it goes.
      await kubectl(['apply', '-f', '-'], SELECTORLESS);
      const ext = await eventually('the selector-less Service in the config', () =>
        configs.at(-1)?.outbound.find((o) => o.name === 'ext.pay.svc.cluster.local:80'),
      );
      assert.deepEqual(ext.endpoints, [
        { address: '10.250.1.5:8080', tls: 'ISTIO_MUTUAL', workload: 'pay/payments-0' },
        { address: '10.9.9.9:8080', tls: 'DISABLE' },
      ]);

      await kubectl(['apply', '-f', '-'], STRICT_PA);
      const strict = await eventually('STRICT to reach the sidecar', () =>
        configs.at(-1)?.inbound[0]?.mode === 'STRICT' ? configs.at(-1) : undefined,
      );
      assert.equal(strict.inbound[0]?.policy, 'pay/default');

      // Istio's webhook refuses portLevelMtls without a selector; the CRD schema lets it in. With the
      // namespace policy gone it would be the namespace's policy (DISABLE) if it were applied: it must
      // be reported and ignored, leaving the mesh default (PERMISSIVE).
      await kubectl(['delete', 'peerauthentication', '-n', 'pay', 'default']);
      await eventually('the mesh default', () =>
        configs.at(-1)?.inbound[0]?.policy === 'default' ? true : undefined,
      );
      await kubectl(['apply', '-f', '-'], BAD_PA);
      const reported = await eventually('the bad policy to be reported', async () => {
        const r = await fetch(`http://${cp.admin.host}:${cp.admin.port}/status`);
        const s = (await r.json()) as { errors: { file: string; problems: string[] }[] };
        return s.errors.find((e) => e.file.includes('PeerAuthentication pay/broken'));
      });
      assert.ok(reported.problems.length > 0);
      const unchanged = configs.at(-1);
      assert.equal(unchanged?.inbound[0]?.mode, 'PERMISSIVE');
      assert.equal(unchanged?.inbound[0]?.policy, 'default');
      await kubectl(['delete', 'peerauthentication', '-n', 'pay', 'broken']);

      // The API server restarts while etcd's history is compacted past what the watches saw: they get
      // 410 Gone, list again, and no change is lost — including one made just before the restart.
      await kubectl(['apply', '-f', '-'], STRICT_PA.replace('mode: STRICT', 'mode: DISABLE'));
      await cluster.restartApiServer(() => cluster.compactEtcd());
      await eventually(
        'the change made before the restart',
        () => (configs.at(-1)?.inbound[0]?.mode === 'DISABLE' ? true : undefined),
        60_000,
      );
      await kubectl(['apply', '-f', '-'], STRICT_PA);
      await eventually(
        'a change after the API server restart',
        () => (configs.at(-1)?.inbound[0]?.mode === 'STRICT' ? true : undefined),
        60_000,
      );
    } finally {
      client.stop();
    }
  } finally {
    await cp.stop();
  }
});

test('an opted-in ServiceAccount gets a kubernetes.io/tls Secret only it can read, renewed before it expires', {
  skip,
  timeout: 180_000,
}, async () => {
  await kubectl(['create', 'namespace', 'db']);
  await kubectl(['create', 'serviceaccount', '-n', 'db', 'ledger']);
  await kubectl(['annotate', 'serviceaccount', '-n', 'db', 'ledger', 'kmtls.io/tls-secret=true']);
  const cp = await startController('replica-tls');
  try {
    const read = async () => {
      const r = await cluster.kubectl(['get', 'secret', '-n', 'db', 'kmtls-tls-ledger', '-o', 'json']);
      if (r.code !== 0) return undefined;
      return JSON.parse(r.stdout) as {
        type: string;
        data: Record<string, string>;
        metadata: { annotations: Record<string, string> };
      };
    };
    const first = await eventually('the TLS Secret', read);
    assert.equal(first.type, 'kubernetes.io/tls');
    assert.equal(first.metadata.annotations['kmtls.io/identity'], 'spiffe://cluster.local/ns/db/sa/ledger');
    const serial = new X509Certificate(Buffer.from(first.data['tls.crt']!, 'base64')).serialNumber;
    // Only its ServiceAccount may read it.
    const can = async (as: string) =>
      (
        await cluster.kubectl(['auth', 'can-i', 'get', 'secret/kmtls-tls-ledger', '-n', 'db', `--as=${as}`])
      ).stdout.trim();
    assert.equal(await can('system:serviceaccount:db:ledger'), 'yes');
    assert.equal(await can('system:serviceaccount:db:other'), 'no');
    // Renewed at half its (6 s) life.
    const renewed = await eventually('the renewal', async () => {
      const s = await read();
      const sn = s ? new X509Certificate(Buffer.from(s.data['tls.crt']!, 'base64')).serialNumber : serial;
      return sn !== serial ? sn : undefined;
    });
    assert.notEqual(renewed, serial);
    // Deleted: issued again.
    await kubectl(['delete', 'secret', '-n', 'db', 'kmtls-tls-ledger']);
    await eventually('the Secret to come back', read);

    // The RBAC audit: the owner is expected; a new reader is reported.
    const kc = loadKubeConfig(cluster.kubeconfig);
    const before = await auditSecretReaders(kc, { controlPlaneNamespace: NS });
    assert.ok(
      before.some(
        (r) =>
          r.secret === 'db/kmtls-tls-ledger' &&
          r.subject === 'ServiceAccount db/ledger' &&
          r.kind === 'expected',
      ),
    );
    assert.equal(
      before.filter((r) => r.kind === 'excess').length,
      0,
      JSON.stringify(before.filter((r) => r.kind === 'excess')),
    );
    await kubectl(['create', 'role', '-n', 'db', 'peek', '--verb=get', '--resource=secrets']);
    await kubectl(['create', 'rolebinding', '-n', 'db', 'peek', '--role=peek', '--user=mallory']);
    const afterAudit = await auditSecretReaders(kc, { controlPlaneNamespace: NS });
    assert.deepEqual(
      afterAudit.filter((r) => r.kind === 'excess').map((r) => [r.secret, r.subject]),
      [['db/kmtls-tls-ledger', 'User mallory']],
    );
    // The same through the command line: reported, exit 1.
    const check = spawnSync(process.execPath, [BIN, 'check', '--kube', '--kubeconfig', cluster.kubeconfig], {
      encoding: 'utf8',
    });
    assert.equal(check.status, 1, check.stderr);
    assert.match(
      check.stdout,
      /db\/kmtls-tls-ledger\s+User mallory\s+get\s+EXCESS\s+RoleBinding db\/peek -> Role peek/,
    );
  } finally {
    await cp.stop();
  }
});

test('a cacerts Secret in the control plane namespace is the plug-in CA, as in Istio', {
  skip,
  timeout: 120_000,
}, async () => {
  const ns = 'plugin-system';
  await kubectl(['create', 'namespace', ns]);
  const now = Date.now();
  const root = createRoot({ trustDomain: 'cluster.local', now, random: randomBytes });
  const inter = signIntermediate(root, { nowMs: now });
  const pem = (der: Buffer) => toPem(der);
  const files = {
    'ca-cert.pem': pem(inter.certificate),
    'ca-key.pem': inter.key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    'root-cert.pem': pem(root.certificate),
    'cert-chain.pem': pem(inter.certificate) + pem(root.certificate),
  };
  await kubectl([
    'create',
    'secret',
    'generic',
    'cacerts',
    '-n',
    ns,
    ...Object.entries(files).map(([k, v]) => `--from-literal=${k}=${v}`),
  ]);
  const cp = await startController('replica-plugin', { namespace: ns });
  try {
    await eventually('the plug-in root in the ConfigMaps', async () => {
      const r = await cluster.kubectl([
        'get',
        'configmap',
        '-n',
        'default',
        'kmtls-ca-root-cert',
        '-o',
        'jsonpath={.data.root-cert\\.pem}',
      ]);
      return r.stdout.trim() === files['root-cert.pem'].trim() ? true : undefined;
    });
    // No kmtls-ca Secret is made next to it.
    assert.equal((await cluster.kubectl(['get', 'secret', '-n', ns, 'kmtls-ca'])).code, 1);
    // This API server is 1.20 (and has no nodes): no native sidecars.
    assert.equal(await clusterSupportsNativeSidecars(loadKubeConfig(cluster.kubeconfig)), false);
  } finally {
    await cp.stop();
  }
});

const POD = `apiVersion: v1
kind: Pod
metadata:
  name: payments-0
  namespace: pay
  labels: {app: payments, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: payments
  containers:
    - name: payments
      image: example/payments
      ports: [{containerPort: 8080, name: http}]
    - name: kmtls-proxy
      image: kmtls/kmtls
`;

const SELECTORLESS = `apiVersion: v1
kind: Service
metadata: {name: ext, namespace: pay}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext, namespace: pay}
subsets:
  - addresses:
      - {ip: 10.250.1.5, targetRef: {kind: Pod, name: payments-0, namespace: pay}}
      - {ip: 10.9.9.9}
    ports: [{name: http, port: 8080}]
`;

const STRICT_PA = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: pay}
spec:
  mtls: {mode: STRICT}
`;

const BAD_PA = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: broken, namespace: pay}
spec:
  mtls: {mode: DISABLE}
  portLevelMtls:
    8080: {mode: DISABLE}
`;
