import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { Duplex } from 'node:stream';
import type { OutboundConfig, OutboundEndpointConfig } from '../mesh/index.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import type { EndpointConnector } from './outbound-http.js';
import type { ProxyRuntime } from './runtime.js';
import { parseAddress, poolKey, refuseHttp1, reportRequest } from './runtime.js';
import { endToEndHeaders, HOP_BY_HOP } from './upgrade.js';

/**
 * HTTP/2 on HTTP ports (gRPC, h2c), beside the HTTP/1.1 layer: a connection that opens with the
 * HTTP/2 preface is served stream by stream, as Envoy's HTTP connection manager does with its
 * automatic codec. Each stream is forwarded over one shared HTTP/2 connection per upstream, with
 * its trailers (gRPC's status travels in them), so gRPC works end to end and the inbound side can
 * set `x-forwarded-client-cert` on every request.
 */

/** The HTTP/2 connection preface (RFC 9113 3.4): every HTTP/2 connection opens with it. */
export const HTTP2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * What a connection's first bytes say about its HTTP version. `ended`: the client ended its side
 * before saying; `idle`: it went quiet for the idle timeout before saying.
 */
export type HttpVersion = 'h2' | 'http/1' | 'ended' | 'idle';

/**
 * Reads a stream's first bytes, without losing them, until they show whether it opens with the
 * HTTP/2 preface; then hands the stream back paused with those bytes put back.
 */
export function sniffHttpVersion(
  stream: net.Socket,
  waitMs: number | undefined,
  decide: (version: HttpVersion) => void,
): void {
  const chunks: Buffer[] = [];
  let done = false;
  // A client that never finishes its first request line or preface is idle: it is closed as one.
  const timer = waitMs === undefined ? undefined : setTimeout(() => finish('idle'), waitMs);
  const finish = (version: HttpVersion) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
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
  const onEnd = () => finish('ended');
  stream.on('data', onData);
  stream.once('end', onEnd);
  stream.resume();
}

/** Whether a request is gRPC (Istio's `request_protocol` label tells gRPC from HTTP). */
function protocolOf(headers: http2.IncomingHttpHeaders): 'grpc' | 'http' {
  return String(headers['content-type'] ?? '').startsWith('application/grpc') ? 'grpc' : 'http';
}

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;

/**
 * Connection-specific headers (RFC 9113 8.2.2) and HTTP/1.1 hop-by-hop ones: they never cross a
 * proxy, and Node refuses to send them in HTTP/2 (a throw, were one passed through).
 */
const CONNECTION_HEADERS = [
  // `te: trailers` and `trailer` are valid in HTTP/2; the rest of HTTP/1.1's list is not.
  ...HOP_BY_HOP.filter((h) => h !== 'te' && h !== 'trailer'),
  'http2-settings',
  'host',
];

/**
 * Response headers or trailers from an upstream, as they may be sent on: connection-specific ones
 * dropped, and a status HTTP/2 cannot carry (outside 200–599; nghttp2 lets 600–999 through) made
 * a 502, as Envoy answers an invalid upstream response.
 */
function forwardable(headers: http2.IncomingHttpHeaders, isResponse: boolean): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || CONNECTION_HEADERS.includes(k) || (k === 'te' && v !== 'trailers')) continue;
    if (!isResponse && k.startsWith(':')) continue;
    out[k] = v;
  }
  if (isResponse) {
    const status = Number(out[':status']);
    if (!(status >= 200 && status <= 599)) out[':status'] = 502;
  }
  return out;
}

