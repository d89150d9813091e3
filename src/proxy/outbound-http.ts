import http from 'node:http';
import type net from 'node:net';
import type { OutboundConfig, OutboundEndpointConfig } from '../mesh/index.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import { OutboundHttp2, sniffHttpVersion } from './http2.js';
import type { ProxyRuntime } from './runtime.js';
import { http1Outcome, parseAddress, poolKey, refuseHttp1, reportRequest } from './runtime.js';
import {
  endToEndHeaders,
  isWebSocketUpgrade,
  refuseRaw,
  relayUpgrade,
  reparseWithoutUpgrade,
} from './upgrade.js';

/** Opens one upstream connection to an endpoint: TLS, verification and secure naming included. */
export type EndpointConnector = (
  ep: OutboundEndpointConfig,
  record: ConnectionRecord,
  /** The connection will carry HTTP/2: offer it in ALPN (mesh mTLS: `istio-h2`; DestinationRule TLS: `h2`). */
  h2?: boolean,
) => Promise<
  { ok: true; socket: net.Socket } | { ok: false; reason: RefusalReason; message: string; retryable: boolean }
>;

class RefusedUpstream extends Error {
  constructor(
    readonly reason: RefusalReason,
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

/**
 * The outbound side of an HTTP port: the application's requests are parsed and sent over a pool of
 * kept-alive upstream connections per endpoint, so a new downstream connection costs no handshake.
 * A refusal becomes a 503 whose `x-kmtls-reason` header and body say why, instead of a reset.
 */
export class HttpOutbound {
  private readonly server: http.Server;
  private readonly agents = new Map<string, http.Agent>();
  private next = 0;
  private readonly http2: OutboundHttp2;

  constructor(
    private readonly dest: () => OutboundConfig,
    private readonly runtime: ProxyRuntime,
    private readonly connect: EndpointConnector,
  ) {
    this.server = http.createServer({ maxHeaderSize: runtime.config().limits.maxHeaderBytes }, (req, res) =>
      this.handle(req, res),
    );
    this.server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
      else socket.destroy();
    });
    this.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) =>
      this.upgrade(req, socket, head),
    );
    this.http2 = new OutboundHttp2(dest, runtime, connect);
  }

  /** Serves one downstream connection. */
  serve(client: net.Socket, record: ConnectionRecord): void {
    // HTTP/1.1 or HTTP/2 (gRPC, h2c): the first bytes say which.
    sniffHttpVersion(client, this.runtime.config().limits.idleTimeoutMs, (version) => {
      if (version === 'ended') return void client.end();
      if (version === 'idle') return void client.destroy();
      if (version === 'h2') return this.http2.serve(client, record);
      (client as net.Socket & { kmtls?: ConnectionRecord }).kmtls = record;
      this.server.emit('connection', client);
      client.resume();
    });
  }

  /** Lets go of the pooled upstream connections whose key `retire` names; requests in flight finish. */
  retire(retire: (key: string) => boolean): void {
    for (const [key, agent] of this.agents) {
      if (!retire(key)) continue;
      this.agents.delete(key);
      // A socket that finishes its request is closed instead of kept; idle ones go now.
      (agent as http.Agent & { keepAlive: boolean }).keepAlive = false;
      for (const sockets of Object.values(agent.freeSockets)) for (const s of sockets ?? []) s.destroy();
    }
    this.http2.retire(retire);
  }

  close(): void {
    this.http2.close();
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
  }

  private agentFor(ep: OutboundEndpointConfig, record: ConnectionRecord): http.Agent {
    const key = poolKey(ep);
    let agent = this.agents.get(key);
    if (!agent) {
      agent = new http.Agent({ keepAlive: true, maxSockets: 128, maxFreeSockets: 32 });
      // What the connection turned out to be (TLS, principals) travels with the socket to later requests.
      this.connectVerified(agent, ep, record, (socket, upstream) => {
        (socket as net.Socket & { kmtlsUpstream?: ConnectionRecord }).kmtlsUpstream = upstream;
      });
      this.agents.set(key, agent);
    }
    return agent;
  }

  /**
   * Makes `agent` open its connections through `connect`. Node's Agent waits for the callback, so a
   * socket is handed over only once verified; `verified` sees it first, with its upstream record.
   */
  private connectVerified(
    agent: http.Agent,
    ep: OutboundEndpointConfig,
    record: ConnectionRecord,
    verified: (socket: net.Socket, upstream: ConnectionRecord) => void,
  ): void {
    (agent as unknown as { createConnection: unknown }).createConnection = (
      _opts: unknown,
      callback: (err: Error | null, socket?: net.Socket) => void,
    ) => {
      const upstream: ConnectionRecord = { ...record, bytesReceived: 0, bytesSent: 0 };
      void this.connect(ep, upstream).then(
        (r) => {
          if (!r.ok) return callback(new RefusedUpstream(r.reason, r.message, r.retryable));
          verified(r.socket, upstream);
          callback(null, r.socket);
        },
        // A connection that could not even be set up (a DestinationRule key that does not match
        // its certificate) is refused like one the endpoint turned away.
        (err: Error) => callback(new RefusedUpstream('HANDSHAKE_FAILED', err.message, false)),
      );
      return undefined;
    };
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const record = (req.socket as net.Socket & { kmtls?: ConnectionRecord }).kmtls;
    const started = this.runtime.clock.now();
    const dest = this.dest();
    const endpoints = dest.endpoints;
    const headers = endToEndHeaders(req.headers);
    // Buffer nothing: the body streams to the first endpoint that accepts the connection.
    const start = this.next++ % endpoints.length;
    const attempt = (i: number) => {
      const ep = endpoints[(start + i) % endpoints.length]!;
      const { host, port } = parseAddress(ep.address);
      const upstream = http.request(
        {
          host,
          port,
          method: req.method,
          path: req.url,
          headers,
          agent: record ? this.agentFor(ep, record) : false,
        },
        (upRes) => {
          const up = (upRes.socket as net.Socket & { kmtlsUpstream?: ConnectionRecord }).kmtlsUpstream;
          if (up && record) {
            adoptUpstream(record, up);
            if (up.destinationAddress)
              (record as { destinationAddress?: string }).destinationAddress = up.destinationAddress;
          }
          const status = upRes.statusCode ?? 502;
          if (status < 200) {
            upRes.destroy();
            return unanswered(
              502,
              'UPSTREAM_UNREACHABLE',
              `the upstream answered ${status} to a plain request`,
            );
          }
          res.writeHead(status, upRes.statusMessage, endToEndHeaders(upRes.headers));
          upRes.pipe(res);
          upRes.on('end', () => reportRequest(this.runtime, record, http1Outcome(req, status, started)));
        },
      );
      let done = false;
      const unanswered = (status: number, reason: RefusalReason, message: string) => {
        if (done) return;
        done = true;
        if (record) {
          record.reason = reason;
          record.message = message;
        }
        refuseHttp1(res, status, reason, `${dest.name}: ${reason}: ${message}`);
        reportRequest(this.runtime, record, http1Outcome(req, status, started));
      };
      // A 101 to a request that asked for no upgrade: nothing can be carried on.
      upstream.on('upgrade', (_r: http.IncomingMessage, sock: net.Socket) => {
        sock.destroy();
        unanswered(
          502,
          'UPSTREAM_UNREACHABLE',
          'the upstream answered 101 to a request that asked for no upgrade',
        );
      });
      upstream.on('error', (err) => {
        const refused = err instanceof RefusedUpstream ? err : undefined;
        // Nothing reached an endpoint that refused the connection: the next one may take the request.
        if (refused?.retryable && i + 1 < endpoints.length && !res.headersSent) return attempt(i + 1);
        unanswered(503, refused?.reason ?? 'UPSTREAM_UNREACHABLE', err.message);
      });
      req.pipe(upstream);
    };
    attempt(0);
  }

  /** A WebSocket (or other Upgrade) request: to the next endpoint, over a verified connection of its own. */
  private upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    if (!isWebSocketUpgrade(req)) {
      reparseWithoutUpgrade(this.server, req, socket, head);
      return;
    }
    const record = (socket as net.Socket & { kmtls?: ConnectionRecord }).kmtls;
    const dest = this.dest();
    const endpoints = dest.endpoints;
    const ep = endpoints[this.next++ % endpoints.length];
    if (!ep || !record) {
      refuseRaw(socket, 503, 'UPSTREAM_UNREACHABLE', `${dest.name}: no endpoint`);
      return;
    }
    const { host, port } = parseAddress(ep.address);
    // An upgraded connection is never returned to a pool: it gets an agent of its own.
    const agent = new http.Agent({ keepAlive: false });
    this.connectVerified(agent, ep, record, (_socket, upstream) => adoptUpstream(record, upstream));
    relayUpgrade(
      this.runtime,
      record,
      req,
      socket,
      head,
      { options: { host, port, agent }, headers: endToEndHeaders(req.headers) },
      (err) => ({
        reason: err instanceof RefusedUpstream ? err.reason : 'UPSTREAM_UNREACHABLE',
        message: `${dest.name}: ${err.message}`,
      }),
    );
  }
}

/** What the upstream connection turned out to be, on the downstream connection's record. */
function adoptUpstream(record: ConnectionRecord, up: ConnectionRecord): void {
  record.transport = up.transport;
  record.sourcePrincipal = up.sourcePrincipal;
  record.destinationPrincipal = up.destinationPrincipal;
  record.tlsVersion = up.tlsVersion;
}
