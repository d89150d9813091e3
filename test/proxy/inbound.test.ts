/**
 * The sidecar's inbound side on real sockets: what each mode does with each kind of client, with
 * peers kmtls did not write (openssl s_client, curl, Python's ssl, nc), what reaches the
 * application, XFCC on HTTP ports, TLS versions and ciphers, garbage and half-closed clients,
 * connection limits, and policy and certificate changes under live connections.
 *
 * Each test starts its own proxy and applications on 127.0.0.1 and waits on events: the proxy's
 * closed ConnectionRecord, what the application received, what the client saw. Timeouts under
 * test (detection, handshake, drain) are set small in the config and awaited as events.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import net from 'node:net';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import tls from 'node:tls';
import type { ResolvedMtlsMode } from '../../src/policy/index.js';
import type { ConnectionRecord, RefusalReason, Transport } from '../../src/proxy/index.js';
import { detectTransport } from '../../src/proxy/index.js';
import type {
  AppTlsMaterial,
  ClientResult,
  InboundSpec,
  RecordingApp,
  StartedProxy,
  Workload,
} from '../helpers/mesh.js';
import {
  captureClientHello,
  certificateHash,
  createMesh,
  MESH_TCP_ALPN,
  plainClient,
  pythonAlpnClient,
  startEchoApp,
  startHttpApp,
  startProxy,
  startTlsApp,
  tlsClient,
  urisOf,
} from '../helpers/mesh.js';
import type { PeerRun } from '../helpers/peers.js';
import { opensslClient, runPeer, writeTempFiles } from '../helpers/peers.js';

const TEST = { timeout: 20_000 };

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/server';
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/client';

const mesh = createMesh();
const server = mesh.issue(SERVER_ID);
const client = mesh.issue(CLIENT_ID);
const foreignClient = mesh.foreign(CLIENT_ID);
const expiredClient = mesh.expired(CLIENT_ID);
const otherTdClient = mesh.otherTrustDomain('ns/shop/sa/client');
const appTls = mesh.appTls();

const PING = 'ping\n';

/** The closed record of the next connection, checked for the fields every inbound record carries. */
async function nextRecord(p: StartedProxy, port: number): Promise<ConnectionRecord> {
  const rec = await p.observer.nextClosed((c) => c.port === port, `a closed connection on port ${port}`);
  assert.equal(rec.direction, 'inbound');
  assert.ok(rec.outcome, 'a closed connection has an outcome');
  return rec;
}

function assertRefused(rec: ConnectionRecord, reason: RefusalReason, policy: string): void {
  assert.equal(rec.outcome, 'refused', `expected a refusal (${reason}), got ${JSON.stringify(rec)}`);
  assert.equal(rec.reason, reason, rec.message);
  assert.equal(rec.policy, policy);
  assert.equal(rec.sourcePrincipal, undefined);
}

function assertMtls(rec: ConnectionRecord, policy: string): void {
  assert.equal(rec.outcome, 'accepted', `expected mTLS accepted, got ${JSON.stringify(rec)}`);
  assert.equal(rec.reason, undefined);
  assert.equal(rec.transport, 'mtls');
  assert.equal(rec.sourcePrincipal, CLIENT_ID);
  assert.equal(rec.destinationPrincipal, SERVER_ID);
  assert.equal(rec.policy, policy);
}

function assertPassedThrough(rec: ConnectionRecord, transport: Transport, policy: string): void {
  assert.equal(rec.outcome, 'accepted', `expected ${transport} passed through, got ${JSON.stringify(rec)}`);
  assert.equal(rec.reason, undefined);
  assert.equal(rec.transport, transport);
  assert.equal(rec.sourcePrincipal, undefined);
  assert.equal(rec.destinationPrincipal, undefined);
  assert.equal(rec.policy, policy);
}

/** The application saw a TLS ClientHello offering exactly these ALPN values, not decrypted data. */
function assertRawClientHello(received: Buffer, alpn: readonly string[]): void {
  const d = detectTransport(received);
  assert.equal(d.kind, 'tls', `the application got ${received.subarray(0, 16).toString('hex')}…`);
  assert.deepEqual(d.kind === 'tls' ? d.alpn : [], alpn);
}

/** New application connections made by `run`, which returns once its connection is closed. */
async function newConnections<T>(
  app: RecordingApp,
  run: () => Promise<T>,
): Promise<{ result: T; added: number }> {
  const before = app.connections.length;
  const result = await run();
  return { result, added: app.connections.length - before };
}

// ---------------------------------------------------------------------------------------------
// openssl s_client as an application-TLS client (no client certificate, the app's CA trusted)

interface AppTlsRun {
  readonly raw: PeerRun;
  /** The first certificate the server sent, DER. */
  readonly serverCertificate: Buffer | undefined;
  readonly verified: boolean;
}

