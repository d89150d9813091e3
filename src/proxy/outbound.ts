import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import type { OutboundConfig, OutboundEndpointConfig } from '../mesh/index.js';
import { CLIENT_ALPN_H2, CLIENT_ALPN_HTTP, CLIENT_ALPN_TCP } from '../mesh/index.js';
import { verifyPeerChain } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import { AEAD_CIPHERS, peerChain } from './certs.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import { handshakeReason } from './inbound.js';
import { HttpOutbound } from './outbound-http.js';
import type { LiveConnection, ProxyRuntime } from './runtime.js';
import { closeRecord, listenOn, parseAddress, poolKey, splice } from './runtime.js';

type Attempt =
  | { ok: true; socket: net.Socket }
  | { ok: false; reason: RefusalReason; message: string; retryable: boolean };

/**
 * A TLS session to resume, with what it was made under. A resumed handshake carries no server
 * certificate, so the chain verified in the full handshake is kept to judge secure naming again; a
 * session made with another client certificate is not resumed, since the server would see the old one.
 */
interface CachedSession {
  readonly session: Buffer;
  readonly chain: Buffer[];
  readonly mode: OutboundEndpointConfig['tls'];
  readonly identity: ProxyIdentity | undefined;
}

/** OpenSSL's verify results (node's error codes) for DestinationRule TLS, by the names the mesh uses. */
const VERIFY_REASONS: Readonly<Record<string, RefusalReason>> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'UNKNOWN_CA',
  UNABLE_TO_GET_ISSUER_CERT: 'UNKNOWN_CA',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'UNKNOWN_CA',
  SELF_SIGNED_CERT_IN_CHAIN: 'UNKNOWN_CA',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'UNKNOWN_CA',
  CERT_HAS_EXPIRED: 'CERT_EXPIRED',
  CERT_NOT_YET_VALID: 'NOT_YET_VALID',
  ERR_TLS_CERT_ALTNAME_INVALID: 'SAN_MISMATCH',
};

/**
 * One destination the application calls: a local listener that picks an endpoint round-robin,
 * originates what the policy core decided for it (mesh mTLS, plaintext, or the DestinationRule's own
 * TLS) and checks the server's identity (secure naming). An endpoint that refuses the connection is
 * skipped for the next one.
 */
export class OutboundListener {
  private server: net.Server | undefined;
  private next = 0;
  /** TLS sessions per endpoint, so a new connection resumes instead of a full handshake. */
  private readonly sessions = new Map<string, CachedSession>();
  private readonly live = new Set<LiveConnection>();
  /** HTTP ports: the pool of upstream connections the application's requests share. */
  private readonly http: HttpOutbound;

  constructor(
    private dest: OutboundConfig,
    private readonly runtime: ProxyRuntime,
  ) {
    this.http = new HttpOutbound(
      () => this.dest,
      runtime,
      (ep, record, h2) => this.connectOne(ep, record, h2),
    );
  }

  get config(): OutboundConfig {
    return this.dest;
  }

  /** Upstream connections leave from the pod's address when the config names one. */
  private bind(): { localAddress?: string } {
    const from = this.runtime.config().sourceAddress;
    return from ? { localAddress: from } : {};
  }

  /** Listens on the destination's own address (local mesh); in transparent mode the Sidecar calls `handle`. */
  async listen(): Promise<void> {
    const address = this.dest.listen;
    if (address === undefined) throw new Error(`BUG: outbound ${this.dest.name} has no listen address`);
    this.server = await listenOn(address, (s) => this.handle(s));
  }

  /**
   * A new config applies to new connections at once. Pooled upstream connections (HTTP ports) were
   * verified against the old one: when the secure-naming or TLS settings change, none is reused, and
   * connections to endpoints that left are let go. Requests in flight on them finish.
   */
  update(dest: OutboundConfig): void {
    const before = this.dest;
    this.dest = dest;
    const naming = (d: OutboundConfig) => JSON.stringify([d.expectedIdentities, d.tls ?? null]);
    const sameNaming = naming(before) === naming(dest);
    const kept = new Set(dest.endpoints.map((e) => poolKey(e)));
    this.http.retire((key) => !sameNaming || !kept.has(key));
  }

