import http2 from 'node:http2';
import net from 'node:net';
import { Duplex } from 'node:stream';
import type { OutboundConfig, OutboundEndpointConfig } from '../mesh/index.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import type { EndpointConnector } from './outbound-http.js';
import type { ProxyRuntime } from './runtime.js';
import { parseAddress, reportRequest } from './runtime.js';

/**
 * HTTP/2 on HTTP ports (gRPC, h2c), beside the HTTP/1.1 layer: a connection that opens with the
 * HTTP/2 preface is served stream by stream, as Envoy's HTTP connection manager does with its
 * automatic codec. Each stream is forwarded over one shared HTTP/2 connection per upstream, with
 * its trailers (gRPC's status travels in them), so gRPC works end to end and the inbound side can
 * set `x-forwarded-client-cert` on every request.
 */

/** The HTTP/2 connection preface (RFC 9113 3.4): every HTTP/2 connection opens with it. */
export const HTTP2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** What a connection's first bytes say about its HTTP version. `ended`: it closed before saying. */
export type HttpVersion = 'h2' | 'http/1' | 'ended';

/**
 * Reads a stream's first bytes, without losing them, until they show whether it opens with the
 * HTTP/2 preface; then hands the stream back paused with those bytes put back.
 */
export function sniffHttpVersion(stream: net.Socket, decide: (version: HttpVersion) => void): void {
  const chunks: Buffer[] = [];
  let done = false;
  const finish = (version: HttpVersion) => {
    done = true;
    stream.off('data', onData);
    stream.off('end', onEnd);
    decide(version);
  };
  const onData = (d: Buffer) => {
    chunks.push(d);
    const buf = chunks.length === 1 ? d : Buffer.concat(chunks);
    const n = Math.min(buf.length, HTTP2_PREFACE.length);
    const isPrefix = buf.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
    if (isPrefix && n < HTTP2_PREFACE.length) return;
    stream.pause();
    stream.unshift(buf);
    finish(isPrefix ? 'h2' : 'http/1');
  };
  // The client ended its side before a whole preface or request line: it will send no request.
  const onEnd = () => {
    if (!done) finish('ended');
  };
  stream.on('data', onData);
  stream.once('end', onEnd);
  stream.resume();
}

/** Whether a request is gRPC (Istio's `request_protocol` label tells gRPC from HTTP). */
function protocolOf(headers: http2.IncomingHttpHeaders): 'grpc' | 'http' {
  return String(headers['content-type'] ?? '').startsWith('application/grpc') ? 'grpc' : 'http';
}

const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM } = http2.constants;

/** Reports a stream's request once it is done, timed from now. */
function requestReporter(
  runtime: ProxyRuntime,
  record: ConnectionRecord,
  headers: http2.IncomingHttpHeaders,
): (done: { status: number; grpcStatus?: string }) => void {
  const started = runtime.clock.now();
  return (done) =>
    reportRequest(runtime, record, {
      method: String(headers[':method'] ?? ''),
      path: String(headers[':path'] ?? ''),
      status: done.status,
      started,
      protocol: protocolOf(headers),
      ...(done.grpcStatus !== undefined ? { grpcStatus: done.grpcStatus } : {}),
    });
}

/** A stream's request headers as a new request's (the pseudo-headers included), minus what `drop` names. */
function requestHeaders(
  headers: http2.IncomingHttpHeaders,
  drop: readonly string[],
): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !drop.includes(k)) out[k] = v;
  return out;
}

/** Answers a stream that could not be forwarded: 503 with the reason (gRPC clients read UNAVAILABLE). */
function refuse(stream: http2.ServerHttp2Stream, reason: RefusalReason, message: string): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    stream.close(NGHTTP2_CANCEL);
    return;
  }
  stream.respond({ ':status': 503, 'content-type': 'text/plain', 'x-kmtls-reason': reason });
  stream.end(`kmtls: ${reason}: ${message}\n`);
}

/** How a relayed stream ended: its HTTP status, gRPC status (headers or trailers) and any failure. */
interface RelayDone {
  readonly status: number;
  readonly grpcStatus?: string;
  readonly failure?: { reason: RefusalReason; message: string };
}