async function opensslAppTls(
  t: TestContext,
  port: number,
  material: AppTlsMaterial,
  extraArgs: readonly string[],
): Promise<AppTlsRun> {
  const files = await writeTempFiles(t, { 'ca.pem': material.caPem });
  // No -verify_return_error: the client goes on whoever answers, so a proxy that terminates this
  // TLS (instead of the application) shows up as its certificate, and refuses with its own reason.
  const raw = await runPeer(
    t,
    'openssl',
    [
      's_client',
      '-connect',
      `127.0.0.1:${port}`,
      '-CAfile',
      files['ca.pem'],
      '-showcerts',
      '-ign_eof',
      ...extraArgs,
    ],
    { input: 'hello\n' },
  );
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(raw.stdout)?.[0];
  return {
    raw,
    serverCertificate: pem ? Buffer.from(new X509Certificate(pem).raw) : undefined,
    verified: /^Verify return code: 0 \(ok\)$/m.test(raw.stdout),
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Every mode × every kind of client

const MODES: readonly ResolvedMtlsMode[] = ['STRICT', 'PERMISSIVE', 'DISABLE'];
/** The workload port behind which a TCP echo application runs, and the one for an app with its own TLS. */
const ECHO_PORT = 9000;
const APP_TLS_PORT = 9443;

interface MatrixContext {
  readonly t: TestContext;
  readonly mode: ResolvedMtlsMode;
  readonly policy: string;
  readonly proxy: StartedProxy;
  readonly echo: RecordingApp;
  readonly tlsApp: RecordingApp;
}

/** A client that sends the mesh ALPN with these credentials; refused on STRICT and PERMISSIVE with `reason`, passed on uninspected (`raw`) on DISABLE. */
function badCertificateCase(name: string, creds: Workload | undefined, reason: RefusalReason) {
  return {
    name: `${name}, mesh ALPN`,
    run: async ({ t, mode, policy, proxy, echo }: MatrixContext) => {
      const { result, added } = await newConnections(echo, async () => {
        const r = await tlsClient(t, proxy.listenPort(ECHO_PORT), {
          ...(creds ? { creds } : { trustPem: mesh.bundlePem }),
          alpn: MESH_TCP_ALPN,
          send: PING,
          expectBytes: PING.length,
        });
        return { r, rec: await nextRecord(proxy, ECHO_PORT) };
      });
      if (mode === 'DISABLE') {
        // Passed through as it arrived: the echo application got the ClientHello itself.
        assertPassedThrough(result.rec, 'raw', policy);
        assert.equal(added, 1);
        assertRawClientHello(echo.connections.at(-1)!.received, MESH_TCP_ALPN);
        assert.equal(result.r.secure, false, 'no TLS server answered');
        return;
      }
      assertRefused(result.rec, reason, policy);
      assert.equal(result.rec.transport, 'mtls');
      assert.equal(added, 0, 'a refused peer never reaches the application');
      assert.equal(result.r.received.length, 0);
    },
  };
}

const MATRIX: readonly { name: string; run: (c: MatrixContext) => Promise<void> }[] = [
  {
    name: 'plaintext (node net)',
    run: async ({ t, mode, policy, proxy, echo }) => {
      const { result, added } = await newConnections(echo, async () => {
        const r = await plainClient(t, proxy.listenPort(ECHO_PORT), { send: PING, expectBytes: PING.length });
        return { r, rec: await nextRecord(proxy, ECHO_PORT) };
      });
      if (mode === 'STRICT') {
        assertRefused(result.rec, 'PLAINTEXT_REJECTED', policy);
        assert.match(result.rec.message ?? '', new RegExp(`STRICT port ${ECHO_PORT} \\(policy ${policy}\\)`));
        assert.equal(added, 0);
        assert.equal(result.r.received.length, 0);
        return;
      }
      assertPassedThrough(result.rec, mode === 'DISABLE' ? 'raw' : 'plaintext', policy);
      assert.equal(added, 1);
      assert.equal(echo.connections.at(-1)!.received.toString(), PING);
      assert.equal(result.r.received.toString(), PING);
      assert.equal(result.rec.bytesReceived, PING.length);
      assert.equal(result.rec.bytesSent, PING.length);
    },
  },
  {
    name: 'plaintext (nc -N: raw bytes, then half-close)',
    run: async ({ t, mode, policy, proxy, echo }) => {
      const bytes = 'raw\r\n\u0000bytes\u0000\r\n';
      const { result, added } = await newConnections(echo, async () => {
        const r = await runPeer(t, 'nc', ['-N', '127.0.0.1', String(proxy.listenPort(ECHO_PORT))], {
          input: bytes,
        });
        return { r, rec: await nextRecord(proxy, ECHO_PORT) };
      });
      if (mode === 'STRICT') {
        assertRefused(result.rec, 'PLAINTEXT_REJECTED', policy);
        assert.equal(added, 0);
        assert.equal(result.r.stdout, '');
        return;
      }
      assertPassedThrough(result.rec, mode === 'DISABLE' ? 'raw' : 'plaintext', policy);
      assert.equal(added, 1);
      assert.deepEqual(echo.connections.at(-1)!.received, Buffer.from(bytes));
      // nc ends its side after stdin; the answer must still come back (TCP half-close).
      assert.equal(result.r.stdout, bytes);
    },
  },
  {
    name: 'mesh mTLS (node tls, ALPN istio-peer-exchange,istio, mesh certificate)',
    run: async ({ t, mode, policy, proxy, echo }) => {
      const { result, added } = await newConnections(echo, async () => {
        const r = await tlsClient(t, proxy.listenPort(ECHO_PORT), {
          creds: client,
          alpn: MESH_TCP_ALPN,
          send: PING,
          expectBytes: PING.length,
        });
        return { r, rec: await nextRecord(proxy, ECHO_PORT) };
      });
      assert.equal(added, 1);
      if (mode === 'DISABLE') {
        assertPassedThrough(result.rec, 'raw', policy);
        assertRawClientHello(echo.connections.at(-1)!.received, MESH_TCP_ALPN);
        assert.equal(result.r.secure, false);
        return;
      }
      assertMtls(result.rec, policy);
      assert.equal(result.rec.alpn, 'istio-peer-exchange,istio');
      assert.equal(result.rec.tlsVersion, 'TLSv1.3');
      assert.equal(result.r.secure, true);
      assert.deepEqual(urisOf(result.r.serverCertificate!), [SERVER_ID]);
      assert.equal(result.r.received.toString(), PING);
      // The application got the decrypted bytes, nothing else.
      assert.equal(echo.connections.at(-1)!.received.toString(), PING);
    },
  },
  ...(['none', 'h2'] as const).map((alpn) => ({
    name: `application TLS (openssl s_client, ${alpn === 'none' ? 'no ALPN' : '-alpn h2'}, no client certificate)`,
    run: async ({ t, mode, policy, proxy, tlsApp }: MatrixContext) => {
      const { result, added } = await newConnections(tlsApp, async () => {
        const r = await opensslAppTls(
          t,
          proxy.listenPort(APP_TLS_PORT),
          appTls,
          alpn === 'h2' ? ['-alpn', 'h2'] : [],
        );
        return { r, rec: await nextRecord(proxy, APP_TLS_PORT) };
      });
      if (mode === 'STRICT') {
        // STRICT terminates any TLS: the client met the sidecar's certificate, then was refused.
        assertRefused(result.rec, 'NO_CLIENT_CERT', policy);
        assert.equal(added, 0);
        assert.deepEqual(urisOf(result.r.serverCertificate!), [SERVER_ID]);
        assert.equal(result.r.verified, false);
        return;
      }
      assertPassedThrough(result.rec, mode === 'PERMISSIVE' ? 'app-tls' : 'raw', policy);
      // DISABLE on a TCP port inspects nothing, so it never saw an ALPN.
      assert.equal(result.rec.alpn, mode === 'DISABLE' ? undefined : alpn === 'h2' ? 'h2' : '');
      // End to end with the application's own certificate: the sidecar did not touch this TLS.
      assert.equal(added, 1);
      assert.ok(result.r.verified, result.r.raw.stdout);
      assert.deepEqual(result.r.serverCertificate, appTls.leafDer);
      assert.ok(result.r.raw.stdout.includes('hello\n'), result.r.raw.stdout);
      assert.equal(tlsApp.connections.at(-1)!.received.toString(), 'hello\n');
    },
  })),
  badCertificateCase('TLS without a client certificate', undefined, 'NO_CLIENT_CERT'),
  badCertificateCase('a certificate from another CA', foreignClient, 'UNKNOWN_CA'),
  badCertificateCase('an expired certificate', expiredClient, 'CERT_EXPIRED'),
  badCertificateCase(
    'a certificate of another trust domain (root trusted)',
    otherTdClient,
    'UNTRUSTED_TRUST_DOMAIN',
  ),
];

for (const mode of MODES) {
  test(`${mode}: every kind of client`, TEST, async (t) => {
    const policy = `shop/${mode.toLowerCase()}`;
    const echo = await startEchoApp(t);
    const tlsApp = await startTlsApp(t, appTls);
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [
        { port: ECHO_PORT, mode, forward: echo.address, policy },
        { port: APP_TLS_PORT, mode, forward: tlsApp.address, policy },
      ],
      limits: { detectTimeoutMs: 50, handshakeTimeoutMs: 2_000 },
    });
    for (const c of MATRIX) {
      await t.test(c.name, () => c.run({ t, mode, policy, proxy, echo, tlsApp }));
    }
  });
}

