/**
 * HTTP/2 on HTTP ports, and HTTP/1.1 Upgrade (WebSocket): gRPC and h2c through the whole chain (application → client sidecar → mTLS
 * → server sidecar → application), on real sockets. What is checked: `x-forwarded-client-cert` is
 * set by the server sidecar and a client's own is never passed on; trailers (gRPC's status) and
 * trailers-only answers arrive; streams share one upstream connection; refusals become 503s with
 * their reason; curl (nghttp2) as an outside client, by ALPN over TLS and by prior knowledge.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import type { ConnectionRecord, ProxyObserver } from '../../src/proxy/index.js';
import { buildIdentity, fanOut, ProxyMetrics, Sidecar } from '../../src/proxy/index.js';
import { runPeer, writeTempFiles } from '../helpers/peers.js';
import type { RecordingObserver } from '../helpers/proxy-harness.js';
import { freePort, proxyConfig, recordingObserver, testCa, within } from '../helpers/proxy-harness.js';

const TEST = { timeout: 20_000 };
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend';
const SERVER_ID = 'spiffe://cluster.local/ns/finance/sa/payments';
const SERVICE = 'payments.finance.svc.cluster.local:9090';
const XFCC = 'x-forwarded-client-cert';
const FORGED = 'By=spiffe://evil/ns/x/sa/y;URI=spiffe://cluster.local/ns/kube-system/sa/admin';

const MESH = testCa();
const CLIENT_MATERIAL = MESH.issue(CLIENT_ID);
const CLIENT = buildIdentity(CLIENT_MATERIAL);
const SERVER = MESH.identity(SERVER_ID);

/** A gRPC message: the 5-byte prefix (not compressed, length) and the payload. */
function grpcFrame(payload: string): Buffer {
  const body = Buffer.from(payload);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(body.length, 1);
  return Buffer.concat([prefix, body]);
}

interface H2App {
  readonly address: string;
  /** Request headers of every stream, in order. */
  readonly requests: http2.IncomingHttpHeaders[];
  /** HTTP/2 connections the application accepted. */
  sessions(): number;
  /** Streams the client reset before the application answered. */
  readonly aborted: string[];
  /** Emits `request` for every stream and `aborted` for every reset one. */
  readonly events: EventEmitter;
}

/**
 * An h2c application in the style of a gRPC server: `/echo.Echo/Say` answers the request's
 * message prefixed with `hello `, then trailers with grpc-status 0; `/echo.Echo/Missing` is a
 * trailers-only answer (grpc-status 5); `/plain` is an ordinary HTTP/2 answer without trailers;
 * `/hang` never answers.
 */
async function startH2App(t: TestContext, settings: http2.Settings = {}): Promise<H2App> {
  const requests: http2.IncomingHttpHeaders[] = [];
  const aborted: string[] = [];
  const events = new EventEmitter();
  let sessions = 0;
  const server = http2.createServer({ settings });
  server.on('session', () => sessions++);
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    requests.push(headers);
    events.emit('request', headers);
    const path = String(headers[':path']);
    if (path === '/hang') {
      stream.on('close', () => {
        if (stream.rstCode === http2.constants.NGHTTP2_NO_ERROR) return;
        aborted.push(`${path} rst ${stream.rstCode}`);
        events.emit('aborted', path);
      });
      return;
    }
    if (path === '/echo.Echo/Missing') {
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc',
          'grpc-status': '5',
          'grpc-message': 'no such thing',
        },
        { endStream: true },
      );
      return;
    }
    const chunks: Buffer[] = [];
    stream.on('data', (d: Buffer) => chunks.push(d));
    stream.on('end', () => {
      const body = Buffer.concat(chunks);
      if (path === '/plain') {
        stream.respond({ ':status': 200, 'content-type': 'text/plain' });
        stream.end(`app saw ${headers[':method']} ${path} ${headers[XFCC] ?? 'no xfcc'}\n`);
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'OK' }));
      stream.end(grpcFrame(`hello ${body.subarray(5).toString()}`));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const openSessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (s) => {
    openSessions.add(s);
    s.on('close', () => openSessions.delete(s));
  });
  // Sessions the sidecar keeps open would hold close() forever: they go first.
  t.after(async () => {
    for (const s of openSessions) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    aborted,
    events,
    sessions: () => sessions,
  };
}

interface Answer {
  readonly headers: http2.IncomingHttpHeaders;
  readonly body: Buffer;
  readonly trailers: http2.IncomingHttpHeaders | undefined;
}