/**
 * Relays one downstream stream over an upstream one: the request body up; the response headers,
 * body and trailers down; a reset either way is passed on. `onDone` gets the status once the
 * response has ended (or 503 when the upstream failed before answering).
 */
function relay(
  down: http2.ServerHttp2Stream,
  up: http2.ClientHttp2Stream,
  onDone: (done: RelayDone) => void,
): void {
  let status = 0;
  let grpcStatus: string | undefined;
  let trailers: http2.IncomingHttpHeaders | undefined;
  let reported = false;
  const report = (s: number, failure?: { reason: RefusalReason; message: string }) => {
    if (reported) return;
    reported = true;
    onDone({
      status: s,
      ...(grpcStatus !== undefined ? { grpcStatus } : {}),
      ...(failure ? { failure } : {}),
    });
  };
  down.pipe(up);
  up.on('response', (headers, flags) => {
    status = Number(headers[':status'] ?? 502);
    if (headers['grpc-status'] !== undefined) grpcStatus = String(headers['grpc-status']);
    if (down.destroyed || down.closed) return;
    const endStream = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    // A trailers-only answer (gRPC's errors) ends with its headers; others may carry trailers.
    down.respond(requestHeaders(headers, []), endStream ? { endStream: true } : { waitForTrailers: true });
    if (!endStream) up.pipe(down);
  });
  up.on('trailers', (t) => {
    trailers = t;
    if (t['grpc-status'] !== undefined) grpcStatus = String(t['grpc-status']);
  });
  // Empty trailers go out as an empty final DATA frame, so a response without trailers ends cleanly.
  down.on('wantTrailers', () => down.sendTrailers(trailers ? requestHeaders(trailers, []) : {}));
  up.on('end', () => report(status || 502));
  up.on('error', (err: Error & { code?: string }) => {
    if (!down.headersSent) {
      refuse(down, 'UPSTREAM_UNREACHABLE', err.message);
      report(503, { reason: 'UPSTREAM_UNREACHABLE', message: err.message });
    } else {
      if (!down.destroyed) down.close(NGHTTP2_CANCEL);
      report(status || 502);
    }
  });
  up.on('close', () => {
    // The upstream reset the stream: the downstream is told the same code.
    if (up.rstCode && up.rstCode !== http2.constants.NGHTTP2_NO_ERROR && !down.closed && !down.destroyed)
      down.close(up.rstCode);
    report(status || 502);
  });
  down.on('error', () => {
    if (!up.destroyed) up.close(NGHTTP2_CANCEL);
  });
  down.on('close', () => {
    // The client gave up (reset, or its connection went): so does the upstream stream.
    if (!up.closed && !up.destroyed) up.close(NGHTTP2_CANCEL);
  });
}

function settingsFor(runtime: ProxyRuntime): http2.Settings {
  return { maxHeaderListSize: runtime.config().limits.maxHeaderBytes, enablePush: false };
}

/**
 * The socket as a plain Duplex. Node's HTTP/2 session reads a socket's native handle directly and
 * would miss the bytes the sniffing put back (the preface); through a Duplex, it reads the stream
 * itself, those bytes first. The wrapper also hides the TLS socket's ALPN, which is not what says
 * HTTP/2 here (kmtls may have negotiated none): the bytes do.
 */
function streamOf(socket: net.Socket): Duplex {
  const d = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(err, callback) {
      socket.destroy(err ?? undefined);
      callback(err);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    if (!d.push(chunk)) socket.pause();
  });
  socket.on('end', () => d.push(null));
  socket.on('close', () => d.destroy());
  socket.on('error', (err) => d.destroy(err));
  return d;
}

/**
 * The HTTP/2 server half both directions share, one per listener: `serve` hands it a connection
 * that opened with the preface (put back, paused), with the context its streams are forwarded in.
 */
class Http2Front<C> {
  private readonly server: http2.Http2Server;
  private readonly contexts = new WeakMap<http2.Http2Session, C>();
  /** The context of the connection being handed over: its session is made during the hand-over. */
  private pending: C | undefined;

