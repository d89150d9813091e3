import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import type { InboundPortConfig } from '../mesh/index.js';
import { MESH_ALPNS } from '../mesh/index.js';
import { verifyPeerChain } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import { peerChain } from './certs.js';
import { detectTransport, MAX_CLIENT_HELLO_BYTES } from './detect.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import type { InboundHttpContext } from './http2.js';
import { InboundHttp2, sniffHttpVersion } from './http2.js';
import type { LiveConnection, ProxyRuntime } from './runtime.js';
import {
  closeRecord,
  http1Outcome,
  listenOn,
  parseAddress,
  refuseHttp1,
  reportRequest,
  splice,
} from './runtime.js';
import { endToEndHeaders, isWebSocketUpgrade, relayUpgrade, reparseWithoutUpgrade } from './upgrade.js';

const XFCC = 'x-forwarded-client-cert';

/**
 * The `x-forwarded-client-cert` value for requests on one mTLS connection, in Envoy's format
 * (SANITIZE_SET, as Istio's sidecars configure it): this proxy's identity, the client certificate's
 * SHA-256, its (empty) subject and its SPIFFE URI. Undefined when the client has no principal.
 */
export function xfccValue(
  mtls: { identity: ProxyIdentity; peerCertificate: Buffer },
  record: ConnectionRecord,
): string | undefined {
  if (!record.sourcePrincipal) return undefined;
  const hash = createHash('sha256').update(mtls.peerCertificate).digest('hex');
  return `By=${mtls.identity.identity};Hash=${hash};Subject="";URI=${record.sourcePrincipal}`;
}

/**
 * The ALPN the server side selects, as Istio's inbound TLS context does (`h2`, then `http/1.1`, by
 * the server's preference) when the client offers one; none otherwise, which Node would turn into a
 * fatal alert if it were left to choose. `istio-peer-exchange` is never selected: it would promise the
 * client Istio's metadata exchange, which kmtls does not speak.
 */
function serverAlpn(offered: readonly string[]): { ALPNProtocols?: string[] } {
  const pick = SERVER_ALPN.find((p) => offered.includes(p));
  return pick ? { ALPNProtocols: [pick] } : {};
}

const SERVER_ALPN = ['h2', 'http/1.1'] as const;

/** Maps a handshake error to a refusal reason. */
export function handshakeReason(err: Error & { code?: string }): RefusalReason {
  const text = `${err.code ?? ''} ${err.message}`;
  if (/UNSUPPORTED_PROTOCOL|unsupported protocol|WRONG_VERSION_NUMBER|version too low/i.test(text))
    return 'TLS_VERSION';
  return 'HANDSHAKE_FAILED';
}

/**
 * One inbound workload port: detects what arrives, enforces the port's mode, and forwards what it
 * accepts to the application. STRICT never opens a connection to the application before the peer's
 * certificate has been verified, so no plaintext byte ever reaches it.
 */
/**
 * Transparent mode: where one connection reaches the application (the original destination's
 * address, i.e. the pod's IP, on the port's forward port) and the source address it uses.
 */
export interface InboundTarget {
  readonly forward: string;
  readonly localAddress?: string;
}

/** A bounded memory of verified chains by leaf certificate (oldest forgotten first). */
class ChainMemory {
  private readonly byLeaf = new Map<string, Buffer[]>();

  constructor(private readonly max = 1024) {}

  get(leaf: Buffer): Buffer[] | undefined {
    return this.byLeaf.get(leaf.toString('base64'));
  }

  remember(chain: Buffer[]): void {
    if (chain.length < 2) return;
    const key = chain[0]!.toString('base64');
    this.byLeaf.delete(key);
    this.byLeaf.set(key, chain);
    if (this.byLeaf.size > this.max) this.byLeaf.delete(this.byLeaf.keys().next().value as string);
  }
}

export class InboundListener {
  private server: net.Server | undefined;
  private readonly http: http.Server;
  private readonly agent: http.Agent;
  private readonly http2: InboundHttp2;
  private readonly live = new Set<LiveConnection>();
  /** Chains clients presented in full handshakes, by leaf, for their resumed sessions. */
  private readonly knownChains = new ChainMemory();
  /** Transparent mode: the source address each connection reaches the application from. */
  private readonly sources = new WeakMap<ConnectionRecord, string>();