/** One request on an open session, the whole answer awaited. */
function call(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: Buffer,
): Promise<Answer> {
  return within(
    new Promise<Answer>((resolve, reject) => {
      const req = session.request(headers, body ? {} : { endStream: true });
      let response: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders | undefined;
      const chunks: Buffer[] = [];
      req.on('response', (h) => {
        response = h;
      });
      req.on('trailers', (tr) => {
        trailers = tr;
      });
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => resolve({ headers: response, body: Buffer.concat(chunks), trailers }));
      req.on('error', reject);
      if (body) req.end(body);
    }),
    `an answer to ${String(headers[':path'])}`,
  );
}

function h2c(t: TestContext, port: number): http2.ClientHttp2Session {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  t.after(() => session.destroy());
  return session;
}

const grpcCall = (path: string, extra: http2.OutgoingHttpHeaders = {}) => ({
  ':method': 'POST',
  ':path': path,
  'content-type': 'application/grpc',
  te: 'trailers',
  ...extra,
});

interface Chain {
  /** Where the application's client connects: the client sidecar's outbound listener. */
  readonly outboundPort: number;
  /** The server sidecar's inbound listener. */
  readonly inboundPort: number;
  readonly client: RecordingObserver;
  readonly server: RecordingObserver;
  /** Connections the server sidecar accepted. */
  readonly serverOpened: ConnectionRecord[];
  /** The server sidecar's Prometheus metrics. */
  readonly serverMetrics: ProxyMetrics;
  /** Gives the client sidecar's destination other expected server identities. */
  expect(identities: string[]): Promise<void>;
}

/** Client sidecar (outbound `grpc` port, ISTIO_MUTUAL) → server sidecar (inbound `mode`, HTTP) → app. */
async function startChain(
  t: TestContext,
  app: string,
  opts: {
    mode?: 'STRICT' | 'PERMISSIVE';
    endpoints?: { address: string; tls: 'ISTIO_MUTUAL' | 'DISABLE' }[];
    /** The application speaks HTTP/2 (a `grpc` port); false: an `http` port, HTTP/1.1 to the app. */
    appHttp2?: boolean;
    limits?: Record<string, number>;
  } = {},
): Promise<Chain> {
  const inboundPort = await freePort();
  const outboundPort = await freePort();
  const serverOpened: ConnectionRecord[] = [];
  const opened: ProxyObserver = {
    connectionOpened: (c) => serverOpened.push(c),
    connectionClosed: () => {},
    request: () => {},
  };
  const serverObserver = recordingObserver();
  const serverMetrics = new ProxyMetrics({ namespace: 'finance', name: 'payments' });
  const serverProxy = new Sidecar(
    proxyConfig({
      workload: { namespace: 'finance', name: 'payments', identity: SERVER_ID },
      trustDomains: ['cluster.local'],
      inbound: [
        {
          port: 9090,
          listen: `127.0.0.1:${inboundPort}`,
          forward: app,
          mode: opts.mode ?? 'STRICT',
          protocol: 'http',
          ...(opts.appHttp2 === false ? {} : { http2: true }),
          policy: 'finance/grpc',
        },
      ],
      ...(opts.limits ? { limits: opts.limits } : {}),
    }),
    { clock: { now: Date.now }, observer: fanOut(serverObserver, opened, serverMetrics), identity: SERVER },
  );
  await serverProxy.start();
  t.after(() => serverProxy.stop());
  const clientObserver = recordingObserver();
  const clientConfig = (expectedIdentities: string[]) =>
    proxyConfig({
      workload: { namespace: 'shop', name: 'frontend', identity: CLIENT_ID },
      trustDomains: ['cluster.local'],
      outbound: [
        {
          name: SERVICE,
          listen: `127.0.0.1:${outboundPort}`,
          protocol: 'http',
          endpoints: opts.endpoints ?? [{ address: `127.0.0.1:${inboundPort}`, tls: 'ISTIO_MUTUAL' }],
          expectedIdentities,
        },
      ],
    });
  const clientProxy = new Sidecar(clientConfig([SERVER_ID]), {
    clock: { now: Date.now },
    observer: clientObserver,
    identity: CLIENT,
  });
  await clientProxy.start();
  t.after(() => clientProxy.stop());
  return {
    outboundPort,
    inboundPort,
    client: clientObserver,
    server: serverObserver,
    serverOpened,
    serverMetrics,
    expect: (identities) => clientProxy.applyConfig(clientConfig(identities)),
  };
}

const certificateHash = (pem: string) =>
  new X509Certificate(pem).fingerprint256.replaceAll(':', '').toLowerCase();
const leafPem = (chain: string) =>
  /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/.exec(chain)![0];
const EXPECTED_XFCC = `By=${SERVER_ID};Hash=${certificateHash(leafPem(CLIENT_MATERIAL.chainPem))};Subject="";URI=${CLIENT_ID}`;