  async close(): Promise<void> {
    this.http.close();
    for (const c of this.live) c.close('POLICY_CHANGED', 'listener closed');
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /** Takes one connection from the application for this destination. */
  handle(client: net.Socket): void {
    const rt = this.runtime;
    const dest = this.dest;
    const record: ConnectionRecord = {
      id: rt.nextId(),
      direction: 'outbound',
      port: parseAddress(dest.name).port,
      service: dest.name,
      sourceAddress: `${client.remoteAddress}:${client.remotePort}`,
      bytesReceived: 0,
      bytesSent: 0,
      startMs: rt.clock.now(),
    };
    let ended = false;
    let untrack = () => {};
    const finish = (outcome: 'accepted' | 'refused', reason?: RefusalReason, message?: string) => {
      if (ended) return;
      ended = true;
      client.destroy();
      untrack();
      closeRecord(rt, record, outcome, reason, message);
    };
    const live: LiveConnection = { record, close: (reason, message) => finish('refused', reason, message) };
    if (rt.connectionCount() >= rt.config().limits.maxConnections) {
      finish('refused', 'MAX_CONNECTIONS', `more than ${rt.config().limits.maxConnections} connections`);
      return;
    }
    const baseUntrack = rt.track(live);
    this.live.add(live);
    untrack = () => {
      baseUntrack();
      this.live.delete(live);
    };
    client.on('error', () => finish(record.outcome ?? 'refused'));
    if (dest.protocol === 'http') {
      // HTTP: requests go over pooled upstream connections; this record is the downstream connection.
      record.outcome = 'accepted';
      record.transport = dest.endpoints.every((e) => e.tls === 'ISTIO_MUTUAL')
        ? 'mtls'
        : dest.endpoints.every((e) => e.tls === 'DISABLE')
          ? 'plaintext'
          : undefined;
      if (record.transport === 'mtls') record.sourcePrincipal = rt.identity()?.identity;
      rt.observer.connectionOpened(record);
      client.on('close', () => {
        record.bytesReceived = client.bytesRead;
        record.bytesSent = client.bytesWritten;
        finish('accepted');
      });
      this.http.serve(client, record);
      return;
    }
    void this.connectAny(record).then((result) => {
      if (ended) {
        if (result.ok) result.socket.destroy();
        return;
      }
      if (!result.ok) return finish('refused', result.reason, result.message);
      record.outcome = 'accepted';
      rt.observer.connectionOpened(record);
      splice(client, result.socket, record, () => finish('accepted'), rt.config().limits.idleTimeoutMs);
      client.resume();
    });
  }

  /** Tries endpoints round-robin from the next one; only a refused or unreachable endpoint moves on. */
  private async connectAny(record: ConnectionRecord): Promise<Attempt> {
    const endpoints = this.dest.endpoints;
    const start = this.next++ % endpoints.length;
    let last: Attempt = {
      ok: false,
      reason: 'UPSTREAM_UNREACHABLE',
      message: 'no endpoint',
      retryable: false,
    };
    for (let i = 0; i < endpoints.length; i++) {
      const ep = endpoints[(start + i) % endpoints.length]!;
      last = await this.connectOne(ep, record);
      if (last.ok || !last.retryable) return last;
    }
    return last;
  }

  private connectOne(ep: OutboundEndpointConfig, record: ConnectionRecord, h2 = false): Promise<Attempt> {
    const rt = this.runtime;
    const { host, port } = parseAddress(ep.address);
    record.destinationPrincipal = undefined;
    (record as { destinationAddress?: string }).destinationAddress = ep.address;
    return new Promise<Attempt>((resolve) => {
      const unreachable = (err: Error) =>
        resolve({
          ok: false,
          reason: 'UPSTREAM_UNREACHABLE',
          message: `${ep.address}: ${err.message}`,
          retryable: true,
        });
      if (ep.tls === 'DISABLE') {
        record.transport = 'plaintext';
        const s = net.connect({ host, port, ...this.bind() });
        s.once('error', unreachable);
        s.once('connect', () => {
          s.off('error', unreachable);
          resolve({ ok: true, socket: s });
        });
        return;
      }
      const identity = rt.identity();
      const limits = rt.config().limits;
      let options: tls.ConnectionOptions;
      if (ep.tls === 'ISTIO_MUTUAL') {
        if (!identity) {
          resolve({
            ok: false,
            reason: 'HANDSHAKE_FAILED',
            message: 'no certificate loaded yet: cannot originate mTLS',
            retryable: false,
          });
          return;
        }
        record.transport = 'mtls';
        record.sourcePrincipal = identity.identity;
        options = {
          host,
          port,
          secureContext: identity.clientContext,
          ALPNProtocols: [
            ...(h2 ? CLIENT_ALPN_H2 : this.dest.protocol === 'http' ? CLIENT_ALPN_HTTP : CLIENT_ALPN_TCP),
          ],
          rejectUnauthorized: false,
          minVersion: 'TLSv1.2',
        };
      } else {
        // DestinationRule SIMPLE / MUTUAL: the rule's own certificates, verified the ordinary way.
        record.transport = 'tls';
        const t = this.dest.tls ?? {};
        try {
          options = {
            host,
            port,
            servername: t.sni,
            ciphers: AEAD_CIPHERS,
            ...(h2 ? { ALPNProtocols: ['h2'] } : {}),
            minVersion: 'TLSv1.2',
            ...(t.caCertificates ? { ca: readFileSync(t.caCertificates) } : {}),
            ...(ep.tls === 'MUTUAL' && t.clientCertificate
              ? { cert: readFileSync(t.clientCertificate) }
              : {}),
            ...(ep.tls === 'MUTUAL' && t.privateKey ? { key: readFileSync(t.privateKey) } : {}),
            rejectUnauthorized: true,
            checkServerIdentity: (hostname, cert) => {
              const sans = (cert.subjectaltname ?? '').split(', ').map((s) => s.replace(/^(URI|DNS):/, ''));
              if (t.subjectAltNames?.length) {
                return t.subjectAltNames.some((n) => sans.includes(n))
                  ? undefined
                  : new Error(
                      `SAN_MISMATCH: expected one of ${t.subjectAltNames.join(', ')}, got ${sans.join(', ')}`,
                    );
              }
              return t.sni ? tls.checkServerIdentity(hostname, cert) : undefined;
            },
          };
        } catch (err) {
          resolve({
            ok: false,
            reason: 'HANDSHAKE_FAILED',
            message: `DestinationRule certificates: ${(err as Error).message}`,
            retryable: false,
          });
          return;
        }
      }
      const cached = this.sessions.get(ep.address);
      const resumable = cached && cached.mode === ep.tls && cached.identity === identity ? cached : undefined;
      const s = tls.connect({
        ...options,
        ...this.bind(),
        ...(resumable ? { session: resumable.session } : {}),
      });
      // Read once per connection: the session event and the verification share it.
      let chain: Buffer[] | undefined;
      const chainOf = () => {
        chain ??= s.isSessionReused() && resumable ? [...resumable.chain] : peerChain(s);
        return chain;
      };
      const timer = setTimeout(() => {
        s.destroy();
        resolve({
          ok: false,
          reason: 'HANDSHAKE_TIMEOUT',
          message: `${ep.address}: no TLS handshake in ${limits.handshakeTimeoutMs} ms`,
          retryable: true,
        });
      }, limits.handshakeTimeoutMs);
      s.on('session', (session: Buffer) =>
        this.sessions.set(ep.address, { session, chain: chainOf(), mode: ep.tls, identity }),
      );
      s.once('error', (err: Error & { code?: string }) => {
        clearTimeout(timer);
        // A session the server would not resume is never offered again.
        if (resumable && this.sessions.get(ep.address) === resumable) this.sessions.delete(ep.address);
        if (err.code === 'ECONNREFUSED' || err.code === 'ECONNRESET' || err.code === 'EHOSTUNREACH')
          return unreachable(err);
        if (/SAN_MISMATCH/.test(err.message)) {
          resolve({ ok: false, reason: 'SAN_MISMATCH', message: err.message, retryable: false });
          return;
        }
        resolve({
          ok: false,
          reason: (err.code && VERIFY_REASONS[err.code]) || handshakeReason(err),
          message: `${ep.address}: ${err.message}`,
          retryable: false,
        });
      });
      s.once('secureConnect', () => {
        clearTimeout(timer);
        record.tlsVersion = s.getProtocol() ?? undefined;
        record.resumed = s.isSessionReused();
        record.cipher = s.getCipher()?.name;
        if (ep.tls !== 'ISTIO_MUTUAL' || !identity) {
          resolve({ ok: true, socket: s });
          return;
        }
        const verdict = verifyPeerChain(chainOf(), identity.roots, rt.clock.now(), rt.config().trustDomains);
        if (!verdict.ok) {
          s.destroy();
          resolve({
            ok: false,
            reason: verdict.reason,
            message: `${ep.address}: ${verdict.message}`,
            retryable: false,
          });
          return;
        }
        const presented = verdict.identities.map((i) => i.uri);
        const expected = this.dest.expectedIdentities;
        record.destinationPrincipal = presented[0];
        if (expected.length > 0 && !presented.some((p) => expected.includes(p))) {
          s.destroy();
          resolve({
            ok: false,
            reason: 'SAN_MISMATCH',
            message: `${ep.address} presented ${presented.join(', ')}; ${this.dest.name} expects ${expected.join(' or ')}`,
            retryable: false,
          });
          return;
        }
        resolve({ ok: true, socket: s });
      });
    });
  }
}
