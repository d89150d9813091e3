import type { IncomingMessage, ServerResponse } from 'node:http';
import net, { type Socket } from 'node:net';
import type { OutboundEndpointConfig, ProxyConfig } from '../mesh/index.js';
import type { Clock } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import type { ConnectionRecord, ProxyObserver, RefusalReason } from './events.js';

/** A connection the proxy carries, so a policy change can find and drain it. */
export interface LiveConnection {
  readonly record: ConnectionRecord;
  /** Closes the connection now, recording why. */
  close(reason: RefusalReason, message: string): void;
}

/** What listeners share: the current config and identity, time, reporting and connection accounting. */
export interface ProxyRuntime {
  readonly clock: Clock;
  readonly observer: ProxyObserver;
  config(): ProxyConfig;
  /** Undefined until a certificate is loaded: mTLS is then refused, plaintext paths still work. */
  identity(): ProxyIdentity | undefined;
  nextId(): number;
  /** Registers a live connection; returns the function that unregisters it. */
  track(c: LiveConnection): () => void;
  connectionCount(): number;
}

/** Upstream connections (HTTP ports) are pooled per endpoint and TLS mode. */
export function poolKey(ep: OutboundEndpointConfig): string {
  return `${ep.tls}|${ep.address}`;
}

/**
 * Ends a connection's record and reports it closed: the outcome (a refusal overrides an earlier
 * acceptance, as a drain does), the reason and message when given, and the duration.
 */
export function closeRecord(
  rt: ProxyRuntime,
  record: ConnectionRecord,
  outcome: 'accepted' | 'refused',
  reason?: RefusalReason,
  message?: string,
): void {
  if (outcome === 'refused' || record.outcome === undefined) record.outcome = outcome;
  if (reason) record.reason = reason;
  if (message) record.message = message;
  record.durationMs = rt.clock.now() - record.startMs;
  rt.observer.connectionClosed(record);
}

/** `host:port` (IPv6 in brackets) split for net.connect / listen. */
export function parseAddress(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(addr.slice(i + 1)) };
}

/**
 * A listener that hands each connection over paused (so the first bytes can be inspected without
 * being lost) and half-open (a client that ends its side after a request still gets the whole
 * answer, as Envoy's tcp_proxy relays a half-close instead of closing).
 */
export async function listenOn(address: string, onConnection: (s: Socket) => void): Promise<net.Server> {
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, onConnection);
  const { host, port } = parseAddress(address);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

/**
 * Copies bytes both ways, counting them, and closes each side when the other ends. A connection
 * with no bytes either way for `idleMs` is closed (the config's idleTimeoutMs).
 */
export function splice(
  a: Socket,
  b: Socket,
  record: ConnectionRecord,
  onClose: () => void,
  idleMs?: number,
): void {
  if (idleMs !== undefined) {
    for (const s of [a, b]) {
      s.setTimeout(idleMs, () => {
        record.message = `idle for ${idleMs} ms`;
        finish();
      });
    }
  }
  let closed = false;
  const finish = () => {
    if (closed) return;
    closed = true;
    a.destroy();
    b.destroy();
    onClose();
  };
  a.on('data', (d: Buffer) => {
    record.bytesReceived += d.length;
  });
  b.on('data', (d: Buffer) => {
    record.bytesSent += d.length;
  });
  a.pipe(b);
  b.pipe(a);
  a.on('error', finish);
  b.on('error', finish);
  a.on('close', finish);
  b.on('close', finish);
}

/**
 * Answers an HTTP/1.1 request kmtls could not carry: `status` with `x-kmtls-reason` and a one-line
 * body (`kmtls: <text>`) saying why, instead of an opaque reset. A response already started is cut.
 */
export function refuseHttp1(res: ServerResponse, status: number, reason: RefusalReason, text: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'content-type': 'text/plain', 'x-kmtls-reason': reason });
  res.end(`kmtls: ${text}\n`);
}

/** One finished HTTP request, as the HTTP/1.1 and HTTP/2 layers both describe it. */
export interface RequestOutcome {
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly started: number;
  readonly protocol: 'http' | 'grpc';
  /** gRPC's own status (`grpc-status`), when the answer carried one. */
  readonly grpcStatus?: string;
}

/** Reports one HTTP request on a connection to the observer (metrics and access log). */
export function reportRequest(
  runtime: ProxyRuntime,
  record: ConnectionRecord | undefined,
  r: RequestOutcome,
): void {
  if (!record) return;
  runtime.observer.request({
    connection: record,
    method: r.method,
    path: r.path,
    status: r.status,
    protocol: r.protocol,
    ...(r.grpcStatus !== undefined ? { grpcStatus: r.grpcStatus } : {}),
    durationMs: runtime.clock.now() - r.started,
  });
}

/** The outcome of an HTTP/1.1 request (gRPC needs HTTP/2, so it is `http`). */
export function http1Outcome(req: IncomingMessage, status: number, started: number): RequestOutcome {
  return { method: req.method ?? '', path: req.url ?? '', status, started, protocol: 'http' };
}
