/**
 * `kmtls proxy` as a user runs it: the built executable (`npm test` builds dist/ first) as a child
 * process, with a config file and a certificate directory made by `kmtls ca init` / `kmtls ca issue`.
 * The tests read its JSON log lines from stdout and wait for them ('proxy started', 'config
 * applied', 'certificate loaded'); clients are real mTLS and plaintext sockets on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import type { Exchange } from '../helpers/proxy-harness.js';
import { exchange, freePort, startEchoApp, urisOf, WAIT_MS, within } from '../helpers/proxy-harness.js';

const REPO = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(REPO, 'bin', 'kmtls.js');
const SERVER_ID = 'spiffe://cluster.local/ns/finance/sa/payments';
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend';
const CERT_FILES = ['cert-chain.pem', 'key.pem', 'root-cert.pem'] as const;

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the executable to completion (with a deadline), from the repository root. */
async function kmtls(args: readonly string[]): Promise<Run> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  try {
    const [code] = (await within(once(child, 'close'), `kmtls ${args.join(' ')}`, 2 * WAIT_MS)) as [
      number | null,
    ];
    return { code, stdout, stderr };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

// One CA for the whole file, made and used through the CLI: a server identity (the proxy's) and a
// client identity (the mesh peer calling it).
let work: string;
let state: string;
let serverCerts: string;
let clientCerts: string;
let issuedServer: { identity: string; serial: string; notAfter: string };

before(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kmtls-proxy-cli-'));
  state = path.join(work, 'state');
  serverCerts = path.join(work, 'server-certs');
  clientCerts = path.join(work, 'client-certs');
  const init = await kmtls(['ca', 'init', '--state-dir', state]);
  assert.equal(init.code, 0, init.stderr);
  const server = await kmtls([
    'ca',
    'issue',
    '--spiffe-id',
    SERVER_ID,
    '--out-dir',
    serverCerts,
    '--state-dir',
    state,
    '-o',
    'json',
  ]);
  assert.equal(server.code, 0, server.stderr);
  issuedServer = JSON.parse(server.stdout) as typeof issuedServer;
  const client = await kmtls([
    'ca',
    'issue',
    '--spiffe-id',
    CLIENT_ID,
    '--out-dir',
    clientCerts,
    '--state-dir',
    state,
  ]);
  assert.equal(client.code, 0, client.stderr);
});

after(() => rm(work, { recursive: true, force: true }));

/** One pino line as the proxy prints it. */
type LogLine = Record<string, unknown> & { level: number; msg: string };

interface ProxyProcess {
  readonly lines: LogLine[];
  /** The first line from index `from` on that satisfies `match`. */
  waitForLine(match: (l: LogLine) => boolean, what: string, from?: number): Promise<LogLine>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
  kill(signal: NodeJS.Signals): void;
}

