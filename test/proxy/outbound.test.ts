/**
 * The outbound side of the sidecar: an application connects to a local listener per destination,
 * and the proxy originates what the policy core decided for each endpoint (mesh mTLS with secure
 * naming, plaintext, or a DestinationRule's own TLS). Real sockets on 127.0.0.1; the servers are a
 * kmtls server-side Proxy, node:tls servers that report what they saw, and `openssl s_server`.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { pino } from 'pino';
import type { OutboundEndpointConfig } from '../../src/mesh/index.js';
import type { ProxyIdentity, ProxyObserver } from '../../src/proxy/index.js';
import { accessLog, fanOut, ProxyMetrics, Sidecar } from '../../src/proxy/index.js';
import { runPeer, tempDir } from '../helpers/peers.js';
import type { Material, RecordingObserver } from '../helpers/proxy-harness.js';
import {
  exchange,
  freePort,
  proxyConfig,
  recordingObserver,
  startEchoApp,
  startOpensslServer,
  startTlsApp,
  testCa,
  urisOf,
  within,
} from '../helpers/proxy-harness.js';

const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend';
const SERVER_ID = 'spiffe://cluster.local/ns/finance/sa/payments';
const OTHER_ID = 'spiffe://cluster.local/ns/finance/sa/impostor';
const SERVICE = 'payments.finance.svc.cluster.local:8080';

const MESH = testCa();
/** Same trust domain, a root the client does not trust. */
const FOREIGN = testCa();
const CLIENT = MESH.identity(CLIENT_ID);
const SERVER = MESH.issue(SERVER_ID);

interface EndpointSpec {
  address: string;
  tls: OutboundEndpointConfig['tls'];
}

interface DestinationSpec {
  endpoints: EndpointSpec[];
  name?: string;
  protocol?: 'tcp' | 'http';
  expectedIdentities?: string[];
  tls?: Record<string, unknown>;
}

interface ClientSide {
  readonly proxy: Sidecar;
  /** The local listener port of each destination, in order. */
  readonly ports: number[];
  readonly observer: RecordingObserver;
}

/** A client sidecar (shop/frontend) with one outbound listener per destination. */
async function startClient(
  t: TestContext,
  destinations: DestinationSpec[],
  opts: { identity?: ProxyIdentity | null; extraObservers?: ProxyObserver[] } = {},
): Promise<ClientSide> {
  const ports = await Promise.all(destinations.map(() => freePort()));
  const config = proxyConfig({
    workload: { namespace: 'shop', name: 'frontend', identity: CLIENT_ID },
    trustDomains: ['cluster.local'],
    outbound: destinations.map((d, i) => ({
      name: d.name ?? SERVICE,
      listen: `127.0.0.1:${ports[i]}`,
      protocol: d.protocol ?? 'tcp',
      endpoints: d.endpoints,
      expectedIdentities: d.expectedIdentities ?? [SERVER_ID],
      ...(d.tls ? { tls: d.tls } : {}),
    })),
  });
  const observer = recordingObserver();
  const identity = opts.identity === undefined ? CLIENT : opts.identity;
  const proxy = new Sidecar(config, {
    clock: { now: Date.now },
    observer: fanOut(observer, ...(opts.extraObservers ?? [])),
    ...(identity ? { identity } : {}),
  });
  await proxy.start();
  t.after(() => proxy.stop());
  return { proxy, ports, observer };
}

/** A server sidecar (finance/payments by default) with one inbound port in front of `app`. */
async function startServerProxy(
  t: TestContext,
  app: string,
  opts: { mode?: 'STRICT' | 'PERMISSIVE'; identity?: string } = {},
): Promise<{ port: number; observer: RecordingObserver }> {
  const port = await freePort();
  const identity = opts.identity ?? SERVER_ID;
  const config = proxyConfig({
    workload: { namespace: 'finance', name: 'payments', identity },
    trustDomains: ['cluster.local'],
    inbound: [
      {
        port: 8080,
        listen: `127.0.0.1:${port}`,
        forward: app,
        mode: opts.mode ?? 'STRICT',
        policy: 'finance/strict',
      },
    ],
  });
  const observer = recordingObserver();
  const proxy = new Sidecar(config, {
    clock: { now: Date.now },
    observer,
    identity: MESH.identity(identity),
  });
  await proxy.start();
  t.after(() => proxy.stop());
  return { port, observer };
}

/** PEM files for openssl: leaf, key and root. */
async function materialFiles(t: TestContext, m: Material) {
  const dir = await tempDir(t);
  const files = {
    cert: path.join(dir, 'cert.pem'),
    key: path.join(dir, 'key.pem'),
    root: path.join(dir, 'root.pem'),
  };
  const leaf = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/.exec(m.chainPem)?.[0];
  assert.ok(leaf);
  await writeFile(files.cert, leaf);
  await writeFile(files.key, m.keyPem, { mode: 0o600 });
  await writeFile(files.root, m.bundlePem);
  return files;
}