/** Runs one operation on a stream the peer may have closed meanwhile: a closed stream is no error. */
function guarded(what: () => void): boolean {
  try {
    what();
    return true;
  } catch {
    return false;
  }
}

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
    guarded(() => stream.close(NGHTTP2_CANCEL));
    return;
  }
  guarded(() => {
    stream.respond({ ':status': 503, 'content-type': 'text/plain', 'x-kmtls-reason': reason });
    stream.end(`kmtls: ${reason}: ${message}\n`);
  });
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
  let upEnded = false;
  /** The downstream got kmtls's own 503: nothing from the upstream is relayed after it. */
  let answered = false;
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
  /** The upstream failed before answering: the client gets a 503 and the reason, never a reset. */
  const unanswered = (message: string) => {
    answered = true;
    refuse(down, 'UPSTREAM_UNREACHABLE', message);
    report(503, { reason: 'UPSTREAM_UNREACHABLE', message });
  };
  down.pipe(up);
  up.on('response', (headers, flags) => {
    const out = forwardable(headers, true);
    status = Number(out[':status']);
    if (headers['grpc-status'] !== undefined) grpcStatus = String(headers['grpc-status']);
    if (down.destroyed || down.closed) return;
    const endStream = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    // A trailers-only answer (gRPC's errors) ends with its headers; others may carry trailers.
    const sent = guarded(() =>
      down.respond(out, endStream ? { endStream: true } : { waitForTrailers: true }),
    );
    if (!sent) return void guarded(() => up.close(NGHTTP2_CANCEL));
    if (!endStream) up.pipe(down);
  });
  up.on('trailers', (t) => {
    trailers = t;
    if (t['grpc-status'] !== undefined) grpcStatus = String(t['grpc-status']);
  });
  // Empty trailers go out as an empty final DATA frame, so a response without trailers ends cleanly.
  down.on('wantTrailers', () => {
    if (!guarded(() => down.sendTrailers(trailers ? forwardable(trailers, false) : {})))
      guarded(() => down.close(NGHTTP2_INTERNAL_ERROR));
  });
  up.on('end', () => {
    upEnded = true;
    report(status || 502);
  });
  up.on('error', (err: Error) => {
    if (answered) return;
    if (!down.headersSent) return unanswered(err.message);
    guarded(() => down.close(NGHTTP2_INTERNAL_ERROR));
    report(status || 502);
  });
  up.on('close', () => {
    if (answered) return;
    // Closed or reset before any answer (with any code, NO_ERROR included): a 503, not a hang.
    if (!down.headersSent)
      return unanswered(`the upstream closed the stream (code ${up.rstCode}) unanswered`);
    // Cut off mid-answer: the client must not take a truncated body for a whole one.
    if (!upEnded && !down.closed && !down.destroyed)
      guarded(() => down.close(up.rstCode || NGHTTP2_INTERNAL_ERROR));
    report(status || 502);
  });
  down.on('error', () => guarded(() => up.close(NGHTTP2_CANCEL)));
  down.on('close', () => {
    // The client gave up (reset, or its connection went): so does the upstream stream.
    if (!up.closed && !up.destroyed) guarded(() => up.close(NGHTTP2_CANCEL));
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
      // Idle is judged by the session, which sees every frame: no frame either way for the idle
      // timeout ends it, open streams included (as the TCP path closes a silent connection).
      const idleMs = runtime.config().limits.idleTimeoutMs;
      if (idleMs !== undefined) session.setTimeout(idleMs, () => session.destroy());
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

/** One upstream HTTP/2 connection in a pool, with its streams in flight and what it turned out to be. */
interface PooledSession<U> {
  readonly session: http2.ClientHttp2Session;
  readonly upstream: U;
  active: number;
}

type Opened<U> =
  | { ok: true; session: http2.ClientHttp2Session; upstream: U }
  | { ok: false; reason: RefusalReason; message: string; retryable: boolean };

/**
 * The upstream HTTP/2 connections to one destination. Streams share a connection up to the peer's
 * concurrent-stream limit; past it another connection opens, so streams a slow or silent client
 * holds open never queue everyone else's behind them. Closed, idle or GOAWAY'd connections leave.
 */
class SessionPool<U> {
  private readonly entries: PooledSession<U>[] = [];
  private opening: Promise<Opened<U>> | undefined;
  /** Retired: a connection still being opened serves its waiters, then closes. */
  private retired = false;

  constructor(
    private readonly open: () => Promise<Opened<U>>,
    private readonly idleMs: () => number | undefined,
  ) {}

  /** A connection with room for one more stream: an open one, or a new one. */
  async acquire(): Promise<{ ok: true; entry: PooledSession<U> } | Extract<Opened<U>, { ok: false }>> {
    for (;;) {
      const free = this.entries.find(
        (e) =>
          !e.session.closed &&
          !e.session.destroyed &&
          e.active < (e.session.remoteSettings?.maxConcurrentStreams ?? 100),
      );
      if (free) return { ok: true, entry: free };
      if (!this.opening) {
        this.opening = this.open()
          .catch(
            (err: Error): Opened<U> => ({
              ok: false,
              reason: 'HANDSHAKE_FAILED',
              message: err.message,
              retryable: false,
            }),
          )
          .then((r) => {
            this.opening = undefined;
            if (r.ok) this.add(r.session, r.upstream);
            return r;
          });
      }
      const r = await this.opening;
      if (!r.ok) return r;
      // Another waiter may have filled the new connection first: look again.
    }
  }

  private add(session: http2.ClientHttp2Session, upstream: U): void {
    const entry: PooledSession<U> = { session, upstream, active: 0 };
    const leave = () => {
      const i = this.entries.indexOf(entry);
      if (i >= 0) this.entries.splice(i, 1);
    };
    session.on('error', leave);
    session.on('close', leave);
    session.on('goaway', leave);
    const idleMs = this.idleMs();
    if (idleMs !== undefined) session.setTimeout(idleMs, () => session.close());
    session.unref();
    this.entries.push(entry);
    if (this.retired) setImmediate(() => this.retire());
  }

  /** Opens a stream on the entry, counted until it closes. */
  request(entry: PooledSession<U>, headers: http2.OutgoingHttpHeaders): http2.ClientHttp2Stream {
    const stream = entry.session.request(headers);
    entry.active++;
    stream.once('close', () => entry.active--);
    return stream;
  }

  close(): void {
    for (const e of this.entries) e.session.destroy();
    this.entries.length = 0;
  }

  /** No new stream on these connections; streams in flight finish, then they close. */
  retire(): void {
    this.retired = true;
    for (const e of this.entries) e.session.close();
    this.entries.length = 0;
  }
}

/** The pools of one side, by destination key, each with the config's idle timeout. */
class SessionPools<U> {
  private readonly byKey = new Map<string, SessionPool<U>>();

  constructor(private readonly idleMs: () => number | undefined) {}

  /** The pool for `key`, made with `open` the first time. */
  get(key: string, open: () => Promise<Opened<U>>): SessionPool<U> {
    let pool = this.byKey.get(key);
    if (!pool) {
      pool = new SessionPool<U>(open, this.idleMs);
      this.byKey.set(key, pool);
    }
    return pool;
  }

  /** Lets go of the pools whose key `retire` names: their streams finish, no new one starts. */
  retire(retire: (key: string) => boolean): void {
    for (const [key, pool] of this.byKey) {
      if (!retire(key)) continue;
      this.byKey.delete(key);
      pool.retire();
    }
  }

  close(): void {
    for (const p of this.byKey.values()) p.close();
    this.byKey.clear();
  }
}

/** Where an inbound HTTP connection's requests go and what they carry: set once per connection. */
export interface InboundHttpContext {
  readonly record: ConnectionRecord;
  /** The `x-forwarded-client-cert` value for this connection's requests (mTLS only). */
  readonly xfcc: string | undefined;
  readonly forward: string;
  readonly localAddress: string | undefined;
  /**
   * Whether the application speaks HTTP/2 (an `http2`/`grpc` port). Otherwise each stream reaches
   * it as an HTTP/1.1 request, as Envoy sends HTTP/1.1 to an `http` port's application.
   */
  readonly appHttp2: boolean;
}

/**
 * The inbound side: each stream goes to the application, with the client's own
 * `x-forwarded-client-cert` removed and, after mTLS, kmtls's own set; over pooled HTTP/2
 * connections to an HTTP/2 application, as HTTP/1.1 requests to any other.
 */
export class InboundHttp2 {
  private readonly front: Http2Front<InboundHttpContext>;
  private readonly pools: SessionPools<undefined>;

  constructor(
    private readonly runtime: ProxyRuntime,
    private readonly xfccHeader: string,
    /** The HTTP/1.1 connections to the application the listener's HTTP/1.1 layer keeps. */
    private readonly agent: http.Agent,
  ) {
    this.front = new Http2Front(runtime, (stream, headers, ctx) => this.forward(stream, headers, ctx));
    this.pools = new SessionPools(() => runtime.config().limits.idleTimeoutMs);
  }

  serve(socket: net.Socket, ctx: InboundHttpContext): void {
    this.front.serve(socket, ctx);
  }

  close(): void {
    this.pools.close();
    this.front.close();
  }

  private pool(forward: string, localAddress: string | undefined): SessionPool<undefined> {
    return this.pools.get(
      `${forward}|${localAddress ?? ''}`,
      () =>
        new Promise((resolve) => {
          const { host, port } = parseAddress(forward);
          const session = http2.connect(`http://${forward}`, {
            settings: settingsFor(this.runtime),
            createConnection: () => net.connect({ host, port, ...(localAddress ? { localAddress } : {}) }),
          });
          const failed = (err: Error) =>
            resolve({ ok: false, reason: 'UPSTREAM_UNREACHABLE', message: err.message, retryable: false });
          session.once('error', failed);
          session.once('connect', () => {
            session.off('error', failed);
            session.on('error', () => {});
            resolve({ ok: true, session, upstream: undefined });
          });
        }),
    );
  }

  private forward(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    ctx: InboundHttpContext | undefined,
  ): void {
    if (!ctx) {
      guarded(() => stream.close(NGHTTP2_REFUSED_STREAM));
      return;
    }
    const report = requestReporter(this.runtime, ctx.record, headers);
    const out = requestHeaders(headers, [this.xfccHeader]);
    if (ctx.xfcc) out[this.xfccHeader] = ctx.xfcc;
    if (!ctx.appHttp2) {
      this.forwardHttp1(stream, headers, out, ctx, report);
      return;
    }
    const app = `the application at ${ctx.forward}`;
    const pool = this.pool(ctx.forward, ctx.localAddress);
    void pool.acquire().then((r) => {
      if (stream.destroyed || stream.closed) return;
      if (!r.ok) {
        refuse(stream, 'UPSTREAM_UNREACHABLE', `${app}: ${r.message}`);
        report({ status: 503 });
        return;
      }
      let up: http2.ClientHttp2Stream;
      try {
        up = pool.request(r.entry, out);
      } catch (err) {
        refuse(stream, 'UPSTREAM_UNREACHABLE', `${app}: ${(err as Error).message}`);
        report({ status: 503 });
        return;
      }
      relay(stream, up, report);
    });
  }

  /**
   * One HTTP/1.1 request to an HTTP/2 application, over the same pooled connections its HTTP/2
   * clients use: `headers` are the request's end-to-end headers, XFCC already settled; the answer
   * goes back as HTTP/1.1 (trailers are not carried).
   */
  forwardHttp1Request(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    headers: http.OutgoingHttpHeaders,
    to: { forward: string; localAddress: string | undefined; done: (status: number) => void },
  ): void {
    const fail = (message: string) => {
      refuseHttp1(
        res,
        503,
        'UPSTREAM_UNREACHABLE',
        `the application at ${to.forward} is unreachable: ${message}`,
      );
      to.done(503);
    };
    const h2: http2.OutgoingHttpHeaders = {
      ':method': req.method ?? 'GET',
      ':path': req.url ?? '/',
      ':scheme': 'http',
      ':authority': req.headers.host ?? to.forward,
    };
    for (const [k, v] of Object.entries(headers)) if (k !== 'host' && v !== undefined) h2[k] = v;
    const pool = this.pool(to.forward, to.localAddress);
    void pool.acquire().then((r) => {
      if (!r.ok) return fail(r.message);
      let up: http2.ClientHttp2Stream;
      try {
        up = pool.request(r.entry, h2);
      } catch (err) {
        return fail((err as Error).message);
      }
      let upEnded = false;
      let failed = false;
      const failOnce = (message: string) => {
        if (failed) return;
        failed = true;
        fail(message);
      };
      up.on('response', (answer) => {
        const status = Number(forwardable(answer, true)[':status']);
        // HTTP/1.1's own hop-by-hop headers too (`trailer` would make Node throw on a body that is
        // not chunked).
        const out = endToEndHeaders(forwardable(answer, false) as http.IncomingHttpHeaders);
        try {
          res.writeHead(status, out);
        } catch (err) {
          guarded(() => up.close(NGHTTP2_CANCEL));
          return failOnce(`the application's answer cannot be sent as HTTP/1.1: ${(err as Error).message}`);
        }
        up.pipe(res);
        up.on('end', () => {
          upEnded = true;
          to.done(status);
        });
      });
      up.on('error', (err) => failOnce(err.message));
      up.on('close', () => {
        // Reset or closed before the whole answer: no clean end for the client either.
        if (!res.headersSent) failOnce(`the application closed the stream (code ${up.rstCode}) unanswered`);
        else if (!upEnded) res.destroy();
      });
      res.on('close', () => {
        if (!up.closed && !up.destroyed) guarded(() => up.close(NGHTTP2_CANCEL));
      });
      req.pipe(up);
    });
  }

  /** One stream as an HTTP/1.1 request to the application; the answer goes back on the stream. */
  private forwardHttp1(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    out: http2.OutgoingHttpHeaders,
    ctx: InboundHttpContext,
    report: (done: { status: number }) => void,
  ): void {
    const { host, port } = parseAddress(ctx.forward);
    const h1: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(out))
      if (!k.startsWith(':') && k !== 'te') h1[k] = v as string | string[];
    if (headers[':authority'] !== undefined) h1.host = String(headers[':authority']);
    const req = http.request({
      host,
      port,
      method: String(headers[':method'] ?? 'GET'),
      path: String(headers[':path'] ?? '/'),
      headers: h1,
      agent: this.agent,
      ...(ctx.localAddress ? { localAddress: ctx.localAddress } : {}),
    });
    req.on('response', (res) => {
      const status = res.statusCode ?? 502;
      const answer = forwardable({ ...res.headers, ':status': String(status) }, true);
      if (!guarded(() => stream.respond(answer))) return void res.destroy();
      res.pipe(stream);
      res.on('end', () => report({ status: Number(answer[':status']) }));
      res.on('error', () => guarded(() => stream.close(NGHTTP2_INTERNAL_ERROR)));
    });
    req.on('error', (err) => {
      if (!stream.headersSent) {
        refuse(stream, 'UPSTREAM_UNREACHABLE', `the application at ${ctx.forward}: ${err.message}`);
        report({ status: 503 });
      } else {
        guarded(() => stream.close(NGHTTP2_INTERNAL_ERROR));
      }
    });
    stream.on('close', () => {
      if (!req.destroyed && !stream.writableFinished) req.destroy();
    });
    stream.pipe(req);
  }
}

/**
 * The outbound side: the application's HTTP/2 streams are spread round-robin over the destination's
 * endpoints, each endpoint reached over pooled upstream connections (mTLS with `istio-h2` when the
 * decision says so), so a new downstream connection or stream costs no handshake.
 */
export class OutboundHttp2 {
  private readonly front: Http2Front<ConnectionRecord>;
  private readonly pools: SessionPools<ConnectionRecord>;
  private next = 0;

  constructor(
    private readonly dest: () => OutboundConfig,
    private readonly runtime: ProxyRuntime,
    private readonly connect: EndpointConnector,
  ) {
    this.front = new Http2Front(runtime, (stream, headers, record) => this.forward(stream, headers, record));
    this.pools = new SessionPools(() => runtime.config().limits.idleTimeoutMs);
  }

  serve(socket: net.Socket, record: ConnectionRecord): void {
    this.front.serve(socket, record);
  }

  close(): void {
    this.pools.close();
    this.front.close();
  }

  /** Lets go of the pools whose key `retire` names (see OutboundListener.update). */
  retire(retire: (key: string) => boolean): void {
    this.pools.retire(retire);
  }

  /** The endpoint's pool: a new connection is verified (secure naming included) before any stream uses it. */
  private pool(ep: OutboundEndpointConfig, record: ConnectionRecord): SessionPool<ConnectionRecord> {
    // The first stream's record names the connection's upstream record, as it opens it.
    return this.pools.get(poolKey(ep), async () => {
      const upstream: ConnectionRecord = { ...record, bytesReceived: 0, bytesSent: 0 };
      const r = await this.connect(ep, upstream, true);
      if (!r.ok) return r;
      const session = http2.connect(`http://${ep.address}`, {
        settings: settingsFor(this.runtime),
        createConnection: () => r.socket,
      });
      session.on('error', () => {});
      return { ok: true, session, upstream };
    });
  }

  private forward(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    record: ConnectionRecord | undefined,
  ): void {
    if (!record) {
      guarded(() => stream.close(NGHTTP2_REFUSED_STREAM));
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
      const pool = this.pool(ep, record);
      void pool.acquire().then((s) => {
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
        const up0 = s.entry.upstream;
        record.transport = up0.transport;
        record.sourcePrincipal = up0.sourcePrincipal;
        record.destinationPrincipal = up0.destinationPrincipal;
        record.tlsVersion = up0.tlsVersion;
        let up: http2.ClientHttp2Stream;
        try {
          up = pool.request(s.entry, requestHeaders(headers, []));
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