function startProxy(t: TestContext, configFile: string, certDir: string): ProxyProcess {
  const child: ChildProcessWithoutNullStreams = spawn(
    process.execPath,
    [BIN, 'proxy', '--config', configFile, '--cert-dir', certDir],
    { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const lines: LogLine[] = [];
  const watchers = new Set<() => void>();
  let pending = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    pending += d;
    for (let i = pending.indexOf('\n'); i >= 0; i = pending.indexOf('\n')) {
      const text = pending.slice(0, i);
      pending = pending.slice(i + 1);
      lines.push(JSON.parse(text) as LogLine);
    }
    for (const w of watchers) w();
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const waitForLine = (match: (l: LogLine) => boolean, what: string, from = 0) =>
    within(
      new Promise<LogLine>((resolve, reject) => {
        const gone = () => reject(new Error(`kmtls proxy exited before ${what}\n${stderr}`));
        const check = () => {
          const found = lines.slice(from).find(match);
          if (!found) return;
          watchers.delete(check);
          child.off('exit', gone);
          resolve(found);
        };
        watchers.add(check);
        child.once('exit', gone);
        check();
      }),
      `${what}; log so far:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`,
    );
  return { lines, waitForLine, exited, stderr: () => stderr, kill: (s) => child.kill(s) };
}

const msgIs = (msg: string) => (l: LogLine) => l.msg === msg;

/** The config a server sidecar for finance/payments runs with: one TCP port in front of `app`. */
function serverConfig(p: { listen: number; admin: number; app: string; mode: string; version: string }) {
  return {
    version: p.version,
    workload: { namespace: 'finance', name: 'payments', identity: SERVER_ID },
    trustDomains: ['cluster.local'],
    admin: `127.0.0.1:${p.admin}`,
    inbound: [
      {
        port: 8080,
        listen: `127.0.0.1:${p.listen}`,
        forward: p.app,
        mode: p.mode,
        policy: 'finance/default',
      },
    ],
  };
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}

/** Replaces the file by rename, as editors and Kubernetes ConfigMap volumes do. */
async function replaceJson(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeJson(tmp, value);
  await rename(tmp, file);
}

async function get(port: number, urlPath: string): Promise<{ status: number; body: string; type: string }> {
  const res = await within(
    new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get({ host: '127.0.0.1', port, path: urlPath, agent: false }, resolve).on('error', reject),
    ),
    `GET ${urlPath}`,
  );
  res.setEncoding('utf8');
  let body = '';
  for await (const chunk of res) body += chunk as string;
  return { status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) };
}

/** Mesh mTLS as a peer sidecar sends it, with the client identity's files; verifies the server like kmtls does. */
async function mtlsExchange(port: number, line: string): Promise<Exchange & { serverUris: string[] }> {
  const [cert, key, ca] = await Promise.all(
    CERT_FILES.map((f) => readFile(path.join(clientCerts, f), 'utf8')),
  );
  const s = tls.connect({
    host: '127.0.0.1',
    port,
    cert,
    key,
    ca,
    ALPNProtocols: ['istio-peer-exchange', 'istio'],
    // Mesh certificates carry only a SPIFFE URI: identity is checked below, not a host name.
    checkServerIdentity: () => undefined,
  });
  let serverUris: string[] = [];
  const result = new Promise<Exchange>((resolve) => {
    let data = '';
    s.on('secureConnect', () => {
      serverUris = urisOf(
        `-----BEGIN CERTIFICATE-----\n${s.getPeerCertificate().raw.toString('base64')}\n-----END CERTIFICATE-----\n`,
      );
      s.write(`${line}\n`);
    });
    s.on('data', (d: Buffer) => {
      data += d.toString();
      const i = data.indexOf('\n');
      if (i >= 0) {
        resolve({ answer: data.slice(0, i), closedByPeer: false });
        s.destroy();
      }
    });
    s.on('error', () => {});
    s.on('close', () => resolve({ answer: undefined, closedByPeer: true }));
  });
  const r = await within(result, `an mTLS answer on port ${port}`);
  return { ...r, serverUris };
}

interface Setup {
  readonly dir: string;
  readonly configFile: string;
  readonly certDir: string;
  readonly listen: number;
  readonly admin: number;
  readonly app: string;
}

async function setup(t: TestContext, opts: { certs: boolean }): Promise<Setup> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-proxy-run-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const certDir = path.join(dir, 'certs');
  await mkdir(certDir);
  if (opts.certs)
    for (const f of CERT_FILES) await copyFile(path.join(serverCerts, f), path.join(certDir, f));
  const app = await startEchoApp(t, 'app');
  const [listen, admin] = [await freePort(), await freePort()];
  return { dir, configFile: path.join(dir, 'proxy.json'), certDir, listen, admin, app: app.address };
}

// ---------------------------------------------------------------------------------------------

