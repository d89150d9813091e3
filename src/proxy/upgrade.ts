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

export interface UpgradeTarget {
  /** The request to the next hop: host, port, agent or local address. Method, path and headers are set here. */
  readonly options: http.RequestOptions;
  /** The end-to-end headers for the next hop (the caller has already set or removed XFCC). */
  readonly headers: http.OutgoingHttpHeaders;
}

/**
 * Carries one Upgrade request (what Node's `upgrade` event hands over: the request, the client's
 * socket, the bytes after the request head) to `target`. `refusal` names a failure to reach the next
 * hop (its reason and message come from the error); the client then gets a 503 saying why.
 */
export function relayUpgrade(
  runtime: ProxyRuntime,
  record: ConnectionRecord | undefined,
  req: http.IncomingMessage,
  client: net.Socket,
  firstBytes: Buffer,
  target: UpgradeTarget,
  refusal: (err: Error) => { reason: RefusalReason; message: string },
): void {
  const started = runtime.clock.now();
  const websocket = isWebSocketUpgrade(req);
  const headers: http.OutgoingHttpHeaders = { ...target.headers };
  if (websocket) {
    headers.connection = 'Upgrade';
    headers.upgrade = String(req.headers.upgrade);
  }
  const up = http.request({ ...target.options, method: req.method, path: req.url, headers });
  let answered = false;
  const report = (status: number) => reportRequest(runtime, record, http1Outcome(req, status, started));
  client.on('error', () => up.destroy());
  up.on('upgrade', (res, upstream, upstreamHead) => {
    answered = true;
    const answer = endToEndHeaders(res.headers);
    answer.connection = 'Upgrade';
    answer.upgrade = String(res.headers.upgrade ?? '');
    client.write(head(101, res.statusMessage, answer));
    if (upstreamHead.length > 0) client.write(upstreamHead);
    if (firstBytes.length > 0) upstream.write(firstBytes);
    report(101);
    const counted: ConnectionRecord = record ?? {
      id: 0,
      direction: 'inbound',
      port: 0,
      sourceAddress: '',
      bytesReceived: 0,
      bytesSent: 0,
      startMs: started,
    };
    splice(client, upstream, counted, () => {}, runtime.config().limits.idleTimeoutMs);
    client.resume();
  });
  up.on('response', (res) => {
    answered = true;
    // Not upgraded: the answer is relayed, delimited by the connection's close.
    const out = endToEndHeaders(res.headers, ['content-length']);
    out.connection = 'close';
    client.write(head(res.statusCode ?? 502, res.statusMessage, out));
    res.pipe(client);
    res.on('end', () => report(res.statusCode ?? 502));
  });
  up.on('error', (err) => {
    if (answered) return void client.destroy();
    answered = true;
    const why = refusal(err);
    if (record) {
      record.reason = why.reason;
      record.message = why.message;
    }
    const body = `kmtls: ${why.reason}: ${why.message}\n`;
    client.end(
      head(503, undefined, {
        'content-type': 'text/plain',
        'content-length': String(Buffer.byteLength(body)),
        'x-kmtls-reason': why.reason,
        connection: 'close',
      }) + body,
    );
    report(503);
  });
  up.end();
}