/** The first certificate s_server printed after "Client certificate", as PEM. */
function clientCertificateOf(output: string): string | undefined {
  return /Client certificate\s*\n(-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----)/.exec(
    output,
  )?.[1];
}

// ---------------------------------------------------------------------------------------------
// 1. ISTIO_MUTUAL origination

test('ISTIO_MUTUAL through a STRICT kmtls server sidecar reaches the app; the server sees the SPIFFE identity and mesh ALPN', async (t) => {
  const app = await startEchoApp(t, 'app');
  const server = await startServerProxy(t, app.address);
  const client = await startClient(t, [
    { endpoints: [{ address: `127.0.0.1:${server.port}`, tls: 'ISTIO_MUTUAL' }] },
  ]);

  const r = await exchange(client.ports[0]!, 'hello');
  assert.equal(r.answer, 'app:hello');
  // The app got the plaintext bytes the client wrote, unwrapped by the server sidecar.
  assert.equal((await app.seen.next('the app connection')).firstBytes.toString(), 'hello\n');

  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'accepted');
  assert.equal(out.transport, 'mtls');
  assert.equal(out.sourcePrincipal, CLIENT_ID);
  assert.equal(out.destinationPrincipal, SERVER_ID);
  assert.equal(out.destinationAddress, `127.0.0.1:${server.port}`);
  assert.match(out.tlsVersion ?? '', /^TLSv1\.[23]$/);

  const inb = await server.observer.nextClosed();
  assert.equal(inb.outcome, 'accepted');
  assert.equal(inb.transport, 'mtls');
  assert.equal(inb.sourcePrincipal, CLIENT_ID);
  // Istio's client sidecar offers these on TCP ports (ALPNInMeshWithMxc).
  assert.equal(inb.alpn, 'istio-peer-exchange,istio');
});

/** A plain HTTP/1.1 GET through a listener, as an application would send it. */
function httpGet(
  port: number,
  path = '/',
): Promise<{ status: number; body: string; reason: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body,
          reason: res.headers['x-kmtls-reason'] as string | undefined,
        }),
      );
    });
    req.on('error', reject);
  });
}

async function startHttpEcho(t: TestContext): Promise<{ address: string; connections: () => number }> {
  let connections = 0;
  const server = http.createServer((req, res) => res.end(`app:${req.method}`));
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, connections: () => connections };
}

test('ISTIO_MUTUAL on an HTTP destination offers istio-http/1.1 first', async (t) => {
  const app = await startHttpEcho(t);
  const server = await startServerProxy(t, app.address, { mode: 'PERMISSIVE' });
  const client = await startClient(t, [
    { protocol: 'http', endpoints: [{ address: `127.0.0.1:${server.port}`, tls: 'ISTIO_MUTUAL' }] },
  ]);
  assert.equal((await httpGet(client.ports[0]!)).body, 'app:GET');
  // The upstream connection is pooled: it closes, and so is recorded, when the client sidecar stops.
  await client.proxy.stop();
  const inb = await server.observer.nextClosed();
  // PERMISSIVE terminates only what offers a mesh ALPN: being terminated as mtls proves it was offered.
  assert.equal(inb.transport, 'mtls');
  assert.equal(inb.sourcePrincipal, CLIENT_ID);
  assert.equal(inb.alpn, 'istio-http/1.1,istio,http/1.1');
});

test('HTTP destinations pool upstream mTLS connections: many downstream connections, one handshake', async (t) => {
  const app = await startHttpEcho(t);
  const server = await startServerProxy(t, app.address, { mode: 'STRICT' });
  const client = await startClient(t, [
    { protocol: 'http', endpoints: [{ address: `127.0.0.1:${server.port}`, tls: 'ISTIO_MUTUAL' }] },
  ]);
  for (let i = 0; i < 5; i++) assert.equal((await httpGet(client.ports[0]!, `/${i}`)).body, 'app:GET');
  // Five separate downstream connections (agent: false), carried by one pooled upstream mTLS
  // connection: the server side (a TCP port, one application connection per mTLS connection) saw one.
  assert.equal(app.connections(), 1);
});

test('an HTTP destination answers a refusal with 503 and x-kmtls-reason instead of a reset', async (t) => {
  const app = await startHttpEcho(t);
  const impostor = await startServerProxy(t, app.address, { identity: OTHER_ID });
  const client = await startClient(t, [
    {
      protocol: 'http',
      endpoints: [{ address: `127.0.0.1:${impostor.port}`, tls: 'ISTIO_MUTUAL' }],
      expectedIdentities: [SERVER_ID],
    },
  ]);
  const r = await httpGet(client.ports[0]!);
  assert.equal(r.status, 503);
  assert.equal(r.reason, 'SAN_MISMATCH');
  assert.match(r.body, /SAN_MISMATCH/);
});