test(
  'gRPC through both sidecars: answer, trailers, XFCC set by the server sidecar, a forged one dropped',
  TEST,
  async (t) => {
    const app = await startH2App(t);
    const chain = await startChain(t, app.address);
    const session = h2c(t, chain.outboundPort);
    const a = await call(session, grpcCall('/echo.Echo/Say', { [XFCC]: FORGED }), grpcFrame('world'));
    assert.equal(a.headers[':status'], 200);
    assert.equal(a.headers['content-type'], 'application/grpc');
    assert.deepEqual(a.body, grpcFrame('hello world'));
    assert.equal(a.trailers?.['grpc-status'], '0');
    assert.equal(a.trailers?.['grpc-message'], 'OK');
    assert.equal(app.requests.length, 1);
    const seen = app.requests[0]!;
    assert.equal(seen[XFCC], EXPECTED_XFCC, 'the application sees only the server sidecar’s XFCC');
    assert.equal(seen[':path'], '/echo.Echo/Say');
    assert.equal(seen.te, 'trailers');
    // Both sides report the request as gRPC, with the mTLS principals.
    const [out] = chain.client.requests;
    assert.equal(out?.protocol, 'grpc');
    assert.equal(out?.status, 200);
    assert.equal(out?.connection.transport, 'mtls');
    assert.equal(out?.connection.destinationPrincipal, SERVER_ID);
    const [inb] = chain.server.requests;
    assert.equal(inb?.protocol, 'grpc');
    assert.equal(inb?.path, '/echo.Echo/Say');
    assert.equal(inb?.connection.sourcePrincipal, CLIENT_ID);
    assert.equal(inb?.connection.alpn, 'istio-h2,istio,h2');
  },
);

test(
  'gRPC trailers-only errors and plain HTTP/2 answers without trailers both arrive intact',
  TEST,
  async (t) => {
    const app = await startH2App(t);
    const chain = await startChain(t, app.address);
    const session = h2c(t, chain.outboundPort);
    const missing = await call(session, grpcCall('/echo.Echo/Missing'), grpcFrame('x'));
    assert.equal(missing.headers[':status'], 200);
    assert.equal(missing.headers['grpc-status'], '5');
    assert.equal(missing.headers['grpc-message'], 'no such thing');
    assert.equal(missing.body.length, 0);
    const plain = await call(session, { ':method': 'GET', ':path': '/plain' });
    assert.equal(plain.headers[':status'], 200);
    assert.equal(plain.body.toString(), `app saw GET /plain ${EXPECTED_XFCC}\n`);
    assert.equal(plain.trailers, undefined);
    assert.deepEqual(
      chain.server.requests.map((r) => [r.method, r.path, r.status, r.protocol]),
      [
        ['POST', '/echo.Echo/Missing', 200, 'grpc'],
        ['GET', '/plain', 200, 'http'],
      ],
    );
  },
);

test(
  'streams from many client connections share one mTLS connection and one application connection',
  TEST,
  async (t) => {
    const app = await startH2App(t);
    const chain = await startChain(t, app.address);
    const answers: Promise<Answer>[] = [];
    for (let c = 0; c < 3; c++) {
      const session = h2c(t, chain.outboundPort);
      for (let i = 0; i < 4; i++)
        answers.push(call(session, grpcCall('/echo.Echo/Say'), grpcFrame(`c${c} s${i}`)));
    }
    const all = await Promise.all(answers);
    assert.deepEqual(
      all.map((a) => a.body.subarray(5).toString()),
      answers.map((_, k) => `hello c${Math.floor(k / 4)} s${k % 4}`),
    );
    assert.ok(all.every((a) => a.trailers?.['grpc-status'] === '0'));
    assert.equal(chain.serverOpened.length, 1, 'one mTLS connection between the sidecars');
    assert.equal(app.sessions(), 1, 'one HTTP/2 connection to the application');
    assert.equal(app.requests.length, 12);
  },
);

test('a client resetting a stream resets it at the application too', TEST, async (t) => {
  const app = await startH2App(t);
  const chain = await startChain(t, app.address);
  const session = h2c(t, chain.outboundPort);
  const arrived = once(app.events, 'request');
  const req = session.request({ ':method': 'GET', ':path': '/hang' }, { endStream: true });
  req.on('error', () => {});
  await within(arrived, 'the request to reach the application');
  const reset = once(app.events, 'aborted');
  req.close(http2.constants.NGHTTP2_CANCEL);
  await within(reset, 'the application to see the reset');
  assert.ok(
    app.aborted.some((a) => a.startsWith('/hang')),
    app.aborted.join(', '),
  );
});

