/**
 * Fixtures for sidecar proxy tests: a mesh CA that issues workload identities (and the bad ones a
 * STRICT port must refuse), applications on 127.0.0.1:0 that record everything that reaches them,
 * a ProxyObserver a test can await, a proxy started on free ports, and TLS/plaintext clients.
 * Everything started here is stopped in `t.after`. Waiting is on events: every wait has a deadline
 * that fails the test with what was seen, it never decides an outcome.
 */
import { createHash, generateKeyPairSync, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import tls from 'node:tls';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { ProxyConfig } from '../../src/mesh/index.js';
import { parseProxyConfig } from '../../src/mesh/index.js';
import type { CaMaterial } from '../../src/pki/index.js';
import {
  CertificateAuthority,
  createCsr,
  createRoot,
  DAY_MS,
  selfSignedMaterial,
  toPem,
} from '../../src/pki/index.js';
import type { ResolvedMtlsMode } from '../../src/policy/index.js';
import type { ConnectionRecord, ProxyIdentity, ProxyObserver, RequestRecord } from '../../src/proxy/index.js';
import { buildIdentity, detectTransport, Sidecar } from '../../src/proxy/index.js';
import type { ClientCredentials, PeerRun } from './peers.js';
import { runPeer, writeTempFiles } from './peers.js';

export const TRUST_DOMAIN = 'cluster.local';
/** A trust domain the mesh root signs for in these tests, but that no proxy config trusts. */
export const OTHER_TRUST_DOMAIN = 'other.example';
/** How long any wait in these helpers may take before the test fails; a deadline, not a delay. */
export const WAIT_DEADLINE_MS = 5_000;
/** What a client sidecar offers on a TCP port (Istio's ALPNInMeshWithMxc). */
export const MESH_TCP_ALPN = ['istio-peer-exchange', 'istio'] as const;

// ---------------------------------------------------------------------------------------------
// Waiting on events

/** Wakes waiters when something they watch may have changed; each waiter re-checks its condition. */
export class Signal {
  private readonly waiters = new Set<() => void>();

  notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves with the first defined value `probe` returns, checked now and after each notify. */
  until<T>(
    probe: () => T | undefined,
    what: string | (() => string),
    deadlineMs = WAIT_DEADLINE_MS,
  ): Promise<T> {
    const now = probe();
    if (now !== undefined) return Promise.resolve(now);
    return new Promise<T>((resolve, reject) => {
      const waiter = () => {
        const v = probe();
        if (v === undefined) return;
        this.waiters.delete(waiter);
        clearTimeout(deadline);
        resolve(v);
      };
      const deadline = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(
          new Error(`gave up waiting after ${deadlineMs} ms for ${typeof what === 'string' ? what : what()}`),
        );
      }, deadlineMs);
      this.waiters.add(waiter);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Identities

/** A workload's certificate material, as a client presents it and as a proxy holds it. */
export interface Workload extends ClientCredentials {
  readonly spiffeId: string;
  /** The leaf certificate, DER: what XFCC hashes. */
  readonly leafDer: Buffer;
  readonly serial: string;
  /** The same material as a sidecar identity, trusting the bundle of the CA that issued it. */
  readonly identity: ProxyIdentity;
}

/** A TLS server certificate an application holds for its own TLS, from a CA outside the mesh. */
export interface AppTlsMaterial {
  readonly certPem: string;
  readonly keyPem: string;
  /** The root a client of the application trusts. */
  readonly caPem: string;
  readonly leafDer: Buffer;
}

export interface TestMesh {
  readonly trustDomain: string;
  /** The mesh roots, PEM: what every workload trusts. */
  readonly bundlePem: string;
  /** A certificate for `spiffeId` from the mesh CA, valid now. */
  issue(spiffeId: string, opts?: { ttlMs?: number }): Workload;
  /** Same trust domain, signed by a root the mesh does not trust. */
  foreign(spiffeId: string): Workload;
  /** Signed by the mesh root, expired two days ago. */
  expired(spiffeId: string): Workload;
  /** Signed by the mesh root for a SPIFFE ID in OTHER_TRUST_DOMAIN (`spiffe://other.example/<path>`). */
  otherTrustDomain(path: string): Workload;
  /** An application's own TLS certificate, from a CA unrelated to the mesh. */
  appTls(): AppTlsMaterial;
}

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

function keyPemOf(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

function spiffe(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  if (!r.ok) throw new Error(`BUG: test SPIFFE ID ${uri} is invalid (${r.message})`);
  return r.id;
}

function caAt(material: CaMaterial, nowMs: number): CertificateAuthority {
  return new CertificateAuthority(material, { clock: { now: () => nowMs }, random: randomBytes });
}

/**
 * A mesh CA on the wall clock (TLS peers and the proxy check validity against real time). The root
 * is a week old so that a CA whose clock runs two days behind can issue certificates that have
 * already expired while their chain is trusted.
 */
export function createMesh(nowMs = Date.now()): TestMesh {
  const root = createRoot({ trustDomain: TRUST_DOMAIN, now: nowMs - 7 * DAY_MS, random: randomBytes });
  const material = selfSignedMaterial(TRUST_DOMAIN, root);
  const bundlePem = toPem(root.certificate);
  const meshCa = caAt(material, nowMs);
  const pastCa = caAt(material, nowMs - 2 * DAY_MS);
  const otherTdCa = caAt(selfSignedMaterial(OTHER_TRUST_DOMAIN, root), nowMs);
  const foreignRoot = createRoot({ trustDomain: TRUST_DOMAIN, now: nowMs, random: randomBytes });
  const foreignCa = caAt(selfSignedMaterial(TRUST_DOMAIN, foreignRoot), nowMs);
  const appRoot = createRoot({ trustDomain: 'app.example', now: nowMs, random: randomBytes });
  const appCa = caAt(selfSignedMaterial('app.example', appRoot), nowMs);

  const issueFrom = (ca: CertificateAuthority, uri: string, ttlMs: number | undefined): Workload => {
    const key = ecKey();
    const id = spiffe(uri);
    const issued = ca.sign(
      createCsr(key, { uris: [uri] }),
      { identities: [id], method: 'test' },
      ttlMs === undefined ? {} : { ttlMs },
    );
    const keyPem = keyPemOf(key);
    return {
      spiffeId: uri,
      chainPem: issued.chainPem,
      keyPem,
      // As a client, every workload here trusts the mesh roots, so that it gets as far as the
      // server's judgement of its own certificate.
      trustPem: bundlePem,
      leafDer: issued.certificate,
      serial: issued.serialHex,
      identity: buildIdentity({ chainPem: issued.chainPem, keyPem, bundlePem: ca.trustBundlePem() }),
    };
  };
  return {
    trustDomain: TRUST_DOMAIN,
    bundlePem,
    issue: (uri, opts = {}) => issueFrom(meshCa, uri, opts.ttlMs),
    foreign: (uri) => issueFrom(foreignCa, uri, undefined),
    expired: (uri) => issueFrom(pastCa, uri, 3_600_000),
    otherTrustDomain: (path) => issueFrom(otherTdCa, `spiffe://${OTHER_TRUST_DOMAIN}/${path}`, undefined),
    appTls: () => {
      const w = issueFrom(appCa, 'spiffe://app.example/ns/app/sa/server', undefined);
      return { certPem: w.chainPem, keyPem: w.keyPem, caPem: appCa.trustBundlePem(), leafDer: w.leafDer };
    },
  };
}

/** SHA-256 of a certificate's DER, hex: the `Hash=` of an XFCC element. */
export function certificateHash(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Applications

async function listenOnLoopback(t: TestContext, server: net.Server): Promise<number> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as AddressInfo).port;
}

/** One connection as the application saw it. */
export interface AppConnection {
  /** Every byte received, in order (decrypted, for an application terminating its own TLS). */
  received: Buffer;
  /** The client ended its side (FIN, or close_notify for TLS). */
  ended: boolean;
  closed: boolean;
}

/** An application that records what reaches it. */
export interface RecordingApp {
  readonly port: number;
  /** `127.0.0.1:PORT`, for a ProxyConfig's `forward`. */
  readonly address: string;
  readonly connections: readonly AppConnection[];
  /** Bytes received over all connections. */
  bytesReceived(): number;
  /** Waits until `probe` returns a value, re-checking whenever the application sees something. */
  until<T>(probe: () => T | undefined, what: string): Promise<T>;
}

export interface EchoAppOptions {
  /** Written as soon as a connection opens: a server-first protocol. */
  greeting?: string;
  /** Answers the first line (echoed) and ends the connection, so a client reading to EOF stops. */
  endAfterLine?: boolean;
}

function recordingApp(port: number, connections: AppConnection[], signal: Signal): RecordingApp {
  return {
    port,
    address: `127.0.0.1:${port}`,
    connections,
    bytesReceived: () => connections.reduce((n, c) => n + c.received.length, 0),
    until: (probe, what) => signal.until(probe, what),
  };
}

function serve(socket: net.Socket, conn: AppConnection, signal: Signal, opts: EchoAppOptions): void {
  if (opts.greeting !== undefined) socket.write(opts.greeting);
  socket.on('data', (d: Buffer) => {
    conn.received = Buffer.concat([conn.received, d]);
    signal.notify();
    if (opts.endAfterLine) {
      const nl = conn.received.indexOf(0x0a);
      if (nl >= 0 && socket.writable) socket.end(conn.received.subarray(0, nl + 1));
    } else {
      socket.write(d);
    }
  });
  socket.on('end', () => {
    conn.ended = true;
    signal.notify();
    // Half-close: everything has been echoed, so end our side too.
    socket.end();
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    conn.closed = true;
    signal.notify();
  });
}

/** A TCP echo application on 127.0.0.1:0 that records every byte of every connection. */
export async function startEchoApp(t: TestContext, opts: EchoAppOptions = {}): Promise<RecordingApp> {
  const connections: AppConnection[] = [];
  const signal = new Signal();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const conn: AppConnection = { received: Buffer.alloc(0), ended: false, closed: false };
    connections.push(conn);
    signal.notify();
    serve(socket, conn, signal, opts);
  });
  return recordingApp(await listenOnLoopback(t, server), connections, signal);
}

/** An application that is itself a TLS server (its own certificate): it answers one line and ends. */
export async function startTlsApp(t: TestContext, material: AppTlsMaterial): Promise<RecordingApp> {
  const connections: AppConnection[] = [];
  const signal = new Signal();
  const server = tls.createServer({ cert: material.certPem, key: material.keyPem }, (socket) => {
    const conn: AppConnection = { received: Buffer.alloc(0), ended: false, closed: false };
    connections.push(conn);
    signal.notify();
    serve(socket, conn, signal, { endAfterLine: true });
  });
  server.on('tlsClientError', () => undefined);
  return recordingApp(await listenOnLoopback(t, server), connections, signal);
}

/** One request as the HTTP application received it. */
export interface AppRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

export interface HttpApp {
  readonly port: number;
  readonly address: string;
  readonly requests: readonly AppRequest[];
  /** TCP connections the application accepted. */
  connections(): number;
  nextRequest(): Promise<AppRequest>;
}

/** An HTTP/1.1 application that records every request and answers `app saw METHOD URL`. */
export async function startHttpApp(t: TestContext): Promise<HttpApp> {
  const requests: AppRequest[] = [];
  const signal = new Signal();
  let connections = 0;
  let taken = 0;
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => {
      body += d;
    });
    req.on('end', () => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      signal.notify();
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`app saw ${req.method} ${req.url}\n`);
    });
  });
  server.on('connection', () => {
    connections++;
  });
  const port = await listenOnLoopback(t, server);
  return {
    port,
    address: `127.0.0.1:${port}`,
    requests,
    connections: () => connections,
    nextRequest: () =>
      signal
        .until(() => requests[taken], `request #${taken + 1} at the HTTP app`)
        .then((r) => {
          taken++;
          return r;
        }),
  };
}