test('ISTIO_MUTUAL to openssl s_server -Verify 1: it verifies the client chain, sees the SPIFFE certificate and selects istio', async (t) => {
  const files = await materialFiles(t, SERVER);
  const peer = await startOpensslServer(t, [
    '-Verify',
    '1',
    '-verify_return_error',
    '-CAfile',
    files.root,
    '-cert',
    files.cert,
    '-key',
    files.key,
    '-alpn',
    'istio',
  ]);
  const client = await startClient(t, [
    { endpoints: [{ address: `127.0.0.1:${peer.port}`, tls: 'ISTIO_MUTUAL' }] },
  ]);

  const answer = exchange(client.ports[0]!, 'hello-from-client');
  await peer.waitFor(/^hello-from-client$/m, 'the client line');
  peer.send('hello-from-openssl');
  assert.equal((await answer).answer, 'hello-from-openssl');

  const output = peer.output();
  assert.match(output, /ALPN protocols advertised by the client: istio-peer-exchange, istio\n/);
  assert.match(output, /ALPN protocols selected: istio\n/);
  const presented = clientCertificateOf(output);
  assert.ok(presented, `s_server printed no client certificate:\n${output}`);
  assert.deepEqual(urisOf(presented), [CLIENT_ID]);
  assert.doesNotMatch(output, /verify error/);

  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'accepted');
  assert.equal(out.destinationPrincipal, SERVER_ID);
});

test('ISTIO_MUTUAL on an HTTP destination to openssl s_server: istio-http/1.1 is advertised and selected', async (t) => {
  const files = await materialFiles(t, SERVER);
  const peer = await startOpensslServer(t, [
    '-Verify',
    '1',
    '-verify_return_error',
    '-CAfile',
    files.root,
    '-cert',
    files.cert,
    '-key',
    files.key,
    '-alpn',
    'istio-http/1.1',
  ]);
  const client = await startClient(t, [
    { protocol: 'http', endpoints: [{ address: `127.0.0.1:${peer.port}`, tls: 'ISTIO_MUTUAL' }] },
  ]);
  const answer = httpGet(client.ports[0]!);
  await peer.waitFor(/^GET \/ HTTP\/1\.1\r?$/m, 'the request line');
  // s_server relays its stdin to the client: a whole response, CRLF-terminated (send adds the last \n).
  peer.send('HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r');
  assert.equal((await answer).status, 204);
  assert.match(
    peer.output(),
    /ALPN protocols advertised by the client: istio-http\/1\.1, istio, http\/1\.1\n/,
  );
  assert.match(peer.output(), /ALPN protocols selected: istio-http\/1\.1\n/);
  assert.deepEqual(urisOf(clientCertificateOf(peer.output()) ?? assert.fail('no client certificate')), [
    CLIENT_ID,
  ]);
});

// ---------------------------------------------------------------------------------------------
// 2. Secure naming and server certificate checks

test('secure naming: a server presenting another identity is refused as SAN_MISMATCH naming both, and the app socket is closed', async (t) => {
  const app = await startEchoApp(t, 'app');
  const impostor = await startServerProxy(t, app.address, { identity: OTHER_ID });
  const client = await startClient(t, [
    {
      endpoints: [{ address: `127.0.0.1:${impostor.port}`, tls: 'ISTIO_MUTUAL' }],
      expectedIdentities: [SERVER_ID],
    },
  ]);
  const r = await exchange(client.ports[0]!, 'secret');
  assert.deepEqual(r, { answer: undefined, closedByPeer: true });
  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'refused');
  assert.equal(out.reason, 'SAN_MISMATCH');
  assert.ok(out.message?.includes(SERVER_ID), out.message);
  assert.ok(out.message?.includes(OTHER_ID), out.message);
  assert.equal(out.destinationAddress, `127.0.0.1:${impostor.port}`);
  // Not one byte of the client's went to the impostor's application.
  assert.equal(app.seen.all.length, 0);
});

test('secure naming passes when the server holds any of the expected identities', async (t) => {
  const tlsApp = await startTlsApp(t, 'srv', SERVER);
  const client = await startClient(t, [
    {
      endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }],
      expectedIdentities: [OTHER_ID, SERVER_ID],
    },
  ]);
  assert.equal((await exchange(client.ports[0]!, 'x')).answer, 'srv:x');
});

const NOW = Date.now();
const HOUR = 3_600_000;
const BAD_SERVERS: { name: string; material: () => Material; reason: string; detail: RegExp }[] = [
  {
    name: 'a server certificate from another CA is UNKNOWN_CA',
    material: () => FOREIGN.issue(SERVER_ID),
    reason: 'UNKNOWN_CA',
    detail: /trusted root/,
  },
  {
    name: 'an expired server certificate is CERT_EXPIRED',
    // Issued two days ago for one hour by the mesh CA: the chain is trusted, the leaf expired.
    material: () => MESH.issue(SERVER_ID, { nowMs: NOW - 48 * HOUR, ttlMs: HOUR }),
    reason: 'CERT_EXPIRED',
    detail: /expired/,
  },
];