test(
  'an endpoint that refuses is skipped; with none left the stream gets 503 and the reason',
  TEST,
  async (t) => {
    const app = await startH2App(t);
    const dead = `127.0.0.1:${await freePort()}`;
    const chain = await startChain(t, app.address);
    const retried = await startChain(t, app.address, {
      endpoints: [
        { address: dead, tls: 'ISTIO_MUTUAL' },
        { address: `127.0.0.1:${chain.inboundPort}`, tls: 'ISTIO_MUTUAL' },
      ],
    });
    const ok = await call(h2c(t, retried.outboundPort), grpcCall('/echo.Echo/Say'), grpcFrame('again'));
    assert.deepEqual(ok.body, grpcFrame('hello again'));
    const none = await startChain(t, app.address, { endpoints: [{ address: dead, tls: 'ISTIO_MUTUAL' }] });
    const refused = await call(h2c(t, none.outboundPort), grpcCall('/echo.Echo/Say'), grpcFrame('x'));
    assert.equal(refused.headers[':status'], 503);
    assert.equal(refused.headers['x-kmtls-reason'], 'UPSTREAM_UNREACHABLE');
    assert.match(refused.body.toString(), /UPSTREAM_UNREACHABLE/);
    assert.equal(none.client.requests[0]?.status, 503);
  },
);