// ---------------------------------------------------------------------------------------------
// Observing the proxy

/** A ProxyObserver that keeps every record and lets a test await the next one it cares about. */
export class RecordingObserver implements ProxyObserver {
  readonly opened: ConnectionRecord[] = [];
  readonly closed: ConnectionRecord[] = [];
  readonly requests: RequestRecord[] = [];
  private readonly taken = new Set<ConnectionRecord>();
  private readonly signal = new Signal();

  connectionOpened(c: ConnectionRecord): void {
    this.opened.push(c);
    this.signal.notify();
  }

  connectionClosed(c: ConnectionRecord): void {
    this.closed.push(c);
    this.signal.notify();
  }

  request(r: RequestRecord): void {
    this.requests.push(r);
    this.signal.notify();
  }

  /** The first closed record matching `match` that no earlier call returned (past or future). */
  nextClosed(
    match: (c: ConnectionRecord) => boolean = () => true,
    what = 'a closed connection',
  ): Promise<ConnectionRecord> {
    return this.signal
      .until(
        () => this.closed.find((c) => !this.taken.has(c) && match(c)),
        () => `${what} (closed so far: ${JSON.stringify(this.closed.map(brief))})`,
      )
      .then((c) => {
        this.taken.add(c);
        return c;
      });
  }
}

