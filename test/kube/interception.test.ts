/**
 * Transparent interception for real: two network namespaces joined by a veth pair, a "pod"
 * (10.250.0.2) and a "peer" (10.250.0.1). In the pod: the rules of `kmtls iptables apply`, an HTTP
 * application on 8080-8083 and `kmtls proxy` in transparent mode as uid 1337. In the peer: an mTLS
 * server (another mesh workload) and plain TCP servers. Clients are one-shot processes in either
 * namespace (netns-agent.mjs); every wait is on a process's output, with a deadline.
 *
 * Needs root, `ip netns`, iptables, the built CLI (`npm test` builds dist/) and the original-dst addon
 * (`npm install` builds it). Skipped only without root, `ip netns` or iptables.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { required } from '../helpers/kube.js';
import type { Material } from '../helpers/proxy-harness.js';
import { testCa, within } from '../helpers/proxy-harness.js';

const REPO = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(REPO, 'bin', 'kmtls.js');
const AGENT = path.join(import.meta.dirname, 'netns-agent.mjs');
const ADDON = path.join(REPO, 'native', 'original-dst', 'build', 'Release', 'original_dst.node');
const DEADLINE_MS = 10_000;

const POD_IP = '10.250.0.2';
const PEER_IP = '10.250.0.1';
const POD_IP6 = 'fd00:250::2';
const PEER_IP6 = 'fd00:250::1';
/** A Service's ClusterIP: no interface has it; only the sidecar's `match` knows it. */
const CLUSTER_IP = '10.250.100.10';
const PROXY_UID = 1337;