test('curl --http2 with a mesh certificate (ALPN h2): XFCC set, the forged one dropped', TEST, async (t) => {
  const app = await startH2App(t);
  const chain = await startChain(t, app.address);
  const files = await writeTempFiles(t, {
    'cert.pem': CLIENT_MATERIAL.chainPem,
    'key.pem': CLIENT_MATERIAL.keyPem,
    'ca.pem': MESH.rootPem,
  });
  // -k: a mesh certificate names no host; the client certificate is what the server checks.
  const r = await runPeer(t, 'curl', [
    '-sS',
    '--http2',
    '-k',
    '--cert',
    files['cert.pem'],
    '--key',
    files['key.pem'],
    '--cacert',
    files['ca.pem'],
    '-H',
    `${XFCC}: ${FORGED}`,
    '-w',
    '%{http_version}',
    `https://127.0.0.1:${chain.inboundPort}/plain`,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `app saw GET /plain ${EXPECTED_XFCC}\n2`);
  const rec = await chain.server.nextClosed('curl’s connection to close');
  assert.equal(rec.transport, 'mtls');
  assert.equal(rec.sourcePrincipal, CLIENT_ID);
  assert.equal(chain.server.requests[0]?.protocol, 'http');
});

test(
  'curl --http2-prior-knowledge in plaintext on a PERMISSIVE port: its own XFCC never reaches the app',
  TEST,
  async (t) => {
    const app = await startH2App(t);
    const chain = await startChain(t, app.address, { mode: 'PERMISSIVE' });
    const r = await runPeer(t, 'curl', [
      '-sS',
      '--http2-prior-knowledge',
      '-H',
      `${XFCC}: ${FORGED}`,
      '-w',
      '%{http_version}',
      `http://127.0.0.1:${chain.inboundPort}/plain`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'app saw GET /plain no xfcc\n2');
    const rec = await chain.server.nextClosed('curl’s connection to close');
    assert.equal(rec.transport, 'plaintext');
    assert.equal(rec.sourcePrincipal, undefined);
  },
);

test('STRICT refuses plaintext HTTP/2 before the application sees a stream', TEST, async (t) => {
  const app = await startH2App(t);
  const chain = await startChain(t, app.address);
  const r = await runPeer(t, 'curl', [
    '-sS',
    '--http2-prior-knowledge',
    `http://127.0.0.1:${chain.inboundPort}/plain`,
  ]);
  assert.notEqual(r.code, 0);
  const rec = await chain.server.nextClosed('the refusal');
  assert.equal(rec.reason, 'PLAINTEXT_REJECTED');
  assert.equal(app.requests.length, 0);
  assert.equal(app.sessions(), 0);
});

// ---------------------------------------------------------------------------------------------
// What the upstream may do wrong, and an HTTP/1.1 application behind an `http` port

/** HPACK literal header fields, no indexing, no Huffman: names and values exactly as given. */
function hpack(fields: [string, string][]): Buffer {
  const str = (v: string) => {
    const b = Buffer.from(v, 'latin1');
    assert.ok(b.length < 127, 'short strings only');
    return Buffer.concat([Buffer.from([b.length]), b]);
  };
  return Buffer.concat(fields.map(([k, v]) => Buffer.concat([Buffer.from([0]), str(k), str(v)])));
}

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/**
 * An HTTP/2 application written frame by frame, to answer what Node's own server refuses to send:
 * `answer` gives each request's response as raw frames (HEADERS = 1, RST_STREAM = 3).
 */
async function startRawH2App(t: TestContext, answer: (stream: number) => Buffer[]): Promise<string> {
  const server = net.createServer((sock) => {
    sock.on('error', () => {});
    sock.write(frame(4, 0, 0));
    let buf = Buffer.alloc(0);
    let preface = false;
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!preface) {
        if (buf.length < 24) return;
        buf = buf.subarray(24);
        preface = true;
      }
      while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
        const len = buf.readUIntBE(0, 3);
        const [type, flags, id] = [buf[3]!, buf[4]!, buf.readUInt32BE(5) & 0x7fffffff];
        buf = buf.subarray(9 + len);
        if (type === 4 && !(flags & 1)) sock.write(frame(4, 1, 0));
        if (type === 1) for (const f of answer(id)) sock.write(f);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.close();
    server.unref();
  });
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const END_STREAM_HEADERS = 1 | 4;

for (const [what, fields, want] of [
  ['a :status HTTP/2 cannot carry (600)', [[':status', '600']], 502],
  [
    'a connection-specific header (http2-settings)',
    [
      [':status', '200'],
      ['http2-settings', 'AAMAAABkAAQAoAAAAAIAAAAA'],
    ],
    200,
  ],
  // nghttp2 resets a response with a `connection` header as malformed, before kmtls sees it: the
  // client gets the 503 Envoy also answers for an upstream reset before headers.
  [
    'a `connection` header (malformed: reset by nghttp2)',
    [
      [':status', '204'],
      ['connection', 'close'],
    ],
    503,
  ],
] as [string, [string, string][], number][]) {
  test(`an application answering ${what}: the client gets ${want}, the sidecar lives on`, TEST, async (t) => {
    const app = await startRawH2App(t, (id) => [frame(1, END_STREAM_HEADERS, id, hpack(fields))]);
    const chain = await startChain(t, app);
    const session = h2c(t, chain.outboundPort);
    const a = await call(session, { ':method': 'GET', ':path': '/odd' });
    assert.equal(a.headers[':status'], want);
    assert.equal(a.headers['http2-settings'], undefined);
    assert.equal(a.headers.connection, undefined);
    // Both sidecars still serve.
    const again = await call(session, { ':method': 'GET', ':path': '/again' });
    assert.equal(again.headers[':status'], want);
  });
}

test(
  'an application answering with http2-settings in its trailers: trailers dropped, no crash',
  TEST,
  async (t) => {
    const app = await startRawH2App(t, (id) => [
      frame(1, 4, id, hpack([[':status', '200']])),
      frame(0, 0, id, Buffer.from('body')),
      frame(
        1,
        END_STREAM_HEADERS,
        id,
        hpack([
          ['grpc-status', '0'],
          ['http2-settings', 'AAMAAABk'],
        ]),
      ),
    ]);
    const chain = await startChain(t, app);
    const a = await call(h2c(t, chain.outboundPort), { ':method': 'GET', ':path': '/t' });
    assert.equal(a.body.toString(), 'body');
    assert.equal(a.trailers?.['grpc-status'], '0');
    assert.equal(a.trailers?.['http2-settings'], undefined);
  },
);

test(
  'the application resetting a stream before answering (even NO_ERROR) gives 503, not a hang',
  TEST,
  async (t) => {
    const rst = (code: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(code);
      return b;
    };
    const app = await startRawH2App(t, (id) => [frame(3, 0, id, rst(id === 1 ? 0 : 2))]);
    const chain = await startChain(t, app);
    const session = h2c(t, chain.outboundPort);
    for (const path of ['/no-error', '/internal']) {
      const a = await call(session, { ':method': 'GET', ':path': path });
      assert.equal(a.headers[':status'], 503, path);
      assert.equal(a.headers['x-kmtls-reason'], 'UPSTREAM_UNREACHABLE');
    }
  },
);

test('the application down: a clean 503 with the reason, not a reset after it', TEST, async (t) => {
  const chain = await startChain(t, `127.0.0.1:${await freePort()}`);
  const a = await call(h2c(t, chain.outboundPort), grpcCall('/echo.Echo/Say'), grpcFrame('x'));
  assert.equal(a.headers[':status'], 503);
  assert.equal(a.headers['x-kmtls-reason'], 'UPSTREAM_UNREACHABLE');
  assert.match(a.body.toString(), /ECONNREFUSED/);
});

test(
  'streams a client holds open never queue other clients behind the application’s stream limit',
  TEST,
  async (t) => {
    const app = await startH2App(t, { maxConcurrentStreams: 2 });
    const chain = await startChain(t, app.address);
    const holder = h2c(t, chain.outboundPort);
    for (let i = 0; i < 2; i++) {
      const arrived = once(app.events, 'request');
      holder.request({ ':method': 'GET', ':path': '/hang' }, { endStream: true }).on('error', () => {});
      await within(arrived, 'a held stream to reach the application');
    }
    const a = await call(h2c(t, chain.outboundPort), grpcCall('/echo.Echo/Say'), grpcFrame('past the limit'));
    assert.deepEqual(a.body, grpcFrame('hello past the limit'));
    assert.equal(app.sessions(), 2, 'a second application connection took the new stream');
  },
);

test(
  'an `http` port: HTTP/2 clients reach an HTTP/1.1 application as HTTP/1.1, with XFCC',
  TEST,
  async (t) => {
    const seen: http.IncomingHttpHeaders[] = [];
    const server = http.createServer((req, res) => {
      seen.push(req.headers);
      res.setHeader('connection', 'keep-alive');
      res.end(`h1 app saw ${req.method} ${req.url} http/${req.httpVersion}\n`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
    t.after(() => server.closeAllConnections());
    const chain = await startChain(t, `127.0.0.1:${(server.address() as AddressInfo).port}`, {
      appHttp2: false,
    });
    const a = await call(h2c(t, chain.outboundPort), {
      ':method': 'GET',
      ':path': '/orders?id=7',
      ':authority': 'payments.finance',
      [XFCC]: FORGED,
    });
    assert.equal(a.headers[':status'], 200);
    assert.equal(a.headers.connection, undefined);
    assert.equal(a.body.toString(), 'h1 app saw GET /orders?id=7 http/1.1\n');
    assert.equal(seen[0]?.[XFCC], EXPECTED_XFCC);
    assert.equal(seen[0]?.host, 'payments.finance');
    assert.equal(chain.server.requests[0]?.status, 200);
  },
);

test('a client that never finishes the HTTP/2 preface is closed at the idle timeout', TEST, async (t) => {
  const app = await startH2App(t);
  const chain = await startChain(t, app.address, { mode: 'PERMISSIVE', limits: { idleTimeoutMs: 200 } });
  const sock = net.connect(chain.inboundPort, '127.0.0.1');
  sock.on('error', () => {});
  t.after(() => sock.destroy());
  sock.write('PRI * HTTP/2.0\r\n');
  const rec = await chain.server.nextClosed('the stalled connection to be closed');
  assert.equal(rec.transport, 'plaintext');
  assert.equal(app.sessions(), 0);
});

test(
  'secure naming changed: pooled upstream connections are not reused (HTTP/2 and HTTP/1.1)',
  TEST,
  async (t) => {
    const OTHER = 'spiffe://cluster.local/ns/finance/sa/ledger';
    // HTTP/2: a pooled mTLS connection to the server, verified as SERVER_ID.
    const app = await startH2App(t);
    const chain = await startChain(t, app.address);
    const first = await call(h2c(t, chain.outboundPort), grpcCall('/echo.Echo/Say'), grpcFrame('a'));
    assert.equal(first.headers[':status'], 200);
    await chain.expect([OTHER]);
    const after = await call(h2c(t, chain.outboundPort), grpcCall('/echo.Echo/Say'), grpcFrame('b'));
    assert.equal(after.headers[':status'], 503, 'the pooled connection to SERVER_ID was reused');
    assert.equal(after.headers['x-kmtls-reason'], 'SAN_MISMATCH');
    assert.match(after.body.toString(), /expects spiffe:\/\/cluster\.local\/ns\/finance\/sa\/ledger/);

    // HTTP/1.1: the same through the keep-alive agent.
    const h1 = http.createServer((_req, res) => res.end('ok\n'));
    await new Promise<void>((resolve) => h1.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => h1.close(() => resolve())));
    t.after(() => h1.closeAllConnections());
    const h1chain = await startChain(t, `127.0.0.1:${(h1.address() as AddressInfo).port}`, {
      appHttp2: false,
    });
    const get = () =>
      within(
        new Promise<{ status: number; reason: string | undefined }>((resolve, reject) => {
          http
            .get({ host: '127.0.0.1', port: h1chain.outboundPort, path: '/', agent: false }, (res) => {
              res.resume();
              res.on('end', () =>
                resolve({
                  status: res.statusCode ?? 0,
                  reason: res.headers['x-kmtls-reason'] as string | undefined,
                }),
              );
            })
            .on('error', reject);
        }),
        'an HTTP/1.1 answer',
      );
    assert.deepEqual(await get(), { status: 200, reason: undefined });
    await h1chain.expect([OTHER]);
    assert.deepEqual(await get(), { status: 503, reason: 'SAN_MISMATCH' });
  },
);

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 Upgrade: WebSocket through both sidecars; other upgrades are not carried

/**
 * An HTTP/1.1 application that accepts WebSocket upgrades (101, then echoes every chunk prefixed
 * with `echo:`) and answers other requests with what it saw.
 */
async function startUpgradeApp(
  t: TestContext,
): Promise<{ address: string; seen: http.IncomingHttpHeaders[] }> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    res.end(`plain answer, upgrade=${req.headers.upgrade ?? 'none'}\n`);
  });
  const upgraded = new Set<net.Socket>();
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    seen.push(req.headers);
    upgraded.add(socket);
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n',
    );
    if (head.length > 0) socket.write(Buffer.concat([Buffer.from('echo:'), head]));
    socket.on('data', (d: Buffer) => socket.write(Buffer.concat([Buffer.from('echo:'), d])));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  // Upgraded sockets are no longer the server's: they are destroyed first, or close() would wait.
  t.after(async () => {
    for (const s of upgraded) s.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** Reads from `sock` until `pattern` has arrived; resolves with everything read. */
function readUntil(sock: net.Socket, pattern: RegExp, what: string): Promise<string> {
  let got = '';
  return within(
    new Promise<string>((resolve, reject) => {
      const onData = (d: Buffer) => {
        got += d.toString('latin1');
        if (pattern.test(got)) {
          sock.off('data', onData);
          resolve(got);
        }
      };
      sock.on('data', onData);
      sock.once('error', reject);
    }),
    `${what} (got ${JSON.stringify(got)})`,
  );
}

test(
  'WebSocket through both sidecars: 101, bytes both ways, XFCC set on the upgrade request',
  TEST,
  async (t) => {
    const app = await startUpgradeApp(t);
    const chain = await startChain(t, app.address, { appHttp2: false });
    const sock = net.connect(chain.outboundPort, '127.0.0.1');
    sock.on('error', () => {});
    t.after(() => sock.destroy());
    sock.write(
      'GET /chat HTTP/1.1\r\nHost: payments\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${XFCC}: ${FORGED}\r\n\r\n`,
    );
    const answer = await readUntil(sock, /\r\n\r\n/, 'the 101');
    assert.match(answer, /^HTTP\/1\.1 101 /);
    assert.match(answer, /\r\nsec-websocket-accept: test\r\n/i);
    assert.match(answer, /\r\nupgrade: websocket\r\n/i);
    sock.write('hello over the upgrade');
    await readUntil(sock, /echo:hello over the upgrade/, 'the echo');
    assert.equal(app.seen[0]?.[XFCC], EXPECTED_XFCC);
    assert.equal(app.seen[0]?.upgrade, 'websocket');
    assert.equal(app.seen[0]?.['sec-websocket-key'], 'dGhlIHNhbXBsZSBub25jZQ==');
    assert.equal(chain.client.requests[0]?.status, 101);
    assert.equal(chain.server.requests[0]?.status, 101);
    assert.equal(chain.server.requests[0]?.connection.sourcePrincipal, CLIENT_ID);
  },
);

test(
  'an HTTP/1.1 Upgrade to h2c is not carried: the request arrives without it, XFCC still checked',
  TEST,
  async (t) => {
    const app = await startUpgradeApp(t);
    const chain = await startChain(t, app.address, { mode: 'PERMISSIVE', appHttp2: false });
    const sock = net.connect(chain.inboundPort, '127.0.0.1');
    sock.on('error', () => {});
    t.after(() => sock.destroy());
    sock.write(
      `GET /x HTTP/1.1\r\nHost: payments\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n${XFCC}: ${FORGED}\r\n\r\n`,
    );
    const answer = await readUntil(sock, /upgrade=\w+\n/, 'the plain answer');
    assert.match(answer, /^HTTP\/1\.1 200 /);
    assert.match(answer, /plain answer, upgrade=none\n/);
    assert.equal(app.seen[0]?.[XFCC], undefined);
    assert.equal(app.seen[0]?.['http2-settings'], undefined);
  },
);

// ---------------------------------------------------------------------------------------------
// A real gRPC client: Python's grpcio (gRPC C-core), h2c to the client sidecar

/** A Python with grpcio: Debian's python3-grpcio installs for /usr/bin/python3. */
function grpcPython(): string | undefined {
  for (const py of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(py, ['-c', 'import grpc'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  return undefined;
}

const GRPC_CLIENT = `
import sys, grpc
ch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1])
say = ch.unary_unary('/echo.Echo/Say', request_serializer=lambda b: b, response_deserializer=lambda b: b)
resp, call = say.with_call(b'from grpcio', metadata=[('${XFCC}', '${FORGED}')], timeout=5)
print('say', resp.decode(), call.code().name)
missing = ch.unary_unary('/echo.Echo/Missing', request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    missing(b'x', timeout=5)
except grpc.RpcError as e:
    print('missing', e.code().name, e.details())
`;

test(
  'a real gRPC client (grpcio): unary call, gRPC status, XFCC; an endpoint down reads UNAVAILABLE',
  TEST,
  async (t) => {
    const py = grpcPython();
    if (!py) {
      if (process.env.KMTLS_REQUIRE_PEERS === '1')
        assert.fail('grpcio is required here (apt-get install python3-grpcio)');
      // A developer machine may lack grpcio; CI installs it and sets KMTLS_REQUIRE_PEERS=1 (above).
      t.skip('no Python with grpcio (apt-get install python3-grpcio)');
      return;
    }
    const app = await startH2App(t);
    const chain = await startChain(t, app.address);
    const r = await runPeer(t, py, ['-c', GRPC_CLIENT, String(chain.outboundPort)], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'say hello from grpcio OK\nmissing NOT_FOUND no such thing\n');
    assert.equal(app.requests[0]?.[XFCC], EXPECTED_XFCC);
    assert.match(String(app.requests[0]?.['user-agent']), /grpc-python/);
    assert.deepEqual(
      chain.client.requests.map((q) => [q.path, q.protocol, q.grpcStatus]),
      [
        ['/echo.Echo/Say', 'grpc', '0'],
        ['/echo.Echo/Missing', 'grpc', '5'],
      ],
    );
    const down = await startChain(t, app.address, {
      endpoints: [{ address: `127.0.0.1:${await freePort()}`, tls: 'ISTIO_MUTUAL' }],
    });
    const d = await runPeer(t, py, ['-c', GRPC_CLIENT, String(down.outboundPort)], { timeoutMs: 15_000 });
    assert.notEqual(d.code, 0);
    assert.match(d.stderr, /StatusCode\.UNAVAILABLE/);
  },
);

test(
  'an HTTP/1.1 client on a grpc/http2 port reaches the HTTP/2 application as HTTP/2, with XFCC',
  TEST,
  async (t) => {
    const app = await startH2App(t);
    const chain = await startChain(t, app.address);
    const answer = await within(
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        http
          .get(
            {
              host: '127.0.0.1',
              port: chain.outboundPort,
              path: '/plain',
              headers: { host: 'payments.finance', [XFCC]: FORGED },
            },
            (res) => {
              let body = '';
              res.setEncoding('utf8');
              res.on('data', (d: string) => {
                body += d;
              });
              res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
            },
          )
          .on('error', reject);
      }),
      'an HTTP/1.1 answer from the HTTP/2 application',
    );
    assert.deepEqual(answer, { status: 200, body: `app saw GET /plain ${EXPECTED_XFCC}\n` });
    assert.equal(app.requests[0]?.[':authority'], 'payments.finance');
    assert.equal(app.sessions(), 1);
    assert.equal(chain.server.requests[0]?.status, 200);
  },
);

/** An HTTP/1.1 application written by hand: every request head gets `answer`, then the socket stays. */
async function startRawH1App(t: TestContext, answer: string): Promise<{ address: string; heads: string[] }> {
  const heads: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
    let buf = '';
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      heads.push(buf.slice(0, end));
      buf = buf.slice(end + 4);
      sock.write(answer);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, heads };
}

for (const [what, request] of [
  ['a WebSocket request answered 101 switching to h2c', 'Upgrade: websocket\r\nConnection: Upgrade\r\n'],
  ['a plain request answered 101', ''],
] as const) {
  test(`${what}: the client gets 502, no tunnel past the HTTP layer`, TEST, async (t) => {
    const app = await startRawH1App(
      t,
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n',
    );
    const chain = await startChain(t, app.address, { mode: 'PERMISSIVE', appHttp2: false });
    const sock = net.connect(chain.inboundPort, '127.0.0.1');
    sock.on('error', () => {});
    t.after(() => sock.destroy());
    sock.write(`GET /ws HTTP/1.1\r\nHost: payments\r\n${request}\r\n`);
    const answer = await readUntil(sock, /\r\n\r\n/, 'the answer');
    assert.match(answer, /^HTTP\/1\.1 502 /);
    assert.match(answer, /x-kmtls-reason: UPSTREAM_UNREACHABLE/i);
    assert.equal(chain.server.requests[0]?.status, 502);
  });
}

test('an h2c upgrade with a body goes on as the plain request, body included', TEST, async (t) => {
  const seen: { body: string; upgrade: string | undefined }[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => {
      body += d;
    });
    req.on('end', () => {
      seen.push({ body, upgrade: req.headers.upgrade });
      res.end('ok\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const chain = await startChain(t, `127.0.0.1:${(server.address() as AddressInfo).port}`, {
    mode: 'PERMISSIVE',
    appHttp2: false,
  });
  const sock = net.connect(chain.inboundPort, '127.0.0.1');
  sock.on('error', () => {});
  t.after(() => sock.destroy());
  sock.write(
    'POST /orders HTTP/1.1\r\nHost: payments\r\nContent-Length: 5\r\nUpgrade: h2c\r\n' +
      'Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABk\r\n\r\nhello',
  );
  const answer = await readUntil(sock, /ok\n/, 'the answer');
  assert.match(answer, /^HTTP\/1\.1 200 /);
  assert.deepEqual(seen, [{ body: 'hello', upgrade: undefined }]);
});