function brief(c: ConnectionRecord): Record<string, unknown> {
  return { id: c.id, port: c.port, transport: c.transport, outcome: c.outcome, reason: c.reason };
}

// ---------------------------------------------------------------------------------------------
// The proxy

/** An inbound port as a test describes it; the proxy's listen address is chosen by startProxy. */
export interface InboundSpec {
  readonly port: number;
  readonly mode: ResolvedMtlsMode;
  readonly forward: string;
  readonly protocol?: 'tcp' | 'http';
  readonly policy?: string;
}

export type LimitsSpec = Partial<ProxyConfig['limits']>;

export interface StartedProxy {
  readonly proxy: Sidecar;
  readonly observer: RecordingObserver;
  /** The loopback port the sidecar listens on for a workload port. */
  listenPort(workloadPort: number): number;
  /** A config on the same listen addresses, for applyConfig. */
  configFor(inbound: readonly InboundSpec[], limits?: LimitsSpec): ProxyConfig;
}

/** Ports free right now: all held open at once so that none repeats, then released. */
export async function freePorts(count: number): Promise<number[]> {
  const servers = Array.from({ length: count }, () => net.createServer());
  const ports = await Promise.all(
    servers.map(
      (s) =>
        new Promise<number>((resolve, reject) => {
          s.once('error', reject);
          s.listen(0, '127.0.0.1', () => resolve((s.address() as AddressInfo).port));
        }),
    ),
  );
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return ports;
}