test('kmtls proxy serves mTLS with certificates from kmtls ca issue; /ready, /certs, /config and /metrics', async (t) => {
  const s = await setup(t, { certs: false });
  const config = serverConfig({ listen: s.listen, admin: s.admin, app: s.app, mode: 'STRICT', version: '1' });
  await writeJson(s.configFile, config);
  // The directory kmtls ca issue wrote, as is.
  const proxy = startProxy(t, s.configFile, serverCerts);
  const started = await proxy.waitForLine(msgIs('proxy started'), "'proxy started'");
  assert.equal(started.identity, SERVER_ID);
  assert.equal(started.component, 'proxy');
  assert.equal(started.admin, `127.0.0.1:${s.admin}`);

  const r = await mtlsExchange(s.listen, 'hello');
  assert.equal(r.answer, 'app:hello');
  assert.deepEqual(r.serverUris, [SERVER_ID]);
  assert.deepEqual(await exchange(s.listen, 'plaintext'), { answer: undefined, closedByPeer: true });
  const accessed = await proxy.waitForLine(
    (l) => l.msg === 'connection' && l.outcome === 'accepted',
    'the access log line',
  );
  assert.equal(accessed.component, 'access');
  assert.equal(accessed.sourcePrincipal, CLIENT_ID);
  assert.equal(accessed.transport, 'mtls');
  const refused = await proxy.waitForLine(msgIs('connection refused'), 'the refusal line');
  assert.equal(refused.reason, 'PLAINTEXT_REJECTED');

  const ready = await get(s.admin, '/ready');
  assert.equal(ready.status, 200);

  const certs = await get(s.admin, '/certs');
  assert.equal(certs.status, 200);
  const c = JSON.parse(certs.body) as Record<string, unknown>;
  assert.equal(c.identity, SERVER_ID);
  // The same serial and expiry kmtls ca issue reported.
  assert.equal(c.serial, issuedServer.serial);
  assert.equal(c.notAfter, issuedServer.notAfter);
  assert.ok(typeof c.timeLeftSeconds === 'number' && c.timeLeftSeconds > 23 * 3600, certs.body);

  const cfg = await get(s.admin, '/config');
  assert.equal(cfg.status, 200);
  assert.doesNotMatch(cfg.body, /PRIVATE KEY|BEGIN CERTIFICATE/);
  const shown = JSON.parse(cfg.body) as typeof config;
  assert.equal(shown.version, '1');
  assert.deepEqual(shown.workload, config.workload);
  assert.equal(shown.inbound[0]?.mode, 'STRICT');

  const metrics = await get(s.admin, '/metrics');
  assert.equal(metrics.status, 200);
  assert.match(metrics.type, /^text\/plain/);
  assert.match(
    metrics.body,
    new RegExp(
      `^istio_tcp_connections_opened_total\\{reporter="destination",source_principal="${CLIENT_ID}",destination_principal="${SERVER_ID}",.*connection_security_policy="mutual_tls"\\} 1$`,
      'm',
    ),
  );
  assert.match(
    metrics.body,
    /^kmtls_connections_refused_total\{reason="PLAINTEXT_REJECTED",policy="finance\/default",direction="inbound",port="8080"\} 1$/m,
  );
  for (const name of [
    'istio_tcp_connections_closed_total',
    'istio_tcp_sent_bytes_total',
    'istio_tcp_received_bytes_total',
  ]) {
    assert.match(metrics.body, new RegExp(`^# TYPE ${name} counter$`, 'm'));
  }
});