  constructor(
    runtime: ProxyRuntime,
    onStream: (
      stream: http2.ServerHttp2Stream,
      headers: http2.IncomingHttpHeaders,
      ctx: C | undefined,
    ) => void,
  ) {
    this.server = http2.createServer({
      settings: settingsFor(runtime),
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
    });
    this.server.on('session', (session) => {
      if (this.pending !== undefined) this.contexts.set(session, this.pending);
      // Idle is judged by the session, which sees every frame.
      const idleMs = runtime.config().limits.idleTimeoutMs;
      if (idleMs !== undefined) session.setTimeout(idleMs, () => session.close());
    });
    this.server.on('stream', (stream, headers) => {
      stream.on('error', () => {});
      onStream(stream, headers, stream.session ? this.contexts.get(stream.session) : undefined);
    });
    this.server.on('sessionError', () => {});
  }

  serve(socket: net.Socket, ctx: C): void {
    this.pending = ctx;
    try {
      this.server.emit('connection', streamOf(socket));
    } finally {
      this.pending = undefined;
    }
  }

  close(): void {
    this.server.close();
  }
}

/** What an inbound HTTP/2 connection carries to the application: set by the listener per connection. */
export interface InboundH2Context {
  readonly record: ConnectionRecord;
  /** The `x-forwarded-client-cert` value for this connection's requests (mTLS only). */
  readonly xfcc: string | undefined;
  readonly forward: string;
  readonly localAddress: string | undefined;
}

/**
 * The inbound side: each stream goes to the application over an HTTP/2 connection kept per
 * application address, with the client's own `x-forwarded-client-cert` removed and, after mTLS,
 * kmtls's own set.
 */
export class InboundHttp2 {
  private readonly front: Http2Front<InboundH2Context>;
  private readonly upstreams = new Map<string, http2.ClientHttp2Session>();

  constructor(
    private readonly runtime: ProxyRuntime,
    private readonly xfccHeader: string,
  ) {
    this.front = new Http2Front(runtime, (stream, headers, ctx) => this.forward(stream, headers, ctx));
  }

  serve(socket: net.Socket, ctx: InboundH2Context): void {
    this.front.serve(socket, ctx);
  }

  close(): void {
    for (const s of this.upstreams.values()) s.destroy();
    this.upstreams.clear();
    this.front.close();
  }

  private session(forward: string, localAddress: string | undefined): http2.ClientHttp2Session {
    const key = `${forward}|${localAddress ?? ''}`;
    const existing = this.upstreams.get(key);
    if (existing && !existing.closed && !existing.destroyed) return existing;
    const { host, port } = parseAddress(forward);
    const session = http2.connect(`http://${forward}`, {
      settings: settingsFor(this.runtime),
      createConnection: () => net.connect({ host, port, ...(localAddress ? { localAddress } : {}) }),
    });
    const forget = () => {
      if (this.upstreams.get(key) === session) this.upstreams.delete(key);
    };
    session.on('error', forget);
    session.on('close', forget);
    session.on('goaway', forget);
    session.unref();
    this.upstreams.set(key, session);
    return session;
  }

  private forward(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    ctx: InboundH2Context | undefined,
  ): void {
    if (!ctx) {
      stream.close(NGHTTP2_REFUSED_STREAM);
      return;
    }
    const report = requestReporter(this.runtime, ctx.record, headers);
    const out = requestHeaders(headers, [this.xfccHeader]);
    if (ctx.xfcc) out[this.xfccHeader] = ctx.xfcc;
    let up: http2.ClientHttp2Stream;
    try {
      up = this.session(ctx.forward, ctx.localAddress).request(out);
    } catch (err) {
      refuse(stream, 'UPSTREAM_UNREACHABLE', `the application at ${ctx.forward}: ${(err as Error).message}`);
      report({ status: 503 });
      return;
    }
    relay(stream, up, report);
  }
}