test(
  'PERMISSIVE: a ClientHello is mesh mTLS when its ALPN holds an Istio mesh value, else application TLS',
  TEST,
  async (t) => {
    const tlsApp = await startTlsApp(t, appTls);
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: APP_TLS_PORT, mode: 'PERMISSIVE', forward: tlsApp.address }],
    });
    const cases: readonly { alpn: readonly string[] | undefined; transport: Transport }[] = [
      { alpn: ['istio'], transport: 'mtls' },
      { alpn: ['istio-peer-exchange'], transport: 'mtls' },
      { alpn: ['istio-http/1.0'], transport: 'mtls' },
      { alpn: ['istio-http/1.1', 'istio', 'http/1.1'], transport: 'mtls' },
      { alpn: ['h2', 'istio-h2'], transport: 'mtls' },
      { alpn: undefined, transport: 'app-tls' },
      { alpn: ['h2', 'http/1.1'], transport: 'app-tls' },
      { alpn: ['ISTIO'], transport: 'app-tls' },
      { alpn: ['istio-grpc'], transport: 'app-tls' },
    ];
    for (const c of cases) {
      const r = await tlsClient(t, proxy.listenPort(APP_TLS_PORT), {
        creds: client,
        trustPem: mesh.bundlePem + appTls.caPem,
        ...(c.alpn ? { alpn: c.alpn } : {}),
        handshakeOnly: true,
      });
      const rec = await nextRecord(proxy, APP_TLS_PORT);
      const label = JSON.stringify(c.alpn);
      assert.equal(rec.transport, c.transport, label);
      assert.equal(rec.alpn, (c.alpn ?? []).join(','), label);
      // Who answered the handshake: the sidecar for mesh mTLS, the application for its own TLS.
      assert.deepEqual(r.serverCertificate, c.transport === 'mtls' ? server.leafDer : appTls.leafDer, label);
    }
  },
);

// ---------------------------------------------------------------------------------------------
// 2. Clients kmtls did not write

test('openssl s_client -cert -key -CAfile -alpn istio is accepted on STRICT', TEST, async (t) => {
  const echo = await startEchoApp(t, { endAfterLine: true });
  const proxy = await startProxy(t, {
    identity: server.identity,
    inbound: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy: 'shop/strict' }],
  });
  const r = await opensslClient(t, proxy.listenPort(ECHO_PORT), client, {
    line: 'hello from openssl',
    extraArgs: ['-alpn', 'istio'],
  });
  const rec = await nextRecord(proxy, ECHO_PORT);
  assert.ok(r.handshake, r.raw.stdout + r.raw.stderr);
  assert.equal(r.protocol, 'TLSv1.3');
  assert.deepEqual(r.serverUris, [SERVER_ID]);
  assert.ok(r.raw.stdout.includes('hello from openssl\n'), r.raw.stdout);
  assertMtls(rec, 'shop/strict');
  assert.equal(rec.alpn, 'istio');
  assert.equal(echo.connections[0]!.received.toString(), 'hello from openssl\n');
});

test(
  'curl --cert to a STRICT HTTP port: the application gets Istio XFCC for the client certificate',
  TEST,
  async (t) => {
    const app = await startHttpApp(t);
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [
        { port: 8080, mode: 'STRICT', protocol: 'http', forward: app.address, policy: 'shop/strict' },
      ],
    });
    const files = await writeTempFiles(t, {
      'cert.pem': client.chainPem,
      'key.pem': client.keyPem,
      'ca.pem': mesh.bundlePem,
    });
    // curl cannot offer the 'istio' ALPN; STRICT terminates any TLS. -k: the mesh certificate names no host.
    const r = await runPeer(t, 'curl', [
      '-sS',
      '--http1.1',
      '--cert',
      files['cert.pem'],
      '--key',
      files['key.pem'],
      '--cacert',
      files['ca.pem'],
      '-k',
      '-H',
      'x-forwarded-client-cert: By=spiffe://evil/ns/x/sa/y;URI=spiffe://cluster.local/ns/kube-system/sa/admin',
      `https://127.0.0.1:${proxy.listenPort(8080)}/orders?id=1`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'app saw GET /orders?id=1\n');
    const req = await app.nextRequest();
    assert.equal(
      req.headers['x-forwarded-client-cert'],
      `By=${SERVER_ID};Hash=${certificateHash(client.leafDer)};Subject="";URI=${CLIENT_ID}`,
    );
    assert.equal(req.url, '/orders?id=1');
    assert.equal(app.connections(), 1);
    const rec = await nextRecord(proxy, 8080);
    assertMtls(rec, 'shop/strict');
    assert.deepEqual(
      proxy.observer.requests.map((q) => [q.method, q.path, q.status, q.connection.sourcePrincipal]),
      [['GET', '/orders?id=1', 200, CLIENT_ID]],
    );
  },
);