for (const c of BAD_SERVERS) {
  test(`ISTIO_MUTUAL: ${c.name}; the client connection is closed without data`, async (t) => {
    const tlsApp = await startTlsApp(t, 'srv', c.material());
    const client = await startClient(t, [{ endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }] }]);
    const r = await exchange(client.ports[0]!, 'secret');
    assert.deepEqual(r, { answer: undefined, closedByPeer: true });
    const out = await client.observer.nextClosed();
    assert.equal(out.outcome, 'refused');
    assert.equal(out.reason, c.reason);
    assert.match(out.message ?? '', c.detail);
    assert.ok(out.message?.startsWith(tlsApp.address), out.message);
  });
}

// ---------------------------------------------------------------------------------------------
// 3. Endpoint choice

test('round robin: each new connection goes to the next of three endpoints', async (t) => {
  const apps = await Promise.all(['a', 'b', 'c'].map((n) => startEchoApp(t, n)));
  const client = await startClient(t, [
    { endpoints: apps.map((a) => ({ address: a.address, tls: 'DISABLE' })) },
  ]);
  const answers: (string | undefined)[] = [];
  for (let i = 0; i < 4; i++) answers.push((await exchange(client.ports[0]!, String(i))).answer);
  assert.deepEqual(answers, ['a:0', 'b:1', 'c:2', 'a:3']);
});

test('an endpoint that refuses the connection is skipped for the next one', async (t) => {
  const a = await startEchoApp(t, 'a');
  const c = await startEchoApp(t, 'c');
  const closed = `127.0.0.1:${await freePort()}`;
  const client = await startClient(t, [
    {
      endpoints: [
        { address: a.address, tls: 'DISABLE' },
        { address: closed, tls: 'DISABLE' },
        { address: c.address, tls: 'DISABLE' },
      ],
    },
  ]);
  assert.equal((await exchange(client.ports[0]!, '1')).answer, 'a:1');
  // The round robin points at the closed port now: the connection goes on to c instead of failing.
  assert.equal((await exchange(client.ports[0]!, '2')).answer, 'c:2');
  await client.observer.nextClosed();
  const second = await client.observer.nextClosed();
  assert.equal(second.outcome, 'accepted');
  assert.equal(second.destinationAddress, c.address);
});

test('the skip also holds for ISTIO_MUTUAL endpoints', async (t) => {
  const tlsApp = await startTlsApp(t, 'srv', SERVER);
  const closed = `127.0.0.1:${await freePort()}`;
  const client = await startClient(t, [
    {
      endpoints: [
        { address: closed, tls: 'ISTIO_MUTUAL' },
        { address: tlsApp.address, tls: 'ISTIO_MUTUAL' },
      ],
    },
  ]);
  assert.equal((await exchange(client.ports[0]!, 'x')).answer, 'srv:x');
  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'accepted');
  assert.equal(out.destinationPrincipal, SERVER_ID);
});

test('when every endpoint refuses, the connection is refused as UPSTREAM_UNREACHABLE', async (t) => {
  const closed = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
  const client = await startClient(t, [
    {
      endpoints: [
        { address: closed[0]!, tls: 'ISTIO_MUTUAL' },
        { address: closed[1]!, tls: 'DISABLE' },
      ],
    },
  ]);
  const r = await exchange(client.ports[0]!, 'x');
  assert.deepEqual(r, { answer: undefined, closedByPeer: true });
  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'refused');
  assert.equal(out.reason, 'UPSTREAM_UNREACHABLE');
  assert.match(out.message ?? '', /ECONNREFUSED/);
  assert.ok(
    closed.some((a) => out.message?.includes(a)),
    out.message,
  );
});

// ---------------------------------------------------------------------------------------------
// 4. Plaintext

test('DISABLE: the server gets exactly the bytes the application wrote', async (t) => {
  const app = await startEchoApp(t, 'app');
  const client = await startClient(t, [{ endpoints: [{ address: app.address, tls: 'DISABLE' }] }]);
  assert.equal((await exchange(client.ports[0]!, 'raw bytes')).answer, 'app:raw bytes');
  assert.deepEqual((await app.seen.next('the app connection')).firstBytes, Buffer.from('raw bytes\n'));
  const out = await client.observer.nextClosed();
  assert.equal(out.transport, 'plaintext');
  assert.equal(out.sourcePrincipal, undefined);
  assert.equal(out.destinationPrincipal, undefined);
});

