/**
 * A real Kubernetes API server with etcd on loopback, for the cluster tests
 * (../shared/reference/kube-test-env.md). `scripts/kube/build.sh` builds the binaries once into a
 * cache; without them (or without root) the tests that need them say so and skip.
 */
import type { ChildProcess } from 'node:child_process';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const KUBE_CACHE = process.env.KMTLS_KUBE_CACHE ?? '/var/cache/kmtls-kube';
export const KUBE_APISERVER = path.join(KUBE_CACHE, 'bin', 'kube-apiserver');
const ADMIN_TOKEN = 'kmtls-test-admin-token';

/** Why the cluster tests cannot run here, or undefined when they can. */
export function kubeUnavailable(): string | undefined {
  let why: string | undefined;
  if (!existsSync(KUBE_APISERVER)) why = `no kube-apiserver in ${KUBE_CACHE} (run scripts/kube/build.sh)`;
  else if (spawnSync('etcd', ['--version']).status !== 0) why = 'no etcd (apt-get install etcd-server)';
  else if (spawnSync('kubectl', ['version', '--client']).status !== 0) why = 'no kubectl';
  return required(why);
}

/** CI sets KMTLS_REQUIRE_KUBE=1: there, a cluster test that cannot run is a failure, not a skip. */
export function required(why: string | undefined): string | undefined {
  if (why !== undefined && process.env.KMTLS_REQUIRE_KUBE === '1') {
    throw new Error(`the cluster tests must run here (KMTLS_REQUIRE_KUBE=1) but cannot: ${why}`);
  }
  return why;
}

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(what: string, fn: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await fn().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function run(
  cmd: string,
  args: string[],
  env?: NodeJS.ProcessEnv,
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: { ...process.env, ...env }, maxBuffer: 32 * 1024 * 1024 },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

export interface TestCluster {
  readonly dir: string;
  readonly kubeconfig: string;
  readonly server: string;
  /** `kubectl` against this cluster. */
  kubectl(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Stops the API server (etcd keeps the data), runs `whileDown`, and starts it again on the same port. */
  restartApiServer(whileDown?: () => Promise<void>): Promise<void>;
  /** Compacts etcd's history up to now: watches resuming from an older resourceVersion get 410 Gone. */
  compactEtcd(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts etcd and kube-apiserver on free loopback ports with a fresh data directory; with `netns`,
 * inside that network namespace (its own loopback), and `kubectl` runs there too.
 */
export async function startCluster(options: { netns?: string } = {}): Promise<TestCluster> {
  const inNs = (cmd: string, args: string[]): [string, string[]] =>
    options.netns ? ['ip', ['netns', 'exec', options.netns, cmd, ...args]] : [cmd, args];
  const dir = await mkdtemp(path.join(os.tmpdir(), 'kmtls-kube-'));
  // Free in the host's loopback; a fresh namespace's loopback has every port free.
  const [etcdClient, etcdPeer, apiPort, metricsPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  await run('openssl', ['genrsa', '-out', path.join(dir, 'sa.key'), '2048']);
  await run('openssl', ['rsa', '-in', path.join(dir, 'sa.key'), '-pubout', '-out', path.join(dir, 'sa.pub')]);
  await writeFile(path.join(dir, 'tokens.csv'), `${ADMIN_TOKEN},admin,admin-uid,"system:masters"\n`);
  const procs: ChildProcess[] = [];
  const etcd = spawn(
    ...inNs('etcd', [
      '--name',
      'local',
      '--data-dir',
      path.join(dir, 'etcd'),
      '--listen-client-urls',
      `http://127.0.0.1:${etcdClient}`,
      '--advertise-client-urls',
      `http://127.0.0.1:${etcdClient}`,
      '--listen-peer-urls',
      `http://127.0.0.1:${etcdPeer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${etcdPeer}`,
      '--initial-cluster',
      `local=http://127.0.0.1:${etcdPeer}`,
      '--listen-metrics-urls',
      `http://127.0.0.1:${metricsPort}`,
    ]),
    {
      stdio: ['ignore', openSync(path.join(dir, 'etcd.log'), 'a'), openSync(path.join(dir, 'etcd.log'), 'a')],
    },
  );
  procs.push(etcd);
  const apiArgs = [
    `--etcd-servers=http://127.0.0.1:${etcdClient}`,
    '--bind-address=127.0.0.1',
    `--secure-port=${apiPort}`,
    '--insecure-port=0',
    '--advertise-address=127.0.0.1',
    '--endpoint-reconciler-type=none',
    `--cert-dir=${path.join(dir, 'certs')}`,
    `--token-auth-file=${path.join(dir, 'tokens.csv')}`,
    '--authorization-mode=RBAC',
    '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
    `--service-account-key-file=${path.join(dir, 'sa.pub')}`,
    `--service-account-signing-key-file=${path.join(dir, 'sa.key')}`,
    '--api-audiences=https://kubernetes.default.svc.cluster.local,kmtls',
    '--service-cluster-ip-range=10.96.0.0/24',
    '--enable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook',
    '--disable-admission-plugins=ServiceAccount',
  ];
  const apiLog = () => {
    const fd = openSync(path.join(dir, 'apiserver.log'), 'a');
    return { stdio: ['ignore', fd, fd] as ['ignore', number, number] };
  };
  let api = spawn(...inNs(KUBE_APISERVER, apiArgs), apiLog());
  const server = `https://127.0.0.1:${apiPort}`;
  const kubeconfig = path.join(dir, 'kubeconfig');
  await writeFile(
    kubeconfig,
    [
      'apiVersion: v1',
      'kind: Config',
      `clusters: [{name: test, cluster: {server: "${server}", insecure-skip-tls-verify: true}}]`,
      `users: [{name: admin, user: {token: ${ADMIN_TOKEN}}}]`,
      'contexts: [{name: test, context: {cluster: test, user: admin}}]',
      'current-context: test',
      '',
    ].join('\n'),
  );
  const kubectl = (args: string[], input?: string) =>
    run(...inNs('kubectl', ['--kubeconfig', kubeconfig, ...args]), {}, input);
  let lastProbe = '';
  const ready = async () => {
    const r = await kubectl(['get', '--raw', '/readyz']);
    lastProbe = `${r.code}: ${r.stdout.trim()} ${r.stderr.trim()}`.slice(0, 300);
    return r.stdout.trim() === 'ok';
  };
  await waitFor('the API server', ready, 90_000).catch(async (err: Error) => {
    const tail = (await readFile(path.join(dir, 'apiserver.log'), 'utf8').catch(() => ''))
      .split('\n')
      .slice(-15)
      .join('\n');
    throw new Error(`${err.message} (last probe: ${lastProbe}); apiserver.log ends:\n${tail}`);
  });
  return {
    dir,
    kubeconfig,
    server,
    kubectl,
    async restartApiServer(whileDown) {
      const exited = new Promise((r) => api.once('exit', r));
      api.kill('SIGTERM');
      await exited;
      await whileDown?.();
      api = spawn(...inNs(KUBE_APISERVER, apiArgs), apiLog());
      await waitFor('the API server to come back', ready, 90_000);
    },
    async compactEtcd() {
      const endpoints = `http://127.0.0.1:${etcdClient}`;
      const status = await run(
        ...inNs('etcdctl', ['--endpoints', endpoints, 'endpoint', 'status', '-w', 'json']),
        { ETCDCTL_API: '3' },
      );
      const revision = (JSON.parse(status.stdout) as { Status: { header: { revision: number } } }[])[0]
        ?.Status.header.revision;
      if (!revision) throw new Error(`etcdctl endpoint status: ${status.stderr}`);
      const r = await run(...inNs('etcdctl', ['--endpoints', endpoints, 'compact', String(revision)]), {
        ETCDCTL_API: '3',
      });
      if (r.code !== 0) throw new Error(`etcdctl compact: ${r.stderr}`);
    },
    async stop() {
      for (const p of [api, ...procs]) {
        if (p.exitCode === null && p.signalCode === null) {
          const exited = new Promise((r) => p.once('exit', r));
          p.kill('SIGTERM');
          const t = setTimeout(() => p.kill('SIGKILL'), 5_000);
          await exited;
          clearTimeout(t);
        }
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