test('kmtls proxy without certificates starts not ready; writing the three files makes it ready', async (t) => {
  const s = await setup(t, { certs: false });
  await writeJson(
    s.configFile,
    serverConfig({ listen: s.listen, admin: s.admin, app: s.app, mode: 'STRICT', version: '1' }),
  );
  const proxy = startProxy(t, s.configFile, s.certDir);
  const warned = await proxy.waitForLine(msgIs('no certificate yet'), "'no certificate yet'");
  assert.equal(warned.code, 'KMTLS_PROXY_CERTS_INVALID');
  const started = await proxy.waitForLine(msgIs('proxy started'), "'proxy started'");
  assert.equal(started.identity, undefined);
  assert.equal((await get(s.admin, '/ready')).status, 503);
  assert.equal((await get(s.admin, '/certs')).status, 503);
  // mTLS cannot be terminated yet: refused, and the proxy keeps running.
  assert.equal((await mtlsExchange(s.listen, 'early')).answer, undefined);

  const mark = proxy.lines.length;
  for (const f of CERT_FILES) await copyFile(path.join(serverCerts, f), path.join(s.certDir, f));
  const loaded = await proxy.waitForLine(msgIs('certificate loaded'), "'certificate loaded'", mark);
  assert.equal(loaded.identity, SERVER_ID);
  assert.equal(loaded.serial, issuedServer.serial);
  assert.equal((await get(s.admin, '/ready')).status, 200);
  assert.equal((await mtlsExchange(s.listen, 'late')).answer, 'app:late');

  // A renewal written into the live directory by kmtls ca issue (atomic renames) is picked up too.
  const renewMark = proxy.lines.length;
  const renewed = await kmtls([
    'ca',
    'issue',
    '--spiffe-id',
    SERVER_ID,
    '--out-dir',
    s.certDir,
    '--state-dir',
    state,
    '-o',
    'json',
  ]);
  assert.equal(renewed.code, 0, renewed.stderr);
  const { serial } = JSON.parse(renewed.stdout) as { serial: string };
  assert.notEqual(serial, issuedServer.serial);
  await proxy.waitForLine(
    (l) => l.msg === 'certificate loaded' && l.serial === serial,
    'the renewed certificate',
    renewMark,
  );
  assert.equal((JSON.parse((await get(s.admin, '/certs')).body) as { serial: string }).serial, serial);
});

test('kmtls proxy applies an edited config (PERMISSIVE to STRICT) to new connections; an invalid edit is logged and the last good config keeps serving', async (t) => {
  const s = await setup(t, { certs: true });
  const base = { listen: s.listen, admin: s.admin, app: s.app };
  await writeJson(s.configFile, serverConfig({ ...base, mode: 'PERMISSIVE', version: '1' }));
  const proxy = startProxy(t, s.configFile, s.certDir);
  await proxy.waitForLine(msgIs('proxy started'), "'proxy started'");
  assert.equal((await exchange(s.listen, 'plain')).answer, 'app:plain');
  assert.equal((await mtlsExchange(s.listen, 'mesh')).answer, 'app:mesh');

  let mark = proxy.lines.length;
  await writeJson(s.configFile, serverConfig({ ...base, mode: 'STRICT', version: '2' }));
  await proxy.waitForLine(
    (l) => l.msg === 'config applied' && l.version === '2',
    "'config applied' v2",
    mark,
  );
  assert.deepEqual(await exchange(s.listen, 'plain'), { answer: undefined, closedByPeer: true });
  assert.equal((await mtlsExchange(s.listen, 'mesh')).answer, 'app:mesh');

  mark = proxy.lines.length;
  await writeJson(s.configFile, serverConfig({ ...base, mode: 'ENFORCED', version: '3' }));
  const refused = await proxy.waitForLine(
    (l) => l.code === 'KMTLS_PROXY_CONFIG_INVALID' && /inbound\.0\.mode/.test(String(l.err)),
    'the refusal of the invalid config',
    mark,
  );
  assert.equal(refused.level, 50);
  assert.match(String(refused.err), new RegExp(s.configFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  assert.equal(
    proxy.lines.slice(mark).some((l) => l.msg === 'config applied'),
    false,
  );
  // Still v2, STRICT.
  assert.deepEqual(await exchange(s.listen, 'plain'), { answer: undefined, closedByPeer: true });
  assert.equal((await mtlsExchange(s.listen, 'mesh')).answer, 'app:mesh');
  const shown = JSON.parse((await get(s.admin, '/config')).body) as { version: string };
  assert.equal(shown.version, '2');
});

test('kmtls proxy keeps watching a config file that is replaced by rename, as editors and ConfigMap volumes do', async (t) => {
  const s = await setup(t, { certs: true });
  const base = { listen: s.listen, admin: s.admin, app: s.app };
  await writeJson(s.configFile, serverConfig({ ...base, mode: 'STRICT', version: '1' }));
  const proxy = startProxy(t, s.configFile, s.certDir);
  await proxy.waitForLine(msgIs('proxy started'), "'proxy started'");
  for (const [version, mode] of [
    ['2', 'PERMISSIVE'],
    ['3', 'STRICT'],
    ['4', 'PERMISSIVE'],
  ] as const) {
    const mark = proxy.lines.length;
    await replaceJson(s.configFile, serverConfig({ ...base, mode, version }));
    await proxy.waitForLine(
      (l) => l.msg === 'config applied' && l.version === version,
      `'config applied' v${version}`,
      mark,
    );
    const plain = await exchange(s.listen, 'plain');
    assert.equal(plain.answer, mode === 'PERMISSIVE' ? 'app:plain' : undefined, `v${version} ${mode}`);
  }
});

test('an invalid config at start exits 1 with KMTLS_PROXY_CONFIG_INVALID naming the bad path', async (t) => {
  const s = await setup(t, { certs: true });
  const config = serverConfig({
    listen: s.listen,
    admin: s.admin,
    app: s.app,
    mode: 'ENFORCED',
    version: '1',
  });
  await writeJson(s.configFile, { ...config, limits: { handshakeTimeoutMs: -1 } });
  const [r, missing] = await Promise.all([
    kmtls(['proxy', '--config', s.configFile, '--cert-dir', s.certDir]),
    kmtls(['proxy', '--config', path.join(s.dir, 'absent.yaml'), '--cert-dir', s.certDir]),
  ]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^error KMTLS_PROXY_CONFIG_INVALID: /);
  assert.ok(r.stderr.includes(s.configFile), r.stderr);
  assert.match(r.stderr, /inbound\.0\.mode: /);
  assert.match(r.stderr, /limits\.handshakeTimeoutMs: /);
  assert.doesNotMatch(r.stderr, /BUG|\n\s+at /);
  assert.equal(r.stdout.includes('proxy started'), false);

  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error KMTLS_PROXY_CONFIG_INVALID: .*absent\.yaml.*ENOENT/);
});

test('missing flags exit 2 with the usage', async () => {
  const cases = [['proxy'], ['proxy', '--config', 'x.yaml'], ['proxy', '--cert-dir', 'certs']];
  const runs = await Promise.all(cases.map((args) => kmtls(args)));
  for (const [i, args] of cases.entries()) {
    const r = runs[i]!;
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^error KMTLS_CLI_USAGE: kmtls proxy needs --config FILE and --cert-dir DIR/);
    assert.match(r.stderr, /Usage:\n {2}kmtls proxy --config FILE --cert-dir DIR/);
  }
});