const APP_ID = 'spiffe://cluster.local/ns/default/sa/app';
const CLIENT_ID = 'spiffe://cluster.local/ns/peer/sa/client';
const SERVER_ID = 'spiffe://cluster.local/ns/peer/sa/server';

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion, with a deadline. */
async function run(command: string, args: readonly string[]): Promise<Run> {
  const child = spawn(command, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const closed = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve(code));
  });
  try {
    const code = await within(closed, `${command} ${args.join(' ')}`, DEADLINE_MS);
    return { code, stdout, stderr };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

async function must(command: string, args: readonly string[]): Promise<string> {
  const r = await run(command, args);
  assert.equal(r.code, 0, `${command} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** `kmtls ARGS` inside a namespace, as root. */
function kmtlsIn(ns: string, args: readonly string[]): Promise<Run> {
  return run('ip', ['netns', 'exec', ns, process.execPath, BIN, ...args]);
}

/** One client of netns-agent.mjs in a namespace: its one JSON line. */
async function agent(ns: string, cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await run('ip', ['netns', 'exec', ns, process.execPath, AGENT, JSON.stringify(cmd)]);
  assert.equal(r.code, 0, `agent ${JSON.stringify(cmd)}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown>;
}

type LogLine = Record<string, unknown> & { msg?: string };

/** A long-running process whose stdout lines (JSON) can be awaited. */
interface Background {
  readonly lines: LogLine[];
  waitForLine(match: (l: LogLine) => boolean, what: string): Promise<LogLine>;
  stderr(): string;
}

function background(t: TestContext, args: readonly string[]): Background {
  const child: ChildProcess = spawn(args[0]!, args.slice(1), {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  const waiters: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let err = '';
  let pending = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    pending += d;
    const parts = pending.split('\n');
    pending = parts.pop() ?? '';
    for (const text of parts) {
      if (text.trim() === '') continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { msg: text };
      }
      lines.push(line);
      for (const w of [...waiters])
        if (w.match(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 2_000).unref())]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
  return {
    lines,
    stderr: () => err,
    waitForLine(match, what) {
      const seen = lines.find(match);
      if (seen) return Promise.resolve(seen);
      const p = new Promise<LogLine>((resolve) => waiters.push({ match, resolve }));
      const gone = exited.then(() => {
        throw new Error(`process exited while waiting for ${what}: ${err}`);
      });
      return within(Promise.race([p, gone]), what, DEADLINE_MS);
    },
  };
}

async function writeCerts(dir: string, m: Material, owner?: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'cert-chain.pem'), m.chainPem);
  await writeFile(path.join(dir, 'key.pem'), m.keyPem, { mode: 0o600 });
  await writeFile(path.join(dir, 'root-cert.pem'), m.bundlePem);
  if (owner !== undefined) {
    await chown(dir, owner, owner);
    for (const f of ['cert-chain.pem', 'key.pem', 'root-cert.pem'])
      await chown(path.join(dir, f), owner, owner);
  }
}

/** Why this machine cannot run the test; under CI (KMTLS_REQUIRE_KUBE=1) that is a failure, not a skip. */
function missingPrerequisite(): string | undefined {
  return required(prerequisiteProblem());
}

function prerequisiteProblem(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces are Linux-only';
  if (process.getuid?.() !== 0) return 'needs root (network namespaces and iptables)';
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (ip.error || ip.status !== 0) return `ip netns is unavailable: ${ip.error?.message ?? ip.stderr.trim()}`;
  const ipt = spawnSync('iptables', ['--version'], { encoding: 'utf8' });
  if (ipt.error || ipt.status !== 0)
    return `iptables is unavailable: ${ipt.error?.message ?? ipt.stderr.trim()} (apt-get install iptables)`;
  return undefined;
}

test('transparent interception in a pod network namespace: iptables rules, the sidecar as uid 1337, inbound modes, outbound match and passthrough, exclusions, clean', async (t) => {
  const missing = missingPrerequisite();
  if (missing) {
    t.skip(missing);
    return;
  }
  assert.ok(existsSync(path.join(REPO, 'dist', 'src', 'cli', 'main.js')), 'dist/ is built (npm run build)');
  assert.ok(
    existsSync(ADDON),
    `the original-dst addon is built (${ADDON}; run node scripts/build-addon.mjs)`,
  );

  // Two namespaces joined by a veth pair; a /16 on each side also routes the ClusterIP.
  const tag = randomBytes(3).toString('hex');
  const pod = `kmtls-t-${tag}-pod`;
  const peer = `kmtls-t-${tag}-peer`;
  t.after(async () => {
    await run('ip', ['netns', 'del', pod]);
    await run('ip', ['netns', 'del', peer]);
  });
  await must('ip', ['netns', 'add', pod]);
  await must('ip', ['netns', 'add', peer]);
  await must('ip', ['-n', pod, 'link', 'set', 'lo', 'up']);
  await must('ip', ['-n', peer, 'link', 'set', 'lo', 'up']);
  await must('ip', ['-n', pod, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer]);
  await must('ip', ['-n', pod, 'addr', 'add', `${POD_IP}/16`, 'dev', 'eth0']);
  await must('ip', ['-n', peer, 'addr', 'add', `${PEER_IP}/16`, 'dev', 'eth0']);
  // IPv6 too (nodad: usable at once), to check that it cannot bypass the sidecar.
  await must('ip', ['-n', pod, '-6', 'addr', 'add', `${POD_IP6}/64`, 'dev', 'eth0', 'nodad']);
  await must('ip', ['-n', peer, '-6', 'addr', 'add', `${PEER_IP6}/64`, 'dev', 'eth0', 'nodad']);
  await must('ip', ['-n', pod, 'link', 'set', 'eth0', 'up']);
  await must('ip', ['-n', peer, 'link', 'set', 'eth0', 'up']);

  // Certificates: the pod's sidecar (readable by uid 1337 only), a mesh client and a mesh server in the peer.
  const work = await mkdtemp(path.join(tmpdir(), 'kmtls-interception-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  await chmod(work, 0o755);
  const ca = testCa();
  const sidecarCerts = path.join(work, 'sidecar-certs');
  const clientCerts = path.join(work, 'client-certs');
  const serverCerts = path.join(work, 'server-certs');
  await writeCerts(sidecarCerts, ca.issue(APP_ID), PROXY_UID);
  await writeCerts(clientCerts, ca.issue(CLIENT_ID));
  await writeCerts(serverCerts, ca.issue(SERVER_ID));

  // The peer: another mesh workload's mTLS server, and plain TCP servers.
  const peerServers = background(t, [
    'ip',
    ...['netns', 'exec', peer, process.execPath, AGENT],
    JSON.stringify({
      op: 'serve',
      tlsEcho: [{ host: PEER_IP, port: 9443, name: 'mesh-server', certDir: serverCerts }],
      tcpEcho: [
        { host: PEER_IP, port: 7000, name: 'plain7000' },
        { host: PEER_IP, port: 7001, name: 'plain7001' },
      ],
    }),
  ]);
  // The pod's application: HTTP on every interface, as a container listens.
  const app = background(t, [
    'ip',
    ...['netns', 'exec', pod, process.execPath, AGENT],
    JSON.stringify({
      op: 'serve',
      http: [
        ...[8080, 8081, 8082, 8083].map((port) => ({ host: '0.0.0.0', port, name: `app${port}` })),
        // Loopback only, as `node --inspect` listens: the network must not reach it through the sidecar.
        { host: '127.0.0.1', port: 8084, name: 'loopback-only' },
        // Every interface, IPv6 included (dual-stack).
        { host: '::', port: 8085, name: 'app8085' },
      ],
    }),
  ]);
  await peerServers.waitForLine((l) => l.listening === true, 'the peer servers');
  await app.waitForLine((l) => l.listening === true, 'the application');

  // The init step: the real CLI, in the pod's namespace.
  const apply = await kmtlsIn(pod, [
    'iptables',
    'apply',
    '--proxy-uid',
    String(PROXY_UID),
    '--exclude-inbound-ports',
    '8083',
    '--exclude-outbound-ports',
    '7001',
  ]);
  assert.equal(apply.code, 0, `kmtls iptables apply: ${apply.stderr}`);
  const rules = await must('ip', ['netns', 'exec', pod, 'iptables', '-t', 'nat', '-S']);
  for (const chain of ['KMTLS_INBOUND', 'KMTLS_IN_REDIRECT', 'KMTLS_OUTPUT', 'KMTLS_REDIRECT'])
    assert.match(rules, new RegExp(`^-N ${chain}$`, 'm'));
  const rules6 = await must('ip', ['netns', 'exec', pod, 'ip6tables', '-S']);
  assert.match(rules6, /^-N KMTLS_INBOUND6$/m);
  assert.match(rules6, /^-A INPUT -p tcp -j KMTLS_INBOUND6$/m);

  // The sidecar, transparent, as uid/gid 1337 so that its own connections are not redirected.
  const configFile = path.join(work, 'proxy.yaml');
  await writeFile(
    configFile,
    stringify({
      version: '1',
      workload: { namespace: 'default', name: 'app', identity: APP_ID },
      trustDomains: ['cluster.local'],
      admin: '127.0.0.1:15000',
      interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' },
      inbound: [
        // What the controller sends: the pod's IP.
        { port: 8080, forward: `${POD_IP}:8080`, mode: 'STRICT', protocol: 'http', policy: 'default/strict' },
        {
          port: 8081,
          // An older config naming 127.0.0.1: the original destination's address is used all the same.
          forward: '127.0.0.1:8081',
          mode: 'PERMISSIVE',
          protocol: 'http',
          policy: 'default/permissive',
        },
        // Excluded from interception by the rules: STRICT here, yet never enforced.
        {
          port: 8083,
          forward: '127.0.0.1:8083',
          mode: 'STRICT',
          protocol: 'http',
          policy: 'default/excluded',
        },
      ],
      outbound: [
        {
          name: 'server.peer.svc.cluster.local:80',
          // 7001 is an excluded outbound port: if the rules failed to exclude it, the call would land here.
          match: [`${CLUSTER_IP}:80`, `${PEER_IP}:7001`],
          protocol: 'tcp',
          endpoints: [{ address: `${PEER_IP}:9443`, tls: 'ISTIO_MUTUAL', workload: 'peer/server' }],
          expectedIdentities: [SERVER_ID],
        },
      ],
    }),
  );
  await chmod(configFile, 0o644);
  const sidecar = background(t, [
    'ip',
    ...['netns', 'exec', pod, 'setpriv', `--reuid=${PROXY_UID}`, `--regid=${PROXY_UID}`, '--clear-groups'],
    ...[process.execPath, BIN, 'proxy', '--config', configFile, '--cert-dir', sidecarCerts],
  ]);
  await sidecar.waitForLine((l) => l.msg === 'proxy started', "the sidecar's start");
  const accessLine = (what: string, match: (l: LogLine) => boolean) =>
    sidecar.waitForLine((l) => (l.msg === 'connection' || l.msg === 'connection refused') && match(l), what);

  await t.test('plaintext from outside the pod to a STRICT port is intercepted and refused', async () => {
    const r = await agent(peer, { op: 'http', host: POD_IP, port: 8080 });
    assert.equal(r.status, undefined, `no HTTP answer: ${JSON.stringify(r)}`);
    const line = await accessLine('the refusal on 8080', (l) => l.port === 8080 && l.outcome === 'refused');
    assert.equal(line.reason, 'PLAINTEXT_REJECTED');
    assert.equal(line.policy, 'default/strict');
  });

  await t.test(
    'mesh mTLS to the STRICT port is accepted; the application gets the client identity',
    async () => {
      const r = await agent(peer, {
        op: 'http',
        host: POD_IP,
        port: 8080,
        tls: clientCerts,
        alpn: ['istio-http/1.1', 'istio', 'http/1.1'],
      });
      assert.equal(r.status, 200, JSON.stringify(r));
      const body = r.body as { app: string; xfcc: string | null; remote: string };
      assert.equal(body.app, 'app8080');
      assert.match(
        body.xfcc ?? '',
        new RegExp(`By=${APP_ID};Hash=[0-9a-f]{64};Subject="";URI=${CLIENT_ID}$`),
      );
      assert.equal(
        body.remote,
        '127.0.0.6',
        'the sidecar reaches the application at the pod IP from 127.0.0.6',
      );
    },
  );

  await t.test('plaintext to a PERMISSIVE port is intercepted and reaches the application', async () => {
    const r = await agent(peer, { op: 'http', host: POD_IP, port: 8081 });
    assert.equal(r.status, 200, JSON.stringify(r));
    assert.deepEqual(r.body, { app: 'app8081', xfcc: null, remote: '127.0.0.6' });
    const line = await accessLine('the connection on 8081', (l) => l.port === 8081);
    assert.equal(line.transport, 'plaintext');
    assert.equal(line.mode, 'PERMISSIVE');
  });

  await t.test(
    'a port no inbound entry declares is passed through with the workload default mode',
    async () => {
      const r = await agent(peer, { op: 'http', host: POD_IP, port: 8082 });
      assert.equal(r.status, 200, JSON.stringify(r));
      assert.deepEqual(r.body, { app: 'app8082', xfcc: null, remote: '127.0.0.6' });
      const line = await accessLine('the passthrough on 8082', (l) => l.port === 8082);
      assert.equal(line.mode, 'PERMISSIVE');
      assert.equal(line.policy, 'default');
      assert.equal(line.destination, `${POD_IP}:8082`);
    },
  );

  await t.test(
    'a loopback-only listener of the pod is not reachable from the network through the sidecar',
    async () => {
      const r = await agent(peer, { op: 'http', host: POD_IP, port: 8084 });
      assert.equal(r.status, undefined, `no HTTP answer: ${JSON.stringify(r)}`);
      const line = await accessLine('the refusal on 8084', (l) => l.port === 8084);
      assert.equal(line.reason, 'UPSTREAM_UNREACHABLE');
      assert.equal(line.destination, `${POD_IP}:8084`);
    },
  );

  await t.test('dialling the interception ports directly is refused, without a loop', async () => {
    const before = sidecar.lines.length;
    for (const port of [15006, 15001]) {
      const r = await agent(peer, { op: 'line', host: POD_IP, port, line: 'loop?' });
      // Closed or reset, depending on timing; either way not a byte of answer.
      assert.ok(!r.answer, `no answer from ${port}: ${JSON.stringify(r)}`);
    }
    const r = await agent(pod, { op: 'line', host: POD_IP, port: 15001, line: 'loop?' });
    assert.ok(!r.answer, `no answer from 15001 inside the pod: ${JSON.stringify(r)}`);
    const refused = (l: LogLine) => l.msg === 'connection refused' && l.reason === 'NO_ORIGINAL_DST';
    const deadline = Date.now() + DEADLINE_MS;
    while (sidecar.lines.slice(before).filter(refused).length < 3 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50));
    // A loop would keep adding connections: give it time to show.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const connections = sidecar.lines
      .slice(before)
      .filter((l) => l.msg === 'connection' || l.msg === 'connection refused');
    assert.equal(connections.length, 3, `one record per dial, no loop: ${JSON.stringify(connections)}`);
    assert.ok(connections.every(refused), JSON.stringify(connections));
  });

  await t.test('IPv6 cannot bypass the sidecar: inbound IPv6 TCP is reset', async () => {
    const r = await agent(peer, { op: 'http', host: POD_IP6, port: 8085 });
    assert.equal(r.status, undefined, `no HTTP answer over IPv6: ${JSON.stringify(r)}`);
    assert.equal(r.error, 'ECONNREFUSED');
    // IPv4 to the same application is intercepted (PERMISSIVE passthrough) as usual.
    const v4 = await agent(peer, { op: 'http', host: POD_IP, port: 8085 });
    assert.equal(v4.status, 200, JSON.stringify(v4));
  });

  await t.test(
    'an excluded inbound port is not intercepted: its STRICT config is never consulted',
    async () => {
      const r = await agent(peer, { op: 'http', host: POD_IP, port: 8083 });
      assert.equal(r.status, 200, JSON.stringify(r));
      assert.deepEqual(r.body, { app: 'app8083', xfcc: null, remote: PEER_IP });
    },
  );

  await t.test('the application calling its own pod IP skips the sidecar (Istio loopback rule)', async () => {
    const r = await agent(pod, { op: 'http', host: POD_IP, port: 8080 });
    assert.equal(r.status, 200, JSON.stringify(r));
    assert.equal((r.body as { app: string }).app, 'app8080');
  });

  await t.test(
    'an outbound call to a matched ClusterIP goes out as mesh mTLS with the pod identity',
    async () => {
      const r = await agent(pod, { op: 'line', host: CLUSTER_IP, port: 80, line: 'hello' });
      assert.equal(r.answer, `mesh-server peer=${APP_ID} line=hello`, JSON.stringify(r));
      const line = await accessLine(
        'the outbound mTLS connection',
        (l) => l.direction === 'outbound' && l.service === 'server.peer.svc.cluster.local:80',
      );
      assert.equal(line.transport, 'mtls');
      assert.equal(line.destinationPrincipal, SERVER_ID);
    },
  );

  await t.test(
    'an outbound call nothing matches is passed through as plain TCP (PassthroughCluster)',
    async () => {
      const r = await agent(pod, { op: 'line', host: PEER_IP, port: 7000, line: 'raw' });
      assert.equal(r.answer, 'plain7000 line=raw', JSON.stringify(r));
      const line = await accessLine('the passthrough to 7000', (l) => l.service === 'PassthroughCluster');
      assert.equal(line.destination, `${PEER_IP}:7000`);
      assert.match(String(line.detail), /no outbound entry matches/);
    },
  );

  await t.test('an excluded outbound port is not intercepted, even where a match names it', async () => {
    const r = await agent(pod, { op: 'line', host: PEER_IP, port: 7001, line: 'direct' });
    assert.equal(r.answer, 'plain7001 line=direct', JSON.stringify(r));
  });

  await t.test(
    'kmtls iptables clean removes every rule and chain; traffic then flows uninspected',
    async () => {
      const clean = await kmtlsIn(pod, ['iptables', 'clean']);
      assert.equal(clean.code, 0, `kmtls iptables clean: ${clean.stderr}`);
      const after = await must('ip', ['netns', 'exec', pod, 'iptables', '-t', 'nat', '-S']);
      assert.doesNotMatch(after, /KMTLS/);
      const after6 = await must('ip', ['netns', 'exec', pod, 'ip6tables', '-S']);
      assert.doesNotMatch(after6, /KMTLS/);
      const v6 = await agent(peer, { op: 'http', host: POD_IP6, port: 8085 });
      assert.equal(v6.status, 200, JSON.stringify(v6));
      const r = await agent(peer, { op: 'http', host: POD_IP, port: 8080 });
      assert.equal(r.status, 200, JSON.stringify(r));
      assert.deepEqual(r.body, { app: 'app8080', xfcc: null, remote: PEER_IP });
    },
  );
});