/** The proxy config for a workload: parsed as the proxy's own input is, so defaults apply. */
export function proxyConfig(opts: {
  identity: string;
  inbound: readonly (InboundSpec & { listen: number })[];
  limits?: LimitsSpec;
  trustDomains?: readonly string[];
}): ProxyConfig {
  const r = parseProxyConfig({
    workload: { namespace: 'shop', name: 'server', identity: opts.identity },
    trustDomains: opts.trustDomains ?? [TRUST_DOMAIN],
    inbound: opts.inbound.map((p) => ({
      port: p.port,
      listen: `127.0.0.1:${p.listen}`,
      forward: p.forward,
      mode: p.mode,
      protocol: p.protocol ?? 'tcp',
      policy: p.policy ?? 'default',
    })),
    limits: opts.limits ?? {},
  });
  if (!r.ok) throw new Error(`BUG: test proxy config is invalid: ${r.problems.join('; ')}`);
  return r.config;
}

/**
 * Starts a sidecar with the given inbound ports on free loopback ports and the wall clock. A port
 * taken between choosing and binding is retried with fresh ports (reserve by trying).
 */
export async function startProxy(
  t: TestContext,
  opts: { identity: ProxyIdentity | undefined; inbound: readonly InboundSpec[]; limits?: LimitsSpec },
): Promise<StartedProxy> {
  const observer = new RecordingObserver();
  const workloadIdentity = opts.identity?.identity ?? `spiffe://${TRUST_DOMAIN}/ns/shop/sa/server`;
  for (let attempt = 1; ; attempt++) {
    const ports = await freePorts(opts.inbound.length);
    const listenOf = new Map(opts.inbound.map((p, i) => [p.port, ports[i]!]));
    const configFor = (inbound: readonly InboundSpec[], limits: LimitsSpec | undefined = opts.limits) =>
      proxyConfig({
        identity: workloadIdentity,
        inbound: inbound.map((p) => {
          const listen = listenOf.get(p.port);
          if (listen === undefined) throw new Error(`BUG: port ${p.port} was not started`);
          return { ...p, listen };
        }),
        ...(limits ? { limits } : {}),
      });
    const proxy = new Sidecar(configFor(opts.inbound), {
      clock: { now: () => Date.now() },
      observer,
      ...(opts.identity ? { identity: opts.identity } : {}),
    });
    try {
      await proxy.start();
    } catch (err) {
      await proxy.stop();
      if ((err as { code?: string }).code === 'EADDRINUSE' && attempt < 5) continue;
      throw err;
    }
    t.after(() => proxy.stop());
    return {
      proxy,
      observer,
      listenPort: (port) => {
        const p = listenOf.get(port);
        if (p === undefined) throw new Error(`BUG: no listener for port ${port}`);
        return p;
      },
      configFor,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

/** What a client saw of one connection. */
export interface ClientResult {
  /** The TLS handshake completed on the client side (always false for plaintext). */
  readonly secure: boolean;
  readonly received: Buffer;
  /** The error that ended the connection, if any. */
  readonly error?: string;
  /** The server certificate (TLS), DER. */
  readonly serverCertificate?: Buffer;
  readonly protocol?: string;
}

export interface ClientOptions {
  /** Written once connected (after the handshake, for TLS). */
  readonly send?: Buffer | string;
  /** The client is done once it has received this much; otherwise it waits for the server to close. */
  readonly expectBytes?: number;
  /** Half-close (end) after sending instead of keeping the write side open. */
  readonly endAfterSend?: boolean;
  /** Wait for this many bytes before sending: a server-first protocol. */
  readonly awaitGreetingBytes?: number;
  /**
   * End the connection as soon as it (or the TLS handshake) is up, and wait for the server to
   * close. Ending, not destroying: a TLS 1.3 client's last handshake flight may still be queued.
   */
  readonly handshakeOnly?: boolean;
}

function drive(
  t: TestContext,
  socket: net.Socket,
  connectEvent: 'connect' | 'secureConnect',
  opts: ClientOptions,
): Promise<ClientResult> {
  t.after(() => socket.destroy());
  return new Promise<ClientResult>((resolve, reject) => {
    let received = Buffer.alloc(0);
    let secure = false;
    let sent = false;
    let error: string | undefined;
    let serverCertificate: Buffer | undefined;
    let protocol: string | undefined;
    const deadline = setTimeout(() => {
      socket.destroy();
      reject(
        new Error(
          `client gave up after ${WAIT_DEADLINE_MS} ms; received ${JSON.stringify(received.toString('latin1'))}`,
        ),
      );
    }, WAIT_DEADLINE_MS);
    const send = () => {
      if (sent || opts.send === undefined) return;
      sent = true;
      if (opts.endAfterSend) socket.end(opts.send);
      else socket.write(opts.send);
    };
    const done = () => {
      clearTimeout(deadline);
      socket.destroy();
      resolve({
        secure,
        received,
        ...(error !== undefined ? { error } : {}),
        ...(serverCertificate ? { serverCertificate } : {}),
        ...(protocol ? { protocol } : {}),
      });
    };
    socket.once(connectEvent, () => {
      if (socket instanceof tls.TLSSocket) {
        secure = true;
        serverCertificate = socket.getPeerCertificate().raw;
        protocol = socket.getProtocol() ?? undefined;
      }
      if (opts.handshakeOnly) return void socket.end();
      if (!opts.awaitGreetingBytes) send();
    });
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (opts.awaitGreetingBytes && received.length >= opts.awaitGreetingBytes) send();
      if (opts.expectBytes !== undefined && received.length >= opts.expectBytes) done();
    });
    socket.on('error', (err: Error & { code?: string }) => {
      error = err.code ?? err.message;
    });
    // The server ended its side: nothing more will come (our own side may still be open, half-open).
    socket.on('end', done);
    socket.on('close', done);
  });
}

/** A plaintext TCP client. */
export function plainClient(t: TestContext, port: number, opts: ClientOptions = {}): Promise<ClientResult> {
  return drive(t, net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }), 'connect', opts);
}