/** One pooled upstream HTTP/2 connection: the session and what its connection turned out to be. */
type UpstreamSession =
  | { ok: true; session: http2.ClientHttp2Session; upstream: ConnectionRecord }
  | { ok: false; reason: RefusalReason; message: string; retryable: boolean };

/**
 * The outbound side: the application's HTTP/2 streams are spread round-robin over the destination's
 * endpoints, each endpoint reached over one shared upstream connection (mTLS with `istio-h2` when
 * the decision says so), so a new downstream connection or stream costs no handshake.
 */
export class OutboundHttp2 {
  private readonly front: Http2Front<ConnectionRecord>;
  private readonly sessions = new Map<string, Promise<UpstreamSession>>();
  private next = 0;

  constructor(
    private readonly dest: () => OutboundConfig,
    private readonly runtime: ProxyRuntime,
    private readonly connect: EndpointConnector,
  ) {
    this.front = new Http2Front(runtime, (stream, headers, record) => this.forward(stream, headers, record));
  }

  serve(socket: net.Socket, record: ConnectionRecord): void {
    this.front.serve(socket, record);
  }

  close(): void {
    for (const p of this.sessions.values()) void p.then((s) => s.ok && s.session.destroy());
    this.sessions.clear();
    this.front.close();
  }

  /** The endpoint's shared connection, made on first use; a refused one is forgotten at once. */
  private sessionFor(ep: OutboundEndpointConfig, record: ConnectionRecord): Promise<UpstreamSession> {
    const key = `${ep.tls}|${ep.address}`;
    const existing = this.sessions.get(key);
    if (existing) return existing;
    const upstream: ConnectionRecord = { ...record, bytesReceived: 0, bytesSent: 0 };
    const made = this.connect(ep, upstream, true).then((r): UpstreamSession => {
      if (!r.ok) {
        this.sessions.delete(key);
        return r;
      }
      const session = http2.connect(`http://${ep.address}`, {
        settings: settingsFor(this.runtime),
        createConnection: () => r.socket,
      });
      const forget = () => {
        if (this.sessions.get(key) === made) this.sessions.delete(key);
      };
      session.on('error', forget);
      session.on('close', forget);
      session.on('goaway', forget);
      session.unref();
      return { ok: true, session, upstream };
    });
    this.sessions.set(key, made);
    return made;
  }

  private forward(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    record: ConnectionRecord | undefined,
  ): void {
    if (!record) {
      stream.close(NGHTTP2_REFUSED_STREAM);
      return;
    }
    const dest = this.dest();
    const endpoints = dest.endpoints;
    const reporter = requestReporter(this.runtime, record, headers);
    const report = (status: number) => reporter({ status });
    if (endpoints.length === 0) {
      refuse(stream, 'UPSTREAM_UNREACHABLE', `${dest.name}: no endpoint`);
      report(503);
      return;
    }
    const start = this.next++ % endpoints.length;
    const attempt = (i: number): void => {
      const ep = endpoints[(start + i) % endpoints.length]!;
      void this.sessionFor(ep, record).then((s) => {
        if (stream.destroyed || stream.closed) return;
        if (!s.ok) {
          // Nothing reached an endpoint that refused the connection: the next one may take the stream.
          if (s.retryable && i + 1 < endpoints.length) return attempt(i + 1);
          record.reason = s.reason;
          record.message = s.message;
          refuse(stream, s.reason, `${dest.name}: ${s.message}`);
          report(503);
          return;
        }
        record.transport = s.upstream.transport;
        record.sourcePrincipal = s.upstream.sourcePrincipal;
        record.destinationPrincipal = s.upstream.destinationPrincipal;
        record.tlsVersion = s.upstream.tlsVersion;
        let up: http2.ClientHttp2Stream;
        try {
          up = s.session.request(requestHeaders(headers, []));
        } catch (err) {
          refuse(stream, 'UPSTREAM_UNREACHABLE', `${dest.name}: ${(err as Error).message}`);
          report(503);
          return;
        }
        relay(stream, up, (done) => {
          if (done.failure) {
            record.reason = done.failure.reason;
            record.message = done.failure.message;
          }
          reporter(done);
        });
      });
    };
    attempt(0);
  }
}
