/**
 * What the outbound and CLI proxy tests share: a mesh CA issuing SPIFFE identities in-process, a
 * recording observer whose events can be awaited, line-echo applications, a node:tls server that
 * reports what it saw of each client, `openssl s_server` as a peer kmtls did not write, and a client
 * that sends one line and reads one line back. Everything listens on 127.0.0.1 and is closed in
 * `t.after`. Waiting is on events; the only timers are deadlines that turn a hang into a failure.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import type { TestContext } from 'node:test';
import tls from 'node:tls';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { ProxyConfig } from '../../src/mesh/index.js';
import { parseProxyConfig } from '../../src/mesh/index.js';
import {
  CertificateAuthority,
  createCsr,
  createRoot,
  selfSignedMaterial,
  toPem,
} from '../../src/pki/index.js';
import type { ConnectionRecord, ProxyIdentity, ProxyObserver, RequestRecord } from '../../src/proxy/index.js';
import { buildIdentity } from '../../src/proxy/index.js';

/** A deadline for anything awaited here: a missing event fails the test instead of hanging it. */
export const WAIT_MS = 5_000;

/** Resolves with `promise`, or rejects naming `what` if it does not settle within `ms`. */
export function within<T>(promise: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

export function spiffe(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  if (!r.ok) throw new Error(`BUG: test identity ${uri} is not a SPIFFE ID`);
  return r.id;
}

/** PEM material as a sidecar holds it, and as `kmtls ca issue` writes it. */
export interface Material {
  readonly chainPem: string;
  readonly keyPem: string;
  readonly bundlePem: string;
}

export interface TestCa {
  readonly rootPem: string;
  /** Issues a certificate for `uri`; `nowMs` and `ttlMs` let a test make an expired one. */
  issue(uri: string, opts?: { nowMs?: number; ttlMs?: number }): Material;
  /** The same, as the identity a Proxy holds. */
  identity(uri: string, opts?: { nowMs?: number; ttlMs?: number }): ProxyIdentity;
}

function pkcs8(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** A self-signed mesh CA, its root made `rootAgeMs` ago so that it can back-date leaves. */
export function testCa(trustDomain = 'cluster.local', rootAgeMs = 7 * 24 * 3_600_000): TestCa {
  const now = Date.now();
  const root = createRoot({ trustDomain, now: now - rootAgeMs, random: randomBytes });
  const material = selfSignedMaterial(trustDomain, root);
  const issue = (uri: string, opts: { nowMs?: number; ttlMs?: number } = {}): Material => {
    const at = opts.nowMs ?? Date.now();
    const ca = new CertificateAuthority(material, { clock: { now: () => at }, random: randomBytes });
    const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    const issued = ca.sign(
      createCsr(key, { uris: [uri] }),
      { identities: [spiffe(uri)], method: 'test' },
      opts.ttlMs ? { ttlMs: opts.ttlMs } : {},
    );
    return { chainPem: issued.chainPem, keyPem: pkcs8(key), bundlePem: ca.trustBundlePem() };
  };
  return {
    rootPem: toPem(root.certificate),
    issue,
    identity: (uri, opts) => buildIdentity(issue(uri, opts)),
  };
}

/** The SPIFFE URIs of a PEM certificate. */
export function urisOf(pem: string): string[] {
  return (new X509Certificate(pem).subjectAltName ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}

/**
 * A port that was free a moment ago. ProxyConfig names its listen addresses, and the Proxy does not
 * report the port it bound, so listeners get a port this way; the gap between close and reuse is tiny.
 */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** A ProxyConfig through the real schema (defaults filled in); throws on a schema problem. */
export function proxyConfig(value: unknown): ProxyConfig {
  const r = parseProxyConfig(value);
  if (!r.ok) throw new Error(`BUG: test config invalid: ${r.problems.join('; ')}`);
  return r.config;
}

/** An observer that keeps every record and lets a test await the next closed one. */
export interface RecordingObserver extends ProxyObserver {
  readonly closed: ConnectionRecord[];
  readonly requests: RequestRecord[];
  /** The next connection closed from now on (or already closed and not yet taken). */
  nextClosed(what?: string): Promise<ConnectionRecord>;
}

export function recordingObserver(): RecordingObserver {
  const closed: ConnectionRecord[] = [];
  const requests: RequestRecord[] = [];
  let taken = 0;
  const waiters: ((c: ConnectionRecord) => void)[] = [];
  return {
    closed,
    requests,
    connectionOpened: () => {},
    connectionClosed: (c) => {
      closed.push(c);
      const w = waiters.shift();
      if (w) {
        taken++;
        w(c);
      }
    },
    request: (r) => {
      requests.push(r);
    },
    nextClosed(what = 'a connection to close') {
      const ready = closed[taken];
      if (ready) {
        taken++;
        return Promise.resolve(ready);
      }
      return within(new Promise((resolve) => waiters.push(resolve)), what);
    },
  };
}

/** One connection as an application or test server saw it. */
export interface SeenConnection {
  /** The first bytes that arrived, exactly. */
  readonly firstBytes: Buffer;
}

/** A queue of things that happen, to be taken in order. */
export class EventQueue<T> {
  private readonly items: T[] = [];
  private readonly waiters: ((v: T) => void)[] = [];
  readonly all: T[] = [];

  push(v: T): void {
    this.all.push(v);
    const w = this.waiters.shift();
    if (w) w(v);
    else this.items.push(v);
  }

  next(what: string): Promise<T> {
    const v = this.items.shift();
    if (v !== undefined) return Promise.resolve(v);
    return within(new Promise((resolve) => this.waiters.push(resolve)), what);
  }
}

export interface EchoApp {
  readonly port: number;
  readonly address: string;
  readonly name: string;
  readonly seen: EventQueue<SeenConnection>;
}

/** A TCP application that answers each line with `<name>:<line>` and records the first bytes of each connection. */
export async function startEchoApp(t: TestContext, name: string): Promise<EchoApp> {
  const seen = new EventQueue<SeenConnection>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    let buffered = '';
    let first = true;
    s.on('data', (d: Buffer) => {
      if (first) {
        first = false;
        seen.push({ firstBytes: d });
      }
      buffered += d.toString('latin1');
      for (let i = buffered.indexOf('\n'); i >= 0; i = buffered.indexOf('\n')) {
        s.write(`${name}:${buffered.slice(0, i)}\n`);
        buffered = buffered.slice(i + 1);
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as net.AddressInfo;
  return { port, address: `127.0.0.1:${port}`, name, seen };
}

/** What a TLS test server saw of one client. */
export interface TlsSeen {
  readonly reused: boolean;
  readonly alpn: string | false;
  /** The SPIFFE URIs of the client certificate, empty without one. */
  readonly clientUris: readonly string[];
  /** The client certificate's serial number (hex, upper case as node prints it), if any. */
  readonly clientSerial: string | undefined;
}

export interface TlsApp {
  readonly port: number;
  readonly address: string;
  readonly seen: EventQueue<TlsSeen>;
  readonly clientErrors: EventQueue<Error>;
}

/**
 * A node:tls server presenting `material` (leaf first), asking for a client certificate without
 * requiring one, offering `alpn`; it answers each line with `<name>:<line>`.
 */
export async function startTlsApp(
  t: TestContext,
  name: string,
  material: Material,
  opts: { alpn?: string[]; maxVersion?: tls.SecureVersion } = {},
): Promise<TlsApp> {
  const seen = new EventQueue<TlsSeen>();
  const clientErrors = new EventQueue<Error>();
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(
    {
      cert: material.chainPem,
      key: material.keyPem,
      ca: material.bundlePem,
      requestCert: true,
      rejectUnauthorized: false,
      ...(opts.alpn ? { ALPNProtocols: opts.alpn } : {}),
      ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}),
    },
    (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
      const peer = s.getPeerCertificate();
      const clientUris = (peer.subjectaltname ?? '')
        .split(', ')
        .filter((x) => x.startsWith('URI:'))
        .map((x) => x.slice(4));
      seen.push({
        reused: s.isSessionReused(),
        alpn: s.alpnProtocol ?? false,
        clientUris,
        clientSerial: peer.serialNumber,
      });
      let buffered = '';
      s.on('data', (d: Buffer) => {
        buffered += d.toString('latin1');
        for (let i = buffered.indexOf('\n'); i >= 0; i = buffered.indexOf('\n')) {
          s.write(`${name}:${buffered.slice(0, i)}\n`);
          buffered = buffered.slice(i + 1);
        }
      });
    },
  );
  server.on('tlsClientError', (err) => clientErrors.push(err));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as net.AddressInfo;
  return { port, address: `127.0.0.1:${port}`, seen, clientErrors };
}

/** What a client got from one connection: the first line of the answer, or nothing before the close. */
export interface Exchange {
  /** The answer line without its newline; undefined when the connection closed without one. */
  readonly answer: string | undefined;
  /** True when the peer closed the connection (rather than us, after the answer). */
  readonly closedByPeer: boolean;
}

/**
 * Connects to 127.0.0.1:`port`, sends `line` and a newline, and waits for one line back or the close.
 * A connection that closes without an answer is a refusal, not an error.
 */
export function exchange(port: number, line: string): Promise<Exchange> {
  const s = net.connect({ host: '127.0.0.1', port });
  const result = new Promise<Exchange>((resolve) => {
    let data = '';
    s.on('connect', () => s.write(`${line}\n`));
    s.on('data', (d: Buffer) => {
      data += d.toString('latin1');
      const i = data.indexOf('\n');
      if (i >= 0) {
        resolve({ answer: data.slice(0, i), closedByPeer: false });
        s.destroy();
      }
    });
    s.on('error', () => {});
    s.on('close', () => resolve({ answer: undefined, closedByPeer: true }));
  });
  return within(result, `an answer or a close on port ${port}`);
}

export interface OpensslServer {
  readonly port: number;
  /** Everything s_server printed so far. */
  output(): string;
  /** Resolves with the output once `pattern` matches it. */
  waitFor(pattern: RegExp, what?: string): Promise<string>;
  /** Sends a line to the connected client (s_server forwards its stdin). */
  send(line: string): void;
}

/**
 * `openssl s_server` on 127.0.0.1 with an ephemeral port, `args` appended. Its stdin stays open
 * (at EOF it would quit); it is killed in t.after.
 */
export async function startOpensslServer(t: TestContext, args: readonly string[]): Promise<OpensslServer> {
  const child: ChildProcessWithoutNullStreams = spawn(
    'openssl',
    ['s_server', '-accept', '127.0.0.1:0', ...args],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const watchers = new Set<() => void>();
  const onData = (d: string) => {
    out += d;
    for (const w of watchers) w();
  };
  child.stdout.setEncoding('utf8').on('data', onData);
  child.stderr.setEncoding('utf8').on('data', onData);
  child.stdin.on('error', () => {});
  const waitFor = (pattern: RegExp, what = String(pattern)): Promise<string> =>
    within(
      new Promise<string>((resolve, reject) => {
        const exited = () => reject(new Error(`openssl s_server exited before ${what}:\n${out}`));
        const check = () => {
          if (!pattern.test(out)) return;
          watchers.delete(check);
          child.off('exit', exited);
          resolve(out);
        };
        watchers.add(check);
        child.once('exit', exited);
        check();
      }),
      `openssl s_server: ${what}\n${out}`,
    );
  const accept = await waitFor(/ACCEPT 127\.0\.0\.1:(\d+)/, 'ACCEPT');
  const port = Number(/ACCEPT 127\.0\.0\.1:(\d+)/.exec(accept)?.[1]);
  return {
    port,
    output: () => out,
    waitFor,
    send: (line) => child.stdin.write(`${line}\n`),
  };
}