/**
 * A node:tls client: mesh mTLS when given credentials and the mesh ALPN. It verifies the server's
 * chain against `trustPem` (no hostname check: mesh certificates carry only a SPIFFE URI), or
 * nothing when `trustPem` is absent.
 */
export function tlsClient(
  t: TestContext,
  port: number,
  opts: ClientOptions & {
    creds?: ClientCredentials;
    trustPem?: string;
    alpn?: readonly string[];
    maxVersion?: tls.SecureVersion;
  },
): Promise<ClientResult> {
  const trustPem = opts.trustPem ?? opts.creds?.trustPem;
  const options: tls.ConnectionOptions = {
    host: '127.0.0.1',
    port,
    rejectUnauthorized: trustPem !== undefined,
    checkServerIdentity: () => undefined,
  };
  // tls.connect honours allowHalfOpen (a client that ends after sending) though its type omits it.
  Object.assign(options, { allowHalfOpen: true });
  if (trustPem) options.ca = trustPem;
  if (opts.creds) Object.assign(options, { cert: opts.creds.chainPem, key: opts.creds.keyPem });
  if (opts.alpn) options.ALPNProtocols = [...opts.alpn];
  if (opts.maxVersion) options.maxVersion = opts.maxVersion;
  const socket = tls.connect(options);
  return drive(t, socket, 'secureConnect', opts);
}