for (const mode of ['STRICT', 'PERMISSIVE'] as const) {
  test(`Python ssl with set_alpn_protocols(['istio']) is accepted on ${mode}`, TEST, async (t) => {
    const echo = await startEchoApp(t, { endAfterLine: true });
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode, forward: echo.address, policy: 'shop/p' }],
    });
    const r = await pythonAlpnClient(t, proxy.listenPort(ECHO_PORT), client, {
      alpn: ['istio'],
      line: 'hello from python',
    });
    assert.ok(r.handshake, `${r.error ?? ''} ${r.raw.stderr}`);
    assert.equal(r.protocol, 'TLSv1.3');
    assert.deepEqual(r.serverUris, [SERVER_ID]);
    assert.equal(r.answer, 'hello from python\n');
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertMtls(rec, 'shop/p');
    assert.equal(rec.alpn, 'istio');
  });
}

// ---------------------------------------------------------------------------------------------
// 3. STRICT never hands the application a byte before the peer is verified

test(
  'STRICT: no refused client ever reaches the application, not a connection, not a byte',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const policy = 'shop/strict';
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy }],
      limits: { handshakeTimeoutMs: 2_000 },
    });
    const port = proxy.listenPort(ECHO_PORT);
    const hello = await captureClientHello(t, { alpn: MESH_TCP_ALPN });
    const attempts: readonly { name: string; run: () => Promise<unknown>; reason: RefusalReason }[] = [
      { name: 'plaintext', run: () => plainClient(t, port, { send: PING }), reason: 'PLAINTEXT_REJECTED' },
      {
        name: 'an HTTP request',
        run: () => plainClient(t, port, { send: 'GET / HTTP/1.1\r\nhost: server\r\n\r\n' }),
        reason: 'PLAINTEXT_REJECTED',
      },
      {
        name: 'garbage',
        run: () =>
          plainClient(t, port, { send: Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i)) }),
        reason: 'PLAINTEXT_REJECTED',
      },
      {
        name: 'a truncated ClientHello, then close',
        run: () => plainClient(t, port, { send: hello.subarray(0, 40), endAfterSend: true }),
        reason: 'PLAINTEXT_REJECTED',
      },
      {
        name: 'a TLS hello without a certificate',
        run: () => tlsClient(t, port, { trustPem: mesh.bundlePem, alpn: MESH_TCP_ALPN, send: PING }),
        reason: 'NO_CLIENT_CERT',
      },
      {
        name: 'mTLS with a certificate from another CA',
        run: () => tlsClient(t, port, { creds: foreignClient, alpn: MESH_TCP_ALPN, send: PING }),
        reason: 'UNKNOWN_CA',
      },
    ];
    for (const a of attempts) {
      await a.run();
      assertRefused(await nextRecord(proxy, ECHO_PORT), a.reason, policy);
      assert.equal(echo.connections.length, 0, `${a.name}: the application saw a connection`);
      assert.equal(echo.bytesReceived(), 0, `${a.name}: the application saw bytes`);
    }
    // The same port and application do let a verified peer through.
    const ok = await tlsClient(t, port, {
      creds: client,
      alpn: MESH_TCP_ALPN,
      send: PING,
      expectBytes: PING.length,
    });
    assert.equal(ok.received.toString(), PING);
    assertMtls(await nextRecord(proxy, ECHO_PORT), policy);
    assert.equal(echo.connections.length, 1);
    assert.equal(echo.bytesReceived(), PING.length);
  },
);

// ---------------------------------------------------------------------------------------------
// 4. XFCC on HTTP ports; TCP ports are byte for byte

/** An HTTP/1.1 request over a raw socket, so headers go out exactly as written. */
function rawHttp(path: string, headers: Record<string, string>): string {
  const lines = [
    `GET ${path} HTTP/1.1`,
    'host: server',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  return `${lines.join('\r\n')}\r\nconnection: close\r\n\r\n`;
}

const FORGED_XFCC =
  'By=spiffe://cluster.local/ns/shop/sa/server;URI=spiffe://cluster.local/ns/kube-system/sa/admin';

for (const mode of ['PERMISSIVE', 'DISABLE'] as const) {
  test(
    `${mode} HTTP port: a client's own x-forwarded-client-cert is removed on the plaintext path`,
    TEST,
    async (t) => {
      const app = await startHttpApp(t);
      const proxy = await startProxy(t, {
        identity: server.identity,
        inbound: [{ port: 8080, mode, protocol: 'http', forward: app.address, policy: 'shop/web' }],
      });
      const r = await plainClient(t, proxy.listenPort(8080), {
        send: rawHttp('/plain', { 'x-forwarded-client-cert': FORGED_XFCC, 'x-request-id': 'abc' }),
      });
      assert.match(r.received.toString(), /^HTTP\/1\.1 200 OK\r\n/);
      assert.ok(r.received.toString().includes('app saw GET /plain\n'));
      const req = await app.nextRequest();
      assert.equal(req.headers['x-forwarded-client-cert'], undefined);
      assert.equal(req.headers['x-request-id'], 'abc', 'other headers pass');
      assertPassedThrough(await nextRecord(proxy, 8080), 'plaintext', 'shop/web');
    },
  );
}

for (const mode of ['PERMISSIVE', 'DISABLE'] as const) {
  test(
    `${mode} HTTP port: TLS without the mesh ALPN is refused UNEXPECTED_TLS and never reaches the application, as no Istio filter chain takes it`,
    TEST,
    async (t) => {
      const app = await startHttpApp(t);
      const proxy = await startProxy(t, {
        identity: server.identity,
        inbound: [{ port: 8080, mode, protocol: 'http', forward: app.address, policy: 'shop/web' }],
      });
      await opensslAppTls(t, proxy.listenPort(8080), appTls, ['-alpn', 'http/1.1']);
      const rec = await nextRecord(proxy, 8080);
      assertRefused(rec, 'UNEXPECTED_TLS', 'shop/web');
      assert.equal(app.requests.length, 0);
    },
  );
}

for (const mode of ['STRICT', 'PERMISSIVE'] as const) {
  test(
    `${mode} HTTP port: on the mTLS path a forged XFCC is replaced by the verified peer's`,
    TEST,
    async (t) => {
      const app = await startHttpApp(t);
      const proxy = await startProxy(t, {
        identity: server.identity,
        inbound: [{ port: 8080, mode, protocol: 'http', forward: app.address, policy: 'shop/web' }],
      });
      // https passes the TLS options, ALPN included, to tls.connect.
      const options: https.RequestOptions & tls.ConnectionOptions = {
        host: '127.0.0.1',
        port: proxy.listenPort(8080),
        path: '/mtls',
        cert: client.chainPem,
        key: client.keyPem,
        ca: mesh.bundlePem,
        checkServerIdentity: () => undefined,
        // What a client sidecar offers on an HTTP/1.1 port (Istio's istio.alpn filter).
        ALPNProtocols: ['istio-http/1.1', 'istio', 'http/1.1'],
        headers: { 'x-forwarded-client-cert': FORGED_XFCC },
        agent: false,
      };
      const body = await new Promise<string>((resolve, reject) => {
        const req = https.request(options, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            text += d;
          });
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.end();
      });
      assert.equal(body, 'app saw GET /mtls\n');
      const seen = await app.nextRequest();
      assert.equal(
        seen.headers['x-forwarded-client-cert'],
        `By=${SERVER_ID};Hash=${certificateHash(client.leafDer)};Subject="";URI=${CLIENT_ID}`,
      );
      const rec = await nextRecord(proxy, 8080);
      assertMtls(rec, 'shop/web');
      assert.equal(rec.alpn, 'istio-http/1.1,istio,http/1.1');
    },
  );
}