test('a client that ends its side after the request still gets the whole answer (half-close)', async (t) => {
  const app = await startEchoApp(t, 'app');
  const client = await startClient(t, [{ endpoints: [{ address: app.address, tls: 'DISABLE' }] }]);
  const s = net.connect({ host: '127.0.0.1', port: client.ports[0]! });
  let data = '';
  s.setEncoding('utf8').on('data', (d: string) => {
    data += d;
  });
  s.end('request then FIN\n');
  await within(once(s, 'close'), 'the connection to close');
  assert.equal(data, 'app:request then FIN\n');
  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'accepted');
  assert.equal(out.bytesSent, data.length);
});

test('mixed endpoints in one destination each get what their decision says', async (t) => {
  const meshEndpoint = await startTlsApp(t, 'mesh', SERVER);
  const plainEndpoint = await startEchoApp(t, 'plain');
  const client = await startClient(t, [
    {
      endpoints: [
        { address: meshEndpoint.address, tls: 'ISTIO_MUTUAL' },
        { address: plainEndpoint.address, tls: 'DISABLE' },
      ],
    },
  ]);
  assert.equal((await exchange(client.ports[0]!, 'one')).answer, 'mesh:one');
  assert.equal((await exchange(client.ports[0]!, 'two')).answer, 'plain:two');
  const mesh = await meshEndpoint.seen.next('the mesh endpoint handshake');
  assert.deepEqual(mesh.clientUris, [CLIENT_ID]);
  assert.deepEqual(
    (await plainEndpoint.seen.next('the plaintext endpoint')).firstBytes,
    Buffer.from('two\n'),
  );
  const [first, second] = [await client.observer.nextClosed(), await client.observer.nextClosed()];
  assert.equal(first.transport, 'mtls');
  assert.equal(first.destinationPrincipal, SERVER_ID);
  assert.equal(second.transport, 'plaintext');
  assert.equal(second.destinationPrincipal, undefined);
});

// ---------------------------------------------------------------------------------------------
// 5. DestinationRule SIMPLE / MUTUAL