  constructor(
    private port: InboundPortConfig,
    private readonly runtime: ProxyRuntime,
  ) {
    const limits = runtime.config().limits;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
    this.http = http.createServer({ maxHeaderSize: limits.maxHeaderBytes }, (req, res) =>
      this.forwardRequest(req, res),
    );
    this.http.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
      else socket.destroy();
    });
    this.http.on('upgrade', (req: IncomingMessage, socket: net.Socket, head: Buffer) =>
      this.forwardUpgrade(req, socket, head),
    );
    this.http2 = new InboundHttp2(runtime, XFCC, this.agent);
  }

  get config(): InboundPortConfig {
    return this.port;
  }

  /** Listens on the port's own address (local mesh); in transparent mode the Sidecar calls `handle`. */
  async listen(): Promise<void> {
    const address = this.port.listen;
    if (address === undefined) throw new Error(`BUG: inbound port ${this.port.port} has no listen address`);
    this.server = await listenOn(address, (s) => this.handle(s));
  }

  /** The port's new mode applies to new connections at once; live ones the new mode refuses are drained. */
  update(port: InboundPortConfig, drainMs: number): void {
    const before = this.port;
    this.port = port;
    if (before.mode === port.mode) return;
    for (const c of this.live) {
      const t = c.record.transport;
      const refusedNow = port.mode === 'STRICT' && t !== 'mtls';
      if (!refusedNow) continue;
      const timer = setTimeout(
        () =>
          c.close(
            'POLICY_CHANGED',
            `port ${c.record.port} became ${port.mode} (policy ${port.policy}): ${t} no longer accepted`,
          ),
        drainMs,
      );
      timer.unref();
    }
  }

  async close(): Promise<void> {
    for (const c of this.live) c.close('POLICY_CHANGED', 'listener closed');
    this.agent.destroy();
    this.http2.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /**
   * Takes one connection for this port. `fixed` pins the port's config for the whole connection (the
   * transparent passthrough: one handler for every undeclared port, each connection with its own port
   * and forward address); without it the port's current config decides, as on its own listener.
   * `target` (transparent mode) replaces the forward address and sets the source address.
   */
  handle(socket: net.Socket, fixed?: InboundPortConfig, target?: InboundTarget): void {
    const rt = this.runtime;
    // Transparent mode: the application is reached at the connection's own target (the pod's IP).
    const retarget = (p: InboundPortConfig): InboundPortConfig =>
      target ? { ...p, forward: target.forward } : p;
    const port = retarget(fixed ?? this.port);
    const portOf = fixed ? () => port : () => retarget(this.port);
    const limits = rt.config().limits;
    const record: ConnectionRecord = {
      id: rt.nextId(),
      direction: 'inbound',
      port: port.port,
      mode: port.mode,
      policy: port.policy,
      sourceAddress: `${socket.remoteAddress}:${socket.remotePort}`,
      destinationAddress: port.forward,
      bytesReceived: 0,
      bytesSent: 0,
      startMs: rt.clock.now(),
    };
    if (target?.localAddress) this.sources.set(record, target.localAddress);
    let ended = false;
    const live: LiveConnection = {
      record,
      close: (reason, message) => finish('refused', reason, message),
    };
    let untrack = () => {};
    const finish = (outcome: 'accepted' | 'refused', reason?: RefusalReason, message?: string) => {
      if (ended) return;
      ended = true;
      socket.destroy();
      untrack();
      closeRecord(rt, record, outcome, reason, message);
    };
    socket.on('error', () => finish(record.outcome ?? 'refused', record.reason, record.message));
    if (rt.connectionCount() >= limits.maxConnections) {
      finish('refused', 'MAX_CONNECTIONS', `more than ${limits.maxConnections} connections`);
      return;
    }
    untrack = rt.track(live);
    this.live.add(live);
    const baseUntrack = untrack;
    untrack = () => {
      baseUntrack();
      this.live.delete(live);
    };

    // DISABLE on a TCP port inspects nothing: bytes go to the application as they arrive, at once,
    // as Envoy's plain TCP chain does (server-first protocols wait for nothing).
    if (port.mode === 'DISABLE' && port.protocol === 'tcp') {
      record.transport = 'raw';
      this.forward(portOf(), socket, record, finish, undefined, undefined);
      return;
    }

    // Detection: read (without losing) the first bytes until they say TLS or not.
    const chunks: Buffer[] = [];
    let size = 0;
    // Only STRICT waits the handshake timeout for a first byte: on the pass-through modes a silent
    // client may be speaking a server-first protocol, which must reach the application.
    const waitMs = port.mode === 'STRICT' ? limits.handshakeTimeoutMs : limits.detectTimeoutMs;
    const timer = setTimeout(() => decide(true, false), waitMs);
    const onData = (d: Buffer) => {
      chunks.push(d);
      size += d.length;
      decide(false, false);
    };
    let decided = false;
    const decide = (timedOut: boolean, clientEnded: boolean) => {
      // Once: a later 'end' or timer must not route the connection a second time.
      if (decided) return;
      const buf = Buffer.concat(chunks);
      let detection = detectTransport(buf);
      if (detection.kind === 'need-more' && !timedOut && !clientEnded && size < MAX_CLIENT_HELLO_BYTES)
        return;
      decided = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      // After 'end' nothing can be unshifted: the bytes travel beside the stream instead.
      if (buf.length > 0 && !clientEnded) socket.unshift(buf);
      if (detection.kind === 'need-more') detection = { kind: 'plaintext' };
      const silent = buf.length === 0 && (timedOut || clientEnded);
      this.route(portOf(), socket, record, detection, silent, finish, clientEnded ? buf : undefined);
    };
    socket.on('data', onData);
    socket.on('end', () => decide(true, true));
    socket.resume();
  }

  private route(
    port: InboundPortConfig,
    socket: net.Socket,
    record: ConnectionRecord,
    detection: ReturnType<typeof detectTransport>,
    silent: boolean,
    finish: (outcome: 'accepted' | 'refused', reason?: RefusalReason, message?: string) => void,
    /** What a client sent before it ended, when it ended before detection was done. */
    endedWith: Buffer | undefined,
  ): void {
    const isTls = detection.kind === 'tls';
    const meshAlpn = isTls && detection.alpn.some((a) => (MESH_ALPNS as readonly string[]).includes(a));
    if (isTls) record.alpn = detection.alpn.join(',');
    switch (port.mode) {
      case 'STRICT':
        if (silent) {
          finish('refused', 'HANDSHAKE_TIMEOUT', 'no TLS ClientHello arrived in time on a STRICT port');
        } else if (!isTls) {
          finish(
            'refused',
            'PLAINTEXT_REJECTED',
            `plaintext on STRICT port ${port.port} (policy ${port.policy})`,
          );
        } else {
          this.terminate(port, socket, record, finish, detection.alpn);
        }
        return;
      case 'PERMISSIVE':
        if (meshAlpn) {
          this.terminate(port, socket, record, finish, detection.alpn);
          return;
        }
        if (isTls && port.protocol === 'http') {
          // Istio's PERMISSIVE HTTP chains take mesh mTLS or plaintext HTTP; other TLS matches none.
          finish(
            'refused',
            'UNEXPECTED_TLS',
            `TLS without a mesh ALPN on PERMISSIVE HTTP port ${port.port}: no filter chain takes it`,
          );
          return;
        }
        record.transport = isTls ? 'app-tls' : 'plaintext';
        this.forward(port, socket, record, finish, undefined, endedWith);
        return;
      case 'DISABLE':
        if (isTls) {
          // Only HTTP ports get here: Istio's DISABLE HTTP chain parses plaintext HTTP, so TLS is a protocol error.
          finish(
            'refused',
            'UNEXPECTED_TLS',
            `TLS on DISABLE HTTP port ${port.port} (policy ${port.policy}): the port expects plaintext HTTP`,
          );
          return;
        }
        record.transport = 'plaintext';
        this.forward(port, socket, record, finish, undefined, endedWith);
        return;
      default: {
        const never: never = port.mode;
        throw new Error(`BUG: unknown mode ${String(never)}`);
      }
    }
  }

  /** Terminates mesh mTLS and verifies the client's chain and SPIFFE identity with kmtls's own rules. */
  private terminate(
    port: InboundPortConfig,
    socket: net.Socket,
    record: ConnectionRecord,
    finish: (outcome: 'accepted' | 'refused', reason?: RefusalReason, message?: string) => void,
    offered: readonly string[],
  ): void {
    const rt = this.runtime;
    const identity = rt.identity();
    if (!identity) {
      finish('refused', 'HANDSHAKE_FAILED', 'no certificate loaded yet: cannot terminate mTLS');
      return;
    }
    record.transport = 'mtls';
    const secure = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: identity.serverContext,
      requestCert: true,
      rejectUnauthorized: false,
      ...serverAlpn(offered),
    });
    const timer = setTimeout(
      () =>
        finish(
          'refused',
          'HANDSHAKE_TIMEOUT',
          `TLS handshake not done in ${rt.config().limits.handshakeTimeoutMs} ms`,
        ),
      rt.config().limits.handshakeTimeoutMs,
    );
    secure.on('error', (err: Error & { code?: string }) => {
      clearTimeout(timer);
      if (record.outcome === undefined) finish('refused', handshakeReason(err), err.message);
      else finish('accepted');
    });
    // A client that leaves before the handshake is done (FIN or reset, with no TLS error) is
    // refused now, not left to the handshake timer and then misnamed a timeout.
    let isSecure = false;
    const leftEarly = () => {
      if (isSecure) return;
      clearTimeout(timer);
      finish('refused', 'HANDSHAKE_FAILED', 'the client closed the connection during the TLS handshake');
    };
    secure.once('end', leftEarly);
    secure.once('close', leftEarly);
    secure.on('secure', () => {
      isSecure = true;
      clearTimeout(timer);
      const version = secure.getProtocol();
      if (version) record.tlsVersion = version;
      const cipher = secure.getCipher()?.name;
      if (cipher) record.cipher = cipher;
      record.resumed = secure.isSessionReused();
      let chain = peerChain(secure);
      if (chain.length === 0) {
        finish('refused', 'NO_CLIENT_CERT', 'the client presented no certificate');
        return;
      }
      // A resumed session carries the client's certificate but not always its intermediates: use
      // the chain this client showed in its full handshake (it is verified again all the same).
      if (secure.isSessionReused() && chain.length === 1) chain = this.knownChains.get(chain[0]!) ?? chain;
      const verdict = verifyPeerChain(chain, identity.roots, rt.clock.now(), rt.config().trustDomains);
      if (!verdict.ok) {
        finish('refused', verdict.reason, verdict.message);
        return;
      }
      this.knownChains.remember(chain);
      const principal = verdict.identities[0]?.uri;
      if (principal) record.sourcePrincipal = principal;
      record.destinationPrincipal = identity.identity;
      this.forward(port, secure, record, finish, { identity, peerCertificate: chain[0]! });
    });
  }

  /** Hands an accepted stream to the application: bytes as they are, or through the HTTP layer. */
  private forward(
    port: InboundPortConfig,
    stream: net.Socket,
    record: ConnectionRecord,
    finish: (outcome: 'accepted' | 'refused', reason?: RefusalReason, message?: string) => void,
    mtls: { identity: ProxyIdentity; peerCertificate: Buffer } | undefined,
    endedWith?: Buffer,
  ): void {
    record.outcome = 'accepted';
    this.runtime.observer.connectionOpened(record);
    // HTTP ports: every request goes through the HTTP layer, so a client's own XFCC header is always
    // removed; TLS we cannot read (the application's own) is forwarded untouched.
    const localAddress = this.sources.get(record);
    if (port.protocol === 'http' && record.transport !== 'app-tls' && record.transport !== 'tls') {
      stream.on('close', () => finish('accepted'));
      // A client that ended before sending a request (at most a fragment of a ClientHello, which
      // is no HTTP) will send none: end our side too, or the half-open socket would stay forever.
      if (endedWith) return void stream.end();
      // HTTP/1.1 or HTTP/2 (gRPC, h2c): the first bytes say which, as Envoy's automatic codec reads them.
      // The XFCC value is the connection's: computed once, not per request.
      const ctx: InboundHttpContext = {
        record,
        xfcc: mtls ? xfccValue(mtls, record) : undefined,
        forward: port.forward,
        localAddress,
        appHttp2: port.http2 === true,
      };
      sniffHttpVersion(stream, this.runtime.config().limits.idleTimeoutMs, (version) => {
        if (version === 'ended') return void stream.end();
        if (version === 'idle') return void stream.destroy();
        if (version === 'h2') return this.http2.serve(stream, ctx);
        (stream as net.Socket & { kmtls?: InboundHttpContext }).kmtls = ctx;
        this.http.emit('connection', stream);
        stream.resume();
      });
      return;
    }
    const { host, port: appPort } = parseAddress(port.forward);
    const upstream = net.connect({
      host,
      port: appPort,
      allowHalfOpen: true,
      ...(localAddress ? { localAddress } : {}),
    });
    const unreachable = (err: Error) =>
      finish('refused', 'UPSTREAM_UNREACHABLE', `application at ${port.forward}: ${err.message}`);
    upstream.once('error', unreachable);
    upstream.once('connect', () => {
      // Connected: a later error (the application resets) ends an accepted connection, which
      // splice records; the application was reachable.
      upstream.off('error', unreachable);
      // The client went away (or was closed) while the application was being dialled.
      if (stream.destroyed) {
        upstream.destroy();
        return finish(record.outcome ?? 'accepted');
      }
      if (endedWith && endedWith.length > 0) {
        record.bytesReceived += endedWith.length;
        upstream.write(endedWith);
      }
      splice(stream, upstream, record, () => finish('accepted'), this.runtime.config().limits.idleTimeoutMs);
      stream.resume();
    });
  }

  /** What the HTTP/1.1 layer knows of a connection: set on the socket when it is handed over. */
  private contextOf(socket: net.Socket): InboundHttpContext | undefined {
    return (socket as net.Socket & { kmtls?: InboundHttpContext }).kmtls;
  }

  /** A request's headers for the application: hop-by-hop ones and the client's XFCC removed, kmtls's set. */
  private appHeaders(req: IncomingMessage, ctx: InboundHttpContext | undefined): http.OutgoingHttpHeaders {
    const headers = endToEndHeaders(req.headers, [XFCC]);
    if (ctx?.xfcc) headers[XFCC] = ctx.xfcc;
    return headers;
  }

  /** A WebSocket upgrade: to the application on a connection of its own, then bytes both ways. */
  private forwardUpgrade(req: IncomingMessage, socket: net.Socket, head: Buffer): void {
    const ctx = this.contextOf(socket);
    // Only WebSocket is carried, and only to an HTTP/1.1 application (WebSocket over HTTP/2 needs
    // extended CONNECT): anything else goes on as the ordinary request it also is.
    if (!isWebSocketUpgrade(req) || ctx?.appHttp2) {
      reparseWithoutUpgrade(this.http, req, socket, head);
      return;
    }
    // Every connection the HTTP layer serves was handed over with its context; one without is dropped.
    if (!ctx) {
      socket.destroy();
      return;
    }
    const forward = ctx.forward;
    const { host, port } = parseAddress(forward);
    relayUpgrade(
      this.runtime,
      ctx.record,
      req,
      socket,
      head,
      {
        options: {
          host,
          port,
          agent: false,
          ...(ctx.localAddress ? { localAddress: ctx.localAddress } : {}),
        },
        headers: this.appHeaders(req, ctx),
      },
      (err) => ({
        reason: 'UPSTREAM_UNREACHABLE',
        message: `the application at ${forward} is unreachable: ${err.message}`,
      }),
    );
  }

  private forwardRequest(req: IncomingMessage, res: ServerResponse): void {
    const started = this.runtime.clock.now();
    const ctx = this.contextOf(req.socket);
    const forward = ctx?.forward ?? this.port.forward;
    const headers = this.appHeaders(req, ctx);
    if (ctx?.appHttp2) {
      // An HTTP/2 application (a grpc or http2 port) gets HTTP/2 whatever the client spoke, as from Envoy.
      this.http2.forwardHttp1Request(req, res, headers, {
        forward,
        localAddress: ctx.localAddress,
        done: (status) => reportRequest(this.runtime, ctx.record, http1Outcome(req, status, started)),
      });
      return;
    }
    const { host, port } = parseAddress(forward);
    const upstream = http.request(
      {
        host,
        port,
        method: req.method,
        path: req.url,
        headers,
        agent: this.agent,
        ...(ctx?.localAddress ? { localAddress: ctx.localAddress } : {}),
      },
      (upRes) => {
        const status = upRes.statusCode ?? 502;
        if (status < 200) {
          upRes.destroy();
          return unanswered(502, `the application answered ${status} to a request that asked for no upgrade`);
        }
        res.writeHead(status, upRes.statusMessage, endToEndHeaders(upRes.headers));
        upRes.pipe(res);
        upRes.on('end', () => reportRequest(this.runtime, ctx?.record, http1Outcome(req, status, started)));
      },
    );
    let done = false;
    const unanswered = (status: number, message: string) => {
      if (done) return;
      done = true;
      refuseHttp1(res, status, 'UPSTREAM_UNREACHABLE', `the application at ${forward}: ${message}`);
      reportRequest(this.runtime, ctx?.record, http1Outcome(req, status, started));
    };
    // A 101 to a request that asked for no upgrade: nothing can be carried on.
    upstream.on('upgrade', (_r: IncomingMessage, sock: net.Socket) => {
      sock.destroy();
      unanswered(502, 'the application answered 101 to a request that asked for no upgrade');
    });
    upstream.on('error', (err) => unanswered(503, `unreachable: ${err.message}`));
    req.pipe(upstream);
  }
}