test('TCP ports carry bytes exactly: CR LF, NULs, every byte value, a header-like line', TEST, async (t) => {
  const echo = await startEchoApp(t);
  const proxy = await startProxy(t, {
    identity: server.identity,
    inbound: [
      { port: 9001, mode: 'PERMISSIVE', forward: echo.address },
      { port: 9002, mode: 'STRICT', forward: echo.address },
      { port: 9003, mode: 'DISABLE', forward: echo.address },
    ],
  });
  // Starts like an HTTP header so that detection sees plaintext; nothing may rewrite it.
  const payload = Buffer.concat([
    Buffer.from(`x-forwarded-client-cert: ${FORGED_XFCC}\r\n\r\n`),
    Buffer.from([0, 0, 13, 10, 0, 10, 13]),
    Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
    Buffer.alloc(100_000, 0),
  ]);
  const runs: readonly [number, () => Promise<ClientResult>][] = [
    [9001, () => plainClient(t, proxy.listenPort(9001), { send: payload, expectBytes: payload.length })],
    [
      9002,
      () =>
        tlsClient(t, proxy.listenPort(9002), {
          creds: client,
          alpn: MESH_TCP_ALPN,
          send: payload,
          expectBytes: payload.length,
        }),
    ],
    [9003, () => plainClient(t, proxy.listenPort(9003), { send: payload, expectBytes: payload.length })],
  ];
  for (const [port, run] of runs) {
    const r = await run();
    const rec = await nextRecord(proxy, port);
    assert.equal(rec.outcome, 'accepted', `port ${port}: ${JSON.stringify(rec)}`);
    assert.ok(r.received.equals(payload), `port ${port}: the echo came back altered`);
    assert.ok(
      echo.connections.at(-1)!.received.equals(payload),
      `port ${port}: the application got altered bytes`,
    );
    assert.equal(rec.bytesReceived, payload.length);
    assert.equal(rec.bytesSent, payload.length);
  }
});

// ---------------------------------------------------------------------------------------------
// 5. Server-first protocols

for (const mode of ['PERMISSIVE', 'DISABLE'] as const) {
  test(
    `${mode}: a server-first application greets a silent client after the detect timeout`,
    TEST,
    async (t) => {
      const greeting = '220 server ready\r\n';
      const app = await startEchoApp(t, { greeting });
      const proxy = await startProxy(t, {
        identity: server.identity,
        inbound: [{ port: 2525, mode, forward: app.address, policy: 'shop/smtp' }],
        // The handshake timeout is far beyond the client's deadline: only detectTimeoutMs may apply.
        limits: { detectTimeoutMs: 50, handshakeTimeoutMs: 60_000 },
      });
      const r = await plainClient(t, proxy.listenPort(2525), {
        awaitGreetingBytes: greeting.length,
        send: 'QUIT\r\n',
        expectBytes: greeting.length + 6,
      });
      assert.equal(r.received.toString(), `${greeting}QUIT\r\n`);
      assertPassedThrough(
        await nextRecord(proxy, 2525),
        mode === 'DISABLE' ? 'raw' : 'plaintext',
        'shop/smtp',
      );
      // One client, one application connection: the client's later close must not open another.
      assert.equal(app.connections.length, 1);
      await app.until(
        () => (app.connections[0]!.closed ? true : undefined),
        'the application connection to close',
      );
      assert.equal(app.connections.length, 1);
    },
  );
}

// ---------------------------------------------------------------------------------------------
// 6. TLS versions and ciphers

test('TLS: 1.3 by default, 1.2 with AEAD suites only, TLS 1.1 refused as TLS_VERSION', TEST, async (t) => {
  const echo = await startEchoApp(t, { endAfterLine: true });
  const policy = 'shop/strict';
  const proxy = await startProxy(t, {
    identity: server.identity,
    inbound: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy }],
  });
  const port = proxy.listenPort(ECHO_PORT);

  await t.test('node default → TLSv1.3', async () => {
    const r = await tlsClient(t, port, {
      creds: client,
      alpn: MESH_TCP_ALPN,
      send: PING,
      expectBytes: PING.length,
    });
    assert.equal(r.protocol, 'TLSv1.3');
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertMtls(rec, policy);
    assert.equal(rec.tlsVersion, 'TLSv1.3');
    assert.match(rec.cipher ?? '', /^TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$/);
  });

  await t.test('node capped at 1.2 → TLSv1.2 with an ECDHE AEAD suite', async () => {
    const r = await tlsClient(t, port, {
      creds: client,
      alpn: MESH_TCP_ALPN,
      maxVersion: 'TLSv1.2',
      send: PING,
      expectBytes: PING.length,
    });
    assert.equal(r.protocol, 'TLSv1.2');
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertMtls(rec, policy);
    assert.equal(rec.tlsVersion, 'TLSv1.2');
    assert.match(rec.cipher ?? '', /^ECDHE-ECDSA-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/);
  });

  await t.test('openssl -tls1_2 with an AEAD suite → accepted (control)', async () => {
    const r = await opensslClient(t, port, client, {
      extraArgs: ['-alpn', 'istio', '-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256'],
    });
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertMtls(rec, policy);
    assert.equal(rec.tlsVersion, 'TLSv1.2');
    assert.equal(rec.cipher, 'ECDHE-ECDSA-AES128-GCM-SHA256');
    assert.equal(r.protocol, 'TLSv1.2');
    assert.ok(r.raw.stdout.includes('hello\n'), 'the echo came back');
  });

  // AES128-SHA needs an RSA key the sidecar does not have; the ECDSA CBC suites are the ones the
  // server could pick if it allowed non-AEAD suites.
  for (const cipher of ['AES128-SHA', 'ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA384']) {
    await t.test(`openssl -tls1_2 -cipher ${cipher} → refused`, async () => {
      const before = echo.connections.length;
      const r = await opensslClient(t, port, client, {
        extraArgs: ['-alpn', 'istio', '-tls1_2', '-cipher', cipher],
      });
      const rec = await nextRecord(proxy, ECHO_PORT);
      assertRefused(rec, 'HANDSHAKE_FAILED', policy);
      assert.ok(!r.raw.stdout.includes('hello\n'));
      assert.match(rec.message ?? '', /no shared cipher/i);
      assert.equal(echo.connections.length, before);
    });
  }

  await t.test('openssl -tls1_1 → refused TLS_VERSION', async () => {
    const r = await opensslClient(t, port, client, {
      extraArgs: ['-alpn', 'istio', '-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0'],
    });
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertRefused(rec, 'TLS_VERSION', policy);
    assert.match(r.raw.stderr, /alert protocol version/);
    assert.equal(rec.tlsVersion, undefined);
  });
});

