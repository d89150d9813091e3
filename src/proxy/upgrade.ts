import http from 'node:http';
import type net from 'node:net';
import type { ConnectionRecord, RefusalReason } from './events.js';
import type { ProxyRuntime } from './runtime.js';
import { http1Outcome, reportRequest, splice } from './runtime.js';

/**
 * HTTP/1.1 Upgrade through the HTTP layers, as Istio configures Envoy (`upgrade_configs`: websocket
 * only). A WebSocket request goes upstream with its `Upgrade` and `Connection` headers; a `101`
 * answer turns the connection into bytes both ways, counted on the connection's record. Any other
 * upgrade (`h2c` among them, which would carry HTTP/2 past the header checks) is sent as an
 * ordinary request without it. Answers other than `101` are relayed, and the connection closed.
 */

/** Hop-by-hop headers (RFC 9110 7.6.1): they belong to one connection and are not forwarded. */
export const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];

/**
 * Headers for the next hop: the hop-by-hop ones removed, with those the `Connection` header names
 * (RFC 9110 7.6.1: `Connection: Upgrade, HTTP2-Settings` makes `HTTP2-Settings` hop-by-hop too),
 * and `drop`.
 */
export function endToEndHeaders(
  headers: http.IncomingHttpHeaders,
  drop: readonly string[] = [],
): http.OutgoingHttpHeaders {
  const named = String(headers.connection ?? '')
    .split(',')
    .map((t) => t.trim().toLowerCase())
    .filter((t) => t !== '');
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers))
    if (v !== undefined && !HOP_BY_HOP.includes(k) && !named.includes(k) && !drop.includes(k)) out[k] = v;
  return out;
}

/** Whether a request asks for the one upgrade kmtls carries: WebSocket. */
export function isWebSocketUpgrade(req: http.IncomingMessage): boolean {
  return String(req.headers.upgrade ?? '').toLowerCase() === 'websocket';
}

/** An HTTP/1.1 response head, from a status and headers. */
function head(status: number, message: string | undefined, headers: http.OutgoingHttpHeaders): string {
  let out = `HTTP/1.1 ${status} ${message || http.STATUS_CODES[status] || ''}\r\n`;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) out += `${k}: ${String(one).replace(/[\r\n]/g, '')}\r\n`;
  }
  return `${out}\r\n`;
}

/**
 * Answers, on a socket the HTTP layer has let go of, a request kmtls could not carry: `status` with
 * `x-kmtls-reason` and a one-line body saying why, then closes the connection.
 */
export function refuseRaw(client: net.Socket, status: number, reason: RefusalReason, message: string): void {
  if (client.destroyed) return;
  const body = `kmtls: ${reason}: ${message}\n`;
  client.end(
    head(status, undefined, {
      'content-type': 'text/plain',
      'content-length': String(Buffer.byteLength(body)),
      'x-kmtls-reason': reason,
      connection: 'close',
    }) + body,
  );
}

/** What a client may send before the 101 (a WebSocket client sends nothing until it): kept, up to this. */
const EARLY_LIMIT = 64 * 1024;

export interface UpgradeTarget {
  /** The request to the next hop: host, port, agent or local address. Method, path and headers are set here. */
  readonly options: http.RequestOptions;
  /** The end-to-end headers for the next hop (the caller has already set or removed XFCC). */
  readonly headers: http.OutgoingHttpHeaders;
}

/**
 * A request that asked for an upgrade kmtls does not carry (`h2c`, anything but WebSocket) goes on as
 * the ordinary request it also is, as Envoy's codec drops an h2c upgrade: its head is rebuilt without
 * `Upgrade`, `Connection` and the headers `Connection` named (`HTTP2-Settings`), put back in front of
 * the bytes that followed it (its body), and the connection is handed to `server` again.
 */
export function reparseWithoutUpgrade(
  server: http.Server,
  req: http.IncomingMessage,
  socket: net.Socket,
  rest: Buffer,
): void {
  const named = String(req.headers.connection ?? '')
    .split(',')
    .map((t) => t.trim().toLowerCase());
  let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (lower === 'upgrade' || lower === 'connection' || lower === 'http2-settings' || named.includes(lower))
      continue;
    text += `${name}: ${req.rawHeaders[i + 1]}\r\n`;
  }
  socket.unshift(Buffer.concat([Buffer.from(`${text}\r\n`, 'latin1'), rest]));
  server.emit('connection', socket);
  socket.resume();
}