/** The SPIFFE URIs of a certificate. */
export function urisOf(der: Buffer): string[] {
  return (new X509Certificate(der).subjectAltName ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}

/** Python's `ssl` as a mesh client: ALPN set, a certificate chain presented, the server verified. */
const PYTHON_ALPN_CLIENT = `
import json, socket, ssl, sys
port, cert, key, ca, alpn, line = sys.argv[1:7]
out = {"handshake": False}
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.set_alpn_protocols(alpn.split(","))
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=4) as raw:
        with ctx.wrap_socket(raw) as s:
            out["handshake"] = True
            out["protocol"] = s.version()
            out["serverUris"] = [v for k, v in s.getpeercert().get("subjectAltName", ()) if k == "URI"]
            s.sendall(line.encode() + b"\\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            out["answer"] = data.decode()
except (ssl.SSLError, OSError) as e:
    out["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
`;

export interface PythonResult {
  readonly handshake: boolean;
  readonly protocol?: string;
  readonly serverUris?: string[];
  readonly answer?: string;
  readonly error?: string;
}

export async function pythonAlpnClient(
  t: TestContext,
  port: number,
  creds: ClientCredentials,
  opts: { alpn: readonly string[]; line: string },
): Promise<PythonResult & { raw: PeerRun }> {
  const files = await writeTempFiles(t, {
    'chain.pem': creds.chainPem,
    'key.pem': creds.keyPem,
    'trust.pem': creds.trustPem,
  });
  const raw = await runPeer(t, 'python3', [
    '-I',
    '-c',
    PYTHON_ALPN_CLIENT,
    String(port),
    files['chain.pem'],
    files['key.pem'],
    files['trust.pem'],
    opts.alpn.join(','),
    opts.line,
  ]);
  try {
    return { ...(JSON.parse(raw.stdout) as PythonResult), raw };
  } catch (err) {
    throw new Error(`python client printed no report: ${raw.stdout} ${raw.stderr}`, { cause: err });
  }
}

/**
 * The ClientHello a node:tls client sends with these options, captured by a plain TCP server:
 * for tests that replay a real hello, whole or cut short.
 */
export async function captureClientHello(
  t: TestContext,
  opts: { alpn?: readonly string[] } = {},
): Promise<Buffer> {
  let hello = Buffer.alloc(0);
  const signal = new Signal();
  const server = net.createServer((s) => {
    s.on('data', (d: Buffer) => {
      hello = Buffer.concat([hello, d]);
      signal.notify();
    });
    s.on('error', () => undefined);
  });
  const port = await listenOnLoopback(t, server);
  const client = tls.connect({
    host: '127.0.0.1',
    port,
    rejectUnauthorized: false,
    ...(opts.alpn ? { ALPNProtocols: [...opts.alpn] } : {}),
  });
  client.on('error', () => undefined);
  t.after(() => client.destroy());
  await signal.until(() => (detectTransport(hello).kind === 'tls' ? true : undefined), 'a ClientHello');
  client.destroy();
  return hello;
}