// ---------------------------------------------------------------------------------------------
// 7. Robustness

test(
  'garbage, truncated and silent clients are refused by name, and the proxy keeps serving',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const policy = 'shop/strict';
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy }],
      limits: { handshakeTimeoutMs: 50 },
    });
    const port = proxy.listenPort(ECHO_PORT);
    const hello = await captureClientHello(t, { alpn: MESH_TCP_ALPN });

    const raw = (bytes: Buffer | undefined, end: boolean): Promise<ClientResult> =>
      plainClient(t, port, { ...(bytes ? { send: bytes } : {}), endAfterSend: end });

    await t.test('bytes that start like TLS and turn to garbage → PLAINTEXT_REJECTED', async () => {
      await raw(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff]), Buffer.alloc(64, 0xee)]), false);
      assertRefused(await nextRecord(proxy, ECHO_PORT), 'PLAINTEXT_REJECTED', policy);
    });
    await t.test('a truncated ClientHello, then half-close → PLAINTEXT_REJECTED', async () => {
      await raw(hello.subarray(0, hello.length - 10), true);
      assertRefused(await nextRecord(proxy, ECHO_PORT), 'PLAINTEXT_REJECTED', policy);
    });
    await t.test(
      'a truncated ClientHello, then silence → refused once the handshake timeout passes',
      async () => {
        await raw(hello.subarray(0, 20), false);
        assertRefused(await nextRecord(proxy, ECHO_PORT), 'PLAINTEXT_REJECTED', policy);
      },
    );
    await t.test('nothing at all → HANDSHAKE_TIMEOUT', async () => {
      const r = await raw(undefined, false);
      assert.equal(r.received.length, 0);
      const rec = await nextRecord(proxy, ECHO_PORT);
      assertRefused(rec, 'HANDSHAKE_TIMEOUT', policy);
    });
    await t.test('a whole ClientHello, then silence → HANDSHAKE_TIMEOUT', async () => {
      await raw(hello, false);
      const rec = await nextRecord(proxy, ECHO_PORT);
      assertRefused(rec, 'HANDSHAKE_TIMEOUT', policy);
      assert.equal(rec.alpn, 'istio-peer-exchange,istio');
    });
    await t.test('a TLS record of garbage after a valid ClientHello → HANDSHAKE_FAILED', async () => {
      await raw(
        Buffer.concat([hello, Buffer.from([0x16, 0x03, 0x03, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef])]),
        false,
      );
      assertRefused(await nextRecord(proxy, ECHO_PORT), 'HANDSHAKE_FAILED', policy);
    });
    await t.test('after all that, a mesh client is served', async () => {
      const r = await tlsClient(t, port, {
        creds: client,
        alpn: MESH_TCP_ALPN,
        send: PING,
        expectBytes: PING.length,
      });
      assert.equal(r.received.toString(), PING);
      assertMtls(await nextRecord(proxy, ECHO_PORT), policy);
      assert.equal(echo.connections.length, 1);
      assert.equal(echo.bytesReceived(), PING.length);
    });
  },
);

test(
  'STRICT: a client that leaves during the handshake is refused at once, not after the handshake timeout',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const policy = 'shop/strict';
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy }],
      // Far beyond the waits' deadline: only the client's leaving may end these connections.
      limits: { handshakeTimeoutMs: 60_000 },
    });
    const port = proxy.listenPort(ECHO_PORT);
    const hello = await captureClientHello(t, { alpn: MESH_TCP_ALPN });
    const leave = (bytes: Buffer, how: 'end' | 'reset'): Promise<void> =>
      new Promise<void>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port }, () => {
          s.write(bytes, () => {
            if (how === 'end') s.end();
            else s.resetAndDestroy();
            resolve();
          });
        });
        s.on('error', () => undefined);
        t.after(() => s.destroy());
      });

    await t.test('a whole ClientHello, then FIN → HANDSHAKE_FAILED', async () => {
      await leave(hello, 'end');
      const rec = await nextRecord(proxy, ECHO_PORT);
      assertRefused(rec, 'HANDSHAKE_FAILED', policy);
      assert.match(rec.message ?? '', /closed the connection during the TLS handshake/);
    });
    await t.test('a whole ClientHello, then reset → HANDSHAKE_FAILED', async () => {
      await leave(hello, 'reset');
      assertRefused(await nextRecord(proxy, ECHO_PORT), 'HANDSHAKE_FAILED', policy);
    });
    await t.test('part of a ClientHello, then FIN → PLAINTEXT_REJECTED (not TLS)', async () => {
      await leave(hello.subarray(0, 30), 'end');
      assertRefused(await nextRecord(proxy, ECHO_PORT), 'PLAINTEXT_REJECTED', policy);
    });
    await t.test('part of a ClientHello, then reset → refused', async () => {
      await leave(hello.subarray(0, 30), 'reset');
      assert.equal((await nextRecord(proxy, ECHO_PORT)).outcome, 'refused');
    });
    assert.equal(echo.connections.length, 0);
  },
);