test('SIGTERM stops the proxy cleanly: exit 0, "proxy stopped", live connections closed, the ports released', async (t) => {
  const s = await setup(t, { certs: true });
  await writeJson(
    s.configFile,
    serverConfig({ listen: s.listen, admin: s.admin, app: s.app, mode: 'PERMISSIVE', version: '1' }),
  );
  const proxy = startProxy(t, s.configFile, s.certDir);
  await proxy.waitForLine(msgIs('proxy started'), "'proxy started'");
  // A connection still open when the signal arrives must not keep the process alive.
  const live = net.connect({ host: '127.0.0.1', port: s.listen });
  live.on('error', () => {});
  live.write('hold\n');
  await within(once(live, 'data'), 'the answer on the live connection');
  const liveClosed = once(live, 'close');
  proxy.kill('SIGTERM');
  const { code, signal } = await within(proxy.exited, 'the proxy to exit');
  assert.equal(signal, null);
  assert.equal(code, 0, proxy.stderr());
  assert.ok(proxy.lines.some(msgIs('proxy stopped')));
  await within(liveClosed, 'the live connection to close');
  assert.equal(proxy.stderr(), '');
  const refused = await new Promise<string | undefined>((resolve) => {
    const probe = net.connect({ host: '127.0.0.1', port: s.admin });
    probe.on('connect', () => {
      probe.destroy();
      resolve(undefined);
    });
    probe.on('error', (err: NodeJS.ErrnoException) => resolve(err.code));
  });
  assert.equal(refused, 'ECONNREFUSED');
});