/** A CA outside the mesh (made by openssl), a server certificate for external.example and a client certificate. */
async function externalPki(t: TestContext) {
  const dir = await tempDir(t);
  const f = (name: string) => path.join(dir, name);
  const ossl = async (args: string[]) => {
    const r = await runPeer(t, 'openssl', args);
    assert.equal(r.code, 0, `openssl ${args.join(' ')}\n${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await ossl([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-subj',
    '/CN=external-ca',
    '-days',
    '2',
  ]);
  await writeFile(f('server.ext'), 'subjectAltName=DNS:external.example\n');
  await writeFile(f('client.ext'), 'subjectAltName=DNS:client.example\nextendedKeyUsage=clientAuth\n');
  for (const who of ['server', 'client']) {
    await ossl([
      'req',
      ...ec,
      '-keyout',
      f(`${who}.key`),
      '-out',
      f(`${who}.csr`),
      '-subj',
      `/CN=${who}.example`,
    ]);
    await ossl([
      'x509',
      '-req',
      '-in',
      f(`${who}.csr`),
      '-CA',
      f('ca.pem'),
      '-CAkey',
      f('ca.key'),
      '-set_serial',
      who === 'server' ? '1' : '2',
      '-days',
      '1',
      '-extfile',
      f(`${who}.ext`),
      '-out',
      f(`${who}.pem`),
    ]);
  }
  const meshRoot = f('mesh-root.pem');
  await writeFile(meshRoot, MESH.rootPem);
  return { f, meshRoot };
}

/** s_server presenting the external server certificate; -cert2/-servername make it print the SNI it got. */
function externalServerArgs(f: (n: string) => string): string[] {
  return [
    '-cert',
    f('server.pem'),
    '-key',
    f('server.key'),
    '-cert2',
    f('server.pem'),
    '-key2',
    f('server.key'),
    '-servername',
    'external.example',
  ];
}

test("DestinationRule SIMPLE: TLS to openssl s_server with a certificate from another CA, verified with the rule's CA and SNI", async (t) => {
  const { f } = await externalPki(t);
  const peer = await startOpensslServer(t, externalServerArgs(f));
  const client = await startClient(t, [
    {
      name: 'api.external.example:443',
      endpoints: [{ address: `127.0.0.1:${peer.port}`, tls: 'SIMPLE' }],
      expectedIdentities: [],
      tls: { caCertificates: f('ca.pem'), sni: 'external.example' },
    },
  ]);
  const answer = exchange(client.ports[0]!, 'simple');
  await peer.waitFor(/^simple$/m, 'the client line');
  peer.send('ok');
  assert.equal((await answer).answer, 'ok');
  assert.match(peer.output(), /Hostname in TLS extension: "external\.example"/);
  // SIMPLE sends no client certificate, and the mesh certificate above all must not leak out.
  assert.equal(clientCertificateOf(peer.output()), undefined);
  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'accepted');
  assert.equal(out.transport, 'tls');
  assert.equal(out.sourcePrincipal, undefined);
});

test("DestinationRule MUTUAL: the rule's client certificate and key files are presented to s_server -Verify", async (t) => {
  const { f } = await externalPki(t);
  const peer = await startOpensslServer(t, [
    ...externalServerArgs(f),
    '-Verify',
    '1',
    '-verify_return_error',
    '-CAfile',
    f('ca.pem'),
  ]);
  const client = await startClient(t, [
    {
      name: 'api.external.example:443',
      endpoints: [{ address: `127.0.0.1:${peer.port}`, tls: 'MUTUAL' }],
      expectedIdentities: [],
      tls: {
        caCertificates: f('ca.pem'),
        clientCertificate: f('client.pem'),
        privateKey: f('client.key'),
        sni: 'external.example',
      },
    },
  ]);
  const answer = exchange(client.ports[0]!, 'mutual');
  await peer.waitFor(/^mutual$/m, 'the client line');
  peer.send('ok');
  assert.equal((await answer).answer, 'ok');
  const presented = clientCertificateOf(peer.output());
  assert.ok(presented, peer.output());
  assert.match(new X509Certificate(presented).subject, /CN=client\.example/);
});

test('DestinationRule SIMPLE with a CA that did not sign the server certificate is refused as UNKNOWN_CA', async (t) => {
  const { f, meshRoot } = await externalPki(t);
  const peer = await startOpensslServer(t, externalServerArgs(f));
  const client = await startClient(t, [
    {
      name: 'api.external.example:443',
      endpoints: [{ address: `127.0.0.1:${peer.port}`, tls: 'SIMPLE' }],
      expectedIdentities: [],
      tls: { caCertificates: meshRoot, sni: 'external.example' },
    },
  ]);
  const r = await exchange(client.ports[0]!, 'must-not-arrive');
  assert.deepEqual(r, { answer: undefined, closedByPeer: true });
  const out = await client.observer.nextClosed();
  assert.equal(out.outcome, 'refused');
  assert.equal(out.reason, 'UNKNOWN_CA');
  assert.doesNotMatch(peer.output(), /must-not-arrive/);
});

test('DestinationRule SIMPLE with an SNI the certificate does not carry is refused, and with a missing CA file too', async (t) => {
  const { f } = await externalPki(t);
  const tlsApp = await startTlsApp(t, 'ext', {
    chainPem: await readFile(f('server.pem'), 'utf8'),
    keyPem: await readFile(f('server.key'), 'utf8'),
    bundlePem: await readFile(f('ca.pem'), 'utf8'),
  });
  const client = await startClient(t, [
    {
      endpoints: [{ address: tlsApp.address, tls: 'SIMPLE' }],
      expectedIdentities: [],
      tls: { caCertificates: f('ca.pem'), sni: 'other.example' },
    },
    {
      endpoints: [{ address: tlsApp.address, tls: 'SIMPLE' }],
      expectedIdentities: [],
      tls: { caCertificates: f('no-such-ca.pem'), sni: 'external.example' },
    },
  ]);
  assert.equal((await exchange(client.ports[0]!, 'x')).answer, undefined);
  const wrongName = await client.observer.nextClosed();
  assert.equal(wrongName.outcome, 'refused');
  assert.equal(wrongName.reason, 'SAN_MISMATCH');
  assert.match(wrongName.message ?? '', /other\.example/);
  assert.equal((await exchange(client.ports[1]!, 'x')).answer, undefined);
  const missing = await client.observer.nextClosed();
  assert.equal(missing.outcome, 'refused');
  assert.match(missing.message ?? '', /no-such-ca\.pem/);
});

// ---------------------------------------------------------------------------------------------
// 6. Session reuse

for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
  test(`${maxVersion}: the second connection to the same endpoint resumes the TLS session and still passes secure naming`, async (t) => {
    const tlsApp = await startTlsApp(t, 'srv', SERVER, { maxVersion });
    const client = await startClient(t, [{ endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }] }]);
    assert.equal((await exchange(client.ports[0]!, 'one')).answer, 'srv:one');
    assert.equal((await tlsApp.seen.next('the first handshake')).reused, false);
    await client.observer.nextClosed();
    assert.equal((await exchange(client.ports[0]!, 'two')).answer, 'srv:two');
    const second = await tlsApp.seen.next('the second handshake');
    assert.equal(second.reused, true);
    assert.deepEqual(second.clientUris, [CLIENT_ID]);
    const out = await client.observer.nextClosed();
    assert.equal(out.outcome, 'accepted', out.message);
    assert.equal(out.destinationPrincipal, SERVER_ID);
    assert.equal(out.tlsVersion, maxVersion);
  });
}

test('DestinationRule SIMPLE: the second connection resumes the session with openssl s_server ("Reused")', async (t) => {
  const { f } = await externalPki(t);
  const peer = await startOpensslServer(t, externalServerArgs(f));
  const client = await startClient(t, [
    {
      endpoints: [{ address: `127.0.0.1:${peer.port}`, tls: 'SIMPLE' }],
      expectedIdentities: [],
      tls: { caCertificates: f('ca.pem'), sni: 'external.example' },
    },
  ]);
  for (const line of ['first', 'second']) {
    const answer = exchange(client.ports[0]!, line);
    await peer.waitFor(new RegExp(`^${line}$`, 'm'), `the ${line} line`);
    peer.send(`${line}-ok`);
    assert.equal((await answer).answer, `${line}-ok`);
    const out = await client.observer.nextClosed();
    assert.equal(out.outcome, 'accepted', out.message);
  }
  // s_server prints "Reused session-id" for a resumed handshake: only the second one.
  assert.equal(peer.output().match(/Reused session-id/g)?.length, 1, peer.output());
  assert.ok(peer.output().indexOf('Reused session-id') > peer.output().indexOf('first'));
});

test('after setIdentity a new connection presents the new certificate instead of resuming the old session', async (t) => {
  const tlsApp = await startTlsApp(t, 'srv', SERVER);
  const client = await startClient(t, [{ endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }] }]);
  assert.equal((await exchange(client.ports[0]!, 'one')).answer, 'srv:one');
  const before = await tlsApp.seen.next('the first handshake');
  await client.observer.nextClosed();
  const renewed = MESH.identity(CLIENT_ID);
  client.proxy.setIdentity(renewed);
  assert.equal((await exchange(client.ports[0]!, 'two')).answer, 'srv:two');
  const after = await tlsApp.seen.next('the second handshake');
  assert.notEqual(before.clientSerial, after.clientSerial);
  assert.equal(after.clientSerial, renewed.serial.toUpperCase());
});

test('a resumed session to an endpoint does not bypass secure naming after the expected identities change', async (t) => {
  const tlsApp = await startTlsApp(t, 'srv', SERVER);
  const client = await startClient(t, [{ endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }] }]);
  assert.equal((await exchange(client.ports[0]!, 'one')).answer, 'srv:one');
  await client.observer.nextClosed();
  const config = client.proxy.config;
  await client.proxy.applyConfig({
    ...config,
    outbound: config.outbound.map((o) => ({ ...o, expectedIdentities: [OTHER_ID] })),
  });
  assert.equal((await exchange(client.ports[0]!, 'two')).answer, undefined);
  const out = await client.observer.nextClosed();
  assert.equal(out.reason, 'SAN_MISMATCH');
  assert.ok(out.message?.includes(SERVER_ID) && out.message.includes(OTHER_ID), out.message);
});

// ---------------------------------------------------------------------------------------------
// 7. No identity yet

test('without an identity ISTIO_MUTUAL is refused (the proxy keeps running), plaintext works; after setIdentity mTLS works', async (t) => {
  const tlsApp = await startTlsApp(t, 'srv', SERVER);
  const app = await startEchoApp(t, 'plain');
  const client = await startClient(
    t,
    [
      { endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }] },
      { endpoints: [{ address: app.address, tls: 'DISABLE' }] },
    ],
    { identity: null },
  );
  assert.equal(client.proxy.isReady(), false);
  assert.deepEqual(await exchange(client.ports[0]!, 'x'), { answer: undefined, closedByPeer: true });
  const refused = await client.observer.nextClosed();
  assert.equal(refused.outcome, 'refused');
  assert.equal(refused.reason, 'HANDSHAKE_FAILED');
  assert.match(refused.message ?? '', /no certificate loaded/);
  assert.equal(tlsApp.seen.all.length, 0);
  assert.equal((await exchange(client.ports[1]!, 'y')).answer, 'plain:y');
  await client.observer.nextClosed();

  client.proxy.setIdentity(CLIENT);
  assert.equal(client.proxy.isReady(), true);
  assert.equal((await exchange(client.ports[0]!, 'z')).answer, 'srv:z');
  assert.deepEqual((await tlsApp.seen.next('the handshake')).clientUris, [CLIENT_ID]);
});

// ---------------------------------------------------------------------------------------------
// 8. Metrics and access log

interface MetricJson {
  name: string;
  values: { value: number; labels: Record<string, string | number> }[];
}

function metricValue(
  metrics: MetricJson[],
  name: string,
  labels: Record<string, string>,
): number | undefined {
  const m = metrics.find((x) => x.name === name);
  return m?.values.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))?.value;
}

test('metrics carry Istio names with reporter=source and mutual_tls; refusals are counted by reason; the access log has one JSON line per connection', async (t) => {
  const tlsApp = await startTlsApp(t, 'srv', SERVER);
  const metrics = new ProxyMetrics({ namespace: 'shop', name: 'frontend' });
  const sink = new PassThrough();
  const lines: Record<string, unknown>[] = [];
  sink.setEncoding('utf8');
  let pending = '';
  sink.on('data', (d: string) => {
    pending += d;
    for (let i = pending.indexOf('\n'); i >= 0; i = pending.indexOf('\n')) {
      lines.push(JSON.parse(pending.slice(0, i)) as Record<string, unknown>);
      pending = pending.slice(i + 1);
    }
  });
  const log = pino({ base: null }, sink);
  const client = await startClient(
    t,
    [
      { endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }] },
      {
        name: 'ledger.finance.svc.cluster.local:9090',
        endpoints: [{ address: tlsApp.address, tls: 'ISTIO_MUTUAL' }],
        expectedIdentities: [OTHER_ID],
      },
    ],
    { extraObservers: [fanOut(metrics, accessLog(log.child({ component: 'access' })))] },
  );
  assert.equal((await exchange(client.ports[0]!, 'hello')).answer, 'srv:hello');
  await client.observer.nextClosed();
  assert.equal((await exchange(client.ports[1]!, 'hello')).answer, undefined);
  await client.observer.nextClosed();

  const json = (await metrics.registry.getMetricsAsJSON()) as unknown as MetricJson[];
  const labels = {
    reporter: 'source',
    source_principal: CLIENT_ID,
    destination_principal: SERVER_ID,
    destination_service: SERVICE,
    connection_security_policy: 'mutual_tls',
  };
  assert.equal(metricValue(json, 'istio_tcp_connections_opened_total', labels), 1);
  assert.equal(metricValue(json, 'istio_tcp_connections_closed_total', labels), 1);
  assert.equal(metricValue(json, 'istio_tcp_received_bytes_total', labels), 'hello\n'.length);
  assert.equal(metricValue(json, 'istio_tcp_sent_bytes_total', labels), 'srv:hello\n'.length);
  assert.equal(
    metricValue(json, 'kmtls_connections_refused_total', {
      reason: 'SAN_MISMATCH',
      direction: 'outbound',
      port: '9090',
    }),
    1,
  );
  // The refused connection is not counted as an opened mTLS connection.
  const opened = json.find((m) => m.name === 'istio_tcp_connections_opened_total');
  assert.equal(
    opened?.values.reduce((n, v) => n + v.value, 0),
    1,
  );
  const text = await metrics.registry.metrics();
  assert.match(
    text,
    /^istio_tcp_connections_opened_total\{reporter="source",.*connection_security_policy="mutual_tls"\} 1$/m,
  );

  const accepted = lines.find((l) => l.msg === 'connection');
  assert.ok(accepted, JSON.stringify(lines));
  assert.equal(accepted.level, 30);
  assert.equal(accepted.component, 'access');
  assert.equal(accepted.direction, 'outbound');
  assert.equal(accepted.service, SERVICE);
  assert.equal(accepted.transport, 'mtls');
  assert.equal(accepted.outcome, 'accepted');
  assert.equal(accepted.sourcePrincipal, CLIENT_ID);
  assert.equal(accepted.destinationPrincipal, SERVER_ID);
  assert.equal(accepted.destination, tlsApp.address);
  assert.equal(accepted.bytesReceived, 'hello\n'.length);
  assert.equal(accepted.bytesSent, 'srv:hello\n'.length);
  const refused = lines.find((l) => l.msg === 'connection refused');
  assert.ok(refused, JSON.stringify(lines));
  assert.equal(refused.level, 40);
  assert.equal(refused.reason, 'SAN_MISMATCH');
  assert.equal(refused.service, 'ledger.finance.svc.cluster.local:9090');
  assert.match(String(refused.detail), new RegExp(`${SERVER_ID}.*${OTHER_ID}`));
  assert.equal(lines.length, 2);
});

test('kmtls sidecars resume TLS sessions with each other: the second connection is resumed and accepted on both sides', async (t) => {
  const app = await startEchoApp(t, 'app');
  const server = await startServerProxy(t, app.address);
  const client = await startClient(t, [
    { endpoints: [{ address: `127.0.0.1:${server.port}`, tls: 'ISTIO_MUTUAL' }] },
  ]);
  for (let i = 0; i < 3; i++) {
    assert.equal((await exchange(client.ports[0]!, `n${i}`)).answer, `app:n${i}`);
    const inbound = await server.observer.nextClosed();
    const outbound = await client.observer.nextClosed();
    assert.equal(inbound.outcome, 'accepted', JSON.stringify(inbound));
    assert.equal(inbound.sourcePrincipal, CLIENT_ID);
    assert.equal(outbound.destinationPrincipal, SERVER_ID);
    // The first connection is a full handshake; the ones after it resume.
    assert.equal(inbound.resumed, i > 0, `connection ${i} on the server`);
    assert.equal(outbound.resumed, i > 0, `connection ${i} on the client`);
  }
});