test('half-close: a client that ends its side after sending still gets the whole answer', TEST, async (t) => {
  const echo = await startEchoApp(t);
  const proxy = await startProxy(t, {
    identity: server.identity,
    inbound: [
      { port: 9001, mode: 'PERMISSIVE', forward: echo.address },
      { port: 9002, mode: 'STRICT', forward: echo.address },
      { port: 9003, mode: 'DISABLE', forward: echo.address },
    ],
  });
  const request = Buffer.alloc(256 * 1024, 'half-close ');
  const cases: readonly [number, () => Promise<ClientResult>][] = [
    [9001, () => plainClient(t, proxy.listenPort(9001), { send: request, endAfterSend: true })],
    [
      9002,
      () =>
        tlsClient(t, proxy.listenPort(9002), {
          creds: client,
          alpn: MESH_TCP_ALPN,
          send: request,
          endAfterSend: true,
        }),
    ],
    [9003, () => plainClient(t, proxy.listenPort(9003), { send: request, endAfterSend: true })],
  ];
  for (const [port, run] of cases) {
    // The client waits for the server to close: it gets there only once the echo has been relayed.
    const r = await run();
    assert.equal(r.error, undefined, `port ${port}`);
    assert.ok(
      r.received.equals(request),
      `port ${port}: got ${r.received.length} of ${request.length} bytes back`,
    );
    const rec = await nextRecord(proxy, port);
    assert.equal(rec.outcome, 'accepted');
    assert.equal(rec.bytesSent, request.length);
    assert.ok(echo.connections.at(-1)!.ended, 'the application saw the half-close');
  }
});

test(
  'PERMISSIVE: a connection that ends inside what looks like a ClientHello is passed through, bytes intact',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode: 'PERMISSIVE', forward: echo.address }],
      // Far beyond the client's deadline: the client's FIN, not a timer, must decide.
      limits: { detectTimeoutMs: 60_000 },
    });
    const fragment = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    const r = await plainClient(t, proxy.listenPort(ECHO_PORT), { send: fragment, endAfterSend: true });
    assert.deepEqual(r.received, fragment);
    assertPassedThrough(await nextRecord(proxy, ECHO_PORT), 'plaintext', 'default');
    assert.deepEqual(echo.connections[0]!.received, fragment);
  },
);

test(
  'an application that resets an accepted connection: recorded as accepted, not UPSTREAM_UNREACHABLE',
  TEST,
  async (t) => {
    // Reachable, then rude: resets the connection on the first bytes.
    const app = net.createServer((s) => {
      s.once('data', () => s.resetAndDestroy());
      s.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve));
    t.after(() => app.close());
    const appPort = (app.address() as net.AddressInfo).port;
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode: 'PERMISSIVE', forward: `127.0.0.1:${appPort}` }],
    });
    const r = await plainClient(t, proxy.listenPort(ECHO_PORT), { send: PING });
    assert.equal(r.received.length, 0);
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertPassedThrough(rec, 'plaintext', 'default');
    assert.equal(rec.bytesReceived, PING.length);
  },
);

test('maxConnections: the connection over the limit is refused with MAX_CONNECTIONS', TEST, async (t) => {
  const echo = await startEchoApp(t);
  const proxy = await startProxy(t, {
    identity: server.identity,
    inbound: [{ port: ECHO_PORT, mode: 'PERMISSIVE', forward: echo.address, policy: 'shop/p' }],
    limits: { maxConnections: 1 },
  });
  const port = proxy.listenPort(ECHO_PORT);
  // The first connection stays open: it holds the only slot.
  const first = net.connect({ host: '127.0.0.1', port });
  t.after(() => first.destroy());
  first.write(PING);
  await echo.until(() => (echo.connections[0]?.received.length ? true : undefined), 'the first connection');
  const second = await plainClient(t, port, { send: PING });
  assert.equal(second.received.length, 0);
  const refused = await nextRecord(proxy, ECHO_PORT);
  assertRefused(refused, 'MAX_CONNECTIONS', 'shop/p');
  assert.equal(echo.connections.length, 1);
  // Once the slot is free, a new connection is served.
  first.destroy();
  assertPassedThrough(await nextRecord(proxy, ECHO_PORT), 'plaintext', 'shop/p');
  const third = await plainClient(t, port, { send: PING, expectBytes: PING.length });
  assert.equal(third.received.toString(), PING);
});

test(
  'no certificate loaded yet: plaintext still passes on PERMISSIVE, mesh mTLS is refused',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const proxy = await startProxy(t, {
      identity: undefined,
      inbound: [{ port: ECHO_PORT, mode: 'PERMISSIVE', forward: echo.address }],
    });
    const port = proxy.listenPort(ECHO_PORT);
    const plain = await plainClient(t, port, { send: PING, expectBytes: PING.length });
    assert.equal(plain.received.toString(), PING);
    assertPassedThrough(await nextRecord(proxy, ECHO_PORT), 'plaintext', 'default');
    await tlsClient(t, port, { creds: client, alpn: MESH_TCP_ALPN, send: PING });
    assertRefused(await nextRecord(proxy, ECHO_PORT), 'HANDSHAKE_FAILED', 'default');
    // The certificate arrives: the next mesh client is served.
    proxy.proxy.setIdentity(server.identity);
    const r = await tlsClient(t, port, {
      creds: client,
      alpn: MESH_TCP_ALPN,
      send: PING,
      expectBytes: PING.length,
    });
    assert.equal(r.received.toString(), PING);
    assertMtls(await nextRecord(proxy, ECHO_PORT), 'default');
  },
);

// ---------------------------------------------------------------------------------------------
// 8. Living with change

/**
 * A connection that stays open across a change: `exchange` sends a line and resolves true once its
 * echo is back (false if the connection closed first).
 */