/**
 * Carries one WebSocket upgrade (what Node's `upgrade` event hands over: the request, the client's
 * socket, the bytes after the request head) to `target`. Only a `101` that switches to WebSocket
 * opens the tunnel; any other `101` is refused (502), so nothing but WebSocket ever bypasses the HTTP
 * layer. `refusal` names a failure to reach the next hop; the client then gets a 503 saying why.
 * Until the tunnel opens, the client's socket is watched: if it leaves, the upstream request goes;
 * silent for the idle timeout, both go.
 */
export function relayUpgrade(
  runtime: ProxyRuntime,
  record: ConnectionRecord,
  req: http.IncomingMessage,
  client: net.Socket,
  firstBytes: Buffer,
  target: UpgradeTarget,
  refusal: (err: Error) => { reason: RefusalReason; message: string },
): void {
  const started = runtime.clock.now();
  const idleMs = runtime.config().limits.idleTimeoutMs;
  const headers: http.OutgoingHttpHeaders = {
    ...target.headers,
    connection: 'Upgrade',
    upgrade: String(req.headers.upgrade),
  };
  const up = http.request({ ...target.options, method: req.method, path: req.url, headers });
  let answered = false;
  let tunnel = false;
  let reported = false;
  const report = (status: number) => {
    if (reported) return;
    reported = true;
    reportRequest(runtime, record, http1Outcome(req, status, started));
  };
  const abandon = () => {
    if (tunnel) return;
    up.destroy();
    client.destroy();
  };
  client.on('error', abandon);
  client.on('close', abandon);
  // Read while waiting, to see the client leave: a client that ends its side before the 101 wants
  // nothing more. Bytes sent early are kept for the tunnel.
  const early: Buffer[] = [];
  let earlyBytes = 0;
  const keep = (d: Buffer) => {
    early.push(d);
    earlyBytes += d.length;
    // A client does not stream before the 101: one that does is not kept in memory without end.
    if (earlyBytes > EARLY_LIMIT) abandon();
  };
  client.on('data', keep);
  client.on('end', abandon);
  client.resume();
  if (idleMs !== undefined) client.setTimeout(idleMs, abandon);
  const fail = (status: number, reason: RefusalReason, message: string) => {
    answered = true;
    record.reason = reason;
    record.message = message;
    refuseRaw(client, status, reason, message);
    report(status);
  };
  up.on('upgrade', (res, upstream, upstreamHead) => {
    answered = true;
    if (String(res.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
      upstream.destroy();
      return fail(
        502,
        'UPSTREAM_UNREACHABLE',
        `the upstream switched to "${res.headers.upgrade ?? ''}", not websocket`,
      );
    }
    if (client.destroyed) return void upstream.destroy();
    tunnel = true;
    client.off('end', abandon);
    client.off('data', keep);
    client.pause();
    const sentEarly = Buffer.concat([firstBytes, ...early]);
    const answer = endToEndHeaders(res.headers);
    answer.connection = 'Upgrade';
    answer.upgrade = 'websocket';
    client.write(head(101, res.statusMessage, answer));
    if (upstreamHead.length > 0) client.write(upstreamHead);
    if (sentEarly.length > 0) upstream.write(sentEarly);
    report(101);
    record.bytesReceived += sentEarly.length;
    record.bytesSent += upstreamHead.length;
    splice(client, upstream, record, () => {}, idleMs);
    client.resume();
  });
  up.on('response', (res) => {
    answered = true;
    const status = res.statusCode ?? 502;
    // 1xx other than a WebSocket 101 has no place here.
    if (status < 200) {
      res.destroy();
      return fail(
        502,
        'UPSTREAM_UNREACHABLE',
        `the upstream answered ${status} without switching to websocket`,
      );
    }
    // Not upgraded: the answer is relayed, delimited by the connection's close.
    const out = endToEndHeaders(res.headers, ['content-length']);
    out.connection = 'close';
    client.write(head(status, res.statusMessage, out));
    res.pipe(client);
    res.on('end', () => report(status));
    // Cut short: the client must not take what came for the whole answer.
    res.on('close', () => {
      if (!res.complete) client.destroy();
      report(status);
    });
  });
  up.on('error', (err) => {
    if (answered) return void client.destroy();
    const why = refusal(err);
    fail(503, why.reason, why.message);
  });
  up.end();
}