async function openSession(
  t: TestContext,
  socket: net.Socket,
  connectEvent: 'connect' | 'secureConnect',
  app: RecordingApp,
) {
  t.after(() => socket.destroy());
  let received = '';
  let closed = false;
  const waiters = new Set<() => void>();
  const wake = () => {
    for (const w of [...waiters]) w();
  };
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    received += d;
    wake();
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closed = true;
    wake();
  });
  const wait = (ok: () => boolean): Promise<void> =>
    new Promise((resolve) => {
      const w = () => {
        if (!ok()) return;
        waiters.delete(w);
        resolve();
      };
      waiters.add(w);
      w();
    });
  await new Promise<void>((resolve, reject) => {
    socket.once(connectEvent, resolve);
    socket.once('error', reject);
  });
  const exchange = async (line: string): Promise<boolean> => {
    const expected = received + line;
    socket.write(line);
    await wait(() => closed || received === expected);
    return received === expected;
  };
  const before = app.connections.length;
  assert.ok(await exchange(PING), 'the session did not start');
  assert.equal(app.connections.length, before + 1);
  return { exchange, closedNow: () => wait(() => closed), isClosed: () => closed };
}

function openPlaintext(t: TestContext, port: number, app: RecordingApp) {
  return openSession(t, net.connect({ host: '127.0.0.1', port }), 'connect', app);
}

async function openMtls(t: TestContext, port: number, app: RecordingApp, creds: Workload = client) {
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    cert: creds.chainPem,
    key: creds.keyPem,
    ca: creds.trustPem,
    checkServerIdentity: () => undefined,
    ALPNProtocols: [...MESH_TCP_ALPN],
  });
  const session = await openSession(t, socket, 'secureConnect', app);
  return { ...session, serverCertificate: socket.getPeerCertificate().raw };
}

const STRICT_POLICY = 'shop/lockdown';

function permissiveThenStrict(echo: RecordingApp): { before: InboundSpec[]; after: InboundSpec[] } {
  return {
    before: [{ port: ECHO_PORT, mode: 'PERMISSIVE', forward: echo.address, policy: 'default' }],
    after: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy: STRICT_POLICY }],
  };
}

test(
  'PERMISSIVE → STRICT: a live plaintext connection keeps working during the drain; new plaintext is refused at once',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const specs = permissiveThenStrict(echo);
    // A drain far longer than the test: the live connection must not be cut early.
    const limits = { drainMs: 60_000 };
    const proxy = await startProxy(t, { identity: server.identity, inbound: specs.before, limits });
    const port = proxy.listenPort(ECHO_PORT);
    const live = await openPlaintext(t, port, echo);
    await proxy.proxy.applyConfig(proxy.configFor(specs.after, limits));

    const fresh = await plainClient(t, port, { send: PING });
    assert.equal(fresh.received.length, 0);
    const rec = await nextRecord(proxy, ECHO_PORT);
    assertRefused(rec, 'PLAINTEXT_REJECTED', STRICT_POLICY);
    assert.equal(rec.mode, 'STRICT');

    assert.ok(await live.exchange('still here\n'), 'the established connection was cut before the drain');
    assert.equal(live.isClosed(), false);
  },
);

test(
  'PERMISSIVE → STRICT: after drainMs the plaintext connection is closed as POLICY_CHANGED; mTLS ones stay',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const specs = permissiveThenStrict(echo);
    const limits = { drainMs: 50 };
    const proxy = await startProxy(t, { identity: server.identity, inbound: specs.before, limits });
    const port = proxy.listenPort(ECHO_PORT);
    const plain = await openPlaintext(t, port, echo);

    // An mTLS connection on the same port, open across the change.
    const mtls = await openMtls(t, port, echo);

    await proxy.proxy.applyConfig(proxy.configFor(specs.after, limits));
    const drained = await nextRecord(proxy, ECHO_PORT);
    assert.equal(drained.transport, 'plaintext');
    assert.equal(drained.outcome, 'refused');
    assert.equal(drained.reason, 'POLICY_CHANGED');
    assert.match(
      drained.message ?? '',
      new RegExp(
        `port ${ECHO_PORT} became STRICT \\(policy ${STRICT_POLICY}\\): plaintext no longer accepted`,
      ),
    );
    await plain.closedNow();

    assert.ok(await mtls.exchange('after the change\n'), 'the mTLS connection was cut');
    assert.equal(proxy.observer.closed.filter((c) => c.transport === 'mtls').length, 0);
  },
);

test(
  'setIdentity: new connections get the new certificate and bundle; an established mTLS connection keeps working',
  TEST,
  async (t) => {
    const echo = await startEchoApp(t);
    const proxy = await startProxy(t, {
      identity: server.identity,
      inbound: [{ port: ECHO_PORT, mode: 'STRICT', forward: echo.address, policy: 'shop/strict' }],
    });
    const port = proxy.listenPort(ECHO_PORT);
    const old = await openMtls(t, port, echo);
    assert.deepEqual(old.serverCertificate, server.leafDer);

    // A new mesh: new root, new server certificate for the same identity, new trust bundle.
    const mesh2 = createMesh();
    const server2 = mesh2.issue(SERVER_ID);
    const client2 = mesh2.issue(CLIENT_ID);
    proxy.proxy.setIdentity(server2.identity);

    const fresh = await openMtls(t, port, echo, client2);
    assert.deepEqual(fresh.serverCertificate, server2.leafDer);
    assert.notEqual(server2.serial, server.serial);

    // A client of the old root now meets a bundle that no longer trusts it.
    await tlsClient(t, port, { creds: client, trustPem: mesh2.bundlePem, alpn: MESH_TCP_ALPN, send: PING });
    assertRefused(await nextRecord(proxy, ECHO_PORT), 'UNKNOWN_CA', 'shop/strict');

    assert.ok(await old.exchange('old session still up\n'), 'the established connection broke');
    assert.ok(await fresh.exchange('new session\n'));
    assert.equal(proxy.observer.closed.filter((c) => c.outcome === 'accepted').length, 0);
  },
);

test('a connection silent both ways for idleTimeoutMs is closed, and the record says so', TEST, async (t) => {
  const echo = await startEchoApp(t);
  const proxy = await startProxy(t, {
    identity: server.identity,
    inbound: [{ port: ECHO_PORT, mode: 'PERMISSIVE', forward: echo.address, policy: 'shop/idle' }],
    limits: { idleTimeoutMs: 100, detectTimeoutMs: 60_000 },
  });
  const socket = net.connect({ host: '127.0.0.1', port: proxy.listenPort(ECHO_PORT) });
  t.after(() => socket.destroy());
  socket.write('hello\n');
  // The echo comes back, then nothing more: the proxy closes the idle connection.
  await new Promise<void>((resolve) => socket.once('data', () => resolve()));
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const rec = await nextRecord(proxy, ECHO_PORT);
  assert.equal(rec.outcome, 'accepted');
  assert.equal(rec.message, 'idle for 100 ms');
});
